"""Reading the caption annotation formats RS retrieval datasets come in (METHOD.md section 5).

Formats:

* ``karpathy``: ``{"images": [{"filename", "split", "sentences": [{"raw"}, ...]}, ...]}``
  (``dataset_RSITMD.json``, ``dataset_rsicd.json``); a ``split`` selects entries.
* ``pirtr``: PIR-ITR's JSON lists: train rows ``{caption, image, image_id, label_name, label}``, test rows
  ``{image, caption: [5 captions]}``. One file per split, so ``split`` is recorded, not selected.
* ``csv``: GeoRSCLIP-style ``filename,title``, one row per caption (RSICD's file is gb18030); separator,
  column names and an optional label column are configurable. One file per split, like ``pirtr``.

Two views of the same data: ``RetrievalSet`` (images, captions grouped per image, caption -> image index)
for evaluation, and a flat list of ``CaptionRecord`` for training. Every check (file readable, split present,
captions present, image files present) runs here, before any model is built; failures raise
``DataFormatError`` with a message meant to be printed as is.
"""
import csv
import io
import json
import os
from dataclasses import replace, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

FORMATS = ("karpathy", "pirtr", "csv")
# How many missing image paths an error message lists before summarising.
_SHOW_MISSING = 5

SplitArg = Optional[Union[str, Sequence[str]]]


class DataFormatError(ValueError):
    """An annotation file or its image folder is unusable; the message names the file, key or flag and the fix.

    Command-line tools print it without a traceback.
    """


@dataclass(frozen=True)
class CaptionRecord:
    """One (image, caption) training pair. ``label``: the class label the file states explicitly
    (PIR-ITR's ``label_name``, a CSV label column), else ``None``."""
    image_path: str
    caption: str
    label: Optional[str] = None


@dataclass
class RetrievalSet:
    """An evaluation set: ``captions[j]`` describes ``image_paths[text_to_image[j]]``.

    Readers list images in order of first appearance and each image's captions together, in file order.
    ``source`` is the annotation file, ``split`` the split it was read as.
    """
    image_paths: List[str]
    captions: List[str]
    text_to_image: List[int]
    source: str = ""
    split: str = ""
    labels: Optional[List[Optional[str]]] = field(default=None, repr=False)

    def __post_init__(self):
        where = self.source or "RetrievalSet"
        if len(self.captions) != len(self.text_to_image):
            raise DataFormatError(f"{where}: {len(self.captions)} captions but {len(self.text_to_image)} "
                                  "text_to_image entries; give one image index per caption")
        if self.labels is not None and len(self.labels) != len(self.image_paths):
            raise DataFormatError(f"{where}: {len(self.labels)} labels for {len(self.image_paths)} images")
        counts = [0] * len(self.image_paths)
        for j, i in enumerate(self.text_to_image):
            if not 0 <= i < len(self.image_paths):
                raise DataFormatError(f"{where}: caption {j} points at image {i}, but there are "
                                      f"{len(self.image_paths)} images")
            counts[i] += 1
        if 0 in counts:
            bare = self.image_paths[counts.index(0)]
            raise DataFormatError(f"{where}: image {bare} has no caption; every image needs at least one "
                                  "for image->text retrieval (remove it or add its captions)")

    @property
    def num_images(self) -> int:
        return len(self.image_paths)

    @property
    def num_texts(self) -> int:
        return len(self.captions)

    def image_to_texts(self) -> List[List[int]]:
        """For each image, the indices of its captions in ``captions``."""
        groups: List[List[int]] = [[] for _ in self.image_paths]
        for j, i in enumerate(self.text_to_image):
            groups[i].append(j)
        return groups

    def captions_per_image(self) -> List[int]:
        return [len(texts) for texts in self.image_to_texts()]

    def records(self) -> List[CaptionRecord]:
        """The set as flat (image, caption, label) pairs, in caption order."""
        labels = self.labels or [None] * self.num_images
        return [CaptionRecord(self.image_paths[i], caption, labels[i])
                for caption, i in zip(self.captions, self.text_to_image)]

    def summary(self) -> str:
        return (f"{os.path.basename(self.source) or 'retrieval set'} [{self.split}]: {self.num_images:,} images, "
                f"{self.num_texts:,} captions")

    @classmethod
    def from_records(cls, records: Sequence[CaptionRecord], source: str = "", split: str = "") -> "RetrievalSet":
        """Group flat records by image path (images in order of first appearance)."""
        index: Dict[str, int] = {}
        image_paths: List[str] = []
        labels: List[Optional[str]] = []
        per_image: List[List[str]] = []
        for record in records:
            i = index.get(record.image_path)
            if i is None:
                i = index[record.image_path] = len(image_paths)
                image_paths.append(record.image_path)
                labels.append(record.label)
                per_image.append([])
            elif record.label is not None and labels[i] is not None and record.label != labels[i]:
                raise DataFormatError(f"{source}: image {record.image_path} has two labels, {labels[i]!r} and "
                                      f"{record.label!r}; give each image one class label")
            per_image[i].append(record.caption)
        if not image_paths:
            raise DataFormatError(f"{source}: no captions found")
        captions = [caption for group in per_image for caption in group]
        text_to_image = [i for i, group in enumerate(per_image) for _ in group]
        has_labels = any(label is not None for label in labels)
        return cls(image_paths, captions, text_to_image, source=source, split=split,
                   labels=labels if has_labels else None)


