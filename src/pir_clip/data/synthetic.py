"""A small synthetic remote-sensing image-text retrieval benchmark, written in every format the project reads.

Scenes, attributes and caption templates live in :mod:`pir_clip.data.synthetic_scenes`; this module seeds,
renders, splits and writes them. Output layout under ``out_dir``::

    images/{class}_{index}.{png|jpg|tif}    index from 1; class names have no "_" (class id = prefix)
    attributes.json                         {file name: {"class": str, attribute: value, ...}}
    dataset_synthetic.json                  Karpathy style: {"dataset": "synthetic", "images": [{"filename",
                                            "imgid", "split", "sentences": [{"raw", "tokens", "imgid",
                                            "sentid"}] x5, "sentids"}]}
    pir_itr_train.json                      [{"caption", "image", "image_id", "label_name", "label"}], one row
                                            per train caption
    pir_itr_val.json, pir_itr_test.json     [{"image", "caption": [5 str]}], one row per image
    csv/{train,val,test}.csv                header "filename,title"; one row per caption; bare file names
    shards/rs5m/{split}-{000000}.tar        per sample: {key}.img_content, {key}.caption, {key}.img_name
    shards/openclip/{split}-{000000}.tar    per sample: {key}.{png|jpg|tif}, {key}.txt
    shards/{rs5m,openclip}/sizes.json       {shard file name: samples}
    summary.json                            seed, settings, class names in label order, counts
    classification/{Folder}/{class}_{i}.{png|jpg|tif}
                                            a scene classification set: one CamelCase folder per class
                                            (ParkingLot, StorageTanks, ...), i from 1 zero-padded, formats
                                            cycling png, jpg, tif; images the retrieval files never show

Sample keys are ``c{k}/{image stem}`` (k = caption index 0-4): one sample per (image, caption) pair, and
the class id rule still applies to the key's base name. ``label`` is the class's index in sorted class
names. ``imgid`` numbers images in that class order, then by index; ``sentid = 5 * imgid + k``.

The classification set's image i of a class is the scene ``make_image(class, CLASSIFICATION_INDEX_OFFSET + i)``,
so it is disjoint from the retrieval images (a model trained on them is tested on unseen scenes) and does
not depend on ``images_per_class``. It is written after everything else and leaves the other files as they
were before it existed.

Everything is a pure function of the arguments: each image draws from its own random stream seeded by
(seed, class name, index), so the same seed gives byte-identical files, and an image does not change when
other classes or a different images-per-class are chosen (only splits and shard order do).
"""
import csv
import io
import json
import math
import re
import shutil
import tarfile
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from .synthetic_scenes import (CAPTIONS_PER_IMAGE, DIFFICULTY_PRESETS, SCENES, Canvas, Difficulty, Phrasing,
                               get_scene, sample_extras, sentence)

IMAGE_FORMATS = ("png", "jpg", "tif", "mixed")
MIXED_FORMATS = ("png", "jpg", "tif")
SPLITS = ("train", "val", "test")
OUTPUT_ENTRIES = ("images", "csv", "shards", "attributes.json", "dataset_synthetic.json", "pir_itr_train.json",
                  "pir_itr_val.json", "pir_itr_test.json", "summary.json", "classification")
SHARD_KINDS = ("rs5m", "openclip")
DEFAULT_IMAGES_PER_CLASS = 100
DEFAULT_IMAGE_SIZE = 96
DEFAULT_SHARD_SIZE = 1000
DEFAULT_CLASSIFICATION_IMAGES = 25  # per class: 20 train + 5 test under the 80/20 rule, enough for 16-shot probes
CLASSIFICATION_INDEX_OFFSET = 1_000_000
# Class folder names as RS scene data sets write them (AID: StorageTanks, BaseballField); others capitalised.
SCENE_FOLDER_NAMES = {"parkinglot": "ParkingLot", "storagetanks": "StorageTanks", "baseballfield": "BaseballField"}
_PIL_FORMATS = {"png": ("PNG", {}), "jpg": ("JPEG", {"quality": 92}), "tif": ("TIFF", {})}
_STREAM_ATTRIBUTES, _STREAM_DRAWING, _STREAM_CAPTIONS = 0, 1, 2


