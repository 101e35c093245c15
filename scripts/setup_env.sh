#!/usr/bin/env bash
# Create .venv at the repository root with every dependency pinned (idempotent), install the
# project in editable mode, and fetch the pinned sample CT. Used by `make analyze` and `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
stamp=.venv/.chestctmtl-installed
want="$(sha256sum requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "== setting up .venv (pinned requirements.txt)"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=23"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
echo "== sample CT (PyRadiomics 3.0.1 lung1/lung2, SHA-256 checked)"
.venv/bin/python -m ChestCTMTLLib.sample_data
# Optional test tools (a real PACS and a DICOM validator for Testing/test_dicom_out.py): only as
# root with apt-get, never fatal; without them those tests skip and say why.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
   && { ! command -v Orthanc >/dev/null 2>&1 || ! command -v dciodvfy >/dev/null 2>&1; }; then
  echo "== optional: Orthanc + dicom3tools from Debian (DICOM output tests)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends orthanc dicom3tools \
    >/dev/null 2>&1 || echo "   (not installed: the PACS/validator tests will skip)"
fi
