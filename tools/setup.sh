#!/usr/bin/env bash
# Set up a fresh machine: system packages (when root and apt-get exists), a virtual
# environment in .venv, and the asr package with its development extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(
  espeak-ng sox libsox-fmt-all          # speech synthesis for the synthetic corpus and tests
  fortunes fortunes-min fortune-mod     # offline English sentences for the synthetic corpus
  wamerican                             # English word list: the synthetic recipe's decoding lexicon
  libportaudio2                         # microphone input (sounddevice)
)

missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "warning: missing system packages (install them as root): ${missing[*]}" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import asr, torch, torchaudio, soundfile, jiwer, pytest, onnxruntime, onnx" 2>/dev/null; then
  echo "== installing asr and its dependencies into .venv (torch is about 1.7 GB)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
fi
echo "== ready: $(.venv/bin/python -c 'import torch, torchaudio; print("torch", torch.__version__, "torchaudio", torchaudio.__version__)')"
