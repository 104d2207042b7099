#!/usr/bin/env bash
# Label Studio in its own environment (.venv-ls): its pins (Django, numpy, protobuf ...) clash with
# the TFX stack in .venv, so it runs as a separate service. Also installs Debian's headless
# Chromium + chromedriver for the labeling-page screenshot (apt, as root). Idempotent.
#
#   bash scripts/install_label_studio.sh            # .venv-ls with label-studio==$LS_VERSION
#   LS_VENV=/path LS_SKIP_CHROMIUM=1 bash scripts/install_label_studio.sh
set -euo pipefail
LS_VERSION="${LS_VERSION:-1.23.2}"
SELENIUM_VERSION="${SELENIUM_VERSION:-4.27.1}"
LS_VENV="${LS_VENV:-.venv-ls}"
PYTHON="${PYTHON:-python3}"

have_ls() {
  [ -x "$LS_VENV/bin/label-studio" ] &&
    [ "$("$LS_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("label-studio"))' 2>/dev/null)" = "$LS_VERSION" ] &&
    "$LS_VENV/bin/python" -c 'import selenium' 2>/dev/null
}

if have_ls; then
  echo "label-studio $LS_VERSION already in $LS_VENV"
else
  echo "building $LS_VENV with label-studio==$LS_VERSION (a few minutes)"
  "$PYTHON" -m venv "$LS_VENV"
  "$LS_VENV/bin/python" -m pip install -q --upgrade pip
  "$LS_VENV/bin/python" -m pip install -q "label-studio==$LS_VERSION" "selenium==$SELENIUM_VERSION"
fi

if [ -z "${LS_SKIP_CHROMIUM:-}" ]; then
  if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    echo "chromium and chromedriver present"
  else
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium chromium-driver
  fi
fi
"$LS_VENV/bin/label-studio" --version 2>/dev/null | head -n 3 || true
