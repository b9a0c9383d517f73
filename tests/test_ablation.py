"""scripts/ablation.py: the README table from paired seed differences, and the whole pipeline in --smoke mode."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import ablation  # noqa: E402


def metrics(mean_recall):
    return {name: mean_recall for name in ablation.NAMES}


def test_table_gives_paired_differences_and_marks_noise():
    results = {
        "clip": {0: metrics(56.0), 1: metrics(54.0), 2: metrics(58.0)},
        "clip+vir": {0: metrics(58.0), 1: metrics(56.1), 2: metrics(59.9)},
        "clip+lca": {0: metrics(57.0), 1: metrics(53.0), 2: metrics(58.2)},
    }
    table = ablation.markdown(results, [0, 1, 2], {"clip": "CLIP-tiny", "clip+vir": "PIR-tiny", "clip+lca": "PIR-tiny"})
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    assert "Δ mR vs CLIP, seeds 0, 1, 2" in table.splitlines()[0]
    assert "(baseline)" in rows["clip"]
    assert "+2.00 / +2.10 / +1.90" in rows["clip+vir"] and "+2.00 [" in rows["clip+vir"]
    assert "within noise" not in rows["clip+vir"]
    assert "+1.00 / -1.00 / +0.20" in rows["clip+lca"] and rows["clip+lca"].endswith("within noise |")


def test_smoke_mode_runs_the_whole_pipeline(synthetic_data, tmp_path):
    """Trains and evaluates 2 variants x 2 seeds with the tiny budget on the session's synthetic data."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": os.path.join(ROOT, "src")}
    proc = subprocess.run([sys.executable, "scripts/ablation.py", "--smoke", "--data", str(synthetic_data),
                           "--logs", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    summary = json.loads((tmp_path / "ablation.json").read_text())
    assert summary["seeds"] == [0, 1] and set(summary["results"]) == {"clip", "clip+al"}
    paired = summary["mean_recall_vs_baseline"]["clip+al"]
    per_seed = {int(s): d for s, d in paired["per_seed"].items()}
    for seed, difference in per_seed.items():
        want = (summary["results"]["clip+al"][str(seed)]["retrieval-mean-recall"]
                - summary["results"]["clip"][str(seed)]["retrieval-mean-recall"])
        assert difference == pytest.approx(want)
    assert paired["ci95"][0] <= paired["mean"] <= paired["ci95"][1]
    assert paired["within_noise"] == (paired["ci95"][0] <= 0 <= paired["ci95"][1])
    assert "| clip+al | CLIP-tiny |" in proc.stdout and "Δ mR mean [95% CI]" in proc.stdout