@dataclass
class SyntheticImage:
    """One rendered scene: its attributes (``"class"`` first), captions and RGB image (size x size)."""
    class_name: str
    index: int
    attributes: dict
    captions: List[str]
    image: Image.Image


@dataclass
class ImageRecord:
    """What the writers need to know about one written image."""
    filename: str
    class_name: str
    label: int
    split: str
    imgid: int
    captions: List[str]


@dataclass
class GenerationSummary:
    """Result of :func:`generate`. ``counts[split][class]`` is the number of images."""
    out_dir: str
    seed: int
    classes: List[str]
    settings: dict
    counts: Dict[str, Dict[str, int]]
    shards: Dict[str, int]
    seconds: float = 0.0
    classification: Dict[str, int] = field(default_factory=dict)  # class folder -> images; not in summary.json

    @property
    def n_images(self) -> int:
        return sum(sum(per_class.values()) for per_class in self.counts.values())

    @property
    def n_captions(self) -> int:
        return CAPTIONS_PER_IMAGE * self.n_images

    def to_json(self) -> dict:
        """The deterministic part (no path, no timing), as written to summary.json."""
        return {"dataset": "synthetic", "seed": self.seed, "classes": self.classes, "settings": self.settings,
                "images": self.counts,
                "captions": {split: CAPTIONS_PER_IMAGE * sum(c.values()) for split, c in self.counts.items()},
                "shards": self.shards}


# -------------------------------------------------------------------------------------------- one image


def image_rng(seed: int, class_name: str, index: int, stream: int) -> np.random.Generator:
    """The random stream ``stream`` of image (class_name, index); crc32 because str hashes vary per process."""
    return np.random.default_rng([seed, zlib.crc32(class_name.encode("utf-8")), index, stream])


def resolve_difficulty(difficulty: Union[str, Difficulty, None]) -> Difficulty:
    if difficulty is None:
        return Difficulty()
    if isinstance(difficulty, Difficulty):
        return difficulty
    if difficulty not in DIFFICULTY_PRESETS:
        raise ValueError(f"unknown difficulty {difficulty!r}; presets: {sorted(DIFFICULTY_PRESETS)}")
    return DIFFICULTY_PRESETS[difficulty]


def sample_attributes(class_name: str, index: int, seed: int = 0, difficulty: Optional[Difficulty] = None) -> dict:
    """Attributes of image (class_name, index): ``{"class": class_name, ..., "extras": [distractor kinds]}``."""
    scene = get_scene(class_name)
    rng = image_rng(seed, class_name, index, _STREAM_ATTRIBUTES)
    attributes = {"class": class_name, **scene.sample(rng)}
    attributes["extras"] = sample_extras(rng, resolve_difficulty(difficulty).overlap, scene.excluded_extras)
    return attributes


def render(attributes: dict, rng: np.random.Generator, image_size: int = DEFAULT_IMAGE_SIZE,
           difficulty: Optional[Difficulty] = None) -> Image.Image:
    """Draw the scene ``attributes`` describe; an RGB image of image_size x image_size."""
    canvas = Canvas(image_size, rng, resolve_difficulty(difficulty), attributes.get("extras", ()))
    get_scene(attributes["class"]).draw(canvas, attributes)
    return canvas.finish()


def write_captions(attributes: dict, rng: np.random.Generator, n: int = CAPTIONS_PER_IMAGE) -> List[str]:
    """``n`` distinct captions from different templates of the image's class."""
    candidates = [sentence(text) for text in get_scene(attributes["class"]).describe(attributes, Phrasing(rng))]
    if len(candidates) < n:
        raise RuntimeError(f"scene class {attributes['class']!r} has {len(candidates)} caption templates, needs {n}")
    return [candidates[int(i)] for i in rng.choice(len(candidates), size=n, replace=False)]