# ---------------------------------------------------------------- reading files


def _read_text(path: str, encoding: str, fix: str) -> str:
    """The file's text; ``fix`` tells the user how to get past a decoding error."""
    if not os.path.isfile(path):
        raise DataFormatError(f"annotation file {path} does not exist; check the path")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataFormatError(f"cannot read annotation file {path}: {e.strerror}") from e
    if not raw.strip():
        raise DataFormatError(f"annotation file {path} is empty; expected captions in a Karpathy JSON, PIR-ITR "
                              "JSON or caption CSV")
    try:
        text = raw.decode(encoding)
    except LookupError as e:
        raise DataFormatError(f"unknown text encoding {encoding!r} for {path}; {fix} (a Python codec name such "
                              "as utf-8 or gb18030)") from e
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path} is not valid {encoding} text (byte 0x{raw[e.start]:02x} at offset "
                              f"{e.start}); {fix}") from e
    return text.lstrip("\ufeff")


def _parse_json(path: str) -> Any:
    text = _read_text(path, "utf-8", "JSON must be UTF-8: re-save the file as UTF-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); the "
                              "file may be truncated or not JSON at all") from e


def _image_path(images_dir: Optional[str], name: str) -> str:
    return name if images_dir is None else os.path.join(images_dir, name)


def _caption_text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise DataFormatError(f"{where}: caption must be a string, got {type(value).__name__} {value!r}")
    caption = value.strip()
    if not caption:
        raise DataFormatError(f"{where}: caption is empty; remove it or fill it in")
    return caption


def _split_names(split: SplitArg) -> Optional[Tuple[str, ...]]:
    if split is None:
        return None
    if isinstance(split, str):
        return tuple(name.strip() for name in split.replace(",", "+").split("+") if name.strip())
    return tuple(split)


def _split_label(split: SplitArg) -> str:
    names = _split_names(split)
    return "all" if names is None else "+".join(names)


