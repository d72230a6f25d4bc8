#!/usr/bin/env bash
# Install the free English TTS voices that tools/voices.py speaks with (docs: VOICES section of
# tools/voices.py). Idempotent. Never fails: a voice that cannot be installed is skipped with a
# warning, and tools/synthesize_corpus.py then leaves it out with one line.
#
#   tools/install_voices.sh [PYTHON]     system voices need root and apt-get; PYTHON (default
#                                        .venv/bin/python) gets the PyPI voices
#
# Debian main: festival with the slt HTS voice and the ked and kal diphone voices.
# Debian non-free: RHVoice (bdl, clb, slt, alan) and SVOX pico. Where the system's apt sources lack
# non-free (Debian's default), a private apt configuration under a temporary folder downloads those
# .deb files (the system's sources stay untouched) and apt-get installs them with their
# dependencies from main.
# PyPI: hibari-tts (voice "heart", its weights inside the package: nothing is downloaded when it
# speaks). piper's joe is left out: its licence is in doubt (tools/tts.py).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-.venv/bin/python}

MAIN_PACKAGES=(festival festvox-us-slt-hts festvox-kdlpc16k festvox-kallpc16k)
NON_FREE_PACKAGES=(rhvoice rhvoice-english libttspico-utils)
PYPI_PACKAGES=(hibari-tts==0.2.1)

warn() { echo "warning: $*" >&2; }
missing() { for pkg; do dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || echo "$pkg"; done; }
apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }

# Download the non-free .deb files through a private apt configuration and install them.
install_non_free() (
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [ -n "$codename" ] && [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || exit 1
  dir=$(mktemp -d) && chmod 755 "$dir"  # apt downloads as user _apt
  trap 'rm -rf "$dir"' EXIT
  mkdir -p "$dir/state/lists/partial" "$dir/cache/archives/partial" "$dir/debs"
  chown _apt "$dir/state/lists/partial" "$dir/cache/archives/partial" "$dir/debs" 2>/dev/null || true
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $codename main contrib non-free" \
    > "$dir/sources.list"
  opts=(-o "Dir::Etc::SourceList=$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State=$dir/state" -o "Dir::Cache=$dir/cache" -o Dir::State::status=/var/lib/dpkg/status)
  apt-get "${opts[@]}" update -qq || exit 1
  # the packages and their dependencies that only contrib/non-free has; main's come from the system
  debs=$(apt-get "${opts[@]}" --print-uris -qq install --no-install-recommends "$@" \
    | grep -oE "/pool/(contrib|non-free)/[^']+" | sed -E 's#.*/([^_/]+)_[^/]+$#\1#')
  [ -n "$debs" ] || exit 1
  cd "$dir/debs" && apt-get "${opts[@]}" download -qq $debs || exit 1
  apt_install ./*.deb
)

start=$(date +%s)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  todo=($(missing "${MAIN_PACKAGES[@]}" "${NON_FREE_PACKAGES[@]}"))
  if [ ${#todo[@]} -gt 0 ]; then
    echo "== installing voices: ${todo[*]}"
    apt-get update -qq || warn "apt-get update failed"
    main=($(missing "${MAIN_PACKAGES[@]}"))
    [ ${#main[@]} -eq 0 ] || apt_install "${main[@]}" || warn "festival voices not installed (${main[*]}): skipped"
    non_free=($(missing "${NON_FREE_PACKAGES[@]}"))
    if [ ${#non_free[@]} -gt 0 ] && ! apt_install "${non_free[@]}" 2>/dev/null \
        && ! install_non_free "${non_free[@]}"; then
      warn "RHVoice and SVOX pico not installed (${non_free[*]}, Debian non-free): skipped"
    fi
  fi
else
  todo=($(missing "${MAIN_PACKAGES[@]}" "${NON_FREE_PACKAGES[@]}"))
  [ ${#todo[@]} -eq 0 ] || warn "voices not installed (run as root): ${todo[*]}"
fi

if [ -x "$PYTHON" ] || command -v "$PYTHON" >/dev/null; then
  if ! "$PYTHON" -c "import hibari" 2>/dev/null; then
    echo "== installing PyPI voices: ${PYPI_PACKAGES[*]}"
    "$PYTHON" -m pip install -q "${PYPI_PACKAGES[@]}" || warn "PyPI voices not installed (${PYPI_PACKAGES[*]}): skipped"
  fi
else
  warn "no $PYTHON: PyPI voices not installed"
fi
echo "== voices ready in $(( $(date +%s) - start )) s"
exit 0
