"""``pir-clip``: one command with a subcommand per tool (also ``python -m pir_clip``).

Argument parsing only: each subcommand's ``run`` lives in the library (``evaluation``, ``search``) and is
imported when the subcommand runs, so ``pir-clip --help`` answers without loading torch models.
Bad input (a missing file, a malformed annotation or checkpoint, a wrong flag value) ends with one
``error: ...`` line on stderr and exit status 2, never a traceback.
"""
import argparse
import logging
import os
import sys
from typing import Callable, Dict, List, Optional, Tuple

PRECISIONS = ("fp32", "amp", "amp_bf16", "bf16", "fp16", "pure_bf16", "pure_fp16")

# A subcommand: a function that adds its arguments to a parser and returns the function that runs it.
AddArguments = Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], object]]
COMMANDS: Dict[str, Tuple[str, AddArguments]] = {}  # name -> (one-line help, AddArguments)


def command(name: str, help: str):
    """Registers the decorated :data:`AddArguments` function as subcommand ``name``."""
    def register(add_arguments: AddArguments) -> AddArguments:
        COMMANDS[name] = (help, add_arguments)
        return add_arguments
    return register


def add_model_arguments(p: argparse.ArgumentParser, checkpoint_aliases: Tuple[str, ...] = ()) -> None:
    """--model-name, --checkpoint, --prior-pretrained: any model pir_clip.create_model builds."""
    g = p.add_argument_group("model")
    g.add_argument("--model-name", default="PIR", help="PIR config or any open_clip model name (default PIR).")
    g.add_argument("--checkpoint", *checkpoint_aliases, dest="checkpoint", default=None,
                   help="Checkpoint file (bare, training format, DDP/compile prefixes, safetensors, or the authors' "
                        "release) or an open_clip pretrained tag. Without it the model is random: smoke tests only.")
    g.add_argument("--prior-pretrained", default=None, help="Separate weights for a PIR model's prior encoder.")


def add_runtime_arguments(p: argparse.ArgumentParser, batch_size: int = 64) -> None:
    """--batch-size, --workers, --device, --precision, --bands, --quiet."""
    g = p.add_argument_group("runtime")
    g.add_argument("--batch-size", type=int, default=batch_size, help=f"Images per batch (default {batch_size}).")
    g.add_argument("--workers", type=int, default=2, help="Image-loading worker processes (default 2).")
    g.add_argument("--device", default=None, help="cuda, cuda:1, cpu... (default: cuda when available).")
    g.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default), amp / amp_bf16 (autocast), bf16 / fp16 (cast weights).")
    g.add_argument("--bands", default=None, metavar="R,G,B",
                   help="1-based bands of multi-band images to use as RGB, e.g. 4,3,2 (default: the first three).")
    g.add_argument("--quiet", action="store_true", help="No progress bars.")


@command("retrieval", "image-text retrieval metrics (R@1/5/10, mR) of a checkpoint on an annotated set")
def retrieval_arguments(p: argparse.ArgumentParser):
    add_model_arguments(p, checkpoint_aliases=("--remoteclip-path",))
    g = p.add_argument_group("data")
    g.add_argument("--retrieval-json-dir", "--retrieval-data", dest="data", required=True,
                   help="Annotation file: Karpathy JSON (dataset_RSITMD.json), PIR-ITR test JSON, or CSV.")
    g.add_argument("--retrieval-images-dir", dest="images_dir", default=None,
                   help="Directory of the images the annotation names (default: next to the file).")
    g.add_argument("--split", default="test", help="Split of a Karpathy JSON (default test).")
    g.add_argument("--csv-encoding", default="utf-8", help="CSV encoding (RSICD's GeoRSCLIP CSV: gb18030).")
    g.add_argument("--csv-separator", default=",", help="CSV separator (default ',').")
    g.add_argument("--csv-img-key", default="filename", help="CSV image column (default filename).")
    g.add_argument("--csv-caption-key", default="title", help="CSV caption column (default title).")
    add_runtime_arguments(p)
    g = p.add_argument_group("output")
    g.add_argument("--output", default="results.json", help="Metrics JSON to write (default results.json).")
    g.add_argument("--save-embeddings", default=None, metavar="OUT.pt",
                   help="Save image/text embeddings, file names, captions and text_to_image for reuse.")
    g.add_argument("--save-visualization", default=None, metavar="OUT.png",
                   help="Save a figure of top-5 retrievals for a few sample queries.")
    g.add_argument("--chunk-size", type=int, default=4096, help="Queries scored per chunk (bounds memory).")

    def run(args):
        from .evaluation.retrieval import run as run_retrieval
        return run_retrieval(args)
    return run


