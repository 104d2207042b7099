#!/usr/bin/env bash
# Build the project's virtual environment (.venv) from nothing, the one tested way (see README,
# "Why the install has two steps"). Idempotent: when the pins and setup.py are unchanged since the
# last successful run, it only checks the imports. Fails loudly on any step.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV="${VENV:-.venv}"
REQ=requirements
STAMP="$VENV/.cxr_tfp_install_stamp"

want=$(cat "$REQ"/constraints.txt "$REQ"/base.txt "$REQ"/beam.txt "$REQ"/tfx.txt "$REQ"/serving.txt \
        "$REQ"/nodeps.txt "$REQ"/kfp.txt "$REQ"/dev.txt setup.py \
        | sha256sum | cut -d' ' -f1)

# The checkout's top-level folders pipeline/ and serving/ (TFX runners, the stand-in server) are not
# part of the installed library; a .pth puts the checkout on sys.path so `tfx pipeline create
# --pipeline_path pipeline/local_runner.py` and `python -m serving.standin` work from anywhere
# (the pipeline image does the same with PYTHONPATH=/pipeline).
link_checkout() {
  local site
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$PWD" > "$site/cxr_tfp_checkout.pth"
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "[install] $VENV is up to date (pins unchanged); checking imports"
  link_checkout
  "$VENV/bin/python" scripts/check_imports.py
  exit 0
fi

ver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$ver" != "3.11" ]; then
  echo "[install] ERROR: Python 3.11 is required (found $ver from $PYTHON); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q "pip==25.3"

echo "[install] step 1/3: the resolvable stack, every version pinned by $REQ/constraints.txt (a few minutes the first time)"
# The core (base.txt) and every extra (beam, tfx, serving, kfp, dev): the full development stack.
"${PIP[@]}" install -c "$REQ/constraints.txt" -r "$REQ/base.txt" -r "$REQ/beam.txt" -r "$REQ/tfx.txt" \
  -r "$REQ/serving.txt" -r "$REQ/kfp.txt" -r "$REQ/dev.txt"

echo "[install] step 2/3: tfx, ml-pipelines-sdk, ml-metadata, TFDV without their unresolvable pins"
"${PIP[@]}" install --no-deps -r "$REQ/nodeps.txt"

echo "[install] step 3/3: cxr-tfp itself (editable)"
"${PIP[@]}" install --no-deps --no-build-isolation -e .
link_checkout

"$VENV/bin/python" scripts/check_imports.py
echo "$want" > "$STAMP"
echo "[install] done: $VENV"