def _karpathy_records(data: Any, path: str, images_dir: Optional[str], split: SplitArg) -> List[CaptionRecord]:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        found = f"an object with keys {sorted(data)[:8]}" if isinstance(data, dict) else f"a {type(data).__name__}"
        raise DataFormatError(f"{path}: a Karpathy-style JSON needs a top-level object with an 'images' list, "
                              f"found {found}")
    wanted = _split_names(split)
    split_counts: Dict[str, int] = {}
    records: List[CaptionRecord] = []
    for n, entry in enumerate(data["images"]):
        where = f"{path}: images[{n}]"
        if not isinstance(entry, dict):
            raise DataFormatError(f"{where} must be an object with 'filename', 'split' and 'sentences'")
        for key in ("filename", "split"):
            if not isinstance(entry.get(key), str):
                raise DataFormatError(f"{where} has no '{key}' string; each image entry needs 'filename', "
                                      "'split' and 'sentences'")
        entry_split = entry["split"]
        split_counts[entry_split] = split_counts.get(entry_split, 0) + 1
        if wanted is not None and entry_split not in wanted:
            continue
        # COCO-style Karpathy files put a sub-folder in 'filepath'; RS files have none.
        name = os.path.join(entry["filepath"], entry["filename"]) if entry.get("filepath") else entry["filename"]
        where = f"{path}: image {name}"
        sentences = entry.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            raise DataFormatError(f"{where} has no captions ('sentences' is missing or empty); every image needs "
                                  "at least one caption")
        image_path = _image_path(images_dir, name)
        for s, sentence in enumerate(sentences):
            if isinstance(sentence, dict) and "raw" in sentence:
                text = sentence["raw"]
            elif isinstance(sentence, dict) and isinstance(sentence.get("tokens"), list):
                text = " ".join(map(str, sentence["tokens"]))
            else:
                raise DataFormatError(f"{where}, sentences[{s}] has neither 'raw' nor 'tokens'")
            records.append(CaptionRecord(image_path, _caption_text(text, f"{where}, sentences[{s}]")))
    if not records:
        present = ", ".join(f"{name} ({count:,} images)" for name, count in sorted(split_counts.items())) or "none"
        raise DataFormatError(f"{path} has no images in split {_split_label(split)!r}; splits present: {present}. "
                              "Pass one of those with --split")
    return records


def _pirtr_records(data: Any, path: str, images_dir: Optional[str]) -> List[CaptionRecord]:
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: a PIR-ITR JSON is a list of rows with 'image' and 'caption', got a "
                              f"{type(data).__name__}")
    if not data:
        raise DataFormatError(f"{path}: the JSON list is empty; expected PIR-ITR rows with 'image' and 'caption'")
    records: List[CaptionRecord] = []
    for n, row in enumerate(data):
        where = f"{path}: row {n}"
        if not isinstance(row, dict) or not isinstance(row.get("image"), str) or "caption" not in row:
            raise DataFormatError(f"{where} needs an 'image' string and a 'caption' (string or list of strings)")
        where = f"{where} (image {row['image']})"
        captions = row["caption"] if isinstance(row["caption"], list) else [row["caption"]]
        if not captions:
            raise DataFormatError(f"{where} has an empty caption list; every image needs at least one caption")
        label = row.get("label_name", row.get("label"))
        label = None if label is None else str(label)
        image_path = _image_path(images_dir, row["image"])
        records.extend(CaptionRecord(image_path, _caption_text(c, where), label) for c in captions)
    return records


def read_karpathy_json(path: str, images_dir: Optional[str] = None, split: SplitArg = "test") -> List[CaptionRecord]:
    """Caption records of the ``split`` entries of a Karpathy-style JSON (``None``: every entry).

    ``split``: a name (``"test"``), names joined by ``+`` (``"train+restval"``) or a sequence of names.
    Image paths are ``images_dir/filename`` (``filename`` alone when ``images_dir`` is None).
    """
    return _karpathy_records(_parse_json(path), path, images_dir, split)


def read_pirtr_json(path: str, images_dir: Optional[str] = None) -> List[CaptionRecord]:
    """Caption records of a PIR-ITR JSON (train rows with one caption, or test rows with a list).

    ``label`` is the row's ``label_name`` (else its ``label``, as a string).
    """
    return _pirtr_records(_parse_json(path), path, images_dir)


