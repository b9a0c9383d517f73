"""Benchmark retrieval scoring + metrics on random embeddings, on CPU.

Cases: RSICD's test size (1,093 images x 5,465 captions) and a large set (20,000 images x 100,000 captions),
d = 512, 5 captions per image, random L2-normalised embeddings. Each case runs in its own subprocess so its
peak resident memory (``ru_maxrss``) is its own. Targets: RSICD size under 1 s, large case under 2 GB.

    python scripts/bench_retrieval.py                 # both cases
    python scripts/bench_retrieval.py --skip-large    # RSICD size only

The last line printed is ``rsicd_size_scoring_seconds: X`` (median of the timed repeats).
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Optional

CASES = {
    "rsicd": {"images": 1093, "captions_per_image": 5, "dim": 512, "repeats": 5, "progress": False},
    "large": {"images": 20000, "captions_per_image": 5, "dim": 512, "repeats": 1, "progress": True},
}


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _random_unit_rows(n: int, dim: int, seed: int):
    import torch
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, dim)
    for start in range(0, n, 8192):  # fill in blocks so generating the data does not set the peak
        block = torch.randn(min(8192, n - start), dim, generator=g)
        out[start:start + block.shape[0]] = torch.nn.functional.normalize(block, dim=1)
    return out


def run_case(name: str, chunk_size: Optional[int]) -> dict:
    import torch
    from pir_clip.evaluation.metrics import DEFAULT_CHUNK_SIZE, retrieval_metrics
    chunk_size = chunk_size or DEFAULT_CHUNK_SIZE
    case = CASES[name]
    images = _random_unit_rows(case["images"], case["dim"], seed=0)
    texts = _random_unit_rows(case["images"] * case["captions_per_image"], case["dim"], seed=1)
    text_to_image = torch.arange(case["images"]).repeat_interleave(case["captions_per_image"])
    rss_before = _peak_rss_mb()
    if case["repeats"] > 1:
        retrieval_metrics(images, texts, text_to_image, chunk_size=chunk_size)  # warm-up (thread pools, MKL)
    seconds = []
    for _ in range(case["repeats"]):
        start = time.perf_counter()
        metrics = retrieval_metrics(images, texts, text_to_image, chunk_size=chunk_size, progress=case["progress"])
        seconds.append(time.perf_counter() - start)
    return {"case": name, "images": case["images"], "texts": len(texts), "dim": case["dim"],
            "chunk_size": chunk_size, "seconds": statistics.median(seconds), "repeats": case["repeats"],
            "peak_rss_mb": _peak_rss_mb(), "rss_before_scoring_mb": rss_before,
            "threads": torch.get_num_threads(), "mean_recall": metrics["retrieval-mean-recall"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), help="run one case in this process and print JSON")
    parser.add_argument("--chunk-size", type=int, default=None, help="default: pir_clip.evaluation.metrics.DEFAULT_CHUNK_SIZE")
    parser.add_argument("--skip-large", action="store_true", help="only the RSICD-size case")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.chunk_size)))
        return

    names = ["rsicd"] if args.skip_large else ["rsicd", "large"]
    results = []
    for name in names:
        print(f"running {name} case ...", flush=True)
        command = [sys.executable, __file__, "--case", name]
        if args.chunk_size:
            command += ["--chunk-size", str(args.chunk_size)]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True)  # stderr (progress, errors) passes through
        if done.returncode != 0:
            sys.exit(f"{name} case failed (exit {done.returncode}); its error is printed above")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))

    # "before" is the process's peak after imports and data; the difference is what scoring itself adds.
    print(f"{'case':<6} {'images':>7} {'texts':>8} {'chunk':>6} {'seconds':>8} {'peak RSS MiB':>13} "
          f"{'before MiB':>11} {'scoring MiB':>12} {'threads':>7} {'mR (random)':>12}")
    for r in results:
        print(f"{r['case']:<6} {r['images']:>7,} {r['texts']:>8,} {r['chunk_size']:>6} {r['seconds']:>8.3f} "
              f"{r['peak_rss_mb']:>13.0f} {r['rss_before_scoring_mb']:>11.0f} "
              f"{r['peak_rss_mb'] - r['rss_before_scoring_mb']:>12.0f} {r['threads']:>7} {r['mean_recall']:>12.3f}")
    rsicd = next(r for r in results if r["case"] == "rsicd")
    print(f"rsicd_size_scoring_seconds: {rsicd['seconds']:.3f}")


if __name__ == "__main__":
    main()
