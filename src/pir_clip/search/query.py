"""``pir-clip search INDEX_DIR``: one query (text, image or "more like this") -> a ranked table and files.

    pir-clip search index/ --text "storage tanks next to a river" -k 20 \\
        --output hits.json --geojson hits.geojson --save-grid hits.png

A thin layer over :class:`~pir_clip.search.index.SearchIndex`; ``hits.json`` is
``{"query": {...}, "index": ..., "hits": [Hit.to_dict(), ...]}``.
"""
import json
import os
import time
from typing import Dict, List, Sequence

from .contact_sheet import save_contact_sheet
from .geojson import hits_to_geojson
from .index import Hit, SearchIndex


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


def format_hits(hits: Sequence[Hit], source_width: int = 48) -> str:
    """A fixed-width table: rank, id, score, source, window, WGS84 bounds."""
    lines = [f"{'rank':>4}  {'id':>8}  {'score':>7}  {'source':<{source_width}}  {'window':<22}  bounds_wgs84"]
    for hit in hits:
        window = "-" if hit.window is None else "[" + ", ".join(str(v) for v in hit.window) + "]"
        bounds = "-" if hit.bounds_wgs84 is None else "[" + ", ".join(f"{v:.5f}" for v in hit.bounds_wgs84) + "]"
        lines.append(f"{hit.rank:>4}  {hit.id:>8}  {hit.score:7.4f}  {_short(hit.source, source_width):<{source_width}}"
                     f"  {window:<22}  {bounds}")
    return "\n".join(lines)


def run(args) -> Dict:
    """Runs ``pir-clip search`` for parsed arguments (see :func:`pir_clip.cli.search_arguments`)."""
    given = [name for name in ("text", "image", "like") if getattr(args, name) is not None]
    if len(given) != 1:
        raise ValueError("give exactly one query: --text \"...\", --image PATH or --like ID")
    if args.k < 1:
        raise ValueError(f"-k {args.k}: ask for at least one hit")
    index = SearchIndex.open(args.index_dir, device=args.device, precision=args.precision,
                             model_name=args.model_name, checkpoint=args.checkpoint,
                             prior_pretrained=args.prior_pretrained)
    params = dict(nprobe=args.nprobe, ef_search=args.ef_search, rerank=args.rerank)
    start = time.time()
    if args.text is not None:
        query = {"text": args.text}
        hits = index.search_text(args.text, args.k, **params)
    elif args.image is not None:
        if not os.path.isfile(args.image):
            raise FileNotFoundError(f"--image {args.image} does not exist")
        query = {"image": os.path.abspath(args.image)}
        hits = index.search_image(args.image, args.k, bands=_bands(args), **params)
    else:
        if not 0 <= args.like < len(index):
            raise ValueError(f"--like {args.like}: the index has ids 0 to {len(index) - 1}")
        query = {"like": args.like}
        hits = index.search_like(args.like, args.k, **params)
    seconds = time.time() - start
    query["k"] = args.k
    result = {"query": query, "index": os.path.abspath(args.index_dir), "model": index.manifest["model"]["name"],
              "hits": [hit.to_dict() for hit in hits]}
    print(format_hits(hits))
    written: List[str] = []
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        written.append(args.output)
    if args.geojson:
        with open(args.geojson, "w", encoding="utf-8") as f:
            json.dump(hits_to_geojson(hits, query), f, indent=1)
        written.append(args.geojson)
    if args.save_grid:
        title = next(f"{k}: {v}" for k, v in query.items() if k != "k")
        save_contact_sheet(index, hits, args.save_grid, title)
        written.append(args.save_grid)
    located = sum(hit.bounds_wgs84 is not None for hit in hits)
    print(f"{len(hits)} hits of {len(index):,} items in {seconds:.2f} s ({located} with coordinates)"
          + (f"; wrote {', '.join(written)}" if written else ""))
    return result


def _bands(args):
    from ..data.images import parse_bands
    return parse_bands(args.bands)
