#!/usr/bin/env bash
# README command 1: set up a fresh machine (tools/setup.sh), then transcribe the bundled
# recordings with the embedded default model (`asr transcribe`, no --model) and stream them
# through the embedded streaming model as if spoken into a microphone (`asr stream --file`),
# each with its reference and timing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

samples=asr/pretrained/samples
# seconds since START (date +%s.%N)
since() { awk -v start="$1" -v now="$(date +%s.%N)" 'BEGIN { printf "%.1f", now - start }'; }
while IFS=$'\t' read -r clip reference; do
  echo
  echo "== $samples/$clip"
  start=$(date +%s.%N)
  text=$(asr transcribe "$samples/$clip" | cut -f2)
  echo "asr transcribe:        $text   ($(since "$start") s, model load included)"
  start=$(date +%s.%N)
  text=$(asr stream --file "$samples/$clip" 2>/dev/null | tr '\n' ' ')
  echo "asr stream --file:     $text  ($(since "$start") s)"
  echo "reference:             $reference"
done < "$samples/transcripts.tsv"
echo
echo "Your own recordings: .venv/bin/asr transcribe FILE...; the microphone: .venv/bin/asr stream (see README.md)"
