"""``pir-clip zeroshot`` end to end: PIR-tiny, CLIP-tiny and a release-format checkpoint against a naive
per-class, per-image reference; outputs (JSON, predictions CSV, confusion PNG); bad input."""
import csv
import json
import os
import shutil
import subprocess
import sys

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import pir_clip
from pir_clip.cli import main
from pir_clip.data.images import decode_image
from pir_clip.data.scene_folders import class_name_words
from pir_clip.evaluation.zeroshot import read_templates

from test_classification import naive_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FOLDERS = ["Airport", "Forest", "ParkingLot", "River"]  # conftest's classes, as the generator names folders


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = tmp_path_factory.mktemp("zs_ckpts")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("CLIP-tiny").state_dict(), out / "clip.pt")
    pir = pir_clip.create_model("PIR-tiny")
    for name, param in pir.named_parameters():
        if ".head." in name:  # non-zero residual heads, so VIR and LCA change the embeddings
            torch.nn.init.normal_(param, std=0.05)
    torch.save(pir.state_dict(), out / "pir.pt")
    release = pir_clip.create_model("PIR-release-tiny")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in release.state_dict().items()}},
               out / "PIR-CLIP_RET-3.pt")
    return out


@torch.no_grad()
def reference(model_name, checkpoint, data_dir, templates):
    """Classifier one class at a time, images one at a time (the test split: the last 20% of each class's
    files by name), metrics by the naive loop."""
    model, _, preprocess = pir_clip.create_model_and_transforms(model_name, str(checkpoint))
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    folders = sorted(os.listdir(data_dir))
    columns = []
    for folder in folders:
        prompts = [t.format(class_name_words(folder)) for t in templates]
        mean = F.normalize(model.encode_text(tokenizer(prompts)), dim=-1).mean(dim=0)
        columns.append(F.normalize(mean, dim=0))
    classifier = torch.stack(columns, dim=1)
    rows, labels = [], []
    for label, folder in enumerate(folders):
        names = sorted(os.listdir(data_dir / folder))
        for name in names[len(names) * 4 // 5:]:
            image = preprocess(decode_image(str(data_dir / folder / name))).unsqueeze(0)
            rows.append(F.normalize(model.encode_image(image), dim=-1)[0] @ classifier)
            labels.append(label)
    scores = torch.stack(rows)
    return naive_metrics(scores, labels, len(folders)), scores, labels, type(model).__name__


def zeroshot(args, capsys):
    code = main(["zeroshot", *[str(a) for a in args]])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("model_name,checkpoint,architecture", [
    ("PIR-tiny", "pir.pt", "PIR"), ("CLIP-tiny", "clip.pt", "CLIP"), ("PIR-release-tiny", "PIR-CLIP_RET-3.pt", "PIRRelease")])
def test_cli_equals_the_naive_reference(synthetic_data, checkpoints, tmp_path, capsys, model_name, checkpoint,
                                        architecture):
    data = synthetic_data / "classification"
    out = tmp_path / "zs.json"
    code, stdout, err = zeroshot(["--model-name", model_name, "--checkpoint", checkpoints / checkpoint,
                                  "--data", data, "--split", "test", "--output", out,
                                  "--save-predictions", tmp_path / "pred.csv",
                                  "--save-confusion", tmp_path / "cm.png", "--workers", 0, "--quiet"], capsys)
    assert code == 0, err
    result = json.loads(out.read_text())
    expected, scores, labels, expected_architecture = reference(model_name, checkpoints / checkpoint, data,
                                                                read_templates())
    assert result["architecture"] == expected_architecture == architecture
    assert result["metrics"] == pytest.approx(expected, abs=1e-12)
    assert set(result["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert [c["key"] for c in result["classes"]] == FOLDERS
    assert [c["name"] for c in result["classes"]] == ["airport", "forest", "parking lot", "river"]
    assert result["counts"] == {"classes": 4, "images": len(labels), "evaluated": len(labels), "unreadable": 0}
    assert result["templates"] == read_templates() and result["model"] == model_name
    assert result["checkpoint"] == str(checkpoints / checkpoint) and result["split"] == "test"
    predicted = [min(range(4), key=lambda c: (-row[c], c)) for row in scores.tolist()]
    recall = {n: sum(p == y == i for p, y in zip(predicted, labels)) / labels.count(i)
              for i, n in enumerate(["airport", "forest", "parking lot", "river"])}
    assert result["per_class_recall"] == pytest.approx(recall)
    # The table and the names used are printed.
    assert "'parking lot'" in stdout and f"{100 * result['metrics']['acc1']:.2f}" in stdout

    with open(tmp_path / "pred.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(labels) and list(rows[0])[:4] == ["file", "true_class", "pred_1", "score_1"]
    assert sum(r["pred_1"] == r["true_class"] for r in rows) / len(rows) == pytest.approx(result["metrics"]["acc1"])
    # Scores are the cosine similarities of the reference, best first: the classifier is CLIP's.
    saved = torch.tensor([[float(r[f"score_{k}"]) for k in range(1, 5)] for r in rows], dtype=torch.float64)
    assert torch.allclose(saved, scores.double().sort(dim=1, descending=True).values, atol=2e-5)
    airport = sorted(os.listdir(data / "Airport"))
    assert rows[0]["file"] == os.path.join("Airport", airport[len(airport) * 4 // 5])
    with Image.open(tmp_path / "cm.png") as image:
        assert image.width > 4 * 22 and image.height > 4 * 22


def test_train_split_through_the_module_entry_point(synthetic_data, checkpoints, tmp_path):
    out = tmp_path / "train.json"
    proc = subprocess.run([sys.executable, "-m", "pir_clip", "zeroshot", "--model-name", "CLIP-tiny", "--checkpoint",
                           str(checkpoints / "clip.pt"), "--data", str(synthetic_data / "classification"),
                           "--split", "train", "--output", str(out), "--workers", "0", "--quiet"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    per_class = len(os.listdir(synthetic_data / "classification" / "Airport"))
    assert result["split"] == "train"
    assert result["counts"]["evaluated"] == 4 * (per_class * 4 // 5)
    assert "chance top-1 25.00%" in proc.stdout


def test_unreadable_images_are_skipped_and_counted(synthetic_data, checkpoints, tmp_path, capsys):
    data = tmp_path / "scenes"
    shutil.copytree(synthetic_data / "classification", data)
    clean = tmp_path / "clean.json"
    args = ["--model-name", "CLIP-tiny", "--checkpoint", checkpoints / "clip.pt", "--workers", 0, "--quiet"]
    assert zeroshot([*args, "--data", data, "--output", clean], capsys)[0] == 0
    (data / "Airport" / "airport_00_broken.jpg").write_bytes(b"not a jpeg at all")
    good = next((data / "River").glob("*.png")).read_bytes()
    (data / "River" / "river_00_truncated.png").write_bytes(good[: len(good) // 3])
    damaged = tmp_path / "damaged.json"
    code, stdout, err = zeroshot([*args, "--data", data, "--output", damaged], capsys)
    assert code == 0, err
    result, before = json.loads(damaged.read_text()), json.loads(clean.read_text())
    assert result["counts"]["unreadable"] == 2 and result["counts"]["images"] == before["counts"]["images"] + 2
    assert sorted(os.path.basename(u["file"]) for u in result["unreadable"]) == [
        "airport_00_broken.jpg", "river_00_truncated.png"]
    assert result["metrics"] == before["metrics"]  # the good images score exactly as before
    assert "skipped 2 of" in err and "airport_00_broken.jpg" in err and "2 unreadable, skipped" in stdout


def one_line_error(code, err, *needles):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_input_is_one_line(synthetic_data, tmp_path, capsys):
    base = ["--model-name", "CLIP-tiny", "--workers", 0, "--quiet", "--output", tmp_path / "x.json"]
    templates = tmp_path / "templates.txt"
    templates.write_text("a satellite image of {}.\nan aerial photo of a\n")
    one_line_error(*zeroshot([*base, "--data", synthetic_data / "classification", "--templates", templates],
                             capsys)[::2], "--templates", "line 2", "{}")
    templates.write_text("a photo of {name}.\n")
    one_line_error(*zeroshot([*base, "--data", synthetic_data / "classification", "--templates", templates],
                             capsys)[::2], "line 1")

    data = tmp_path / "scenes"
    shutil.copytree(synthetic_data / "classification", data)
    (data / "Desert").mkdir()
    one_line_error(*zeroshot([*base, "--data", data], capsys)[::2], str(data / "Desert"), "no images")
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in list((synthetic_data / "classification" / "Forest").iterdir())[:3]:
        shutil.copy(path, flat)
    one_line_error(*zeroshot([*base, "--data", flat], capsys)[::2], str(flat), "class subfolders")
    one_line_error(*zeroshot([*base, "--data", tmp_path / "nowhere"], capsys)[::2], "nowhere")
    one_line_error(*zeroshot([*base, "--data", synthetic_data / "classification", "--bands", "4,3,2"],
                             capsys)[::2], "none of the", "band")


@pytest.mark.parametrize("name", ["zeroshot", "linear-probe"])
def test_subcommand_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "--data" in out and "--classnames" in out and "--model-name" in out