def add_scene_data_arguments(p: argparse.ArgumentParser, split: bool) -> None:
    """--data, --split, --classnames, --images-dir: a scene classification set (pir_clip.data.scene_folders)."""
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True,
                   help="A folder of class folders at any depth (AID/Airport/airport_1.jpg, UCMerced_LandUse/Images/"
                        "agricultural/..., EuroSAT/2750/AnnualCrop/...), or a CSV with filepath,label columns.")
    if split:
        g.add_argument("--split", choices=("all", "train", "test"), default="all",
                       help="all (default), or RemoteCLIP's rule: per class, files sorted by name, the first 80%% "
                            "train and the rest test.")
    g.add_argument("--classnames", default=None, metavar="FILE",
                   help="Class names for the prompts: one per line in label order (sorted folder names), or JSON "
                        "{folder: name}. Default: folder names / labels as words (StorageTanks -> storage tanks).")
    g.add_argument("--images-dir", default=None,
                   help="Folder a CSV's relative file paths start from (default: the CSV's folder).")


@command("zeroshot", "zero-shot scene classification (top-1, top-5, mean per-class recall) of class folders or a "
                     "label CSV")
def zeroshot_arguments(p: argparse.ArgumentParser):
    add_model_arguments(p)
    add_scene_data_arguments(p, split=True)
    g = p.add_argument_group("prompts")
    g.add_argument("--templates", default=None, metavar="FILE",
                   help="Prompt templates, one per line with {} where the class name goes (default: the built-in "
                        "remote-sensing set).")
    add_runtime_arguments(p)
    g = p.add_argument_group("output")
    g.add_argument("--output", default="zeroshot_results.json",
                   help="Results JSON (default zeroshot_results.json): acc1, acc5, mean_per_class_recall, per-class "
                        "recall, class names, templates, counts.")
    g.add_argument("--save-confusion", default=None, metavar="OUT.png", help="Save the confusion matrix as a PNG.")
    g.add_argument("--save-predictions", default=None, metavar="OUT.csv",
                   help="Save file, true class and the top-5 classes with their scores for every image.")

    def run(args):
        from .evaluation.zeroshot import run as run_zeroshot
        return run_zeroshot(args)
    return run


@command("linear-probe", "few-shot linear probes (logistic regression on frozen image features), mean and spread "
                         "over seeds")
def linear_probe_arguments(p: argparse.ArgumentParser):
    add_model_arguments(p)
    add_scene_data_arguments(p, split=False)
    g = p.add_argument_group("probe")
    g.add_argument("--shots", nargs="+", default=["1", "2", "4", "8", "16"], metavar="K",
                   help="Training images per class, drawn from the train split: counts and/or 'all' "
                        "(default 1 2 4 8 16).")
    g.add_argument("--seeds", type=int, default=3, help="Draws per shot count, seeds 0..N-1 (default 3).")
    g.add_argument("--l2", type=float, default=1e-3, help="L2 weight of the logistic regression (default 1e-3).")
    g.add_argument("--max-iter", type=int, default=500, help="L-BFGS iterations per probe (default 500).")
    g.add_argument("--features", default=None, metavar="FILE.pt",
                   help="Cache of the image features: read when it matches the model, checkpoint and files, else "
                        "computed and written.")
    add_runtime_arguments(p)
    g = p.add_argument_group("output")
    g.add_argument("--output", default="linear_probe_results.json",
                   help="Results JSON (default linear_probe_results.json).")

    def run(args):
        from .evaluation.linear_probe import run as run_linear_probe
        return run_linear_probe(args)
    return run


