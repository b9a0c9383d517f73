"""`python -m training.main` end to end on generated data: every input format, validation, checkpoints,
resume, a SIGKILL mid-run, and bad input."""
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time

import pytest
import torch

from test_data import write_shard

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def train_cmd(logs, name, data_args, *extra, epochs=3):
    return [sys.executable, "-m", "training.main", "--model", "PIR-tiny", "--is_aff_loss",
            "--batch-size", "8", "--epochs", str(epochs), "--lr", "1e-3", "--warmup", "2", "--workers", "0",
            "--precision", "fp32", "--logs", str(logs), "--name", name, "--log-every-n-steps", "2",
            "--seed", "0", *data_args, *[str(e) for e in extra]]


def run(cmd, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def epoch_losses(log: str):
    return [float(x) for x in re.findall(r"Finished epoch \d+: .*? loss ([0-9.]+)", log)]


def data_args(synthetic_data, fmt):
    shards = "train-{000000..000001}.tar"
    return {
        "rs5m": ["--train-data", str(synthetic_data / "shards" / "rs5m" / shards), "--dataset-type", "webdataset"],
        "openclip": ["--train-data", str(synthetic_data / "shards" / "openclip" / shards),
                     "--dataset-type", "webdataset"],
        "csv": ["--train-data", str(synthetic_data / "csv" / "train.csv"), "--dataset-type", "csv",
                "--csv-separator", ",", "--csv-img-key", "filename", "--csv-caption-key", "title",
                "--train-images-dir", str(synthetic_data / "images")],
        "json": ["--train-data", str(synthetic_data / "dataset_synthetic.json"), "--dataset-type", "json"],
    }[fmt]


@pytest.mark.parametrize("fmt", ["rs5m", "openclip", "csv", "json"])
def test_every_input_format_trains(synthetic_data, tmp_path, fmt):
    assert len(list((synthetic_data / "shards" / "openclip").glob("train-*.tar"))) == 2
    proc = run(train_cmd(tmp_path, fmt, data_args(synthetic_data, fmt), "--report-to", "tensorboard",
                         "--val-data", synthetic_data / "dataset_synthetic.json", "--val-split", "test"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / fmt
    log = (run_dir / "out.log").read_text()
    losses = epoch_losses(log)
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    assert "Affiliation_loss" in log and "Contrastive_loss" in log
    checkpoints = run_dir / "checkpoints"
    for name in ("epoch_1.pt", "epoch_2.pt", "epoch_3.pt", "epoch_latest.pt", "epoch_best.pt"):
        assert (checkpoints / name).is_file(), name
    final = torch.load(checkpoints / "epoch_3.pt", weights_only=True)
    assert final["epoch"] == 3 and set(final) >= {"name", "state_dict", "optimizer", "step"}
    results = [json.loads(line) for line in (checkpoints / "results.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in results] == [1, 2, 3]
    assert all(0 <= r["retrieval-mean-recall"] <= 100 for r in results)
    best = torch.load(checkpoints / "epoch_best.pt", weights_only=True)
    assert best["best_mean_recall"] == pytest.approx(max(r["retrieval-mean-recall"] for r in results))
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_latest_continues_epoch_and_step(synthetic_data, tmp_path):
    args = data_args(synthetic_data, "json")
    first = run(train_cmd(tmp_path, "resume", args, epochs=2))
    assert first.returncode == 0, first.stderr[-3000:]
    steps_per_epoch = torch.load(tmp_path / "resume/checkpoints/epoch_1.pt", weights_only=True)["step"]
    again = run(train_cmd(tmp_path, "resume", args, "--resume", "latest", epochs=3))
    assert again.returncode == 0, again.stderr[-3000:]
    log = (tmp_path / "resume" / "out.log").read_text()
    second_run = log[log.index("--resume latest"):]
    assert f"(epoch 2, step {2 * steps_per_epoch})" in second_run
    assert "Start epoch 2" in second_run and "Start epoch 0" not in second_run
    assert torch.load(tmp_path / "resume/checkpoints/epoch_3.pt", weights_only=True)["step"] == 3 * steps_per_epoch
    # Without --resume the finished run is not overwritten.
    refused = run(train_cmd(tmp_path, "resume", args))
    assert refused.returncode != 0 and "already exists" in refused.stderr


def test_sigkill_mid_training_then_resume(synthetic_data, tmp_path):
    args = data_args(synthetic_data, "json")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen(train_cmd(tmp_path, "killed", args, epochs=200), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log_path = tmp_path / "killed" / "out.log"
    deadline = time.time() + 240
    while time.time() < deadline:
        if log_path.exists() and "Start epoch 3" in log_path.read_text():
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the run did not reach epoch 3")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    checkpoints = tmp_path / "killed" / "checkpoints"
    for path in checkpoints.glob("*.pt"):  # every checkpoint on disk is complete
        torch.load(path, weights_only=True)
    latest = torch.load(checkpoints / "epoch_latest.pt", weights_only=True)["epoch"]
    assert latest >= 3
    # A save interrupted by the kill would leave only a temporary file: resume must ignore and remove it.
    (checkpoints / "epoch_latest.pt.999.tmp").write_bytes(b"partial")
    resumed = run(train_cmd(tmp_path, "killed", args, "--resume", "latest", epochs=latest + 1))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = log_path.read_text()
    assert f"(epoch {latest}," in log[log.rindex("--resume latest"):]
    assert not list(checkpoints.glob("*.tmp"))
    assert torch.load(checkpoints / "epoch_latest.pt", weights_only=True)["epoch"] == latest + 1


def read_samples(shard):
    with tarfile.open(shard) as tar:
        grouped = {}
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            grouped.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return list(grouped.items())


def test_bad_samples_are_skipped_counted_and_reported(synthetic_data, tmp_path):
    samples = read_samples(synthetic_data / "shards" / "openclip" / "train-000000.tar")
    good_image = next(m for _, m in samples if "png" in m)["png"]
    samples.insert(3, ("c0/airport_99", {"png": b"this is not a png", "txt": b"a broken image"}))
    samples.insert(7, ("c0/forest_99", {"png": good_image}))  # no caption
    shard = tmp_path / "bad-000000.tar"
    write_shard(shard, samples)
    proc = run(train_cmd(tmp_path, "bad", ["--train-data", str(shard), "--dataset-type", "webdataset",
                                           "--train-num-samples", str(len(samples))], epochs=1))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "bad" / "out.log").read_text()
    # The epoch draws ceil(n / batch) full batches, so the shard may be read a second time: each bad sample
    # is counted every time it is met, and the report equals the skips logged.
    report = re.search(r"skipped (\d+) bad training samples \((\d+) corrupt image, (\d+) missing caption\)", log)
    assert report, log[-2000:]
    total, corrupt, no_caption = map(int, report.groups())
    assert corrupt >= 1 and no_caption >= 1 and total == corrupt + no_caption
    assert total == log.count("skipping training sample")
    assert (tmp_path / "bad" / "checkpoints" / "epoch_1.pt").is_file()


def test_missing_image_in_json_fails_before_training(synthetic_data, tmp_path):
    data = json.loads((synthetic_data / "dataset_synthetic.json").read_text())
    entry = next(e for e in data["images"] if e["split"] == "train")
    entry["filename"] = "airport_404.png"
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(data))
    proc = run(train_cmd(tmp_path, "missing", ["--train-data", str(path), "--dataset-type", "json",
                                               "--train-images-dir", str(synthetic_data / "images")]))
    assert proc.returncode == 2
    log = (tmp_path / "missing" / "out.log").read_text()
    assert "airport_404.png" in log and "Traceback" not in proc.stderr
    assert "Start epoch" not in log
    assert not list((tmp_path / "missing" / "checkpoints").glob("*.pt"))


def test_affiliation_loss_without_image_names_is_a_clear_error(synthetic_data, tmp_path):
    samples = read_samples(synthetic_data / "shards" / "rs5m" / "train-000000.tar")
    stripped = [(key, {k: v for k, v in m.items() if k != "img_name"}) for key, m in samples]
    shard = tmp_path / "noname-000000.tar"
    write_shard(shard, stripped)
    proc = run(train_cmd(tmp_path, "noname", ["--train-data", str(shard), "--dataset-type", "webdataset",
                                              "--train-num-samples", "40"]))
    assert proc.returncode == 2
    log = (tmp_path / "noname" / "out.log").read_text()
    assert "--is_aff_loss" in log and "img_name" in log and "Traceback" not in proc.stderr
