"""open_clip's training flags through the CLI (``python -m training.main``, tiny model, tiny data), each with an
assertion that fails when the flag is ignored.

Runs are made comparable: PIR-release-tiny (no dropout anywhere; its prior has BatchNorm) starts from the same
weights file, augmentation is the identity crop (the whole square image), the optimizer is plain SGD at a
constant rate, and an epoch is 2 steps (20 captions, batch 8): a random tiny prior with BatchNorm over a few
samples amplifies float rounding chaotically within a few more steps (a 1e-7 nudge of the weights moves them
by 1e-2 after 3 steps), which would hide what the flags do. Then a run
with the flag is checked against a reference run of one process on the whole batch of 8: the same weights
where the flag must not change the maths (accumulation, local loss, checkpointing, BatchNorm sync), other
weights where it must (bf16), untouched weights where it locks them.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from pir_clip import create_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
MODEL = "PIR-release-tiny"


@pytest.fixture(scope="module")
def runs(synthetic_data, tmp_path_factory):
    """train(name, *flags, batch=8, ranks=1) -> finished run; reference runs are cached by name."""
    root = tmp_path_factory.mktemp("cli_flags")
    torch.manual_seed(0)
    start = root / "start.pt"
    torch.save(create_model(MODEL).state_dict(), start)
    annotations = json.loads((synthetic_data / "dataset_synthetic.json").read_text())
    annotations["images"] = [e for e in annotations["images"] if e["split"] == "train"][:4]
    assert sum(len(e["sentences"]) for e in annotations["images"]) == 20
    train_json = root / "train.json"
    train_json.write_text(json.dumps(annotations))
    cache = {}

    def train(name, *flags, batch=8, ranks=1):
        if name in cache:
            return cache[name]
        args = ["--model", MODEL, "--pretrained", str(start), "--is_aff_loss",
                "--train-data", str(train_json), "--train-images-dir", str(synthetic_data / "images"),
                "--dataset-type", "json",
                "--batch-size", str(batch), "--epochs", "1", "--workers", "0", "--precision", "fp32",
                "--opt", "timm/momentum", "--momentum", "0", "--wd", "0", "--lr", "0.05", "--lr-scheduler", "const",
                "--warmup", "0", "--aug-cfg", "scale=(1.0,1.0)", "--seed", "0",
                "--log-every-n-steps", "1", "--logs-dir", str(root), "--name", name, *flags]
        env = {**os.environ, "OMP_NUM_THREADS": "1" if ranks > 1 else "2", "PYTHONPATH": os.path.join(ROOT, "src")}
        probe = root / f"{name}.probe.json"
        if ranks == 1:
            cmd = [sys.executable, "tests/training/cli_probe.py", str(probe), "--", *args]
        else:
            cmd = [TORCHRUN, "--nproc_per_node", str(ranks), "--master_port", str(29900 + len(cache) + os.getpid() % 50),
                   "-m", "training.main", *args]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        log = (root / name / "out.log").read_text()
        cache[name] = {
            "state": torch.load(root / name / "checkpoints" / "epoch_1.pt", weights_only=True)["state_dict"],
            "losses": [float(x) for x in re.findall(r" Loss: ([0-9.]+)", log)],
            "probe": json.loads(probe.read_text()) if probe.exists() else None,
            "log": log,
        }
        return cache[name]

    train.start = torch.load(start, weights_only=True)
    return train


def reference(runs):
    return runs("reference")  # one process, batch 8, frozen prior


def unlocked_reference(runs):
    return runs("reference-unlocked", "--unlock-prior")


def max_difference(a, b, keys=None):
    return max((a[k].float() - b[k].float()).abs().max().item() for k in (keys or a))


def assert_same_weights(got, want, atol=2e-6):
    assert set(got) == set(want)
    worst = max(want, key=lambda k: (got[k].float() - want[k].float()).abs().max().item())
    assert max_difference(got, want) <= atol, f"{worst} differs by {max_difference(got, want, [worst]):.3g}"


def relative_update_difference(got, want, start, names):
    """|update_got - update_want| / |update_want| over the tensors ``names`` together (update = weights - start)."""
    update, other = (torch.cat([(s[k].float() - start[k].float()).flatten() for k in names]) for s in (want, got))
    return ((update - other).norm() / update.norm()).item()


def keys(state, *prefixes):
    return [k for k in state if k.startswith(prefixes) and state[k].is_floating_point()]


def test_the_reference_run_trains(runs):
    ref = reference(runs)
    assert len(ref["losses"]) == 2  # 20 captions, batch 8: 2 steps
    assert max_difference(ref["state"], runs.start, keys(ref["state"], "visual.", "transformer.")) > 1e-3
    # The prior is frozen by default: its weights and BatchNorm statistics do not move.
    assert max_difference(ref["state"], runs.start, keys(ref["state"], "res_visual.")) == 0


def test_accum_freq_2_gives_the_gradients_of_the_whole_batch(runs):
    accumulated = runs("accum", "--accum-freq", "2", batch=4)
    assert len(accumulated["losses"]) == 2  # 2 steps of 2 x 4, not 5 steps of 4
    assert_same_weights(accumulated["state"], reference(runs)["state"])


def test_local_loss_with_gather_with_grad_under_torchrun(runs):
    """2 ranks x 4 with --local-loss --gather-with-grad step exactly as one process on 8; the loss each rank
    logs is its own rows' (rank 0's here), which differs from the whole batch's."""
    local = runs("local-loss", "--local-loss", "--gather-with-grad", batch=4, ranks=2)
    ref = reference(runs)
    assert_same_weights(local["state"], ref["state"], atol=5e-6)
    assert abs(local["losses"][0] - ref["losses"][0]) > 1e-3, (local["losses"][0], ref["losses"][0])