@command("index", "embed image folders, webdataset shards and GeoTIFF scenes into a searchable index")
def index_arguments(p: argparse.ArgumentParser):
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="Image folders (recursive), image files, .tar shards or brace specs of shards "
                        "('shards/train-{000000..000009}.tar').")
    p.add_argument("--out", required=True, metavar="INDEX_DIR", help="Index folder to create or update.")
    add_model_arguments(p)
    g = p.add_argument_group("GeoTIFF scenes")
    g.add_argument("--scenes", nargs="+", default=[], metavar="FILE",
                   help="GeoTIFF scenes (or folders of them) to tile into chips, read window by window.")
    g.add_argument("--chip-size", type=int, default=224, help="Chip side in pixels (default 224).")
    g.add_argument("--stride", type=int, default=None, help="Pixels between chip origins (default: the chip size).")
    g = p.add_argument_group("index")
    g.add_argument("--index-type", choices=("flat", "ivf-pq", "hnsw"), default="flat",
                   help="flat: exact inner product (default); ivf-pq / hnsw: approximate, for large archives.")
    g.add_argument("--index-factory", default=None, metavar="STRING",
                   help="Any FAISS index_factory string instead of --index-type (inner product metric).")
    g.add_argument("--nlist", type=int, default=None, help="ivf-pq: k-means cells (default ~sqrt(N)).")
    g.add_argument("--pq-m", type=int, default=None, help="ivf-pq: sub-quantizers (default D/8).")
    g.add_argument("--hnsw-m", type=int, default=None, help="hnsw: graph degree M (default 32).")
    g.add_argument("--ef-construction", type=int, default=None, help="hnsw: build breadth (default 100).")
    g.add_argument("--nprobe", type=int, default=None, help="Default cells visited per ivf-pq query (32).")
    g.add_argument("--ef-search", type=int, default=None, help="Default hnsw query breadth (256).")
    g.add_argument("--rerank", type=int, default=None,
                   help="Approximate indexes: score rerank x k candidates exactly (default 10 for ivf-pq).")
    g.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                   help="Stored embedding precision (default float16).")
    g = p.add_argument_group("run")
    g.add_argument("--shard-size", type=int, default=2048,
                   help="Items per embedding shard: the most work a killed run loses (default 2048).")
    g.add_argument("--rebuild", action="store_true",
                   help="Discard the index's embeddings and re-embed everything (e.g. with a new model).")
    g.add_argument("--rank-timeout", type=float, default=600.0,
                   help="torchrun: seconds rank 0 waits for a silent rank before giving up (default 600).")
    add_runtime_arguments(p)

    def run(args):
        from .search.build import run as run_index
        args.stride = args.stride or args.chip_size
        return run_index(args)
    return run


def add_index_model_arguments(p: argparse.ArgumentParser, model_name: bool) -> argparse._ArgumentGroup:
    """The query model of an index (default: the index's own; another one is refused) and where it runs."""
    g = p.add_argument_group("query model (default: the index's; must be the index's model)")
    if model_name:
        g.add_argument("--model-name", default=None, help="Query model name (refused unless it is the index's).")
    g.add_argument("--checkpoint", default=None, help="Query checkpoint, e.g. the index's checkpoint moved elsewhere.")
    g.add_argument("--prior-pretrained", default=None, help="Query model's separate prior weights.")
    g.add_argument("--device", default=None, help="cuda, cpu... (default: cuda when available).")
    g.add_argument("--precision", choices=PRECISIONS, default="fp32", help="Query model precision (default fp32).")
    return g


@command("search", "search an index by text, image or example item; table, JSON, GeoJSON and contact sheet")
def search_arguments(p: argparse.ArgumentParser):
    p.add_argument("index_dir", metavar="INDEX_DIR", help="Folder written by 'pir-clip index'.")
    g = p.add_argument_group("query (one of)")
    g.add_argument("--text", default=None, help="Text query, e.g. \"storage tanks next to a river\".")
    g.add_argument("--image", default=None, metavar="PATH", help="Image query (any format the decoder reads).")
    g.add_argument("--like", type=int, default=None, metavar="ID", help="More like item ID (itself left out).")
    g.add_argument("-k", type=int, default=10, help="Hits to return (default 10).")
    g = p.add_argument_group("approximate indexes")
    g.add_argument("--nprobe", type=int, default=None, help="ivf-pq: cells visited (default: the index's).")
    g.add_argument("--ef-search", type=int, default=None, help="hnsw: query breadth (default: the index's).")
    g.add_argument("--rerank", type=int, default=None, help="Candidates scored exactly, as a multiple of k.")
    g = p.add_argument_group("output")
    g.add_argument("--output", default=None, metavar="HITS.json", help="Write the query and hits as JSON.")
    g.add_argument("--geojson", default=None, metavar="HITS.geojson", help="Write hits as RFC 7946 GeoJSON.")
    g.add_argument("--save-grid", default=None, metavar="HITS.png", help="Write a contact sheet of the hits.")
    g = add_index_model_arguments(p, model_name=True)
    g.add_argument("--bands", default=None, metavar="R,G,B", help="Bands of a multi-band --image to use as RGB.")

    def run(args):
        from .search.query import run as run_search
        return run_search(args)
    return run


