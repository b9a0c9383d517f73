"""The training CLI: open_clip's flags plus ours, and clear refusals."""
import importlib.util
import pathlib
import re

import pytest

from training.open_clip_flags import HONOURED, REFUSED, open_clip_parser
from training.params import parse_args, resolve_precision

AUTHORS_COMMAND = (
    "--save-frequency 1 --report-to tensorboard --train-data data/train-{000000..000003}.tar --dataset-resampled "
    "--train-num-samples 17175 --dataset-type webdataset --warmup 10000 --batch-size=512 --precision amp "
    "--lr=1e-5 --wd=0.5 --epochs=20 --workers=4 --model=PIR --is_aff_loss").split()


def test_the_authors_command_parses():
    args = parse_args(AUTHORS_COMMAND)
    assert args.is_aff_loss and args.model == "PIR" and args.dataset_type == "webdataset"
    assert args.batch_size == 512 and args.lr == 1e-5 and args.wd == 0.5 and args.dataset_resampled
    assert (args.beta1, args.beta2, args.eps) == (0.9, 0.98, 1e-6)  # ViT defaults for PIR too
    assert args.aff_loss_weight == 1.0 and args.enable_vir is None and args.enable_lca is None


def test_pir_flags_and_spellings():
    args = parse_args(["--is-aff-loss", "--aff-loss-weight", "0.5", "--aff-label-regex", r"^(.*)_\d+$",
                       "--no-vir", "--unlock-prior", "--dataset-type", "json", "--val-data", "v.json",
                       "--logs-dir", "/tmp/x", "--beta2", "0.999"])
    assert args.is_aff_loss and args.aff_loss_weight == 0.5 and args.enable_vir is False
    assert args.unlock_prior and args.dataset_type == "json" and args.val_data == "v.json"
    assert args.logs == "/tmp/x" and args.beta2 == 0.999


@pytest.mark.parametrize("argv,message", [
    (["--trace"], "--trace"),
    (["--imagenet-val", "x"], "--imagenet-val"),
    (["--horovod"], "--horovod"),
    (["--aff-label-regex", "("], "not a valid regular expression"),
    (["--aff-loss-weight", "-1"], "--aff-loss-weight"),
    (["--report-to", "wandb"], "--report-to wandb"),
    (["--report-to", "tensorbord"], "--report-to 'tensorbord'"),
    (["--opt", "sgd"], "--opt 'sgd'"),
    (["--lr-scheduler", "linear"], "--lr-scheduler 'linear'"),
    (["--model", "coca_ViT-B-32"], "CoCa"),
])
def test_refusals_name_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit, match=re.escape(message)) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m training.main: error:") and message in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------------------------------------------------
# Optimizer defaults: open_clip's, for the model's towers; explicit values win in every spelling.

VIT = (0.9, 0.98, 1.0e-6)
RESNET = (0.9, 0.999, 1.0e-8)


@pytest.mark.parametrize("model,expected", [("PIR", VIT), ("PIR-tiny", VIT), ("PIR-release", VIT), ("CLIP-tiny", VIT),
                                            ("ViT-B-32", VIT), ("RN50", RESNET)])
def test_optimizer_defaults_follow_the_image_tower(model, expected):
    args = parse_args(["--model", model])
    assert (args.beta1, args.beta2, args.eps) == expected and args.lr == 5.0e-4


@pytest.mark.parametrize("argv", [["--beta1", "0.5", "--beta2", "0.7", "--eps", "0.01", "--lr", "0.1"],
                                  ["--beta1=0.5", "--beta2=0.7", "--eps=0.01", "--lr=0.1"],
                                  ["--beta1=0.5", "--beta2", "0.7", "--eps=1e-2", "--lr", "1e-1"]])
def test_explicit_optimizer_values_win_in_every_spelling(argv):
    args = parse_args(["--model", "PIR"] + argv)
    assert (args.beta1, args.beta2, args.eps, args.lr) == (0.5, 0.7, 0.01, 0.1)


