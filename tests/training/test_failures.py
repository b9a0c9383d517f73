"""A failing rank ends the job (training/failures.py): under torchrun, when one rank raises, every rank exits
non-zero, the failing one with its traceback, the others with a line naming it; no rank waits for ever in a
collective. torchrun's own monitor is slowed to 20 s so the ranks must end the job by themselves (as they
must under launchers that do not kill siblings, e.g. one process per node)."""
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")


def torchrun_training(tmp_path, synthetic_data, name, extra_env=None, timeout=240):
    """Runs 2 ranks of training.main; returns (torchrun's result, {rank: that rank's stderr})."""
    logs = tmp_path / "torchrun"
    cmd = [TORCHRUN, "--nproc_per_node", "2", "--master_port", str(29700 + os.getpid() % 200),
           "--monitor-interval", "20", "--log-dir", str(logs), "--redirects", "3",
           "-m", "training.main", "--model", "PIR-tiny", "--is_aff_loss",
           "--train-data", str(synthetic_data / "dataset_synthetic.json"), "--dataset-type", "json",
           "--batch-size", "4", "--epochs", "2", "--workers", "0", "--precision", "fp32", "--lr", "1e-4",
           "--warmup", "1", "--logs-dir", str(tmp_path), "--name", name, "--log-every-n-steps", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.join(ROOT, "src"), **(extra_env or {})}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    stderr = {int(p.parent.name): p.read_text() for p in logs.rglob("stderr.log")}
    return proc, stderr


def exit_codes(torchrun_output):
    """{rank: exit code} from torchrun's failure summary."""
    return {int(rank): int(code) for rank, code in
            re.findall(r"rank\s*:\s*(\d+) \(local_rank.*?\n\s*exitcode\s*:\s*(-?\d+)", torchrun_output)}


def test_a_rank_that_raises_ends_every_rank(synthetic_data, tmp_path):
    proc, stderr = torchrun_training(tmp_path, synthetic_data, "raises", {"PIR_CLIP_FAIL_AT_STEP": "1:2"})
    assert proc.returncode != 0
    codes = exit_codes(proc.stderr)
    assert set(codes) == {0, 1} and all(code != 0 for code in codes.values()), proc.stderr[-3000:]
    # The failing rank: its traceback, down to the line that raised.
    assert "Training failed on rank 1" in stderr[1] and "Traceback (most recent call last)" in stderr[1]
    assert "InjectedFailure: PIR_CLIP_FAIL_AT_STEP=1:2" in stderr[1]
    # The other rank: stopped by the failure, said so in one line, without a traceback of its own.
    assert "Stopping rank 0: rank 1 failed" in stderr[0], stderr[0][-3000:]
    assert "Traceback" not in stderr[0]


def test_a_user_error_on_one_rank_ends_every_rank_without_a_traceback(synthetic_data, tmp_path):
    """Only the master checks the run folder: the run exists, so rank 0 refuses (exit 2, one line) while rank 1
    has already started; rank 1 must not wait for rank 0 for ever."""
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "out.log").write_text("an earlier run\n")
    proc, stderr = torchrun_training(tmp_path, synthetic_data, "exists")
    codes = exit_codes(proc.stderr)
    assert codes.get(0) == 2 and codes.get(1, 1) != 0, proc.stderr[-3000:]
    assert "RunExistsError: experiment" in stderr[0] and "already exists" in stderr[0]
    assert "Traceback" not in stderr[0] and "Traceback" not in stderr[1]
    assert "Stopping rank 1: rank 0 failed" in stderr[1], stderr[1][-3000:]
