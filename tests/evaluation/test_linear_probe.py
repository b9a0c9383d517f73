"""The few-shot linear probe: it learns (separable features -> 100%, random labels -> chance), shot sampling,
and ``pir-clip linear-probe`` end to end with its feature cache."""
import json
import statistics

import open_clip
import pytest
import torch
import torch.nn.functional as F

from pir_clip.cli import build_parser, main
from pir_clip.evaluation.linear_probe import (DEFAULT_L2, DEFAULT_MAX_ITER, fit_linear_probe, parse_shots,
                                              probe_few_shot, sample_shots)


def clustered(n_per_class, centres, noise, generator):
    labels = torch.arange(len(centres)).repeat_interleave(n_per_class)
    features = centres[labels] + noise * torch.randn(len(labels), centres.shape[1], generator=generator)
    return F.normalize(features, dim=1), labels


def test_separable_features_reach_100_percent():
    generator = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(6, 32, generator=generator), dim=1)
    train_x, train_y = clustered(20, centres, 0.05, generator)
    test_x, test_y = clustered(50, centres, 0.05, generator)
    results = probe_few_shot(train_x, train_y, test_x, test_y, 6, shots=[1, 4, "all"], seeds=3, progress=False)
    for entry in results:
        assert entry["acc1"] == [1.0] * entry["runs"] and entry["acc1_mean"] == 1.0 and entry["acc1_std"] == 0.0
    assert [r["runs"] for r in results] == [3, 3, 1]


def test_random_labels_give_chance():
    generator = torch.Generator().manual_seed(1)
    num_classes = 10
    train_x, test_x = torch.randn(120, 64, generator=generator), torch.randn(3000, 64, generator=generator)
    train_y = torch.randint(0, num_classes, (120,), generator=generator)
    test_y = torch.randint(0, num_classes, (3000,), generator=generator)
    probe = fit_linear_probe(train_x, train_y, num_classes)
    train_acc = float((probe.scores(train_x).argmax(1) == train_y).double().mean())
    test_acc = float((probe.scores(test_x).argmax(1) == test_y).double().mean())
    assert train_acc > 0.9  # it fits the noise it was given ...
    assert abs(test_acc - 1 / num_classes) < 0.03  # ... and that is worth chance on new images


def test_the_optimum_is_reached():
    generator = torch.Generator().manual_seed(2)
    x, y = torch.randn(60, 8, generator=generator), torch.randint(0, 3, (60,), generator=generator)
    probe = fit_linear_probe(x, y, 3, l2=0.1)
    weight, bias = probe.weight.clone().requires_grad_(True), probe.bias.clone().requires_grad_(True)
    loss = F.cross_entropy(x.double() @ weight + bias, y) + 0.05 * weight.pow(2).sum()
    loss.backward()
    assert weight.grad.abs().max() < 1e-6 and bias.grad.abs().max() < 1e-6  # the convex objective's minimum


def test_sample_shots():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 6)
    picked = sample_shots(labels, 4, seed=0, num_classes=3)
    assert torch.bincount(labels[picked], minlength=3).tolist() == [4, 3, 4]  # class 1 has only 3
    assert len(set(picked.tolist())) == len(picked)
    assert torch.equal(picked, sample_shots(labels, 4, seed=0, num_classes=3))
    assert not torch.equal(picked, sample_shots(labels, 4, seed=1, num_classes=3))
    assert sample_shots(labels, "all", seed=5, num_classes=3).tolist() == list(range(19))
    assert parse_shots(["1", "2", "all", "2"]) == [1, 2, "all"]
    with pytest.raises(ValueError, match="--shots"):
        parse_shots(["0"])


def test_cli_defaults_are_the_library_defaults():
    args = build_parser().parse_args(["linear-probe", "--data", "x"])
    assert (args.l2, args.max_iter, args.shots, args.seeds) == (DEFAULT_L2, DEFAULT_MAX_ITER,
                                                                 ["1", "2", "4", "8", "16"], 3)


def test_cli_end_to_end_with_feature_cache(synthetic_data, tmp_path, capsys):
    torch.manual_seed(0)
    torch.save(open_clip.create_model("CLIP-tiny").state_dict(), tmp_path / "clip.pt")
    args = ["linear-probe", "--model-name", "CLIP-tiny", "--checkpoint", str(tmp_path / "clip.pt"), "--data",
            str(synthetic_data / "classification"), "--shots", "1", "2", "all", "--seeds", "2", "--features",
            str(tmp_path / "features.pt"), "--workers", "0", "--quiet"]
    assert main([*args, "--output", str(tmp_path / "a.json")]) == 0
    first = capsys.readouterr().out
    result = json.loads((tmp_path / "a.json").read_text())
    assert [r["shots"] for r in result["results"]] == [1, 2, "all"] and [r["runs"] for r in result["results"]] == [2, 2, 1]
    per_class = result["counts"]["images"] // 4
    assert result["counts"]["train"] == 4 * (per_class * 4 // 5) and result["counts"]["unreadable"] == 0
    for entry in result["results"]:
        assert entry["acc1_mean"] == pytest.approx(statistics.mean(entry["acc1"]))
        if entry["runs"] > 1:
            assert entry["acc1_std"] == pytest.approx(statistics.stdev(entry["acc1"]))
        assert all(0 <= a <= 1 for a in entry["acc1"])
    assert "top-1 mean ± sd" in first and "cached" not in first
    # The second run reads the cached features and gives the same numbers.
    assert main([*args, "--output", str(tmp_path / "b.json")]) == 0
    assert "read 100 cached image features" in capsys.readouterr().out
    assert json.loads((tmp_path / "b.json").read_text())["results"] == result["results"]
    # Another checkpoint does not reuse them.
    torch.save(open_clip.create_model("CLIP-tiny").state_dict(), tmp_path / "other.pt")
    other = [a if a != str(tmp_path / "clip.pt") else str(tmp_path / "other.pt") for a in args]
    assert main([*other, "--output", str(tmp_path / "c.json")]) == 0
    assert "recomputing" in capsys.readouterr().out


def test_bad_shots_is_one_line(synthetic_data, capsys):
    code = main(["linear-probe", "--model-name", "CLIP-tiny", "--data", str(synthetic_data / "classification"),
                 "--shots", "0", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --shots 0") and "Traceback" not in err