def test_timm_optimizers_bring_their_own_defaults():
    args = parse_args(["--model", "PIR", "--opt", "timm/lamb"])
    assert args.beta1 is None and args.beta2 is None and args.eps is None


# ---------------------------------------------------------------------------------------------------------
# Every flag of open_clip's parser is honoured (read by a named module) or refused with a message.

SAMPLE_VALUES = {"--report-to": ["tensorboard"], "--opt": ["timm/sgd"], "--lr-scheduler": ["const"],
                 "--aug-cfg": ["scale=(0.9,1.0)"], "--model": ["PIR-tiny"], "--precision": ["amp_bf16"]}


def open_clip_actions():
    return {a.option_strings[0]: a for a in open_clip_parser()._actions if a.option_strings[0] != "-h"}


def sample_argv(action):
    """A value for ``action`` that differs from its default (so a refusal must fire, an honoured flag must stick)."""
    flag = action.option_strings[0]
    if action.nargs == 0:
        return [flag]
    if flag in SAMPLE_VALUES:
        return [flag, *SAMPLE_VALUES[flag]]
    if action.choices:
        return [flag, next(c for c in action.choices if c != action.default)]
    if isinstance(action.default, (int, float)) and not isinstance(action.default, bool):
        return [flag, str(action.default + 1)]
    return [flag, "2" if action.type in (int, float) else "x"]


def module_source(name):
    spec = importlib.util.find_spec(name)
    if spec.submodule_search_locations:  # a package: all its modules
        return "\n".join(p.read_text() for d in spec.submodule_search_locations for p in pathlib.Path(d).rglob("*.py"))
    return pathlib.Path(spec.origin).read_text()


def test_the_table_covers_open_clips_parser_exactly():
    """A flag a new open_clip release adds fails here until it is classified in training/open_clip_flags.py."""
    flags = set(open_clip_actions())
    assert not set(HONOURED) & set(REFUSED)
    assert set(HONOURED) | set(REFUSED) == flags, {"unclassified": sorted(flags - set(HONOURED) - set(REFUSED)),
                                                   "not open_clip's": sorted(set(HONOURED) | set(REFUSED) - flags)}


@pytest.mark.parametrize("flag", sorted(REFUSED))
def test_every_refused_flag_stops_with_its_reason(flag, capsys):
    with pytest.raises(SystemExit, match=re.escape(flag)) as exc:
        parse_args(sample_argv(open_clip_actions()[flag]))
    assert exc.value.code == 2 and REFUSED[flag] in capsys.readouterr().err


@pytest.mark.parametrize("flag", sorted(HONOURED))
def test_every_honoured_flag_is_kept_and_read(flag):
    action = open_clip_actions()[flag]
    argv = sample_argv(action)
    args = parse_args(argv)
    expected = getattr(open_clip_parser().parse_args(argv), action.dest)
    if isinstance(expected, list) and len(expected) == 1 and flag == "--force-image-size":
        expected = expected[0]
    assert getattr(args, action.dest) == expected, f"{flag} was parsed but its value was replaced"
    use = HONOURED[flag]
    if use.where is None:
        assert use.note, f"{flag}: an honoured flag that no module reads needs a note saying why"
    else:
        pattern = rf"args\.{action.dest}\b|[\"']{action.dest}[\"']"
        assert re.search(pattern, module_source(use.where)), f"{use.where} does not read args.{action.dest}"


def test_unknown_flags_are_rejected(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--no-such-flag"])
    assert "--no-such-flag" in capsys.readouterr().err


def test_amp_on_cpu_falls_back_to_fp32():
    args = parse_args(["--precision", "amp"])
    resolve_precision(args, "cpu")
    assert args.precision == "fp32"
    args = parse_args(["--precision", "amp_bf16"])
    resolve_precision(args, "cpu")
    assert args.precision == "amp_bf16"
