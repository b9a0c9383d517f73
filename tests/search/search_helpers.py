"""Helpers shared by the search tests: GeoTIFF scenes with known geometry, index runs, comparisons."""
import os
import subprocess
import sys
from typing import List, Optional, Sequence

import numpy as np
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UTM_33N = "EPSG:32633"
# Easting 500 000 m is UTM zone 33's central meridian, 15 degrees east: a known longitude.
ORIGIN_X, ORIGIN_Y, PIXEL = 500_000.0, 4_650_000.0, 10.0


def write_scene(path, width: int = 100, height: int = 70, count: int = 3, dtype: str = "uint8",
                nodata: Optional[float] = 0, nodata_block=None, seed: int = 0, crs: Optional[str] = UTM_33N) -> str:
    """A GeoTIFF with random pixels (never equal to ``nodata``), a UTM transform from (ORIGIN_X, ORIGIN_Y) at
    PIXEL metres, and ``nodata_block`` = (row0, row1, col0, col1) set to nodata."""
    import rasterio
    from rasterio.transform import from_origin
    rng = np.random.default_rng(seed)
    high = 255 if dtype == "uint8" else 4000
    pixels = rng.integers(1, high, (count, height, width)).astype(dtype)
    if nodata_block is not None:
        r0, r1, c0, c1 = nodata_block
        pixels[:, r0:r1, c0:c1] = nodata
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=dtype, nodata=nodata,
                   tiled=True, blockxsize=16, blockysize=16)
    if crs is not None:
        profile.update(crs=crs, transform=from_origin(ORIGIN_X, ORIGIN_Y, PIXEL, PIXEL))
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(pixels)
    return str(path)


def env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "src"),
                                                                                   os.path.dirname(__file__)]),
            **extra}


def run_index_process(args: Sequence[str], fault: str = "", timeout: float = 300, **extra_env):
    """``python tests/search/index_with_fault.py ARGS`` (``pir-clip index`` with an injected fault)."""
    cmd = [sys.executable, os.path.join(os.path.dirname(__file__), "index_with_fault.py"), "index"] + [str(a) for a in args]
    return subprocess.run(cmd, cwd=ROOT, env=env(PIR_CLIP_TEST_FAULT=fault, **extra_env), capture_output=True,
                          text=True, timeout=timeout)


def index_args(paths: Sequence, out, checkpoint, *extra) -> List[str]:
    return [str(p) for p in paths] + ["--out", str(out), "--model-name", "PIR-tiny", "--checkpoint", str(checkpoint),
                                      "--workers", "0", "--batch-size", "4", "--quiet"] + [str(e) for e in extra]


def assert_same_index(a, b, atol: float = 0.0) -> None:
    """Two index folders hold the same items, metadata and embeddings (and the same search results)."""
    meta_a = pq.read_table(os.path.join(a, "metadata.parquet")).to_pylist()
    meta_b = pq.read_table(os.path.join(b, "metadata.parquet")).to_pylist()
    assert meta_a == meta_b
    emb_a = np.load(os.path.join(a, "embeddings.npy"))
    emb_b = np.load(os.path.join(b, "embeddings.npy"))
    assert emb_a.shape == emb_b.shape and emb_a.dtype == emb_b.dtype
    np.testing.assert_allclose(emb_a.astype(np.float32), emb_b.astype(np.float32), atol=atol, rtol=0)
    skipped_a = pq.read_table(os.path.join(a, "skipped.parquet")).to_pylist()
    skipped_b = pq.read_table(os.path.join(b, "skipped.parquet")).to_pylist()
    assert skipped_a == skipped_b
