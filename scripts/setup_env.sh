# Sourced by the project's commands: makes sure a virtual environment with pir-clip installed is active.
# Creates ${PIR_CLIP_VENV:-.venv} on first use and reinstalls when pyproject.toml changes.
# Needs only Python 3.10+ with venv and pip.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PIR_CLIP_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "pir-clip needs Python 3.10 or newer; $PYTHON is $("$PYTHON" --version 2>&1)." >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
STAMP="$VENV/.pir-clip-installed"
WANT="$(cat "$ROOT/pyproject.toml" | python -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ] || ! python -c 'import pir_clip' 2>/dev/null; then
    echo "[setup] installing pir-clip and its dependencies into $VENV (first run: a few minutes)"
    python -m pip install --quiet --upgrade pip
    python -m pip install --quiet -e "$ROOT[dev]"
    echo "$WANT" > "$STAMP"
fi
cd "$ROOT"
