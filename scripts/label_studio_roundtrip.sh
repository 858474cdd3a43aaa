#!/usr/bin/env bash
# The annotation loop through a real Label Studio server (docs/annotation.md "Label Studio"):
#   bash scripts/label_studio_roundtrip.sh            # exit 0: equal to the oracle run; 1: a difference
# Installs label-studio into its own virtual environment (LS_VENV, default .ls-venv: a large Django
# application, kept out of the project's), starts it on 127.0.0.1 with a throwaway data directory and
# a user made here, then scripts/label_studio_roundtrip.py drives two rounds through its HTTP API and
# compares with the oracle run. The server and the scratch directory are removed on exit, whatever
# happens. CAPTURE=DIR keeps the exports (tests/fixtures/label_studio holds one such capture).
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
LS_VENV="${LS_VENV:-.ls-venv}" LS_VERSION="${LS_VERSION:-1.23.2}"
start=$(date +%s)
if [ ! -x "$LS_VENV/bin/label-studio" ]; then
  echo "installing label-studio==$LS_VERSION into $LS_VENV (a few minutes)" >&2
  python3 -m venv "$LS_VENV"
  "$LS_VENV/bin/pip" install -q --disable-pip-version-check "label-studio==$LS_VERSION"
fi
work="$(mktemp -d)"
port="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
token="$("$PY" -c 'import secrets; print(secrets.token_hex(20))')"
password="$("$PY" -c 'import secrets; print(secrets.token_hex(12))')"
cleanup() {
  if [ -n "${server:-}" ]; then kill -- "-$server" 2> /dev/null || true; wait "$server" 2> /dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/home"
# its own process group (setsid), so that everything it starts stops with it
HOME="$work/home" LABEL_STUDIO_BASE_DATA_DIR="$work/ls" setsid "$LS_VENV/bin/label-studio" start --no-browser \
  --data-dir "$work/ls" --internal-host 127.0.0.1 --port "$port" --username roundtrip@example.com \
  --password "$password" --user-token "$token" --enable-legacy-api-token > "$work/server.log" 2>&1 &
server=$!
for _ in $(seq 300); do
  if curl -sf -o /dev/null "http://127.0.0.1:$port/health"; then break; fi
  if ! kill -0 "$server" 2> /dev/null; then tail -20 "$work/server.log" >&2; echo "FAIL: Label Studio did not start" >&2; exit 1; fi
  sleep 1
done
curl -sf -o /dev/null "http://127.0.0.1:$port/health" || { echo "FAIL: Label Studio not up after 300 s" >&2; exit 1; }
echo "Label Studio $LS_VERSION up on 127.0.0.1:$port after $(( $(date +%s) - start ))s" >&2
"$PY" scripts/label_studio_roundtrip.py --url "http://127.0.0.1:$port" --token "$token" --work "$work" \
  ${CAPTURE:+--capture "$CAPTURE"}
echo "elapsed: $(( $(date +%s) - start ))s" >&2
