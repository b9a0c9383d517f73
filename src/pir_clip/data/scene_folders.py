"""Scene classification sets as RS users have them on disk: class folders at any depth, or a label CSV.

**Class folders**, found without naming the level (:func:`find_class_folders`)::

    AID/Airport/airport_1.jpg                                 --data AID
    UCMerced_LandUse/Images/agricultural/agricultural00.tif   --data UCMerced_LandUse
    EuroSAT/2750/AnnualCrop/AnnualCrop_1.jpg                  --data EuroSAT

Every folder under ``--data`` that directly holds image files is collected (hidden folders, names starting
with ``.`` or ``__`` such as ``__MACOSX``, are skipped). They must all have one parent, the class level;
its subfolders are the classes, in sorted name order (label 0 first). A subfolder of the class level with
no images is an error, not a class with no images.

**CSV** (SkyScript style): a header with ``filepath`` and ``label`` columns; paths relative to the CSV's
folder (or ``images_dir``). Labels are class names, or class numbers 0..C-1 with a class-name file.

**Split** (RemoteCLIP's rule, :func:`split_of_each`): per class, files sorted by file name (Python string
order, so ``a_10`` sorts before ``a_2``), the first ``floor(0.8 n)`` are train and the rest test.

**Class names** (:func:`class_name_words`): the prompts' words for a folder name or label: split at ``_``,
``-``, ``.``, spaces and CamelCase, lower-cased (``StorageTanks`` -> "storage tanks", ``baseball_diamond``
-> "baseball diamond", ``Dense-Residential`` -> "dense residential"). Names the rule cannot split (UC Merced's
``denseresidential``, RSSCN7's ``aGrass``) come from ``prompts/rs_classnames.json``. A class-name file
(:func:`read_class_names`) overrides both.
"""
import csv
import io
import json
import os
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple, Union

from .annotations import DataFormatError, _read_text, check_images_exist

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif")
SPLITS = ("all", "train", "test")
TRAIN_NUMERATOR, TRAIN_DENOMINATOR = 4, 5  # 80% train, in integers so no float rounding decides a file
PROMPTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompts")
CSV_COLUMNS = ("filepath", "label")
_SHOW = 5  # paths listed in an error message


@dataclass
class SceneSet:
    """Images with scene labels.

    paths: ``(N,)`` image files; labels: ``(N,)`` ints in ``0..C-1``; class_keys: ``(C,)`` folder names or CSV
    labels; class_names: ``(C,)`` the words prompts use. ``root`` is the class level (folders) or the CSV.
    """
    paths: List[str]
    labels: List[int]
    class_keys: List[str]
    class_names: List[str]
    root: str
    layout: str  # "folders" or "csv"
    split: str = "all"
    names_from: str = "normalised from the folder names"

    @property
    def num_classes(self) -> int:
        return len(self.class_keys)

    def class_counts(self) -> List[int]:
        counts = [0] * self.num_classes
        for label in self.labels:
            counts[label] += 1
        return counts

    def select(self, split: str) -> "SceneSet":
        """The ``train`` or ``test`` part by RemoteCLIP's rule (``all``: this set)."""
        if split not in SPLITS:
            raise ValueError(f"--split {split!r}: use one of {', '.join(SPLITS)}")
        if split == "all":
            return self
        keep = [i for i, s in enumerate(split_of_each(self.paths, self.labels)) if s == split]
        return replace(self, paths=[self.paths[i] for i in keep], labels=[self.labels[i] for i in keep], split=split)

    def summary(self) -> str:
        return (f"{len(self.paths):,} images in {self.num_classes} classes ({self.layout}: {self.root}; "
                f"split {self.split})")


# ---------------------------------------------------------------- class names


@lru_cache(maxsize=1)
def known_class_names() -> Dict[str, str]:
    with open(os.path.join(PROMPTS_DIR, "rs_classnames.json"), encoding="utf-8") as f:
        return json.load(f)["names"]


def class_name_words(key: str) -> str:
    """A folder name or label -> the words a prompt uses (module docstring)."""
    known = known_class_names()
    if key in known:
        return known[key]
    if key.lower() in known:
        return known[key.lower()]
    words = re.sub(r"[_\-.\s]+", " ", key)
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", words)  # StorageTanks -> Storage Tanks
    words = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", " ", words)  # RSImage -> RS Image
    return " ".join(words.lower().split())


