# Sourced by the other scripts: create .venv if missing and install requirements.txt into it
# (again only when requirements.txt changes). Leaves PY pointing at the venv's python.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv" >&2
  python3 -m venv .venv
fi
stamp=".venv/.requirements-$(sha256sum requirements.txt | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "installing requirements.txt into .venv (about a minute)" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
  touch "$stamp"
fi
PY="$ROOT/.venv/bin/python"
export PYTHONUNBUFFERED=1
