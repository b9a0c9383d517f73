"""Scene-class ids for the affiliation loss, read from image names or explicit labels.

The affiliation loss compares samples by class, so a class id must mean the same class on every rank of a
multi-GPU job, in every batch and in every run, without any vocabulary shared between processes. Ids are
therefore a hash of the class *name*, never a per-batch or per-process numbering (the authors' release
numbered classes per batch, so the same id meant different classes on different GPUs).

Rules, in order of precedence (:func:`resolve_class_id`):

1. an explicit label from the data (a column or key), string or integer;
2. a user-supplied regular expression applied to the image's stem (:func:`class_name_from_image_name`);
3. the default rule: the stem's part before the first ``_`` (``airport_12.tif`` -> ``airport``); a stem
   without ``_`` (RSICD's ``00578.jpg``, UCM's ``12.tif``) is a class of its own.
"""
import hashlib
import numbers
import re
from typing import Optional, Pattern, Union

Regex = Union[str, Pattern[str]]
Label = Union[str, int]

__all__ = ["class_name_from_image_name", "class_id", "resolve_class_id", "image_stem"]


def image_stem(name: str) -> str:
    """The base name of ``name`` without directories or its last extension: ``dir/a_1.tif`` -> ``a_1``.

    Both ``/`` and ``\\`` separate directories, so names written on Windows give the same class on Linux.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"an image name must be a non-empty string, got {name!r}")
    base = re.split(r"[\\/]", name)[-1]
    stem, dot, _ = base.rpartition(".")
    # rpartition yields an empty stem both for "a_1" (no dot) and ".hidden"; keep the whole base then.
    stem = stem if dot and stem else base
    if not stem:
        raise ValueError(f"image name {name!r} has no base name (it ends with a directory separator)")
    return stem


def class_name_from_image_name(name: str, regex: Optional[Regex] = None) -> str:
    """The scene-class name of an image, from its file name.

    Default rule: the stem (base name without directory and last extension) up to its first ``_``:
    ``airport_12.tif`` -> ``airport``, ``dir/sub/storagetanks_3.png`` -> ``storagetanks``. A stem without
    ``_`` is its own class: ``00578.jpg`` -> ``00578``.

    With ``regex`` (a pattern string or compiled pattern) the rule is replaced: ``re.match`` is applied to
    the stem (anchored at its start; add ``$`` to anchor the end). The class name is the group named
    ``class`` if the pattern has one, else its first group if it has groups, else the whole match. For
    NWPU, ``^(.*)_\\d+$`` maps ``baseball_diamond_001.jpg`` to ``baseball_diamond``.

    Raises:
        ValueError: the regex does not match the stem, or selects an empty class name; or the default rule
            finds an empty name (a stem starting with ``_``). The message names the file and the regex.
    """
    stem = image_stem(name)
    if regex is None:
        class_name = stem.split("_", 1)[0]
        if not class_name:
            raise ValueError(
                f"image name {name!r} starts with '_', so the default rule (the part before the first '_') "
                f"gives an empty class name; supply a class regex or an explicit label column")
        return class_name

    pattern = re.compile(regex) if isinstance(regex, str) else regex
    match = pattern.match(stem)
    if match is None:
        raise ValueError(
            f"class regex {pattern.pattern!r} does not match the stem {stem!r} of image {name!r} "
            f"(re.match on the base name without extension); fix the regex or supply an explicit label")
    if "class" in pattern.groupindex:
        class_name = match.group("class")
    elif pattern.groups:
        class_name = match.group(1)
    else:
        class_name = match.group(0)
    if not class_name:
        raise ValueError(
            f"class regex {pattern.pattern!r} matches the stem {stem!r} of image {name!r} but selects an "
            f"empty class name; make the selected group match at least one character")
    return class_name


def class_id(class_name: str) -> int:
    """A stable, non-negative 63-bit id for a class name (fits ``torch.int64``).

    The id is the first 8 bytes of the BLAKE2b digest of the UTF-8 name with the top bit cleared, so it is
    the same in every process, rank and run; Python's ``hash`` is salted per process and would not be.
    Two distinct names collide with probability about 2**-63.
    """
    if not isinstance(class_name, str):
        raise TypeError(f"class_name must be a str, got {type(class_name).__name__} {class_name!r}")
    digest = hashlib.blake2b(class_name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def resolve_class_id(
        image_name: Optional[str] = None,
        label: Optional[Label] = None,
        regex: Optional[Regex] = None,
) -> int:
    """The class id of one sample: an explicit ``label`` wins, then ``regex`` on the name, then the default.

    An integer label is treated as its decimal string, so ``3`` from a JSON column and ``"3"`` from a CSV
    column are the same class. Label ids are hashed like names: a label ``"airport"`` and an image
    ``airport_1.tif`` share a class, whichever rule supplied it.

    Raises:
        ValueError: neither a name nor a label was given, or the name rule fails (see
            :func:`class_name_from_image_name`).
        TypeError: the label is neither a string nor an integer.
    """
    if label is not None:
        if isinstance(label, bool) or not isinstance(label, (str, numbers.Integral)):
            raise TypeError(
                f"class label must be a string or an integer, got {type(label).__name__} {label!r}; "
                f"convert the label column to str or int")
        label_name = str(int(label)) if isinstance(label, numbers.Integral) else label
        if not label_name:
            raise ValueError(
                f"class label is an empty string (image {image_name!r}); fill the label column or drop it "
                f"to fall back to the image name")
        return class_id(label_name)
    if image_name is None:
        raise ValueError(
            "--is_aff_loss needs image names or labels: this sample has neither an image name nor a class "
            "label; use a data format that carries image file names (e.g. Karpathy JSON 'filename', CSV "
            "'filename', WebDataset 'img_name') or a label column, or turn the affiliation loss off")
    return class_id(class_name_from_image_name(image_name, regex))
