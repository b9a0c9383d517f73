"""Archive search benchmarks, one run on this machine (README, "Search performance").

1. **Indexing throughput**: the ``pir-clip index`` embedding step (decode in a worker, the model's transform,
   ``encode_image``) over the same 224 px images with PIR and with open_clip ViT-B-32, both with random
   weights (no download). Passes alternate between the models so background load hits both alike; the ratio
   of medians is reported with the ratio of forward FLOPs (torch's FlopCounterMode).
2. **Vector search at scale**: ``--vectors`` (default 1,000,000) x 512 clustered unit vectors
   (:mod:`pir_clip.search.synthetic_vectors`: a common cone, groups of clusters, clusters of ~100;
   ``--cone 0 --group 0`` for unrelated clusters), 1,000 held-out queries. For the exact index and each
   approximate setting: build time, the index's size (serialized, about what it occupies in memory), query
   latency (one query at a time, median and p95 over ``--latency-queries``; FAISS on ``--threads``
   threads), and recall@10 against exact search. Approximate searches go through the same
   ``VectorIndex.search`` the CLI uses, re-ranking included.

    python scripts/bench_search.py                       # everything (the 1M HNSW build takes minutes)
    python scripts/bench_search.py --vectors 200000 --skip-throughput
    python scripts/bench_search.py --output runs/bench_search.json

The last line is ``search_summary: {...}`` (JSON).
"""
import argparse
import gc
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

CLASSES = ("airport", "storagetanks", "river", "forest", "farmland", "residential", "parkinglot", "bridge")


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------------------ indexing throughput


def write_images(folder: str, n: int, size: int) -> None:
    from pir_clip.data.synthetic import make_image
    for i in range(n):
        image = make_image(CLASSES[i % len(CLASSES)], i // len(CLASSES) + 1, image_size=size).image
        image.save(os.path.join(folder, f"{CLASSES[i % len(CLASSES)]}_{i}.{'png' if i % 2 else 'jpg'}"))


def bench_throughput(args) -> Dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pir_clip.search.embed import embed_items
    from pir_clip.search.model import ModelSpec, load_model
    from pir_clip.search.sources import collect_files, enumerate_items

    torch.set_num_threads(args.threads)
    folder = tempfile.mkdtemp(prefix="bench_search_images_")
    write_images(folder, args.images, 224)
    items = [item for f in collect_files([folder]).files for item in enumerate_items(f, 224, 224)[0]]
    models = {name: load_model(ModelSpec(name)) for name in ("PIR", "ViT-B-32")}
    for loaded in models.values():
        assert loaded.preprocess_cfg["size"] in (224, (224, 224))
    times: Dict[str, List[float]] = {name: [] for name in models}
    for round_ in range(args.rounds + 1):  # round 0 warms up (page cache, allocator, worker start)
        for name, loaded in models.items():
            start = time.perf_counter()
            for _ in embed_items(loaded.model, loaded.preprocess, items, loaded.embed_dim, batch_size=32,
                                 workers=1, progress=False):
                pass
            if round_:
                times[name].append(time.perf_counter() - start)
    flops = {}
    sample = torch.randn(1, 3, 224, 224)
    for name, loaded in models.items():
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            loaded.model.encode_image(sample)
        flops[name] = counter.get_total_flops()
    rate = {name: len(items) / statistics.median(t) for name, t in times.items()}
    result = {"images": len(items), "rounds": args.rounds, "images_per_second": rate,
              "pir_over_clip_time": rate["ViT-B-32"] / rate["PIR"],
              "forward_gflops": {k: v / 1e9 for k, v in flops.items()},
              "flop_ratio": flops["PIR"] / flops["ViT-B-32"]}
    print(f"indexing throughput, {len(items)} images at 224 px, median of {args.rounds} interleaved passes:")
    for name in models:
        print(f"  {name:10s} {rate[name]:7.1f} images/s   forward {flops[name] / 1e9:5.2f} GFLOPs/image")
    print(f"  PIR / ViT-B-32 indexing time {result['pir_over_clip_time']:.2f} (forward FLOP ratio "
          f"{result['flop_ratio']:.2f})", flush=True)
    return result


# ------------------------------------------------------------------------------------ vector search


def recall_at_10(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a[a >= 0]) & set(b)) / 10 for a, b in zip(found, exact)]))


def latency_ms(index, queries: np.ndarray, **params) -> Dict[str, float]:
    times = []
    for q in queries:
        start = time.perf_counter()
        index.search(q[None], 10, **params)
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(times), "p95_ms": float(np.percentile(times, 95))}


def serialized_mib(index) -> float:
    import faiss
    return faiss.serialize_index(index.index).nbytes / 2**20


