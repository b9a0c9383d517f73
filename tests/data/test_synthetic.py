"""Tests of the synthetic RS retrieval benchmark: determinism, balance, splits, formats, and that captions
say what the attributes record and the pixels show."""
import csv
import hashlib
import importlib.util
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from pir_clip.data.synthetic import (CLASSIFICATION_INDEX_OFFSET, DEFAULT_CLASSIFICATION_IMAGES, SPLITS, encode_image,
                                     generate, make_image, scene_folder_name, split_sizes)
from pir_clip.data.synthetic_scenes import (BRIDGE_COLOURS, CAR_COLOURS, MAX_JITTER, NUMBER_WORDS, PALETTE,
                                       PLANE_COLOURS, ROOF_COLOURS, SCENES, TANK_COLOURS, Difficulty)

REPO = Path(__file__).resolve().parents[2]
PER_CLASS, VAL, TEST = 6, 0.2, 0.3  # 6 images -> 3 train, 1 val, 2 test per class
# Pixel checks hold at moderate difficulty whatever the tuned default is; at high noise colours blur.
PIXEL_DIFFICULTY = Difficulty(noise=0.3, clutter=0.3, colour_jitter=0.3, overlap=0.3)
SMALL = dict(seed=1, images_per_class=3, classes=["airport", "pond", "desert"], image_format="mixed",
             image_size=64, shard_size=4)

NUMBERS = {word: n for n, word in enumerate(NUMBER_WORDS) if n}
COUNTED_NOUNS = {  # noun after a number -> the attributes it may count, first present one wins
    **{w: ("n_planes",) for w in ("plane", "planes", "airplane", "airplanes", "aircraft", "jet", "jets")},
    **{w: ("n_cars",) for w in ("car", "cars", "vehicle", "vehicles")},
    **{w: ("n_tanks",) for w in ("tank", "tanks")},
    **{w: ("n_houses",) for w in ("house", "houses", "building", "buildings", "home", "homes")},
    **{w: ("n_fields", "n_diamonds") for w in ("field", "fields")},
    **{w: ("n_fields",) for w in ("plot", "plots")},
    **{w: ("n_diamonds",) for w in ("diamond", "diamonds")},
    **{w: ("n_boats",) for w in ("boat", "boats", "ship", "ships")},
    **{w: ("n_umbrellas",) for w in ("umbrella", "umbrellas", "parasol", "parasols")},
    **{w: ("n_bridges",) for w in ("bridge", "bridges")},
    **{w: ("n_trees",) for w in ("tree", "trees")},
}
POSITION_WORDS = {"left": "left", "right": "right", "top": "top", "upper": "top", "bottom": "bottom",
                  "lower": "bottom", "center": "center", "centre": "center", "middle": "center"}
ORIENTATION_WORDS = {w + suffix: w for w in ("horizontal", "vertical", "diagonal") for suffix in ("", "ly")}
SIZE_WORDS = {"small": "small", "tiny": "small", "large": "large", "big": "large", "huge": "large",
              "narrow": "narrow", "wide": "wide", "broad": "wide"}
DENSITY_WORDS = {"dense": "dense", "densely": "dense", "thick": "dense", "sparse": "sparse", "sparsely": "sparse"}
MAIN_COUNT = {"airport": "n_planes", "parkinglot": "n_cars", "storagetanks": "n_tanks", "residential": "n_houses",
              "farmland": "n_fields", "beach": "n_umbrellas", "baseballfield": "n_diamonds", "bridge": "n_bridges"}
# Object colour attribute and the colours it can take; backgrounds of these classes avoid all of them.
OBJECT_COLOURS = {"airport": ("plane_colour", PLANE_COLOURS), "parkinglot": ("car_colour", CAR_COLOURS),
                  "storagetanks": ("tank_colour", TANK_COLOURS), "residential": ("roof_colour", ROOF_COLOURS),
                  "bridge": ("bridge_colour", BRIDGE_COLOURS)}