def make_image(class_name: str, index: int, *, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE,
               difficulty: Union[str, Difficulty, None] = None) -> SyntheticImage:
    """Render image number ``index`` (from 1) of ``class_name``; a pure function of its arguments."""
    difficulty = resolve_difficulty(difficulty)
    attributes = sample_attributes(class_name, index, seed, difficulty)
    image = render(attributes, image_rng(seed, class_name, index, _STREAM_DRAWING), image_size, difficulty)
    captions = write_captions(attributes, image_rng(seed, class_name, index, _STREAM_CAPTIONS))
    return SyntheticImage(class_name, index, attributes, captions, image)


def image_extension(image_format: str, index: int) -> str:
    """File extension of image ``index``; "mixed" cycles png, jpg, tif so every class gets all three."""
    return MIXED_FORMATS[(index - 1) % len(MIXED_FORMATS)] if image_format == "mixed" else image_format


def encode_image(image: Image.Image, extension: str) -> bytes:
    pil_format, options = _PIL_FORMATS[extension]
    buffer = io.BytesIO()
    image.save(buffer, pil_format, **options)
    return buffer.getvalue()


def caption_tokens(raw: str) -> List[str]:
    """Karpathy-style tokens: lower-case words, punctuation dropped."""
    return re.findall(r"[a-z0-9]+", raw.lower())


# -------------------------------------------------------------------------------------------- splits


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> Dict[str, int]:
    """Images of one class per split; fractions round half up, train takes the rest."""
    n_val, n_test = math.floor(n * val_fraction + 0.5), math.floor(n * test_fraction + 0.5)
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def assign_splits(class_name: str, n: int, seed: int, val_fraction: float, test_fraction: float) -> List[str]:
    """The split of each image 1..n of one class (list position i is image i + 1), chosen at random."""
    sizes = split_sizes(n, val_fraction, test_fraction)
    labels = [split for split in SPLITS for _ in range(sizes[split])]
    order = np.random.default_rng([seed, zlib.crc32(class_name.encode("utf-8")), 7919]).permutation(n)
    return [labels[int(position)] for position in np.argsort(order)]


# -------------------------------------------------------------------------------------------- writers


def write_json(path: Path, obj, indent: Optional[int] = None) -> None:
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def karpathy_json(records: Sequence[ImageRecord]) -> dict:
    images = []
    for r in records:
        sentids = [CAPTIONS_PER_IMAGE * r.imgid + k for k in range(len(r.captions))]
        sentences = [{"raw": raw, "tokens": caption_tokens(raw), "imgid": r.imgid, "sentid": sentid}
                     for raw, sentid in zip(r.captions, sentids)]
        images.append({"filename": r.filename, "imgid": r.imgid, "split": r.split, "sentences": sentences,
                       "sentids": sentids})
    return {"dataset": "synthetic", "images": images}


def pir_itr_train_rows(records: Iterable[ImageRecord]) -> List[dict]:
    return [{"caption": caption, "image": r.filename, "image_id": r.imgid, "label_name": r.class_name, "label": r.label}
            for r in records for caption in r.captions]


def pir_itr_eval_rows(records: Iterable[ImageRecord]) -> List[dict]:
    return [{"image": r.filename, "caption": list(r.captions)} for r in records]


def write_caption_csv(path: Path, records: Iterable[ImageRecord]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["filename", "title"])
        for r in records:
            for caption in r.captions:
                writer.writerow([r.filename, caption])


