#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for Smart Tuner: espeak-ng (demo and test
# data), a virtual environment in .venv, PyTorch, and the package itself.
#   scripts/setup.sh        the product
#   scripts/setup.sh test   the product and the test tools
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
if ! command -v espeak-ng >/dev/null 2>&1; then
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq espeak-ng >/dev/null
fi

python3 -m venv .venv
# torch first and pinned: an unpinned requirement would pull a multi-GB CUDA build
# on machines without one; pyproject's range admits this version.
.venv/bin/pip install -q torch==2.13.0
extras=""
if [ "${1:-}" = "test" ]; then extras="[test]"; fi
.venv/bin/pip install -q -e ".${extras}"