def test_precision_amp_bf16_on_cpu(runs):
    bf16 = runs("amp-bf16", "--precision", "amp_bf16")
    ref = reference(runs)
    assert "falls back" not in bf16["log"] and "training in fp32 instead" not in bf16["log"]
    assert all(v.dtype == torch.float32 for v in bf16["state"].values() if v.is_floating_point())  # fp32 weights
    trained = keys(ref["state"], "visual.", "transformer.")
    update, bf16_update = (torch.cat([(s[k] - runs.start[k]).flatten() for k in trained]) for s in (ref["state"],
                                                                                                  bf16["state"]))
    # The same training, in bf16 arithmetic: updates point the same way, but they are not fp32's.
    assert torch.nn.functional.cosine_similarity(update, bf16_update, dim=0) > 0.8
    assert (update - bf16_update).norm() > 1e-3 * update.norm()


def test_grad_checkpointing_recomputes_every_block_in_backward(runs):
    checkpointed = runs("grad-checkpointing", "--grad-checkpointing")
    ref = reference(runs)
    assert ref["probe"]["block_forwards"] > 0
    assert checkpointed["probe"]["block_forwards"] == 2 * ref["probe"]["block_forwards"]
    assert_same_weights(checkpointed["state"], ref["state"])


@pytest.mark.parametrize("flag,locked,trained", [
    ("--lock-image", ("visual.",), ("transformer.", "token_embedding.", "ln_final.")),
    ("--lock-text", ("transformer.", "token_embedding.", "positional_embedding", "ln_final.", "text_projection"),
     ("visual.",)),
])
def test_locked_tower_is_unchanged_after_training(runs, flag, locked, trained):
    run = runs(flag.strip("-"), flag)
    assert max_difference(run["state"], runs.start, keys(run["state"], *locked)) == 0
    assert max_difference(run["state"], runs.start, keys(run["state"], *trained)) > 1e-3


def test_unlock_prior_trains_the_prior(runs):
    unlocked = unlocked_reference(runs)
    prior = keys(unlocked["state"], "res_visual.")
    statistics = [k for k in prior if "running_" in k]
    assert max_difference(unlocked["state"], runs.start, [k for k in prior if k not in statistics]) > 1e-4
    assert max_difference(unlocked["state"], runs.start, statistics) > 1e-4  # BatchNorm in train mode
    assert max_difference(reference(runs)["state"], runs.start, prior) == 0


def test_use_bn_sync_under_torchrun_normalises_over_both_ranks(runs):
    """2 ranks x 4 with the prior trained: with --use-bn-sync its BatchNorm sees all 8 samples, so the run equals
    one process on 8, BatchNorm running statistics included; each rank alone would see 4."""
    synced = runs("bn-sync", "--unlock-prior", "--use-bn-sync", "--gather-with-grad", batch=4, ranks=2)
    assert "--use-bn-sync: " in synced["log"] and "synchronised across ranks" in synced["log"]
    ref = unlocked_reference(runs)
    assert synced["losses"] == ref["losses"]  # as logged, 4 decimals
    # The prior's stem (BatchNorm over a few samples, random weights) amplifies float rounding strongly, so
    # after 2 steps its updates agree to ~3e-5, not 1e-7 (tests/training/test_ddp.py checks one step exactly).
    # Measured without --use-bn-sync (each rank normalising its own 4 samples): 0.12 and 0.023.
    prior = keys(ref["state"], "res_visual.")
    assert relative_update_difference(synced["state"], ref["state"], runs.start, prior) < 1e-3
    statistics = [k for k in prior if "running_" in k]
    assert relative_update_difference(synced["state"], ref["state"], runs.start, statistics) < 1e-4
    assert_same_weights({k: v for k, v in synced["state"].items() if not k.startswith("res_visual.")},
                        {k: v for k, v in ref["state"].items() if not k.startswith("res_visual.")}, atol=1e-4)


def test_torchcompile_trains_pir_tiny_on_cpu_in_one_graph(synthetic_data, tmp_path):
    """--torchcompile on PIR-tiny (VIR and LCA included) trains, with dynamo reporting no graph break. The
    test uses the 'eager' backend (dynamo's capture, no code generation) to stay cheap; inductor, the default,
    compiles the same graph."""
    cmd = [sys.executable, "-m", "training.main", "--model", "PIR-tiny", "--is_aff_loss",
           "--train-data", str(synthetic_data / "dataset_synthetic.json"), "--dataset-type", "json",
           "--batch-size", "16", "--epochs", "1", "--workers", "0", "--precision", "fp32", "--lr", "1e-4",
           "--warmup", "1", "--logs-dir", str(tmp_path), "--name", "compiled", "--log-every-n-steps", "1",
           "--torchcompile", "--torchcompile-backend", "eager"]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": os.path.join(ROOT, "src"),
           "TORCH_LOGS": "graph_breaks,recompiles"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "compiled" / "out.log").read_text()
    assert "Compiling the model with torch.compile (backend eager)" in log
    losses = [float(x) for x in re.findall(r" Loss: ([0-9.]+)", log)]
    assert len(losses) == 3 and all(0 < x < 100 for x in losses)
    assert "Graph break" not in proc.stderr and "Recompiling" not in proc.stderr, proc.stderr[-3000:]
    state = torch.load(tmp_path / "compiled" / "checkpoints" / "epoch_1.pt", weights_only=True)["state_dict"]
    assert any(k.startswith("lca.") for k in state) and not any("_orig_mod" in k for k in state)
