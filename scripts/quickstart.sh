#!/usr/bin/env bash
# The main job: sets up the environment if needed, then generates the synthetic RS benchmark, trains tiny
# PIR-CLIP on the CPU and evaluates it (a few minutes). Pass --baseline for plain CLIP.
source "$(dirname "$0")/setup_env.sh"
python scripts/quickstart.py "$@"
