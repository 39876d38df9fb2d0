# Sourced by scripts/run and scripts/test: find Python 3.12+, make .venv, install requirements.
# Usage: . scripts/bootstrap.sh requirements.txt
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
REQS="${1:-requirements.txt}"

find_python() {
  local candidate
  for candidate in ${PYTHON:-} python3.13 python3.12 python3 python; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; then
      command -v "$candidate"; return 0
    fi
  done
  return 1
}

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
  if ! PY="$(find_python)"; then
    cat >&2 <<'MSG'
error: this project needs Python 3.12 or newer (3.13 recommended), with its venv module.
  Debian/Ubuntu:  sudo apt-get install python3.13 python3.13-venv   (or python3.12 python3.12-venv)
  macOS:          brew install python@3.13
  pyenv:          pyenv install 3.13   (the .python-version file here selects it)
  Or point PYTHON at one:  PYTHON=/path/to/python3.13 scripts/run
MSG
    exit 1
  fi
  echo "==> creating .venv with $("$PY" --version 2>&1) ($PY)"
  rm -rf .venv
  "$PY" -m venv .venv
fi
STAMP=".venv/.installed-$(cat requirements.txt requirements-dev.txt 2>/dev/null | cksum | cut -d' ' -f1)-$(basename "$REQS")"
if [ ! -f "$STAMP" ]; then
  echo "==> installing $REQS"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r "$REQS"
  touch "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
