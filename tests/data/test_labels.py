import json
import os
import subprocess
import sys

import pytest
import torch

from pir_clip.data import labels
from pir_clip.data.labels import class_id, class_name_from_image_name, image_stem, resolve_class_id

NWPU_REGEX = r"^(.*)_\d+$"


@pytest.mark.parametrize("name, expected", [
    ("airport_12.tif", "airport"),
    ("dir/sub/storagetanks_3.png", "storagetanks"),
    (r"C:\data\rsitmd\beach_4.tif", "beach"),
    ("baseball_diamond_001.jpg", "baseball"),
    ("denseresidential_7", "denseresidential"),
    ("00578.jpg", "00578"),
    ("images/12.tif", "12"),
    ("archive.v2_1.tar", "archive.v2"),
])
def test_default_rule(name, expected):
    assert class_name_from_image_name(name) == expected


def test_image_stem_keeps_all_but_last_extension():
    assert image_stem("a/b/airport_1.tif") == "airport_1"
    assert image_stem("airport_1") == "airport_1"
    assert image_stem(".hidden") == ".hidden"


def test_same_prefix_shares_an_id_and_numeric_names_are_singletons():
    assert resolve_class_id("airport_12.tif") == resolve_class_id("train/airport_3.jpg")
    assert resolve_class_id("airport_12.tif") != resolve_class_id("beach_12.tif")
    assert resolve_class_id("00578.jpg") != resolve_class_id("00579.jpg")
    assert resolve_class_id("00578.jpg") == resolve_class_id("val/00578.png")


def test_class_id_is_int64_safe_and_not_pythons_hash():
    ids = [class_id(name) for name in ("airport", "beach", "00578", "", "場景")]
    assert all(0 <= i < 2 ** 63 for i in ids)
    assert len(set(ids)) == len(ids)
    assert torch.tensor(ids, dtype=torch.int64).tolist() == ids


def test_class_ids_are_stable_across_processes():
    names = ["airport_12.tif", "airport_3.jpg", "00578.jpg", "baseball_diamond_001.jpg"]
    # Load labels.py by path: importing the pir_clip package would import open_clip and torch (seconds).
    script = ("import json, runpy, sys; resolve = runpy.run_path(sys.argv[1])['resolve_class_id']; "
              "print(json.dumps([resolve(n) for n in json.loads(sys.argv[2])]))")
    outputs = []
    for seed in ("1", "2"):
        # A different PYTHONHASHSEED changes str hashes; the ids must not change with it.
        env = dict(os.environ, PYTHONHASHSEED=seed)
        run = subprocess.run([sys.executable, "-c", script, labels.__file__, json.dumps(names)], env=env,
                             capture_output=True, text=True, timeout=60, check=True)
        outputs.append(json.loads(run.stdout))
    here = [resolve_class_id(n) for n in names]
    assert outputs[0] == outputs[1] == here
    assert here[0] == here[1]


def test_regex_replaces_the_default_rule():
    assert class_name_from_image_name("nwpu/baseball_diamond_001.jpg", NWPU_REGEX) == "baseball_diamond"
    assert resolve_class_id("baseball_diamond_001.jpg", regex=NWPU_REGEX) == class_id("baseball_diamond")
    assert resolve_class_id("baseball_diamond_001.jpg") == class_id("baseball")


def test_regex_group_selection():
    assert class_name_from_image_name("a_b_c_1.png", r"(?P<junk>\w)_(?P<class>\w+)_\d+$") == "b_c"
    assert class_name_from_image_name("a_b_c_1.png", r"(\w)_(\w+)_\d+$") == "a"
    assert class_name_from_image_name("scene12_1.png", r"[a-z]+") == "scene"


def test_regex_errors_name_regex_and_file():
    with pytest.raises(ValueError, match=r"class regex '\^\(\.\*\)_\\\\d\+\$' does not match .*'00578\.jpg'"):
        class_name_from_image_name("00578.jpg", NWPU_REGEX)
    with pytest.raises(ValueError, match="empty class name"):
        class_name_from_image_name("x_1.jpg", r"(y?)x")


def test_explicit_label_wins_over_regex_and_name():
    assert resolve_class_id("airport_12.tif", label="beach", regex=NWPU_REGEX) == class_id("beach")
    assert resolve_class_id(label="beach") == resolve_class_id("beach_1.tif")
    assert resolve_class_id(label=3) == resolve_class_id(label="3") == class_id("3")
    assert resolve_class_id("airport_1.tif", label=torch.tensor(3).numpy()[()]) == class_id("3")


def test_errors():
    with pytest.raises(ValueError, match="--is_aff_loss needs image names or labels.*neither an image name nor"):
        resolve_class_id()
    with pytest.raises(ValueError, match="regex"):
        resolve_class_id(regex=NWPU_REGEX, image_name="12.tif")
    with pytest.raises(TypeError, match="string or an integer, got float"):
        resolve_class_id("airport_1.tif", label=3.0)
    with pytest.raises(TypeError, match="got bool"):
        resolve_class_id("airport_1.tif", label=True)
    with pytest.raises(ValueError, match="empty string"):
        resolve_class_id("airport_1.tif", label="")
    with pytest.raises(ValueError, match="starts with '_'"):
        class_name_from_image_name("_12.tif")
    with pytest.raises(ValueError, match="non-empty string"):
        class_name_from_image_name("")
    with pytest.raises(TypeError, match="must be a str"):
        class_id(3)