def read_caption_csv(path: str, images_dir: Optional[str] = None, encoding: str = "utf-8", separator: str = ",",
                     image_key: str = "filename", caption_key: str = "title",
                     label_key: Optional[str] = None) -> List[CaptionRecord]:
    """Caption records of a GeoRSCLIP-style CSV: one row per caption, rows of an image grouped later.

    Fields may be quoted (captions containing the separator must be). ``label_key`` names an optional
    column holding the class label.
    """
    text = _read_text(path, encoding, "pass the file's encoding with --csv-encoding (RSICD's GeoRSCLIP CSV is "
                                      "gb18030)")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=separator)
    try:
        header = [name.strip() for name in next(reader)]
    except csv.Error as e:
        raise DataFormatError(f"{path}: unreadable CSV header ({e})") from e
    columns = {name: n for n, name in enumerate(header)}
    for key, flag in ((image_key, "--csv-image-key"), (caption_key, "--csv-caption-key"),
                      (label_key, "--csv-label-key")):
        if key is not None and key not in columns:
            raise DataFormatError(f"{path}: no column {key!r}; the header has {header} (separator "
                                  f"{separator!r}). Name the column with {flag}, or set --csv-separator")
    records: List[CaptionRecord] = []
    try:
        for row in reader:
            if not any(field_.strip() for field_ in row):
                continue
            where = f"{path}: line {reader.line_num}"
            if len(row) != len(header):
                raise DataFormatError(f"{where} has {len(row)} fields but the header has {len(header)}; quote "
                                      "captions that contain the separator, or set --csv-separator")
            name = row[columns[image_key]].strip()
            if not name:
                raise DataFormatError(f"{where}: empty {image_key!r}")
            label = (row[columns[label_key]].strip() or None) if label_key is not None else None
            records.append(CaptionRecord(_image_path(images_dir, name),
                                         _caption_text(row[columns[caption_key]], f"{where} (image {name})"), label))
    except csv.Error as e:
        raise DataFormatError(f"{path}: line {reader.line_num}: malformed CSV ({e})") from e
    if not records:
        raise DataFormatError(f"{path} has a header but no caption rows")
    return records


# ---------------------------------------------------------------- dispatch and validation


def detect_format(path: str, data: Any = None) -> str:
    """``csv`` for .csv/.tsv files, else ``karpathy`` or ``pirtr`` by the parsed JSON's shape."""
    if os.path.splitext(path)[1].lower() in (".csv", ".tsv"):
        return "csv"
    if data is None:
        data = _parse_json(path)
    if isinstance(data, dict) and "images" in data:
        return "karpathy"
    if isinstance(data, list) and data and isinstance(data[0], dict) and "image" in data[0] and "caption" in data[0]:
        return "pirtr"
    raise DataFormatError(f"cannot tell the format of {path}: expected a Karpathy JSON (object with 'images'), a "
                          "PIR-ITR JSON (list of rows with 'image' and 'caption') or a .csv file; pass --format")


def default_images_dirs(annotation_path: str) -> List[str]:
    """Folders tried, in order, for relative image names when no images directory is given: the annotation
    file's folder, then its ``images`` sub-folder (the RSITMD/RSICD layout)."""
    folder = os.path.dirname(os.path.abspath(annotation_path))
    return [folder, os.path.join(folder, "images")]


def choose_images_dir(annotation_path: str, names: Sequence[str]) -> str:
    """The first default folder holding the first image; else the first existing one."""
    candidates = default_images_dirs(annotation_path)
    for folder in candidates:
        if names and os.path.isfile(os.path.join(folder, names[0])):
            return folder
    return next((folder for folder in candidates if os.path.isdir(folder)), candidates[-1])


def check_images_exist(image_paths: Sequence[str], source: str, images_dir: Optional[str] = None,
                       images_flag: str = "--images-dir") -> None:
    """Raise one ``DataFormatError`` listing how many images are missing and the first few paths."""
    if images_dir is not None and not os.path.isdir(images_dir):
        raise DataFormatError(f"images directory {images_dir} (for {source}) does not exist; pass the folder "
                              f"holding the images with {images_flag}")
    unique = list(dict.fromkeys(image_paths))
    missing = [p for p in unique if not os.path.isfile(p)]
    if missing:
        where = f" under {images_dir}" if images_dir is not None else ""
        raise DataFormatError(f"{len(missing):,} of {len(unique):,} images listed in {source} are missing{where}; "
                              f"first missing: {', '.join(missing[:_SHOW_MISSING])}. Check {images_flag} and the "
                              "file names in the annotation file")


