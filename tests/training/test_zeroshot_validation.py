"""Zero-shot validation during training (``--zeroshot-data`` with open_clip's ``--zeroshot-frequency``): a tiny
run logs it, writes tensorboard scalars and results.jsonl lines, and its numbers equal ``pir-clip zeroshot`` on
the saved checkpoint."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from training.zeroshot import zeroshot_due

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(cmd):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def train_cmd(logs, name, synthetic_data, zeroshot_data, *extra):
    return [sys.executable, "-m", "training.main", "--model", "CLIP-tiny", "--train-data",
            str(synthetic_data / "dataset_synthetic.json"), "--dataset-type", "json", "--batch-size", "8",
            "--epochs", "2", "--lr", "1e-3", "--warmup", "2", "--workers", "0", "--precision", "fp32",
            "--logs", str(logs), "--name", name, "--seed", "0", "--zeroshot-data", str(zeroshot_data), *extra]


@pytest.mark.parametrize("frequency,epochs,due", [(1, 3, [1, 2, 3]), (2, 3, [2, 3]), (2, 4, [2, 4]), (0, 3, [])])
def test_open_clip_frequency_rule(frequency, epochs, due):
    args = SimpleNamespace(zeroshot_frequency=frequency, epochs=epochs)
    assert [e for e in range(1, epochs + 1) if zeroshot_due(e, args)] == due


def test_tiny_run_logs_zero_shot_and_matches_the_command(synthetic_data, tmp_path):
    data = synthetic_data / "classification"
    proc = run(train_cmd(tmp_path, "zs", synthetic_data, data, "--zeroshot-frequency", "1", "--report-to",
                         "tensorboard", "--val-data", str(synthetic_data / "dataset_synthetic.json"),
                         "--val-split", "test"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "zs"
    log = (run_dir / "out.log").read_text()
    assert "Zero-shot Epoch: 1" in log and "Zero-shot Epoch: 2" in log
    assert "Zero-shot validation set: 100 images in 4 classes" in log
    lines = [json.loads(line) for line in (run_dir / "checkpoints" / "results.jsonl").read_text().splitlines()]
    zeroshot = [r for r in lines if "zeroshot-val-acc1" in r]
    retrieval = [r for r in lines if "retrieval-mean-recall" in r]
    assert [r["epoch"] for r in zeroshot] == [1, 2] and [r["epoch"] for r in retrieval] == [1, 2]
    for r in zeroshot:
        assert set(r) == {"epoch", "zeroshot-val-acc1", "zeroshot-val-acc5", "zeroshot-val-mean_per_class_recall"}
        assert 0 <= r["zeroshot-val-acc1"] <= r["zeroshot-val-acc5"] <= 1

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"val/zeroshot-val-acc1", "val/zeroshot-val-acc5", "val/zeroshot-val-mean_per_class_recall",
            "val/retrieval-mean-recall"} <= set(scalars)
    assert [e.step for e in events.Scalars("val/zeroshot-val-acc1")] == [1, 2]
    assert events.Scalars("val/zeroshot-val-acc1")[-1].value == pytest.approx(zeroshot[-1]["zeroshot-val-acc1"])

    # The same model scored by the command gives the same numbers.
    out = tmp_path / "command.json"
    command = run([sys.executable, "-m", "pir_clip", "zeroshot", "--model-name", "CLIP-tiny", "--checkpoint",
                   str(run_dir / "checkpoints" / "epoch_2.pt"), "--data", str(data), "--output", str(out),
                   "--workers", "0", "--quiet"])
    assert command.returncode == 0, command.stderr
    metrics = json.loads(out.read_text())["metrics"]
    assert {f"zeroshot-val-{k}": v for k, v in metrics.items()} == pytest.approx(
        {k: v for k, v in zeroshot[-1].items() if k != "epoch"}, abs=1e-9)


def test_bad_zeroshot_data_stops_before_training(synthetic_data, tmp_path):
    empty = tmp_path / "scenes"
    (empty / "Airport").mkdir(parents=True)
    (empty / "Beach").mkdir()
    proc = run(train_cmd(tmp_path, "bad", synthetic_data, empty))
    assert proc.returncode == 2
    log = (tmp_path / "bad" / "out.log").read_text()
    assert "holds no image files" in log and str(empty) in log and "Start epoch" not in log
