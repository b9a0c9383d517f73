"""retrieval.py end to end: data formats, models, checkpoints, saved outputs and clear errors."""
import json
import os
import subprocess
import sys

import open_clip
import pytest
import torch

import pir_clip
from pir_clip.evaluation.metrics import MEAN_RECALL_NAME, RECALL_NAMES, retrieval_metrics
from pir_clip.cli import retrieval_main as main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    clip = open_clip.create_model("CLIP-tiny")
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in clip.state_dict().items()}}, out / "clip.pt")
    pir = pir_clip.create_model("PIR-tiny", pretrained=str(out / "clip.pt"))
    for name, param in pir.named_parameters():
        if ".head." in name:
            torch.nn.init.normal_(param, std=0.02)
    torch.save(pir.state_dict(), out / "pir.pt")
    return out


@pytest.mark.parametrize("model_name,ckpt", [("PIR-tiny", "pir.pt"), ("CLIP-tiny", "clip.pt")])
@pytest.mark.parametrize("source", ["json", "csv"])
def test_end_to_end(synthetic_data, tiny_checkpoints, tmp_path, capsys, model_name, ckpt, source):
    data = synthetic_data / ("dataset_synthetic.json" if source == "json" else "csv/test.csv")
    out_json, out_emb = tmp_path / "results.json", tmp_path / "emb.pt"
    code, stdout, stderr = run_cli([
        "--model-name", model_name, "--remoteclip-path", tiny_checkpoints / ckpt,
        "--retrieval-json-dir", data, "--retrieval-images-dir", synthetic_data / "images",
        "--output", out_json, "--save-embeddings", out_emb, "--batch-size", 5, "--workers", 0, "--quiet"], capsys)
    assert code == 0, stderr
    result = json.loads(out_json.read_text())
    test_images = [e for e in json.loads((synthetic_data / "dataset_synthetic.json").read_text())["images"]
                   if e["split"] == "test"]
    assert result["num_images"] == len(test_images) and result["num_captions"] == 5 * len(test_images)
    assert {os.path.splitext(e["filename"])[1] for e in test_images} >= {".tif", ".jpg"}
    assert result["model"] == model_name and result["split"] == "test"
    metrics = result["metrics"]
    assert set(RECALL_NAMES) | {MEAN_RECALL_NAME} <= set(metrics)
    assert metrics[MEAN_RECALL_NAME] == pytest.approx(sum(metrics[n] for n in RECALL_NAMES) / 6)
    assert "mR" in stdout and f"{metrics[MEAN_RECALL_NAME]:.2f}" in stdout
    saved = torch.load(out_emb, weights_only=True)
    assert saved["image_embeddings"].shape == (len(test_images), 128)
    assert saved["text_embeddings"].shape == (5 * len(test_images), 128)
    assert torch.allclose(saved["image_embeddings"].norm(dim=1), torch.ones(len(test_images)), atol=1e-5)
    assert len(saved["captions"]) == len(saved["text_to_image"]) == 5 * len(test_images)
    assert sorted(saved["image_files"]) == sorted(e["filename"] for e in test_images)
    recomputed = retrieval_metrics(saved["image_embeddings"], saved["text_embeddings"], saved["text_to_image"])
    assert recomputed == metrics


def test_json_and_csv_give_the_same_metrics(synthetic_data, tiny_checkpoints, tmp_path, capsys):
    results = []
    for data in ("dataset_synthetic.json", "csv/test.csv", "pir_itr_test.json"):
        out = tmp_path / f"{os.path.basename(data)}.json"
        code, _, err = run_cli(["--model-name", "PIR-tiny", "--remoteclip-path", tiny_checkpoints / "pir.pt",
                                "--retrieval-json-dir", synthetic_data / data,
                                "--retrieval-images-dir", synthetic_data / "images", "--output", out,
                                "--workers", 0, "--quiet"], capsys)
        assert code == 0, err
        results.append(json.loads(out.read_text())["metrics"])
    assert results[0] == results[1] == results[2]


def test_visualization(synthetic_data, tiny_checkpoints, tmp_path, capsys):
    png = tmp_path / "fig.png"
    code, _, err = run_cli(["--model-name", "PIR-tiny", "--remoteclip-path", tiny_checkpoints / "pir.pt",
                            "--retrieval-json-dir", synthetic_data / "dataset_synthetic.json",
                            "--retrieval-images-dir", synthetic_data / "images", "--output", tmp_path / "r.json",
                            "--save-visualization", png, "--workers", 0, "--quiet"], capsys)
    assert code == 0, err
    from PIL import Image
    with Image.open(png) as im:
        assert im.width > 5 * 64 and im.height > 200


def test_release_checkpoint_through_the_authors_command_line(synthetic_data, tmp_path):
    """The exact command of the README and the authors' release, on a random release-format ViT-B/32+RN50."""
    torch.manual_seed(0)
    release = pir_clip.create_model("PIR-release")
    ckpt = tmp_path / "PIR-CLIP_RET-3.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v.half() for k, v in release.state_dict().items()}}, ckpt)
    del release
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "retrieval.py", "--model-name", "PIR", "--retrieval-images-dir", synthetic_data / "images",
         "--retrieval-json-dir", synthetic_data / "dataset_synthetic.json", "--remoteclip-path", ckpt,
         "--output", out, "--workers", "0", "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["architecture"] == "PIRRelease"
    assert 0 <= result["metrics"][MEAN_RECALL_NAME] <= 100


def test_missing_images_are_listed_once(synthetic_data, tmp_path, capsys):
    data = json.loads((synthetic_data / "dataset_synthetic.json").read_text())
    for entry in data["images"][:7]:
        entry["split"] = "test"
        entry["filename"] = "gone_" + entry["filename"]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    code, _, err = run_cli(["--model-name", "CLIP-tiny", "--retrieval-json-dir", path,
                            "--retrieval-images-dir", synthetic_data / "images"], capsys)
    assert code == 2
    assert "7" in err and "gone_" in err and "Traceback" not in err
    assert err.count("error:") == 1


@pytest.mark.parametrize("case", ["no_test_split", "image_without_captions", "unknown_model"])
def test_clear_errors(synthetic_data, tmp_path, capsys, case):
    data = json.loads((synthetic_data / "dataset_synthetic.json").read_text())
    model = "CLIP-tiny"
    expect = []
    if case == "no_test_split":
        for entry in data["images"]:
            entry["split"] = "train" if entry["split"] == "test" else entry["split"]
        expect = ["test", "train", "val"]
    elif case == "image_without_captions":
        entry = next(e for e in data["images"] if e["split"] == "test")
        entry["sentences"] = []
        expect = [entry["filename"]]
    else:
        model = "PIR-tinyy"
        expect = ["PIR-tiny"]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data))
    code, _, err = run_cli(["--model-name", model, "--retrieval-json-dir", path,
                            "--retrieval-images-dir", synthetic_data / "images"], capsys)
    assert code == 2 and "Traceback" not in err
    for word in expect:
        assert word in err