def write_tar(path: Path, members: Iterable[Tuple[str, bytes]]) -> None:
    """A tar of (name, data) in the given order, with fixed owner, mode and mtime, so equal input gives
    byte-identical archives."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))


def shard_samples(records: Sequence[ImageRecord], split: str, seed: int) -> List[Tuple[ImageRecord, int]]:
    """(image, caption index) pairs of ``split``; training pairs shuffled so no shard holds one class."""
    samples = [(r, k) for r in records if r.split == split for k in range(len(r.captions))]
    if split == "train":
        order = np.random.default_rng([seed, zlib.crc32(b"shards")]).permutation(len(samples))
        samples = [samples[int(i)] for i in order]
    return samples


def sample_key(record: ImageRecord, k: int) -> str:
    return f"c{k}/{Path(record.filename).stem}"


def write_shards(shard_root: Path, images_dir: Path, records: Sequence[ImageRecord], seed: int,
                 shard_size: int) -> Dict[str, int]:
    """Both shard kinds for every split; returns the number of shards per split."""
    dirs = {kind: shard_root / kind for kind in SHARD_KINDS}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    sizes: Dict[str, int] = {}
    shards_per_split = {}
    for split in SPLITS:
        samples = shard_samples(records, split, seed)
        chunks = [samples[i:i + shard_size] for i in range(0, len(samples), shard_size)]
        shards_per_split[split] = len(chunks)
        for number, chunk in enumerate(chunks):
            name = f"{split}-{number:06d}.tar"
            rs5m, openclip = [], []
            for record, k in chunk:
                key, data = sample_key(record, k), (images_dir / record.filename).read_bytes()
                caption = record.captions[k].encode("utf-8")
                rs5m += [(f"{key}.img_content", data), (f"{key}.caption", caption),
                         (f"{key}.img_name", record.filename.encode("utf-8"))]
                openclip += [(f"{key}{Path(record.filename).suffix}", data), (f"{key}.txt", caption)]
            write_tar(dirs["rs5m"] / name, rs5m)
            write_tar(dirs["openclip"] / name, openclip)
            sizes[name] = len(chunk)
    for d in dirs.values():
        write_json(d / "sizes.json", sizes, indent=1)
    return shards_per_split


def scene_folder_name(class_name: str) -> str:
    """The classification set's CamelCase folder of a scene class: ``storagetanks`` -> ``StorageTanks``."""
    return SCENE_FOLDER_NAMES.get(class_name, class_name.capitalize())


def write_classification_set(out: Path, classes: Sequence[str], images_per_class: int, seed: int, image_size: int,
                             difficulty: Difficulty, progress: bool = False) -> Dict[str, int]:
    """``out/{Folder}/{class}_{i}.{png|jpg|tif}`` for i = 1..images_per_class; returns images per folder."""
    width = len(str(images_per_class))
    jobs = [(name, i) for name in classes for i in range(1, images_per_class + 1)]
    if progress:
        from tqdm import tqdm
        jobs = tqdm(jobs, desc="rendering the classification set", unit="img")
    for name, i in jobs:
        folder = out / scene_folder_name(name)
        folder.mkdir(parents=True, exist_ok=True)
        sample = make_image(name, CLASSIFICATION_INDEX_OFFSET + i, seed=seed, image_size=image_size,
                            difficulty=difficulty)
        extension = image_extension("mixed", i)
        (folder / f"{name}_{i:0{width}d}.{extension}").write_bytes(encode_image(sample.image, extension))
    return {scene_folder_name(name): images_per_class for name in classes}


# -------------------------------------------------------------------------------------------- generate


