"""The ``pir-clip`` command: subcommands listed, ``python -m pir_clip`` and ``retrieval.py`` the same tool."""
import json
import os
import subprocess
import sys

import pytest
import torch

from pir_clip.cli import COMMANDS, main, retrieval_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_help_lists_every_subcommand():
    proc = subprocess.run([sys.executable, "-m", "pir_clip", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    for name in COMMANDS:
        assert name in proc.stdout
    assert "retrieval" in COMMANDS


def test_unknown_subcommand_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_pir_clip_retrieval_equals_retrieval_py(synthetic_data, tmp_path, capsys):
    common = ["--model-name", "CLIP-tiny", "--retrieval-json-dir", str(synthetic_data / "dataset_synthetic.json"),
              "--workers", "0", "--quiet"]
    torch.manual_seed(0)  # no checkpoint: the same random model both times
    assert main(["retrieval", *common, "--output", str(tmp_path / "a.json")]) == 0
    torch.manual_seed(0)
    assert retrieval_main([*common, "--output", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert a["metrics"] == b["metrics"] and a["num_images"] == b["num_images"] > 0
    assert "mR" in capsys.readouterr().out


def test_bad_bands_flag_is_one_line(synthetic_data, capsys):
    code = main(["retrieval", "--model-name", "CLIP-tiny", "--retrieval-json-dir",
                 str(synthetic_data / "dataset_synthetic.json"), "--workers", "0", "--quiet", "--bands", "4,3"])
    err = capsys.readouterr().err
    assert code == 2 and "--bands" in err and "Traceback" not in err
