# Sourced by scripts/serve and scripts/test: make .venv and install Flux into it when needed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FLUX_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
extras="${1:-}"
stamp="$VENV/.flux-installed${extras:+-$extras}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating virtual environment in $VENV" >&2
    "$PY" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    echo "==> installing Flux${extras:+ with [$extras]} into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT${extras:+[$extras]}"
    touch "$stamp"
fi