def file_hashes(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def load_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def near(image: Image.Image, colour: str, tolerance: float = 40.0) -> np.ndarray:
    """Mask (H, W) of pixels within ``tolerance`` (RGB distance) of palette colour ``colour``."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    return np.linalg.norm(pixels - np.asarray(PALETTE[colour], dtype=np.float32), axis=-1) < tolerance


def values_of(attributes: dict, suffixes) -> set:
    found = set()
    for key, value in attributes.items():
        if key.endswith(suffixes) and value is not None:
            found.update(value if isinstance(value, list) else [value])
    return found


def check_caption(caption: str, attributes: dict) -> None:
    """Every count, colour, position, orientation, size and density word agrees with the attributes."""
    tokens = re.findall(r"[a-z0-9]+", caption.lower())
    for i, token in enumerate(tokens):
        value = int(token) if token.isdigit() else NUMBERS.get(token)
        if token == "single" and i and tokens[i - 1] == "a":
            value = 1
        if value is None:
            continue
        noun = next((t for t in tokens[i + 1:i + 6] if t in COUNTED_NOUNS), None)
        assert noun, f"number {token!r} counts nothing in {caption!r}"
        key = next((k for k in COUNTED_NOUNS[noun] if k in attributes), None)
        assert key and attributes[key] == value, f"{caption!r} says {value} {noun}, attributes {attributes}"
    words = set(tokens)
    assert words & set(PALETTE) <= values_of(attributes, ("_colour", "_colours")), (caption, attributes)
    positions = {w for value in values_of(attributes, ("_position",)) for w in value.split()}
    assert {POSITION_WORDS[w] for w in words & set(POSITION_WORDS)} <= positions, (caption, attributes)
    assert {ORIENTATION_WORDS[w] for w in words & set(ORIENTATION_WORDS)} <= values_of(attributes, ("_orientation",)), \
        (caption, attributes)
    assert {SIZE_WORDS[w] for w in words & set(SIZE_WORDS)} <= values_of(attributes, ("_size", "river_width")), \
        (caption, attributes)
    assert {DENSITY_WORDS[w] for w in words & set(DENSITY_WORDS)} <= values_of(attributes, ("density",)), \
        (caption, attributes)


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, seed=0, images_per_class=PER_CLASS, image_size=96, val_fraction=VAL, test_fraction=TEST,
             shard_size=50)
    return root


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory):
    """Two runs with the same seed and one with another seed, mixed formats."""
    root = tmp_path_factory.mktemp("synthetic_small")
    same = [generate(root / name, **SMALL) for name in ("a", "b")]
    other = generate(root / "c", **{**SMALL, "seed": 2})
    return [Path(s.out_dir) for s in (*same, other)]


@pytest.fixture(scope="module")
def attributes(out) -> dict:
    return load_json(out / "attributes.json")


@pytest.fixture(scope="module")
def karpathy(out) -> dict:
    return load_json(out / "dataset_synthetic.json")


def test_same_seed_same_bytes_other_seed_other_images(small_runs):
    a, b, c = small_runs
    hashes_a, hashes_c = file_hashes(a), file_hashes(c)
    assert len(hashes_a) > 20 and hashes_a == file_hashes(b)
    images = [name for name in hashes_a if name.startswith("images/")]
    assert images and all(hashes_a[name] != hashes_c[name] for name in images)


def test_image_depends_only_on_seed_class_and_index(small_runs):
    # airport_1 is a png in a mixed run; generating just that image must give the same bytes.
    sample = make_image("airport", 1, seed=1, image_size=64)
    assert encode_image(sample.image, "png") == (small_runs[0] / "images" / "airport_1.png").read_bytes()
    assert sample.attributes == load_json(small_runs[0] / "attributes.json")["airport_1.png"]


def test_mixed_formats_cycle_and_open(small_runs):
    expected = {"png": "PNG", "jpg": "JPEG", "tif": "TIFF"}
    files = sorted((small_runs[0] / "images").iterdir())
    assert {p.suffix for p in files} == {".png", ".jpg", ".tif"}
    for path in files:
        index = int(path.stem.split("_")[1])
        assert path.suffix[1:] == ("png", "jpg", "tif")[(index - 1) % 3]
        with Image.open(path) as image:
            assert image.format == expected[path.suffix[1:]] and image.size == (64, 64) and image.mode == "RGB"


def test_classes_balanced_and_file_names(out, attributes):
    names = sorted(p.name for p in (out / "images").iterdir())
    assert sorted(attributes) == names and len(names) == len(SCENES) * PER_CLASS
    per_class = {}
    for name in names:
        match = re.fullmatch(r"([a-z]+)_(\d+)\.png", name)
        assert match, name
        assert attributes[name]["class"] == match.group(1) == name.split("_")[0]
        per_class.setdefault(match.group(1), []).append(int(match.group(2)))
    assert sorted(per_class) == sorted(SCENES)
    assert all(sorted(indices) == list(range(1, PER_CLASS + 1)) for indices in per_class.values())


def test_splits_stratified_by_fraction(out, karpathy):
    expected = split_sizes(PER_CLASS, VAL, TEST)
    assert expected == {"train": 3, "val": 1, "test": 2}
    counts = {}
    for image in karpathy["images"]:
        key = (image["filename"].split("_")[0], image["split"])
        counts[key] = counts.get(key, 0) + 1
    assert counts == {(c, split): n for c in SCENES for split, n in expected.items()}
    summary = load_json(out / "summary.json")
    assert summary["images"] == {split: {c: n for c in sorted(SCENES)} for split, n in expected.items()}
    assert summary["seed"] == 0 and summary["classes"] == sorted(SCENES)


def test_captions_agree_with_attributes(karpathy, attributes):
    for image in karpathy["images"]:
        attrs = attributes[image["filename"]]
        captions = [s["raw"] for s in image["sentences"]]
        assert len(set(captions)) == 5, captions
        for caption in captions:
            check_caption(caption, attrs)
        text = " ".join(captions).lower()
        if attrs["class"] in MAIN_COUNT:  # the fine-grained facts are stated, not just allowed
            n = attrs[MAIN_COUNT[attrs["class"]]]
            assert re.search(rf"\b({n}|{NUMBER_WORDS[n]})\b" + ("|a single" if n == 1 else ""), text), captions
        if attrs["class"] in OBJECT_COLOURS:
            assert attrs[OBJECT_COLOURS[attrs["class"]][0]] in text, captions


def test_caption_check_catches_wrong_counts_and_colours():
    attrs = {"class": "airport", "n_planes": 3, "plane_colour": "white", "plane_size": "small",
             "runway_orientation": "vertical"}
    check_caption("There are three white planes near a vertical runway.", attrs)
    for wrong in ("There are 4 white planes.", "There are three red planes.", "A horizontal runway.",
                  "Three large planes.", "Three planes on the left.", "There are three runways."):
        with pytest.raises(AssertionError):
            check_caption(wrong, attrs)


def test_captions_fit_the_tiny_context(karpathy):
    import open_clip  # the tiny configs use CLIP's BPE with a 48-token context
    captions = [s["raw"] for image in karpathy["images"] for s in image["sentences"]]
    lengths = (open_clip.tokenize(captions) != 0).sum(dim=1)
    assert int(lengths.max()) <= 30, captions[int(lengths.argmax())]


def test_jittered_colours_stay_nearest_to_their_name():
    names = list(PALETTE)
    rgb = np.asarray([PALETTE[n] for n in names], dtype=np.float32)
    corners = np.asarray(np.meshgrid(*[[-MAX_JITTER, MAX_JITTER]] * 3)).reshape(3, -1).T
    for i, name in enumerate(names):
        jittered = rgb[i] + corners  # the farthest a jittered colour can go
        nearest = np.linalg.norm(jittered[:, None, :] - rgb[None], axis=-1).argmin(axis=1)
        assert (nearest == i).all(), name


@pytest.mark.parametrize("class_name", sorted(OBJECT_COLOURS))
def test_object_colour_dominates_pixels(class_name):
    key, candidates = OBJECT_COLOURS[class_name]
    for index in range(1, 9):
        sample = make_image(class_name, index, seed=3, difficulty=PIXEL_DIFFICULTY)
        counts = {c: int(near(sample.image, c).sum()) for c in candidates}
        assert max(counts, key=counts.get) == sample.attributes[key], (sample.attributes, counts)
        assert counts[sample.attributes[key]] >= 15, (sample.attributes, counts)


def test_water_and_tanks_are_where_attributes_say():
    def centre_matches(mask: np.ndarray, position: str) -> bool:
        ys, xs = np.nonzero(mask)
        side = mask.shape[0]
        words = position.split()
        for coordinate, low, high in ((xs.mean(), "left", "right"), (ys.mean(), "top", "bottom")):
            where = coordinate / side
            if (low in words and where > 0.42) or (high in words and where < 0.58) or \
                    (low not in words and high not in words and abs(where - 0.5) > 0.12):
                return False
        return True

    checked = {"river": 0, "pond": 0, "storagetanks": 0}
    for index in range(1, 17):
        river = make_image("river", index, seed=4, difficulty=PIXEL_DIFFICULTY)
        o = river.attributes["river_orientation"]
        if o != "diagonal":
            ys, xs = np.nonzero(near(river.image, river.attributes["water_colour"]))
            spread_x, spread_y = xs.std(), ys.std()
            assert (spread_x > 1.5 * spread_y) if o == "horizontal" else (spread_y > 1.5 * spread_x), river.attributes
            checked["river"] += 1
        pond = make_image("pond", index, seed=4, difficulty=PIXEL_DIFFICULTY)
        assert centre_matches(near(pond.image, pond.attributes["water_colour"]), pond.attributes["pond_position"]), \
            pond.attributes
        tanks = make_image("storagetanks", index, seed=4, difficulty=PIXEL_DIFFICULTY)
        assert centre_matches(near(tanks.image, tanks.attributes["tank_colour"]), tanks.attributes["tank_position"]), \
            tanks.attributes
        checked["pond"] += 1
        checked["storagetanks"] += 1
    assert min(checked.values()) >= 5


def test_karpathy_json(out, karpathy):
    images = karpathy["images"]
    assert karpathy["dataset"] == "synthetic"
    assert [image["imgid"] for image in images] == list(range(len(images)))
    for image in images:
        assert (out / "images" / image["filename"]).is_file()
        assert image["split"] in SPLITS and len(image["sentences"]) == 5
        assert image["sentids"] == [s["sentid"] for s in image["sentences"]] == \
            [5 * image["imgid"] + k for k in range(5)]
        for s in image["sentences"]:
            assert s["imgid"] == image["imgid"] and s["tokens"] == re.findall(r"[a-z0-9]+", s["raw"].lower())


def test_pir_itr_rows(out, karpathy):
    by_split = {split: [i for i in karpathy["images"] if i["split"] == split] for split in SPLITS}
    labels = {name: label for label, name in enumerate(sorted(SCENES))}
    train = load_json(out / "pir_itr_train.json")
    assert len(train) == 5 * len(by_split["train"])
    captions = {i["filename"]: [s["raw"] for s in i["sentences"]] for i in karpathy["images"]}
    imgids = {i["filename"]: i["imgid"] for i in karpathy["images"]}
    for row in train:
        assert set(row) == {"caption", "image", "image_id", "label_name", "label"}
        assert row["caption"] in captions[row["image"]] and row["image_id"] == imgids[row["image"]]
        assert row["label_name"] == row["image"].split("_")[0] and row["label"] == labels[row["label_name"]]
    for split in ("val", "test"):
        rows = load_json(out / f"pir_itr_{split}.json")
        assert [r["image"] for r in rows] == [i["filename"] for i in by_split[split]]
        assert all(r["caption"] == captions[r["image"]] for r in rows)


def test_csv_rows(out, karpathy):
    for split in SPLITS:
        expected = [(i["filename"], s["raw"]) for i in karpathy["images"] if i["split"] == split
                    for s in i["sentences"]]
        with open(out / "csv" / f"{split}.csv", newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            assert reader.fieldnames == ["filename", "title"]
            assert [(row["filename"], row["title"]) for row in reader] == expected


@pytest.mark.parametrize("kind", ["rs5m", "openclip"])
def test_shards_read_back(out, karpathy, kind):
    sizes = load_json(out / "shards" / kind / "sizes.json")
    captions = {i["filename"]: [s["raw"] for s in i["sentences"]] for i in karpathy["images"]}
    split_of = {i["filename"]: i["split"] for i in karpathy["images"]}
    files = {Path(f).stem: f for f in captions}
    for split in SPLITS:
        shards = sorted(p for p in (out / "shards" / kind).glob(f"{split}-*.tar"))
        assert [p.name for p in shards] == sorted(n for n in sizes if n.startswith(split + "-"))
        pairs = set()
        for shard in shards:
            samples = list(wds.WebDataset(str(shard), shardshuffle=False))
            assert len(samples) == sizes[shard.name]
            for sample in samples:
                k, stem = re.fullmatch(r"c([0-4])/([a-z]+_\d+)", sample["__key__"]).groups()
                filename = files[stem]
                if kind == "rs5m":
                    assert set(sample) >= {"img_content", "caption", "img_name"}
                    image_bytes, caption = sample["img_content"], sample["caption"].decode("utf-8")
                    assert sample["img_name"].decode("utf-8") == filename
                else:
                    assert set(sample) >= {"png", "txt"}
                    image_bytes, caption = sample["png"], sample["txt"].decode("utf-8")
                assert image_bytes == (out / "images" / filename).read_bytes()
                assert caption == captions[filename][int(k)] and split_of[filename] == split
                pairs.add((filename, int(k)))
        assert len(pairs) == 5 * sum(s == split for s in split_of.values())
    with tarfile.open(out / "shards" / kind / "train-000000.tar") as tar:
        members = tar.getmembers()
    # Fixed metadata is what makes equal seeds give equal tar bytes on any machine, at any time.
    assert all(m.mtime == 0 and m.uid == m.gid == 0 and m.uname == m.gname == "" for m in members)
    # 50 samples in image order would cover 4 classes; shuffled they cover nearly all 12.
    assert len({m.name.split("/")[1].split("_")[0] for m in members}) > 8


def test_shards_keep_image_extension(small_runs):
    with tarfile.open(small_runs[0] / "shards" / "openclip" / "train-000000.tar") as tar:
        names = tar.getnames()
    for name in names:
        key, ext = name.split(".", 1)
        assert ext == "txt" or (Path(key).name + "." + ext) in {p.name for p in (small_runs[0] / "images").iterdir()}


def test_refuses_to_mix_with_earlier_output_and_checks_arguments(out, tmp_path):
    with pytest.raises(FileExistsError, match="overwrite"):
        generate(out, images_per_class=1)
    with pytest.raises(ValueError, match="unknown classes"):
        generate(tmp_path / "x", classes=["airport", "volcano"])
    with pytest.raises(ValueError, match="val_fraction"):
        generate(tmp_path / "y", val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="noise"):
        Difficulty(noise=1.5)


def test_command_line(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_synthetic", REPO / "scripts" / "make_synthetic.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    args = ["--out", str(tmp_path), "--images-per-class", "2", "--classes", "bridge,forest", "--image-size", "48",
            "--image-format", "tif", "--noise", "0.9", "--test-fraction", "0.5", "--val-fraction", "0"]
    assert cli.main(args) == 0
    assert "wrote 4 images" in capsys.readouterr().out
    summary = load_json(tmp_path / "summary.json")
    assert summary["settings"]["difficulty"]["noise"] == 0.9 and summary["classes"] == ["bridge", "forest"]
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [
        "bridge_1.tif", "bridge_2.tif", "forest_1.tif", "forest_2.tif"]
    assert cli.main(args + ["--overwrite"]) == 0
    with pytest.raises(SystemExit):
        cli.main(args)  # exists, no --overwrite


def test_classification_set_is_camelcase_folders_of_unseen_scenes(small_runs, tmp_path):
    root = small_runs[0] / "classification"
    assert sorted(p.name for p in root.iterdir()) == ["Airport", "Desert", "Pond"]
    files = sorted((root / "Airport").iterdir())
    assert [p.name for p in files][:3] == ["airport_01.png", "airport_02.jpg", "airport_03.tif"]
    assert len(files) == DEFAULT_CLASSIFICATION_IMAGES and {p.suffix for p in files} == {".png", ".jpg", ".tif"}
    # Image i is scene CLASSIFICATION_INDEX_OFFSET + i: never one of the retrieval images.
    sample = make_image("airport", CLASSIFICATION_INDEX_OFFSET + 1, seed=1, image_size=64)
    assert encode_image(sample.image, "png") == files[0].read_bytes()
    retrieval_images = {p.read_bytes() for p in (small_runs[0] / "images").iterdir()}
    assert not retrieval_images & {p.read_bytes() for p in files}
    assert scene_folder_name("storagetanks") == "StorageTanks" and scene_folder_name("beach") == "Beach"
    # Every other output is byte-identical to a run without the classification set.
    without = generate(tmp_path / "none", **{**SMALL, "classification_images_per_class": 0})
    hashes = {k: v for k, v in file_hashes(small_runs[0]).items() if not k.startswith("classification/")}
    assert hashes == file_hashes(Path(without.out_dir)) and without.classification == {}