def check_settings(classes: Sequence[str], images_per_class: int, image_size: int, image_format: str,
                   val_fraction: float, test_fraction: float, shard_size: int) -> None:
    """Raise ValueError naming the bad argument (the CLI flag has the same name with dashes)."""
    if not classes:
        raise ValueError("classes is empty; choose some of: " + ", ".join(SCENES))
    unknown = [c for c in classes if c not in SCENES]
    if unknown:
        raise ValueError(f"unknown classes {unknown}; available: {', '.join(SCENES)}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes lists a class twice: {list(classes)}")
    if images_per_class < 1:
        raise ValueError(f"images_per_class must be >= 1, got {images_per_class}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 pixels, got {image_size}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in [0, 1) "
                         "and sum to less than 1")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Create out_dir; refuse to mix with an earlier run unless ``overwrite`` (then remove only our outputs)."""
    existing = [name for name in OUTPUT_ENTRIES if (out_dir / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir} already holds a synthetic data set ({', '.join(existing)}); "
                              "pass overwrite=True (--overwrite) or choose another output directory")
    for name in existing:
        path = out_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "csv").mkdir(exist_ok=True)


def generate(out_dir: Union[str, Path], *, seed: int = 0, images_per_class: int = DEFAULT_IMAGES_PER_CLASS,
             image_size: int = DEFAULT_IMAGE_SIZE, classes: Optional[Sequence[str]] = None,
             image_format: str = "png", val_fraction: float = 0.1, test_fraction: float = 0.2,
             shard_size: int = DEFAULT_SHARD_SIZE, difficulty: Union[str, Difficulty, None] = "medium",
             classification_images_per_class: int = DEFAULT_CLASSIFICATION_IMAGES, overwrite: bool = False,
             progress: bool = False) -> GenerationSummary:
    """Write the synthetic benchmark (layout in the module docstring) and return its summary.

    classes: scene class names (default: all of :data:`SCENES`); labels number them in sorted order.
    image_format: png, jpg, tif, or mixed (png/jpg/tif by image index). difficulty: a preset name
    (easy/medium/hard) or a :class:`Difficulty`. classification_images_per_class: images per class of the
    ``classification/`` set (0: none). progress: show a tqdm bar while rendering.
    """
    started = time.perf_counter()
    classes = sorted(classes if classes is not None else SCENES)
    check_settings(classes, images_per_class, image_size, image_format, val_fraction, test_fraction, shard_size)
    if classification_images_per_class < 0:
        raise ValueError(f"classification_images_per_class must be >= 0, got {classification_images_per_class}")
    difficulty = resolve_difficulty(difficulty)
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, overwrite)
    images_dir = out_dir / "images"

    jobs = [(label, name, index) for label, name in enumerate(classes) for index in range(1, images_per_class + 1)]
    splits = {name: assign_splits(name, images_per_class, seed, val_fraction, test_fraction) for name in classes}
    records: List[ImageRecord] = []
    attributes: Dict[str, dict] = {}
    if progress:
        from tqdm import tqdm
        jobs = tqdm(jobs, desc="rendering synthetic scenes", unit="img")
    for label, name, index in jobs:
        sample = make_image(name, index, seed=seed, image_size=image_size, difficulty=difficulty)
        filename = f"{name}_{index}.{image_extension(image_format, index)}"
        (images_dir / filename).write_bytes(encode_image(sample.image, image_extension(image_format, index)))
        attributes[filename] = sample.attributes
        records.append(ImageRecord(filename, name, label, splits[name][index - 1], len(records), sample.captions))

    write_json(out_dir / "attributes.json", attributes, indent=1)
    write_json(out_dir / "dataset_synthetic.json", karpathy_json(records))
    by_split = {split: [r for r in records if r.split == split] for split in SPLITS}
    write_json(out_dir / "pir_itr_train.json", pir_itr_train_rows(by_split["train"]), indent=1)
    write_json(out_dir / "pir_itr_val.json", pir_itr_eval_rows(by_split["val"]), indent=1)
    write_json(out_dir / "pir_itr_test.json", pir_itr_eval_rows(by_split["test"]), indent=1)
    for split in SPLITS:
        write_caption_csv(out_dir / "csv" / f"{split}.csv", by_split[split])
    shards = write_shards(out_dir / "shards", images_dir, records, seed, shard_size)

    counts = {split: {name: sum(r.class_name == name for r in by_split[split]) for name in classes} for split in SPLITS}
    settings = {"images_per_class": images_per_class, "image_size": image_size, "image_format": image_format,
                "val_fraction": val_fraction, "test_fraction": test_fraction, "shard_size": shard_size,
                "captions_per_image": CAPTIONS_PER_IMAGE, "difficulty": asdict(difficulty)}
    summary = GenerationSummary(str(out_dir), seed, list(classes), settings, counts, shards)
    write_json(out_dir / "summary.json", summary.to_json(), indent=1)
    if classification_images_per_class:
        summary.classification = write_classification_set(
            out_dir / "classification", classes, classification_images_per_class, seed, image_size, difficulty,
            progress)
    summary.seconds = time.perf_counter() - started
    return summary
