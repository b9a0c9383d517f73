"""Text search over a georeferenced scene: the archive-search demo (CPU, a few minutes).

    bash scripts/demo_search.sh                       # uses (or first trains) the quickstart's tiny PIR
    bash scripts/demo_search.sh --model-name PIR --checkpoint checkpoints/pir.pt   # your own model

Steps, each printed as the command a user would type:
1. the model: the quickstart's checkpoint (``runs/quickstart-pir-seed0/checkpoints/epoch_best.pt``); when it is
   not there yet, ``python scripts/quickstart.py`` trains it first (about three minutes);
2. a GeoTIFF mosaic of synthetic aerial scenes the model never saw: a grid of 96 px tiles in UTM zone 33N
   (EPSG:32633) at 0.5 m pixels, with a strip of nodata along its bottom edge, and a JSON of each tile's class;
3. ``pir-clip index --scenes mosaic.tif --chip-size 96`` (one chip per tile; the nodata chips are skipped);
4. three ``pir-clip search`` text queries, each writing hits JSON, GeoJSON and a contact sheet;
5. how many of each query's top 10 chips show the class it asks for (chance: 1 in 12).

Outputs go to ``runs/demo-search/``.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART_CHECKPOINT = os.path.join("runs", "quickstart-pir-seed0", "checkpoints", "epoch_best.pt")
TILE = 96  # the synthetic benchmark's image size, which the quickstart model was trained on
CLASSES = ("airport", "parkinglot", "storagetanks", "residential", "farmland", "forest", "river", "beach",
           "baseballfield", "pond", "bridge", "desert")
QUERIES = [("an industrial area with white storage tanks", "storagetanks"),
           ("a red bridge crosses a blue river", "bridge"),
           ("an airport with planes next to the runway", "airport")]
UTM_33N = "EPSG:32633"
ORIGIN = (500_000.0, 4_650_000.0)  # zone 33's central meridian at about 42 N
PIXEL_METRES = 0.5


def run(cmd) -> None:
    cmd = [str(c) for c in cmd]
    print("\n$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        sys.exit(f"command failed with exit code {proc.returncode}: {' '.join(cmd[:4])} ...")


def write_mosaic(path: str, tiles_x: int, tiles_y: int, nodata_rows: int, seed: int) -> dict:
    """Renders the mosaic (uint8 RGB, nodata 0) and returns {"col,row": class} for every tile with pixels."""
    import rasterio
    from rasterio.transform import from_origin

    from pir_clip.data.synthetic import make_image
    rng = np.random.default_rng(seed)
    width, height = tiles_x * TILE, (tiles_y + nodata_rows) * TILE
    classes = {}
    profile = dict(driver="GTiff", width=width, height=height, count=3, dtype="uint8", nodata=0, crs=UTM_33N,
                   transform=from_origin(*ORIGIN, PIXEL_METRES, PIXEL_METRES), tiled=True, blockxsize=256,
                   blockysize=256, compress="deflate", photometric="RGB")
    with rasterio.open(path, "w", **profile) as mosaic:
        for ty in range(tiles_y + nodata_rows):
            row = np.zeros((3, TILE, width), dtype=np.uint8)
            for tx in range(tiles_x):
                # The bottom strip is nodata except for its first two tiles (a swath edge).
                if ty >= tiles_y and tx >= 2:
                    continue
                name = CLASSES[int(rng.integers(len(CLASSES)))]
                # Image numbers far beyond the benchmark's: scenes the model was not trained on.
                tile = np.asarray(make_image(name, 100_000 + ty * tiles_x + tx, image_size=TILE).image)
                row[:, :, tx * TILE:(tx + 1) * TILE] = np.moveaxis(np.maximum(tile, 1), -1, 0)  # 0 is nodata
                classes[f"{tx * TILE},{ty * TILE}"] = name
            mosaic.write(row, window=rasterio.windows.Window(0, ty * TILE, width, TILE))
    return classes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join("runs", "demo-search"), help="Output folder.")
    p.add_argument("--model-name", default="PIR-tiny")
    p.add_argument("--checkpoint", default=None, help=f"Default: {QUICKSTART_CHECKPOINT} (trained if missing).")
    p.add_argument("--tiles", type=int, default=12, help="Mosaic side in tiles (default 12: 144 tiles).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-k", type=int, default=10)
    args = p.parse_args(argv)
    start = time.time()
    os.chdir(ROOT)
    sys.path.insert(0, os.path.join(ROOT, "src"))
    checkpoint = args.checkpoint or QUICKSTART_CHECKPOINT
    if args.checkpoint is None and not os.path.isfile(checkpoint):
        print(f"{checkpoint} is not there yet: training the quickstart's tiny PIR first (about three minutes).")
        run([sys.executable, "scripts/quickstart.py"])
    if not os.path.isfile(checkpoint):
        sys.exit(f"error: checkpoint {checkpoint} does not exist; pass --checkpoint FILE")

    os.makedirs(args.out, exist_ok=True)
    mosaic = os.path.join(args.out, "mosaic.tif")
    print(f"\nWriting {mosaic}: {args.tiles} x {args.tiles} tiles of {TILE} px at {PIXEL_METRES} m, {UTM_33N}, "
          "plus a strip of nodata", flush=True)
    classes = write_mosaic(mosaic, args.tiles, args.tiles, nodata_rows=1, seed=args.seed)
    with open(os.path.join(args.out, "mosaic_classes.json"), "w") as f:
        json.dump(classes, f, indent=1)

    index = os.path.join(args.out, "index")
    run([sys.executable, "-m", "pir_clip", "index", "--scenes", mosaic, "--chip-size", TILE, "--out", index,
         "--model-name", args.model_name, "--checkpoint", checkpoint, "--workers", "1"])
    report = []
    for n, (text, wanted) in enumerate(QUERIES, start=1):
        stem = os.path.join(args.out, f"query{n}")
        run([sys.executable, "-m", "pir_clip", "search", index, "--text", text, "-k", args.k,
             "--output", stem + ".json", "--geojson", stem + ".geojson", "--save-grid", stem + ".png"])
        with open(stem + ".json") as f:
            hits = json.load(f)["hits"]
        found = [classes[f"{h['window'][0]},{h['window'][1]}"] for h in hits]
        report.append((text, wanted, sum(c == wanted for c in found), len(found), stem))
    print(f"\nDemo finished in {time.time() - start:.0f} s. Top-{args.k} chips of the class each query asks for "
          f"(mosaic: {len(classes)} tiles, {len(CLASSES)} classes):")
    for text, wanted, right, total, stem in report:
        share = sum(c == wanted for c in classes.values())
        print(f"  {right:2d}/{total}  {text!r} ({wanted}: {share} tiles in the mosaic)  -> {stem}.png, .geojson, .json")
    print(f"Open the GeoJSON files over {mosaic} in a GIS (e.g. QGIS) to see the hits in place.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
