#!/usr/bin/env bash
# The test command: sets up the environment if needed, then runs the whole test suite on the CPU.
#   bash scripts/run_tests.sh            # everything
#   bash scripts/run_tests.sh -k loss    # extra arguments go to pytest
source "$(dirname "$0")/setup_env.sh"
python -m pytest "$@"
