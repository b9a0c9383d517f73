"""Scene classification sets on disk: the class-folder finder on each RS layout, the CSV reader, class-name
normalisation on real RS folder names, RemoteCLIP's 80/20 rule, and the errors bad input gets."""
import json
import os
import random

import pytest

from pir_clip.data.annotations import DataFormatError
from pir_clip.data.scene_folders import (class_name_words, find_class_folders, load_scene_set, read_class_names,
                                         split_of_each)


def touch(path, data=b"x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


# Real folder names of AID, NWPU-RESISC45, EuroSAT, UC Merced, WHU-RS19, RSSCN7, PatternNet, and the issue's.
REAL_NAMES = {
    "StorageTanks": "storage tanks", "baseball_diamond": "baseball diamond", "Dense-Residential": "dense residential",
    "Airport": "airport", "BareLand": "bare land", "BaseballField": "baseball field", "RailwayStation": "railway station",
    "DenseResidential": "dense residential", "MediumResidential": "medium residential",
    "ground_track_field": "ground track field", "thermal_power_station": "thermal power station", "sea_ice": "sea ice",
    "AnnualCrop": "annual crop", "HerbaceousVegetation": "herbaceous vegetation", "SeaLake": "sea lake",
    "PermanentCrop": "permanent crop", "agricultural": "agricultural", "baseballdiamond": "baseball diamond",
    "denseresidential": "dense residential", "mobilehomepark": "mobile home park", "storagetanks": "storage tanks",
    "tenniscourt": "tennis court", "golfcourse": "golf course", "parkinglot": "parking lot",
    "footballField": "football field", "railwayStation": "railway station", "aGrass": "grass",
    "dRiverLake": "river or lake", "fResident": "residential", "oil_gas_field": "oil gas field",
    "christmas_tree_farm": "christmas tree farm", "ParkingLot": "parking lot", "2750": "2750",
}


@pytest.mark.parametrize("folder,words", sorted(REAL_NAMES.items()))
def test_class_names_become_words(folder, words):
    assert class_name_words(folder) == words


def test_80_20_rule_on_a_known_listing():
    files = [f"airport/airport_{i}.jpg" for i in range(1, 11)] + [f"beach/beach_{i}.jpg" for i in range(1, 6)] \
        + ["desert/desert_1.jpg"] + [f"forest/forest_{i}.jpg" for i in range(1, 8)]
    labels = [0] * 10 + [1] * 5 + [2] + [3] * 7
    order = list(range(len(files)))
    random.Random(0).shuffle(order)  # the rule depends on names, not on listing order
    splits = split_of_each([files[i] for i in order], [labels[i] for i in order])
    test = sorted(files[i] for i, s in zip(order, splits) if s == "test")
    # Name order is string order: airport_1, airport_10, airport_2, ... so _8 and _9 are the last two.
    assert test == ["airport/airport_8.jpg", "airport/airport_9.jpg", "beach/beach_5.jpg", "desert/desert_1.jpg",
                    "forest/forest_6.jpg", "forest/forest_7.jpg"]
    assert splits.count("train") == 8 + 4 + 0 + 5


def test_aid_layout(tmp_path):
    for cls in ("Airport", "BareLand", "StorageTanks"):
        for i in (1, 2, 10):
            touch(tmp_path / "AID" / cls / f"{cls.lower()}_{i}.jpg")
    touch(tmp_path / "AID" / ".DS_Store")
    root, folders = find_class_folders(str(tmp_path / "AID"))
    assert root == str(tmp_path / "AID") and folders == ["Airport", "BareLand", "StorageTanks"]
    scene = load_scene_set(str(tmp_path / "AID"))
    assert scene.class_names == ["airport", "bare land", "storage tanks"] and scene.layout == "folders"
    assert scene.labels == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [os.path.basename(p) for p in scene.paths[:3]] == ["airport_1.jpg", "airport_10.jpg", "airport_2.jpg"]
    assert [len(load_scene_set(str(tmp_path / "AID"), split).paths) for split in ("train", "test")] == [6, 3]


def test_ucmerced_layout_one_level_down_with_tif(tmp_path):
    base = tmp_path / "UCMerced_LandUse"
    touch(base / "readme.txt")
    for cls in ("agricultural", "denseresidential", "tenniscourt"):
        for i in range(3):
            touch(base / "Images" / cls / f"{cls}{i:02d}.tif")
    root, folders = find_class_folders(str(base))
    assert root == str(base / "Images") and folders == ["agricultural", "denseresidential", "tenniscourt"]
    assert load_scene_set(str(base)).class_names == ["agricultural", "dense residential", "tennis court"]


def test_eurosat_layout_with_macosx_debris(tmp_path):
    base = tmp_path / "EuroSAT"
    for cls in ("AnnualCrop", "SeaLake"):
        for i in (1, 2):
            touch(base / "2750" / cls / f"{cls}_{i}.jpg")
            touch(base / "__MACOSX" / "2750" / cls / f"._{cls}_{i}.jpg")
    root, folders = find_class_folders(str(base))
    assert root == str(base / "2750") and folders == ["AnnualCrop", "SeaLake"]
    # Pointing at the class level itself works too.
    assert find_class_folders(str(base / "2750")) == (str(base / "2750"), ["AnnualCrop", "SeaLake"])


@pytest.mark.parametrize("layout,message", [
    ("empty_class", "Empty has no images"),
    ("flat", "holds images directly"),
    ("two_depths", "class level is ambiguous"),
    ("one_class", "only one class folder"),
    ("no_images", "holds no image files"),
])
def test_folder_errors_name_the_path(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout == "empty_class":
        touch(root / "Airport" / "a_1.png")
        touch(root / "Beach" / "b_1.png")
        (root / "Empty").mkdir()
    elif layout == "flat":
        touch(root / "a_1.png")
        touch(root / "Beach" / "b_1.png")
    elif layout == "two_depths":
        touch(root / "train" / "Airport" / "a_1.png")
        touch(root / "Beach" / "b_1.png")
    elif layout == "one_class":
        touch(root / "Images" / "a_1.png")
    else:
        touch(root / "Airport" / "notes.txt")
    with pytest.raises(DataFormatError, match=message) as exc:
        find_class_folders(str(root))
    assert str(root) in str(exc.value)


def test_csv_with_label_names(tmp_path):
    for name in ("a.png", "b.png", "sub/c.tif"):
        touch(tmp_path / name)
    (tmp_path / "labels.csv").write_text("filepath,label\na.png,StorageTanks\nsub/c.tif,Airport\nb.png,StorageTanks\n")
    scene = load_scene_set(str(tmp_path / "labels.csv"))
    assert scene.class_keys == ["Airport", "StorageTanks"] and scene.class_names == ["airport", "storage tanks"]
    assert scene.labels == [1, 0, 1] and scene.paths[1] == str(tmp_path / "sub" / "c.tif")


def test_csv_with_class_numbers_and_a_name_file(tmp_path):
    touch(tmp_path / "img" / "a.png")
    touch(tmp_path / "img" / "b.png")
    (tmp_path / "labels.csv").write_text("label,filepath\n2,a.png\n0,b.png\n")
    (tmp_path / "names.txt").write_text("# SkyScript style\nairport\nbeach\n\ndesert\n")
    with pytest.raises(DataFormatError, match="--classnames"):
        load_scene_set(str(tmp_path / "labels.csv"), images_dir=str(tmp_path / "img"))
    scene = load_scene_set(str(tmp_path / "labels.csv"), classnames=str(tmp_path / "names.txt"),
                           images_dir=str(tmp_path / "img"))
    # The name file has three classes; "beach" has no image, and that is allowed for a CSV.
    assert scene.class_names == ["airport", "beach", "desert"] and scene.labels == [2, 0]
    assert scene.class_counts() == [1, 0, 1]
    (tmp_path / "bad.csv").write_text("filepath,label\na.png,5\n")
    with pytest.raises(DataFormatError, match="label 5 is outside 0..2"):
        load_scene_set(str(tmp_path / "bad.csv"), classnames=str(tmp_path / "names.txt"),
                       images_dir=str(tmp_path / "img"))


def test_csv_errors(tmp_path):
    touch(tmp_path / "a.png")
    (tmp_path / "cols.csv").write_text("filename,title\na.png,x\n")
    with pytest.raises(DataFormatError, match="filepath, label"):
        load_scene_set(str(tmp_path / "cols.csv"))
    (tmp_path / "missing.csv").write_text("filepath,label\na.png,x\nnope.png,y\n")
    with pytest.raises(DataFormatError, match="nope.png"):
        load_scene_set(str(tmp_path / "missing.csv"))


def test_class_name_file_overrides_and_checks(tmp_path):
    keys = ["Airport", "StorageTanks"]
    (tmp_path / "n.json").write_text(json.dumps({"StorageTanks": "oil tanks", "Airport": "an airfield"}))
    assert read_class_names(str(tmp_path / "n.json"), keys) == ["an airfield", "oil tanks"]
    (tmp_path / "short.txt").write_text("only one\n")
    with pytest.raises(DataFormatError, match="gives 1 names but the data has 2 classes"):
        read_class_names(str(tmp_path / "short.txt"), keys)
    (tmp_path / "partial.json").write_text(json.dumps({"Airport": "x"}))
    with pytest.raises(DataFormatError, match="StorageTanks"):
        read_class_names(str(tmp_path / "partial.json"), keys)


def test_two_folders_with_one_name_are_refused(tmp_path):
    touch(tmp_path / "d" / "StorageTanks" / "a.png")
    touch(tmp_path / "d" / "storage_tanks" / "b.png")
    with pytest.raises(DataFormatError, match="both get the name 'storage tanks'"):
        load_scene_set(str(tmp_path / "d"))