def bench_vectors(args) -> Dict:
    import faiss

    from pir_clip.search.synthetic_vectors import clustered_unit_vectors
    from pir_clip.search.vector_index import VectorIndex, default_pq_m, index_spec
    faiss.omp_set_num_threads(args.threads)
    start = time.time()
    vectors, queries = clustered_unit_vectors(args.vectors, args.dim, queries=1000, seed=0, cone=args.cone,
                                              group=args.group)
    print(f"\n{args.vectors:,} x {args.dim} clustered float16 vectors (cone {args.cone}, group {args.group}; "
          f"{vectors.nbytes / 2**20:.0f} MiB) in "
          f"{time.time() - start:.0f} s; 1,000 queries; FAISS on {args.threads} threads", flush=True)
    latency_queries = queries[:args.latency_queries]
    results = {"vectors": args.vectors, "dim": args.dim, "threads": args.threads, "cone": args.cone,
               "group": args.group, "indexes": []}

    def build(spec):
        gc.collect()
        t0 = time.time()
        index = VectorIndex.build(vectors, spec, progress=False)
        seconds = time.time() - t0
        return index, {"factory": spec.factory, "build_s": seconds, "index_mib": serialized_mib(index),
                       "peak_rss_mib_so_far": peak_rss_mib()}

    exact, info = build(index_spec("flat", len(vectors), args.dim))
    t0 = time.time()
    _, exact_ids = exact.search(queries, 10)
    info.update(type="flat", params={}, batch_ms_per_query=(time.time() - t0) * 1e3 / len(queries), recall_at_10=1.0,
                **latency_ms(exact, latency_queries[:max(5, len(latency_queries) // 10)]))
    results["indexes"].append(info)
    print(f"  flat    build {info['build_s']:6.1f} s  {info['index_mib']:6.0f} MiB  query "
          f"{info['median_ms']:7.2f} ms (p95 {info['p95_ms']:.2f}), batched {info['batch_ms_per_query']:.2f} ms/query",
          flush=True)
    del exact
    gc.collect()

    # Query settings per build: nprobe and rerank for ivf-pq, ef_search for hnsw. ivf-pq is built with the
    # default D/8 sub-quantizers and with twice as many (finer codes, slower scans).
    ivf_settings = [dict(nprobe=p, rerank=10) for p in (8, 16, 32, 64)] + [dict(nprobe=32, rerank=r) for r in (5, 20)]
    builds = [("ivf-pq", {}, ivf_settings), ("ivf-pq", dict(pq_m=2 * default_pq_m(args.dim)), ivf_settings),
              ("hnsw", {}, [dict(ef_search=e) for e in (64, 128, 256)])]
    for index_type, options, settings in builds:
        if index_type in args.skip:
            continue
        index, info = build(index_spec(index_type, len(vectors), args.dim, **options))
        print(f"  {index_type:7s} {info['factory']}: build {info['build_s']:6.1f} s, index {info['index_mib']:.0f} MiB"
              + (" (+ the float16 embeddings, memory-mapped, for re-ranking)" if index_type == "ivf-pq" else ""),
              flush=True)
        for params in settings:
            _, ids = index.search(queries, 10, **params)
            row = dict(info, type=index_type, params=params, recall_at_10=recall_at_10(ids, exact_ids),
                       **latency_ms(index, latency_queries, **params))
            results["indexes"].append(row)
            print(f"      {json.dumps(params):34s} recall@10 {row['recall_at_10']:.4f}  query {row['median_ms']:6.2f} ms "
                  f"(p95 {row['p95_ms']:.2f})", flush=True)
        del index
        gc.collect()
    results["peak_rss_mib"] = peak_rss_mib()
    print(f"  peak resident memory of the benchmark process: {results['peak_rss_mib']:.0f} MiB", flush=True)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=64, help="Images per throughput pass (default 64).")
    p.add_argument("--rounds", type=int, default=3, help="Timed passes per model (default 3).")
    p.add_argument("--vectors", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--cone", type=float, default=1.0, help="Shared direction of all vectors (0: none).")
    p.add_argument("--group", type=float, default=0.8, help="Shared direction within a group of clusters (0: none).")
    p.add_argument("--latency-queries", type=int, default=200, help="Queries timed one by one (default 200).")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch and FAISS (default 2).")
    p.add_argument("--skip", nargs="*", default=[], choices=("throughput", "vectors", "ivf-pq", "hnsw"))
    p.add_argument("--skip-throughput", dest="skip", action="append_const", const="throughput")
    p.add_argument("--output", default=None, help="Write all results as JSON.")
    args = p.parse_args(argv)
    summary = {}
    if "throughput" not in args.skip:
        summary["throughput"] = bench_throughput(args)
    if "vectors" not in args.skip:
        summary["search"] = bench_vectors(args)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(summary, f, indent=2)
    print("search_summary: " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