@command("serve", "serve an index: a search page and a JSON API (text, image, more like this, GeoJSON)")
def serve_arguments(p: argparse.ArgumentParser):
    p.add_argument("index_dir", metavar="INDEX_DIR", help="Folder written by 'pir-clip index'.")
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1",
                   help="Address to bind (default 127.0.0.1, this machine only). Any other address makes the index "
                        "reachable from the network and prints a warning; use it with --token.")
    g.add_argument("--port", type=int, default=8000, help="Port (default 8000).")
    g.add_argument("--exit-after", type=float, default=None, metavar="SECONDS",
                   help="Shut down after this many seconds (tests, demos); default: run until Ctrl+C.")
    g.add_argument("--token", default=os.environ.get("PIR_CLIP_TOKEN"),
                   help="Require 'Authorization: Bearer TOKEN' on every API call (default: $PIR_CLIP_TOKEN, else "
                        "none). The page asks for it, or takes it from http://HOST:PORT/#token=TOKEN.")
    g = p.add_argument_group("limits")
    g.add_argument("--max-k", type=int, default=1000, help="Most hits one query may ask for (default 1000).")
    g.add_argument("--max-query-chars", type=int, default=500, help="Longest text query (default 500).")
    g.add_argument("--max-upload-mb", type=float, default=20.0, help="Largest image upload in MiB (default 20).")
    add_index_model_arguments(p, model_name=False)

    def run(args):
        from .search.server import ServeLimits, serve
        if not 0 < args.port < 65536:
            raise ValueError(f"--port {args.port}: give a port from 1 to 65535")
        if args.max_k < 1 or args.max_query_chars < 1 or args.max_upload_mb <= 0:
            raise ValueError("--max-k, --max-query-chars and --max-upload-mb must be positive")
        limits = ServeLimits(max_query_chars=args.max_query_chars, max_k=args.max_k,
                             max_upload_bytes=int(args.max_upload_mb * 1024 * 1024))
        serve(args.index_dir, host=args.host, port=args.port, token=args.token or None, limits=limits,
              device=args.device, precision=args.precision, checkpoint=args.checkpoint,
              prior_pretrained=args.prior_pretrained, exit_after=args.exit_after)
    return run


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = argparse.ArgumentParser(
        prog="pir-clip", description="PIR-CLIP toolkit for remote-sensing image-text retrieval, classification and "
                               "search. 'pir-clip COMMAND --help' describes a command.")
    parser.add_argument("--version", action="version", version=f"pir-clip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add_arguments) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".")
        p.set_defaults(run=add_arguments(p))
    return parser


def user_errors() -> Tuple[type, ...]:
    """Exceptions that mean bad input: printed as one line, exit status 2."""
    from .data.annotations import DataFormatError
    from .data.images import ImageDecodeError
    from .models.checkpoint import CheckpointError
    return DataFormatError, ImageDecodeError, CheckpointError, ValueError, FileNotFoundError


def main(argv: Optional[List[str]] = None, parser: Optional[argparse.ArgumentParser] = None) -> int:
    args = (parser or build_parser()).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        args.run(args)
    except user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def retrieval_main(argv: Optional[List[str]] = None) -> int:
    """``python retrieval.py ...``: the authors' command line, the same as ``pir-clip retrieval ...``."""
    parser = argparse.ArgumentParser(prog="python retrieval.py", description=COMMANDS["retrieval"][0] + ".")
    parser.set_defaults(run=retrieval_arguments(parser))
    return main(argv, parser)
