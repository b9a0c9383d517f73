"""Load on `pir-clip serve`: concurrent loopback clients against a served index of 100k vectors.

    python scripts/bench_serve.py                      # 16 clients x 20 s, 100,000 items (README numbers)
    python scripts/bench_serve.py --clients 4 --seconds 5 --items 20000 --out bench_serve.json

The index: `pir-clip index` of 16 synthetic images with a seeded random PIR-tiny (the tiny model keeps CPU
time on serving, not on a big forward pass), then grown to --items rows: clustered synthetic unit vectors
(pir_clip.search.synthetic_vectors) as embeddings, the real images' metadata repeated, and the FAISS index
(--index-type, default flat = exact) rebuilt over them; SearchIndex.open reads it like any other index.

The server runs as its own process (`python -m pir_clip serve`, 127.0.0.1, a free port, --exit-after), and
each client is a thread with one keep-alive connection, sending in turn a text search (k 20, queries
drawn from a list), "more like this" of a random item, an item's metadata, and an item's 256 px thumbnail.
Reported: requests per second, p50/p99 latency per kind and overall, errors (any status but 200, or a
failed connection), and the server's resident memory after warm-up and after the load.
"""
import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUERIES = ["storage tanks next to a river", "a white bridge over a blue river", "a parking lot full of cars",
           "an airport runway with planes", "dense forest", "farmland with fields", "a residential area",
           "a road through green fields", "red roofs", "boats on water"]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build_index(work: str, items: int, index_type: str) -> str:
    """A real 16-image index, grown to ``items`` rows of synthetic embeddings (module docstring)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    import pir_clip
    from pir_clip.cli import main as cli
    from pir_clip.data.synthetic import generate
    from pir_clip.search import manifest as layout
    from pir_clip.search.synthetic_vectors import clustered_unit_vectors
    from pir_clip.search.vector_index import VectorIndex, index_spec

    generate(os.path.join(work, "data"), seed=0, images_per_class=2, image_size=64, image_format="mixed",
             overwrite=True)
    torch.manual_seed(0)
    checkpoint = os.path.join(work, "pir_tiny.pt")
    torch.save(pir_clip.create_model("PIR-tiny").state_dict(), checkpoint)
    out = os.path.join(work, "index")
    if cli(["index", os.path.join(work, "data", "images"), "--out", out, "--model-name", "PIR-tiny", "--checkpoint",
            checkpoint, "--workers", "0", "--quiet"]) != 0:
        raise SystemExit("pir-clip index failed")
    manifest = layout.read_manifest(out)
    dim = manifest["embeddings"]["dim"]
    real = pq.read_table(os.path.join(out, layout.METADATA))
    rows = real.take(pa.array(np.arange(items) % len(real)))
    rows = rows.set_column(rows.schema.get_field_index("id"), "id", pa.array(np.arange(items), rows.schema.field("id").type))
    embeddings, _ = clustered_unit_vectors(items, dim, seed=0)
    spec = index_spec(index_type, items, dim, "float16")
    vectors = VectorIndex.build(embeddings, spec, progress=False)
    np.save(os.path.join(out, layout.EMBEDDINGS), embeddings)
    pq.write_table(rows, os.path.join(out, layout.METADATA))
    vectors.save(os.path.join(out, layout.FAISS_INDEX))
    manifest["embeddings"]["count"] = items
    manifest["counts"]["items"] = items
    manifest["index"].update(type=spec.type, factory=spec.factory, build=spec.build, search=spec.search, note=spec.note)
    manifest["note"] = f"bench_serve: {len(real)} real items' metadata repeated to {items}, synthetic embeddings"
    layout.write_json_atomic(os.path.join(out, layout.MANIFEST), manifest)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(port: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{proc.stdout.read()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit("the server did not come up")


def client(port: int, items: int, stop_at: float, seed: int, results: Dict[str, List[float]], errors: List[str],
           lock: threading.Lock) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    kinds = ["text", "like", "item", "image"]
    turn = seed
    local: Dict[str, List[float]] = {k: [] for k in kinds}
    local_errors: List[str] = []
    while time.time() < stop_at:
        kind = kinds[turn % len(kinds)]
        turn += 1
        item = rng.randrange(items)
        path = {"text": f"/api/search?k=20&q={rng.choice(QUERIES).replace(' ', '+')}",
                "like": f"/api/search?k=20&like={item}", "item": f"/api/items/{item}",
                "image": f"/api/items/{item}/image?size=256"}[kind]
        start = time.perf_counter()
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                local_errors.append(f"{path}: {response.status}")
            else:
                local[kind].append(time.perf_counter() - start)
        except (OSError, http.client.HTTPException) as exc:
            local_errors.append(f"{path}: {exc!r}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.close()
    with lock:
        for kind, values in local.items():
            results.setdefault(kind, []).extend(values)
        errors.extend(local_errors)


def percentiles(values: List[float]) -> Dict[str, float]:
    ms = np.asarray(values) * 1000
    return {"requests": len(values), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2)} if len(values) else {"requests": 0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--index-type", default="flat", choices=("flat", "ivf-pq", "hnsw"))
    p.add_argument("--out", default=None, help="write the results as JSON")
    args = p.parse_args(argv)
    work = tempfile.mkdtemp(prefix="bench_serve_")
    print(f"building a {args.items:,}-item {args.index_type} index in {work} ...", flush=True)
    index_dir = build_index(work, args.items, args.index_type)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "pir_clip", "serve", index_dir, "--port", str(port), "--exit-after",
                             str(args.seconds + 600)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_up(port, proc)
        warm: Dict[str, List[float]] = {}
        client(port, args.items, time.time() + 2, 0, warm, [], threading.Lock())  # first touches of each route
        before = rss_mib(proc.pid)
        results: Dict[str, List[float]] = {}
        errors: List[str] = []
        lock = threading.Lock()
        stop_at = time.time() + args.seconds
        started = time.time()
        threads = [threading.Thread(target=client, args=(port, args.items, stop_at, i, results, errors, lock))
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.time() - started
        after = rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    every = [v for values in results.values() for v in values]
    summary = {
        "items": args.items, "index_type": args.index_type, "clients": args.clients, "seconds": round(elapsed, 1),
        "cpu_cores": os.cpu_count(), "requests": len(every) + len(errors),
        "requests_per_second": round((len(every) + len(errors)) / elapsed, 1),
        "overall": percentiles(every), "by_kind": {k: percentiles(v) for k, v in sorted(results.items())},
        "errors": len(errors), "error_examples": errors[:5],
        "server_rss_mib": {"after_warm_up": round(before, 1), "after_load": round(after, 1)},
    }
    print(json.dumps(summary, indent=2))
    print(f"\n{args.clients} clients x {elapsed:.0f} s on {args.items:,} items: {summary['requests_per_second']} "
          f"requests/s, p50 {summary['overall'].get('p50_ms')} ms, p99 {summary['overall'].get('p99_ms')} ms, "
          f"{len(errors)} errors; server RSS {before:.0f} -> {after:.0f} MiB")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
