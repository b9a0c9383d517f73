"""Runs ``python -m training.main ARGS`` in this process with a probe, for CLI tests that must see inside.

    python tests/training/cli_probe.py PROBE_OUT.json -- ARGS...

Counts the forward calls of open_clip's transformer blocks (``ResidualAttentionBlock``) during training, so a
test can tell gradient checkpointing (every block runs again in backward) from its absence, and writes
``{"exit_code", "block_forwards"}`` to PROBE_OUT.json.
"""
import json
import sys

from open_clip.transformer import ResidualAttentionBlock


def main(out_path, argv):
    calls = {"block_forwards": 0}
    forward = ResidualAttentionBlock.forward

    def counting_forward(self, *args, **kwargs):
        calls["block_forwards"] += 1
        return forward(self, *args, **kwargs)

    ResidualAttentionBlock.forward = counting_forward
    from training.main import main as training_main
    calls["exit_code"] = training_main(argv)
    with open(out_path, "w") as f:
        json.dump(calls, f)
    return calls["exit_code"]


if __name__ == "__main__":
    separator = sys.argv.index("--")
    sys.exit(main(sys.argv[1], sys.argv[separator + 1:]))