def read_class_name_file(path: str) -> Union[List[str], Dict[str, str]]:
    """A class-name file: text, one name per line in label order (blank and ``#`` lines skipped); or JSON, a
    list in label order or an object ``{folder or label: name}``."""
    flag = f"--classnames {path}"
    if not os.path.isfile(path):
        raise DataFormatError(f"{flag}: no such file")
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    if not path.lower().endswith(".json"):
        return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{flag} is not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    if not isinstance(data, (dict, list)):
        raise DataFormatError(f"{flag}: expected a JSON list of names or an object {{folder: name}}")
    return data


def read_class_names(path: str, keys: Sequence[str]) -> List[str]:
    """Class names for ``keys`` (label order) from a class-name file (:func:`read_class_name_file`)."""
    flag = f"--classnames {path}"
    data = read_class_name_file(path)
    if isinstance(data, dict):
        missing = [k for k in keys if k not in data]
        if missing:
            raise DataFormatError(f"{flag} has no name for {len(missing)} class(es): {', '.join(missing[:_SHOW])}; "
                                  "add them as \"folder or label\": \"name\"")
        names = [data[k] for k in keys]
    else:
        names = data
    if len(names) != len(keys):
        raise DataFormatError(f"{flag} gives {len(names)} names but the data has {len(keys)} classes "
                              f"({', '.join(keys[:_SHOW])}{', ...' if len(keys) > _SHOW else ''}); give one name per "
                              "class in label order (sorted folder names), or a JSON object {folder: name}")
    bad = [i for i, n in enumerate(names) if not isinstance(n, str) or not n.strip()]
    if bad:
        raise DataFormatError(f"{flag}: the name of class {keys[bad[0]]!r} is empty or not text")
    return [n.strip() for n in names]


def check_distinct(names: Sequence[str], keys: Sequence[str], origin: str) -> None:
    """Two classes with one name would get the same classifier column: refuse, naming both."""
    seen: Dict[str, str] = {}
    for name, key in zip(names, keys):
        if name in seen:
            raise DataFormatError(f"classes {seen[name]!r} and {key!r} both get the name {name!r} ({origin}); "
                                  "give them distinct names with --classnames FILE")
        seen[name] = key


# ---------------------------------------------------------------- class folders


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _skipped(name: str) -> bool:
    return name.startswith((".", "__"))


def _image_files(folder: str) -> List[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and is_image_file(e.name))


def find_class_folders(root: str) -> Tuple[str, List[str]]:
    """(the class level, its class subfolder names sorted) for a data folder; rule in the module docstring."""
    if not os.path.isdir(root):
        raise DataFormatError(f"--data {root}: no such folder (give a folder of class subfolders, or a CSV file)")
    holders = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not _skipped(d))
        if any(is_image_file(f) for f in files):
            holders.append(os.path.normpath(folder))
    root = os.path.normpath(root)
    kinds = ", ".join(IMAGE_EXTENSIONS)
    if not holders:
        raise DataFormatError(f"--data {root} holds no image files ({kinds}) in any subfolder")
    if root in holders:
        raise DataFormatError(
            f"--data {root} holds images directly, not in class subfolders; expected one subfolder per class "
            "(e.g. AID/Airport/airport_1.jpg), or a CSV with filepath,label columns")
    parents = sorted({os.path.dirname(h) for h in holders})
    if len(parents) > 1:
        raise DataFormatError(
            f"--data {root}: image folders sit under {len(parents)} different parents ({', '.join(parents[:3])}"
            f"{', ...' if len(parents) > 3 else ''}), so the class level is ambiguous; point --data at the one "
            "folder whose subfolders are the classes")
    class_root = parents[0]
    folders = sorted(e.name for e in os.scandir(class_root) if e.is_dir() and not _skipped(e.name))
    empty = [f for f in folders if os.path.join(class_root, f) not in holders]
    if empty:
        raise DataFormatError(
            f"class folder {os.path.join(class_root, empty[0])} has no images ({kinds})"
            + (f" (nor {len(empty) - 1} more: {', '.join(empty[1:_SHOW])})" if len(empty) > 1 else "")
            + "; remove it or add its images")
    if len(folders) < 2:
        raise DataFormatError(
            f"--data {root}: found only one class folder ({os.path.join(class_root, folders[0])}); classification "
            "needs a folder per class, e.g. AID/Airport/, AID/Beach/, ...")
    return class_root, folders


def scan_class_folders(root: str) -> Tuple[str, List[str], List[str], List[int]]:
    """(class level, class folders, image paths, labels), files of a class in name order."""
    class_root, folders = find_class_folders(root)
    paths, labels = [], []
    for label, folder in enumerate(folders):
        names = _image_files(os.path.join(class_root, folder))
        paths += [os.path.join(class_root, folder, n) for n in names]
        labels += [label] * len(names)
    return class_root, folders, paths, labels


