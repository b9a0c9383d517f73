"""Scale-out: a 2-process torchrun index equals the 1-process one; a rank that fails or dies does not leave the
others waiting forever, and the work it finished is kept."""
import os
import shutil
import socket
import subprocess
import sys

import pytest

from pir_clip.cli import main
from pir_clip.search.ranks import RankFailedError, Ranks, split_evenly
from pir_clip.search.shards import list_shards
from search_helpers import ROOT, assert_same_index, env, index_args, write_scene

TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
FAULT_SCRIPT = os.path.join(os.path.dirname(__file__), "index_with_fault.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def inputs(synthetic_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun")
    scene = write_scene(root / "scene.tif", width=100, height=70, nodata_block=(32, 70, 0, 36))
    return [synthetic_data / "images", synthetic_data / "shards/rs5m/val-000000.tar"], scene


def test_split_evenly():
    assert [list(r) for r in split_evenly(7, 3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [len(r) for r in split_evenly(1, 4)] == [1, 0, 0, 0]


def test_two_process_torchrun_index_equals_one_process(inputs, tiny_checkpoint, tmp_path, capsys):
    paths, scene = inputs
    args = index_args(paths, tmp_path / "ddp", tiny_checkpoint, "--scenes", scene, "--chip-size", "32",
                      "--shard-size", "8")
    proc = subprocess.run([TORCHRUN, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "pir_clip",
                           "index"] + args, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 ranks" in proc.stdout and proc.stdout.count("Index ") == 1  # one summary, from rank 0
    shards = [os.path.basename(p) for p in list_shards(tmp_path / "ddp" / "shards")]
    assert any("-r000-" in s for s in shards) and any("-r001-" in s for s in shards)
    assert main(["index"] + index_args(paths, tmp_path / "single", tiny_checkpoint, "--scenes", scene,
                                       "--chip-size", "32")) == 0
    capsys.readouterr()
    assert_same_index(tmp_path / "ddp", tmp_path / "single", atol=1e-3)


def launch_two_ranks(args, fault_rank_env, timeout=240):
    """Starts ranks 0 and 1 of a 2-process run by hand (no torchrun to tear the others down on a failure),
    the fault injected into rank 1 only."""
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        rank_env = env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=port, PIR_CLIP_TEST_FAULT=fault_rank_env if rank == 1 else "")
        procs.append(subprocess.Popen([sys.executable, FAULT_SCRIPT, "index"] + [str(a) for a in args], cwd=ROOT,
                                      env=rank_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=timeout)
        results.append((proc.returncode, stdout, stderr))
    return results


def test_a_failing_rank_stops_rank_0_and_a_rerun_resumes(inputs, tiny_checkpoint, tmp_path, capsys):
    paths, _ = inputs
    out = tmp_path / "index"
    args = index_args(paths, out, tiny_checkpoint, "--shard-size", "4")
    (code0, _, err0), (code1, _, err1) = launch_two_ranks(args, "raise-on-rank:1")
    assert code1 == 1 and "injected failure while embedding" in err1
    assert code0 == 2, err0[-2000:]
    assert "error: rank 1 failed: RuntimeError: injected failure while embedding" in err0 and "resume" in err0
    assert not (out / "manifest.json").exists()
    kept = list_shards(out / "shards")
    assert kept and all("-r000-" in os.path.basename(p) for p in kept)  # rank 0's half is kept
    assert main(["index"] + args) == 0
    assert "reused 22" in capsys.readouterr().out  # rank 0's 22 of 44 items were not embedded again


def test_a_rank_killed_without_a_word_times_out(inputs, tiny_checkpoint, tmp_path):
    paths, _ = inputs
    args = index_args(paths, tmp_path / "index", tiny_checkpoint, "--shard-size", "4", "--rank-timeout", "4")
    (code0, _, err0), (code1, _, _) = launch_two_ranks(args, "kill-after-shards:0")
    assert code1 == -9
    assert code0 == 2 and "rank 1 has not reported progress for 4 s" in err0


def test_wait_for_others_reads_markers(tmp_path):
    ranks = Ranks(rank=0, world_size=3, local_rank=0, run_id="r", marker_dir=str(tmp_path), timeout=60)
    (tmp_path / ".run-r-rank1.done").write_text("done")
    (tmp_path / ".run-r-rank2.failed").write_text("OSError: disk full")
    with pytest.raises(RankFailedError, match="rank 2 failed: OSError: disk full"):
        ranks.wait_for_others()
    (tmp_path / ".run-r-rank2.failed").unlink()
    (tmp_path / ".run-r-rank2.done").write_text("done")
    ranks.wait_for_others()
    ranks.cleanup()
    assert not any(name.startswith(".run-r-") for name in os.listdir(tmp_path))
