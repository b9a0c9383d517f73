import json
import os

import pytest
from PIL import Image

from pir_clip.data.annotations import (CaptionRecord, DataFormatError, RetrievalSet, detect_format, load_caption_records,
                                  load_retrieval_set, read_caption_csv, read_karpathy_json, read_pirtr_json)


def write_image(path, colour=(10, 120, 200), size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


@pytest.fixture
def images_dir(tmp_path):
    folder = tmp_path / "images"
    for name in ("airport_1.tif", "airport_2.jpg", "beach_1.png", "beach_2.tif", "00578.jpg"):
        write_image(folder / name)
    return folder


def karpathy_entry(filename, split, captions):
    return {"filename": filename, "imgid": 0, "split": split, "sentences": [{"raw": c, "tokens": c.split()}
                                                                         for c in captions]}


def write_json(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def karpathy_file(tmp_path):
    return write_json(tmp_path / "dataset_RSITMD.json", {"images": [
        karpathy_entry("airport_1.tif", "test", ["planes park.", "  a runway  ", "planes park."]),
        karpathy_entry("airport_2.jpg", "train", ["a terminal"]),
        karpathy_entry("beach_1.png", "test", ["waves", "sand"]),
        karpathy_entry("beach_2.tif", "restval", ["a beach"]),
        karpathy_entry("00578.jpg", "val", ["trees"]),
    ]})


def test_karpathy_test_split(karpathy_file, images_dir):
    rs = load_retrieval_set(karpathy_file, images_dir, split="test")
    assert rs.image_paths == [os.path.join(images_dir, "airport_1.tif"), os.path.join(images_dir, "beach_1.png")]
    assert rs.captions == ["planes park.", "a runway", "planes park.", "waves", "sand"]  # duplicates kept
    assert rs.text_to_image == [0, 0, 0, 1, 1]
    assert rs.image_to_texts() == [[0, 1, 2], [3, 4]]
    assert (rs.num_images, rs.num_texts, rs.split) == (2, 5, "test")
    assert rs.captions_per_image() == [3, 2]
    assert rs.source == str(karpathy_file) and "2 images, 5 captions" in rs.summary()


@pytest.mark.parametrize("split", ["train+restval", ("train", "restval"), "train,restval"])
def test_karpathy_several_splits(karpathy_file, images_dir, split):
    records = load_caption_records(karpathy_file, images_dir, split=split)
    assert [os.path.basename(r.image_path) for r in records] == ["airport_2.jpg", "beach_2.tif"]
    assert all(r.label is None for r in records)
    assert load_retrieval_set(karpathy_file, images_dir, split=split).split == "train+restval"


def test_karpathy_all_entries_and_tokens_fallback(tmp_path, images_dir):
    path = write_json(tmp_path / "k.json", {"images": [
        {"filename": "00578.jpg", "split": "test", "sentences": [{"tokens": ["green", "trees"]}]}]})
    records = read_karpathy_json(path, images_dir, split=None)
    assert records == [CaptionRecord(os.path.join(images_dir, "00578.jpg"), "green trees")]


def test_karpathy_unknown_split_lists_present_splits(karpathy_file, images_dir):
    with pytest.raises(DataFormatError) as err:
        load_retrieval_set(karpathy_file, images_dir, split="tset")
    message = str(err.value)
    assert "dataset_RSITMD.json" in message and "'tset'" in message
    for present in ("restval (1 images)", "test (2 images)", "train (1 images)", "val (1 images)"):
        assert present in message
    assert "--split" in message


def test_karpathy_image_without_captions(tmp_path, images_dir):
    path = write_json(tmp_path / "k.json", {"images": [karpathy_entry("airport_1.tif", "test", ["x"]),
                                                        karpathy_entry("beach_1.png", "test", [])]})
    with pytest.raises(DataFormatError, match=r"k\.json: image beach_1\.png has no captions"):
        load_retrieval_set(path, images_dir)


def test_karpathy_empty_caption_is_named(tmp_path, images_dir):
    path = write_json(tmp_path / "k.json", {"images": [karpathy_entry("airport_1.tif", "test", ["ok", "   "])]})
    with pytest.raises(DataFormatError, match=r"image airport_1\.tif, sentences\[1\]: caption is empty"):
        load_retrieval_set(path, images_dir)


def test_missing_images_one_error_with_count_and_first_paths(tmp_path, images_dir):
    names = [f"missing_{n}.tif" for n in range(8)]
    path = write_json(tmp_path / "k.json", {"images": [karpathy_entry("airport_1.tif", "test", ["x"])] +
                                            [karpathy_entry(name, "test", ["y"]) for name in names]})
    with pytest.raises(DataFormatError) as err:
        load_retrieval_set(path, images_dir)
    message = str(err.value)
    assert "8 of 9 images listed in" in message and str(path) in message
    assert all(os.path.join(images_dir, name) in message for name in names[:5])
    assert names[5] not in message
    assert "--images-dir" in message
    # check_images=False defers the check (e.g. a remote image store)
    assert load_retrieval_set(path, images_dir, check_images=False).num_images == 9


def test_missing_images_dir_is_named(karpathy_file, tmp_path):
    with pytest.raises(DataFormatError, match=r"images directory .*nowhere.* does not exist.*--images-dir"):
        load_retrieval_set(karpathy_file, tmp_path / "nowhere")


@pytest.mark.parametrize("content, expected", [
    ("", "is empty"),
    ("  \n", "is empty"),
    ('{"images": [', "is not valid JSON"),
    ("\x00\x01garbage", "is not valid JSON"),
    ('{"imgs": []}', "cannot tell the format"),
    ("[1, 2, 3]", "cannot tell the format"),
])
def test_empty_or_garbled_json(tmp_path, images_dir, content, expected):
    path = tmp_path / "broken.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFormatError, match=expected) as err:
        load_retrieval_set(path, images_dir)
    assert "broken.json" in str(err.value)


def test_wrong_structure_with_explicit_format(tmp_path, images_dir):
    path = write_json(tmp_path / "k.json", {"images": "not a list"})
    with pytest.raises(DataFormatError, match=r"k\.json: a Karpathy-style JSON needs .*'images' list"):
        load_retrieval_set(path, images_dir, fmt="karpathy")
    path = write_json(tmp_path / "p.json", [{"image": "airport_1.tif"}])
    with pytest.raises(DataFormatError, match=r"p\.json: row 0 needs an 'image' string and a 'caption'"):
        load_retrieval_set(path, images_dir, fmt="pirtr")
    with pytest.raises(DataFormatError, match="--format must be one of"):
        load_retrieval_set(path, images_dir, fmt="coco")


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DataFormatError, match=r"annotation file .*nope\.json does not exist"):
        load_retrieval_set(tmp_path / "nope.json")


def test_pirtr_train_rows_grouped_with_labels(tmp_path, images_dir):
    rows = [
        {"caption": "planes", "image": "airport_1.tif", "image_id": 0, "label_name": "airport", "label": 0},
        {"caption": "sand", "image": "beach_1.png", "image_id": 1, "label_name": "beach", "label": 1},
        {"caption": "a runway", "image": "airport_1.tif", "image_id": 0, "label_name": "airport", "label": 0},
        {"caption": "trees", "image": "00578.jpg", "image_id": 2, "label": 7},
    ]
    path = write_json(tmp_path / "rsitmd_train.json", rows)
    records = load_caption_records(path, images_dir)
    assert [r.label for r in records] == ["airport", "beach", "airport", "7"]
    rs = load_retrieval_set(path, images_dir, split="train")
    assert [os.path.basename(p) for p in rs.image_paths] == ["airport_1.tif", "beach_1.png", "00578.jpg"]
    assert rs.captions == ["planes", "a runway", "sand", "trees"]
    assert rs.text_to_image == [0, 0, 1, 2]
    assert rs.labels == ["airport", "beach", "7"]
    assert [r.label for r in rs.records()] == ["airport", "airport", "beach", "7"]


def test_pirtr_test_rows_with_caption_lists(tmp_path, images_dir):
    rows = [{"image": "airport_1.tif", "caption": [f"airport {n}" for n in range(5)]},
            {"image": "beach_2.tif", "caption": [f"beach {n}" for n in range(5)]}]
    path = write_json(tmp_path / "rsitmd_test.json", rows)
    assert detect_format(str(path)) == "pirtr"
    rs = load_retrieval_set(path, images_dir)
    assert rs.num_images == 2 and rs.num_texts == 10
    assert rs.text_to_image == [0] * 5 + [1] * 5
    assert rs.labels is None
    assert read_pirtr_json(path)[0].image_path == "airport_1.tif"  # no images_dir: names as given


def test_pirtr_empty_caption_list(tmp_path, images_dir):
    path = write_json(tmp_path / "t.json", [{"image": "airport_1.tif", "caption": []}])
    with pytest.raises(DataFormatError, match=r"t\.json: row 0 \(image airport_1\.tif\) has an empty caption list"):
        load_retrieval_set(path, images_dir)


def write_csv(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def test_csv_rows_grouped_per_image(tmp_path, images_dir):
    path = write_csv(tmp_path / "rsicd_test.csv", 'filename,title\n'
                     'airport_1.tif,planes at the gate\n'
                     'beach_1.png,"waves, sand and sea"\n'
                     '\n'
                     'airport_1.tif,a long runway\n')
    rs = load_retrieval_set(path, images_dir)
    assert [os.path.basename(p) for p in rs.image_paths] == ["airport_1.tif", "beach_1.png"]
    assert rs.captions == ["planes at the gate", "a long runway", "waves, sand and sea"]
    assert rs.text_to_image == [0, 0, 1]
    assert rs.split == "test"


def test_csv_gb18030(tmp_path, images_dir):
    text = "filename,title\n00578.jpg,many green trees — “dense” forest 绿树\nbeach_2.tif,a beach\n"
    path = write_csv(tmp_path / "rsicd_train.csv", text, encoding="gb18030")
    with pytest.raises(DataFormatError) as err:
        load_retrieval_set(path, images_dir)
    message = str(err.value)
    assert "rsicd_train.csv is not valid utf-8" in message and "--csv-encoding" in message and "gb18030" in message
    rs = load_retrieval_set(path, images_dir, csv_encoding="gb18030")
    assert rs.captions[0] == "many green trees — “dense” forest 绿树"
    with pytest.raises(DataFormatError, match="unknown text encoding 'klingon'"):
        load_retrieval_set(path, images_dir, csv_encoding="klingon")


def test_csv_custom_separator_columns_and_label(tmp_path, images_dir):
    path = write_csv(tmp_path / "pairs.tsv", "\ufeffimage\ttext\tclass\n"
                     "airport_1.tif\tplanes\tairport\nbeach_1.png\tsea\tbeach\nbeach_1.png\tsand\t\n")
    records = read_caption_csv(path, images_dir, separator="\t", image_key="image", caption_key="text",
                               label_key="class")
    assert [(os.path.basename(r.image_path), r.caption, r.label) for r in records] == [
        ("airport_1.tif", "planes", "airport"), ("beach_1.png", "sea", "beach"), ("beach_1.png", "sand", None)]
    rs = load_retrieval_set(path, images_dir, csv_separator="\t", csv_image_key="image", csv_caption_key="text",
                            csv_label_key="class")
    assert rs.labels == ["airport", "beach"]


@pytest.mark.parametrize("content, options, expected", [
    ("filename;title\nairport_1.tif;x\n", {},
     r"captions\.csv: no column 'filename'.*--csv-image-key, or set --csv-separator"),
    ("filename,title\nairport_1.tif,x\nbeach_1.png,too,many\n", {},
     r"captions\.csv: line 3 has 3 fields but the header has 2"),
    ("filename,title\nairport_1.tif,\n", {}, r"captions\.csv: line 2 \(image airport_1\.tif\): caption is empty"),
    ("filename,title\n", {}, r"captions\.csv has a header but no caption rows"),
    ("", {}, r"captions\.csv is empty"),
    ("filename,title\nairport_1.tif,x\n", {"csv_label_key": "label"}, r"no column 'label'.*--csv-label-key"),
    ("filename,title\nairport_1.tif,x\n", {"csv_caption_key": "text"}, r"no column 'text'.*--csv-caption-key"),
])
def test_csv_errors(tmp_path, images_dir, content, options, expected):
    path = write_csv(tmp_path / "captions.csv", content)
    with pytest.raises(DataFormatError, match=expected):
        load_retrieval_set(path, images_dir, **options)


def test_format_detection(karpathy_file, tmp_path):
    assert detect_format(str(karpathy_file)) == "karpathy"
    assert detect_format(str(tmp_path / "x.CSV")) == "csv"
    # a Karpathy file without the .json extension still works when the format is given
    renamed = tmp_path / "annotations.txt"
    renamed.write_text(karpathy_file.read_text())
    assert len(load_caption_records(renamed, split="test", check_images=False)) == 5


def test_csv_without_csv_extension(tmp_path, images_dir):
    path = write_csv(tmp_path / "captions.txt", "filename,title\nairport_1.tif,planes\n")
    with pytest.raises(DataFormatError, match=r"captions\.txt: it is not JSON.*--format csv"):
        load_retrieval_set(path, images_dir)
    assert load_retrieval_set(path, images_dir, fmt="csv").captions == ["planes"]


def test_retrieval_set_validation():
    with pytest.raises(DataFormatError, match="image b.jpg has no caption"):
        RetrievalSet(["a.jpg", "b.jpg"], ["x"], [0])
    with pytest.raises(DataFormatError, match="caption 0 points at image 3"):
        RetrievalSet(["a.jpg"], ["x"], [3])
    with pytest.raises(DataFormatError, match="2 captions but 1 text_to_image"):
        RetrievalSet(["a.jpg"], ["x", "y"], [0])
    with pytest.raises(DataFormatError, match="has two labels"):
        RetrievalSet.from_records([CaptionRecord("a.jpg", "x", "airport"), CaptionRecord("a.jpg", "y", "beach")])
