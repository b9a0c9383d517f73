"""Data parallelism: a 2-process torchrun step equals one process on the concatenated batch; the CLI runs
under torchrun on CPU (gloo, no device_ids)."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")


def env():
    # One thread per worker: two OpenMP pools spinning on two cores would slow everything down 10x.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([ROOT + "/src", ROOT + "/tests/training"])}


def torchrun(args, timeout=300):
    cmd = [TORCHRUN, "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000)] + args
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def run_step_check(tmp_path, *variants):
    """Runs ddp_step_check.py under torchrun (2 ranks) and in one process; returns {variant: (ddp, single)}."""
    proc = torchrun(["tests/training/ddp_step_check.py", str(tmp_path), *variants])
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([sys.executable, "tests/training/ddp_step_check.py", str(tmp_path), *variants], cwd=ROOT,
                          env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {v: tuple(torch.load(tmp_path / f"{v}-{kind}.pt", weights_only=True) for kind in ("ddp", "single"))
            for v in variants}


def assert_same_step(ddp, single):
    for name, value in single["losses"].items():
        assert torch.allclose(ddp["losses"][name], value, atol=1e-5), name
    assert set(ddp["grads"]) == set(single["grads"])
    for name, grad in single["grads"].items():
        scale = grad.abs().max().clamp_min(1e-3)
        assert (ddp["grads"][name] - grad).abs().max() <= 1e-4 * scale, name
    for name, value in single["state_dict"].items():
        assert torch.allclose(ddp["state_dict"][name].float(), value.float(), atol=1e-6, rtol=1e-5), name


def test_two_process_step_equals_one_process_on_the_whole_batch(tmp_path):
    ddp, single = run_step_check(tmp_path, "plain")["plain"]
    assert set(ddp["losses"]) == {"contrastive_loss", "affiliation_loss", "loss"}
    assert single["losses"]["affiliation_loss"] > 0
    assert any(k.startswith("vir.") for k in single["grads"]) and any(k.startswith("lca.") for k in single["grads"])
    assert_same_step(ddp, single)


def test_sync_batchnorm_on_cpu_makes_two_ranks_one_batch(tmp_path):
    """--use-bn-sync with a trained prior: BatchNorm statistics over both ranks' samples, so the 2-rank step
    (gradients, BatchNorm running statistics, parameters) equals one process on the whole batch. Without the
    conversion each rank normalises its half-batch alone and the step differs."""
    steps = run_step_check(tmp_path, "sync_bn", "local_bn")
    ddp, single = steps["sync_bn"]
    assert any(k.startswith("prior.") for k in single["grads"])
    assert_same_step(ddp, single)
    local_ddp, local_single = steps["local_bn"]
    stats = "prior.trunk.bn1.running_mean"
    torch.testing.assert_close(local_single["state_dict"][stats], single["state_dict"][stats])
    assert not torch.allclose(local_ddp["state_dict"][stats], local_single["state_dict"][stats], atol=1e-6)
    assert not torch.allclose(local_ddp["grads"]["prior.trunk.conv1.weight"],
                              local_single["grads"]["prior.trunk.conv1.weight"], atol=1e-6)


def test_training_cli_under_torchrun_with_sharded_validation(synthetic_data, tmp_path):
    """Under torchrun every rank encodes half the validation set; the metrics the master logs equal a
    single-process retrieval.py evaluation of the checkpoint saved right after."""
    data = synthetic_data / "dataset_synthetic.json"
    proc = torchrun(["-m", "training.main", "--model", "PIR-tiny", "--is_aff_loss", "--gather-with-grad",
                     "--train-data", str(data), "--dataset-type", "json",
                     "--batch-size", "4", "--epochs", "1", "--workers", "0", "--precision", "fp32",
                     "--lr", "1e-4", "--warmup", "2", "--logs-dir", str(tmp_path), "--name", "ddp",
                     "--log-every-n-steps", "1", "--val-data", str(data), "--val-split", "test",
                     "--val-batch-size", "4"])
    log = (tmp_path / "ddp" / "out.log").read_text() if (tmp_path / "ddp" / "out.log").exists() else ""
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Affiliation_loss" in log
    checkpoints = tmp_path / "ddp" / "checkpoints"
    ckpt = torch.load(checkpoints / "epoch_1.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])

    logged = json.loads((checkpoints / "results.jsonl").read_text().splitlines()[-1])
    single = subprocess.run([sys.executable, "retrieval.py", "--model-name", "PIR-tiny", "--remoteclip-path",
                             str(checkpoints / "epoch_1.pt"), "--retrieval-json-dir", str(data), "--split", "test",
                             "--batch-size", "4", "--workers", "0", "--output", str(tmp_path / "single.json"),
                             "--quiet"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    metrics = json.loads((tmp_path / "single.json").read_text())["metrics"]
    assert {k: logged[k] for k in metrics} == pytest.approx(metrics, abs=1e-9)