# ---------------------------------------------------------------- CSV


def read_label_csv(path: str, images_dir: Optional[str] = None) -> Tuple[List[str], List[str]]:
    """(image paths, label strings) of a ``filepath,label`` CSV; every listed file must exist."""
    text = _read_text(path, "utf-8", "re-save the CSV as UTF-8")
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader, [])]
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise DataFormatError(f"{path}: the header needs columns {', '.join(CSV_COLUMNS)}; found "
                              f"{', '.join(header) or 'nothing'}")
    file_column, label_column = header.index("filepath"), header.index("label")
    base = images_dir if images_dir is not None else os.path.dirname(os.path.abspath(path))
    paths, labels = [], []
    for line, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(file_column, label_column) or not row[file_column].strip() or not row[label_column].strip():
            raise DataFormatError(f"{path} line {line}: every row needs a filepath and a label, got {row}")
        paths.append(os.path.join(base, row[file_column].strip()))
        labels.append(row[label_column].strip())
    if not paths:
        raise DataFormatError(f"{path} lists no images (only a header)")
    check_images_exist(paths, path, images_dir, images_flag="--images-dir")
    return paths, labels


def _csv_classes(path: str, values: Sequence[str], classnames: Optional[str]) -> Tuple[List[int], List[str], List[str]]:
    """(labels, class keys, class names) for CSV label values: names, or numbers with a class-name file."""
    if all(re.fullmatch(r"-?\d+", v) for v in values):
        if classnames is None:
            raise DataFormatError(f"{path}: the labels are class numbers; pass --classnames FILE with one class name "
                                  "per line (line 1 names label 0)")
        labels = [int(v) for v in values]
        data = read_class_name_file(classnames)
        # The file says how many classes there are: a class may have no image in this CSV.
        count = max(labels) + 1 if isinstance(data, dict) else len(data)
        keys = [str(i) for i in range(count)]
        bad = next((v for v in labels if not 0 <= v < count), None)
        if bad is not None:
            raise DataFormatError(f"{path}: label {bad} is outside 0..{count - 1}, the classes named in "
                                  f"--classnames {classnames}")
        return labels, keys, read_class_names(classnames, keys)
    keys = sorted(set(values))
    index = {k: i for i, k in enumerate(keys)}
    names = read_class_names(classnames, keys) if classnames else [class_name_words(k) for k in keys]
    return [index[v] for v in values], keys, names


# ---------------------------------------------------------------- loading and splitting


def split_of_each(paths: Sequence[str], labels: Sequence[int]) -> List[str]:
    """``"train"`` or ``"test"`` for each image by RemoteCLIP's rule (module docstring)."""
    by_class: Dict[int, List[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    out = [""] * len(paths)
    for members in by_class.values():
        ordered = sorted(members, key=lambda i: (os.path.basename(paths[i]), paths[i]))
        n_train = len(ordered) * TRAIN_NUMERATOR // TRAIN_DENOMINATOR
        for rank, i in enumerate(ordered):
            out[i] = "train" if rank < n_train else "test"
    return out


def load_scene_set(data: str, split: str = "all", classnames: Optional[str] = None,
                   images_dir: Optional[str] = None) -> SceneSet:
    """A folder of class folders or a ``filepath,label`` CSV -> :class:`SceneSet` of ``split``."""
    if split not in SPLITS:
        raise ValueError(f"--split {split!r}: use one of {', '.join(SPLITS)}")
    if os.path.isfile(data):
        paths, values = read_label_csv(data, images_dir)
        labels, keys, names = _csv_classes(data, values, classnames)
        root, layout = os.path.abspath(data), "csv"
    else:
        if images_dir is not None:
            raise ValueError("--images-dir is for a CSV --data; a folder of class folders holds its own images")
        root, keys, paths, labels = scan_class_folders(data)
        root = os.path.abspath(root)
        names = read_class_names(classnames, keys) if classnames else [class_name_words(k) for k in keys]
        layout = "folders"
    check_distinct(names, keys, f"from --classnames {classnames}" if classnames else "after normalisation")
    scene_set = SceneSet(paths, labels, keys, names, root, layout,
                         names_from=f"--classnames {classnames}" if classnames else "normalised from the "
                         + ("folder names" if layout == "folders" else "CSV labels"))
    return scene_set.select(split)
