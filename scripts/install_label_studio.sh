#!/usr/bin/env bash
# Label Studio in its own environment (.venv-ls, pins in requirements/label-studio.txt): its pins
# (Django, numpy, protobuf ...) clash with the TFX stack in .venv, so it runs as a separate
# service. Also installs Debian's headless Chromium + chromedriver for the labeling-page
# screenshot (apt, as root). Idempotent: re-installs only when the requirements file changes.
#
#   bash scripts/install_label_studio.sh
#   LS_VENV=/path LS_SKIP_CHROMIUM=1 bash scripts/install_label_studio.sh
set -euo pipefail
cd "$(dirname "$0")/.."
LS_VENV="${LS_VENV:-.venv-ls}"
PYTHON="${PYTHON:-python3}"
REQ=requirements/label-studio.txt
STAMP="$LS_VENV/.cxr_tfp_ls_stamp"
want=$(sha256sum "$REQ" | cut -d' ' -f1)

if [ -x "$LS_VENV/bin/label-studio" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then
  echo "[label-studio] $LS_VENV is up to date ($REQ)"
else
  echo "[label-studio] building $LS_VENV from $REQ (a few minutes the first time)"
  "$PYTHON" -m venv "$LS_VENV"
  "$LS_VENV/bin/python" -m pip install -q --upgrade pip
  "$LS_VENV/bin/python" -m pip install -q -r "$REQ"
  echo "$want" > "$STAMP"
fi

if [ -z "${LS_SKIP_CHROMIUM:-}" ]; then
  if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    echo "[label-studio] chromium and chromedriver present"
  else
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium chromium-driver
  fi
fi
"$LS_VENV/bin/python" -c 'import importlib.metadata as m; print("[label-studio]", "label-studio", m.version("label-studio"), "selenium", m.version("selenium"))'