def _load_records(path: str, images_dir: Optional[str], split: SplitArg, fmt: str, csv_encoding: str,
                  csv_separator: str, csv_image_key: str, csv_caption_key: str,
                  csv_label_key: Optional[str]) -> List[CaptionRecord]:
    path = os.fspath(path)
    images_dir = None if images_dir is None else os.fspath(images_dir)
    if fmt not in ("auto",) + FORMATS:
        raise DataFormatError(f"unknown annotation format {fmt!r}; --format must be one of {('auto',) + FORMATS}")
    if fmt == "csv" or (fmt == "auto" and os.path.splitext(path)[1].lower() in (".csv", ".tsv")):
        return read_caption_csv(path, images_dir, csv_encoding, csv_separator, csv_image_key, csv_caption_key,
                                csv_label_key)
    try:
        data = _parse_json(path)
    except DataFormatError as e:
        if fmt == "auto" and os.path.splitext(path)[1].lower() != ".json" and "not valid JSON" in str(e):
            raise DataFormatError(f"cannot tell the format of {path}: it is not JSON and has no .csv extension; "
                                  "pass --format csv (with --csv-separator if needed)") from e
        raise
    if fmt == "auto":
        fmt = detect_format(path, data)
    if fmt == "karpathy":
        return _karpathy_records(data, path, images_dir, split)
    return _pirtr_records(data, path, images_dir)


def load_caption_records(path: str, images_dir: Optional[str] = None, split: SplitArg = "train", fmt: str = "auto",
                         csv_encoding: str = "utf-8", csv_separator: str = ",", csv_image_key: str = "filename",
                         csv_caption_key: str = "title", csv_label_key: Optional[str] = None,
                         check_images: bool = True, images_flag: str = "--images-dir") -> List[CaptionRecord]:
    """Flat training pairs from any supported file; ``split`` selects Karpathy entries only.

    ``images_dir``: folder the file's image names are relative to (``None``: the annotation file's folder,
    or its ``images/`` sub-folder, whichever holds the first image).
    ``check_images``: fail now, listing the missing files, rather than mid-epoch.
    """
    if images_dir is None:
        records = _load_records(path, None, split, fmt, csv_encoding, csv_separator, csv_image_key,
                                csv_caption_key, csv_label_key)
        images_dir = choose_images_dir(os.fspath(path), [r.image_path for r in records])
        records = [replace(r, image_path=os.path.join(images_dir, r.image_path)) for r in records]
    else:
        records = _load_records(path, images_dir, split, fmt, csv_encoding, csv_separator, csv_image_key,
                                csv_caption_key, csv_label_key)
    if check_images:
        check_images_exist([r.image_path for r in records], os.fspath(path), images_dir, images_flag)
    return records


def load_retrieval_set(path: str, images_dir: Optional[str] = None, split: SplitArg = "test", fmt: str = "auto",
                       csv_encoding: str = "utf-8", csv_separator: str = ",", csv_image_key: str = "filename",
                       csv_caption_key: str = "title", csv_label_key: Optional[str] = None,
                       check_images: bool = True, images_flag: str = "--images-dir") -> RetrievalSet:
    """An evaluation set from any supported file, validated before any model work.

    ``fmt``: ``auto`` (by extension, then JSON shape), ``karpathy``, ``pirtr`` or ``csv``. ``split`` selects
    Karpathy entries; for PIR-ITR and CSV files (one split per file) it is only recorded. Rows naming the
    same image are grouped into one image with several captions.
    """
    records = load_caption_records(path, images_dir, split, fmt, csv_encoding, csv_separator, csv_image_key,
                                   csv_caption_key, csv_label_key, check_images, images_flag)
    return RetrievalSet.from_records(records, source=os.fspath(path), split=_split_label(split))
