"""The training CLI: open_clip's flags plus ours, and clear refusals."""
import pytest

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
])
def test_refusals_name_the_flag(argv, message):
    with pytest.raises(SystemExit, match=message.replace("(", r"\(")):
        parse_args(argv)


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
