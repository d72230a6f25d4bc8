#!/usr/bin/env bash
# The newcomer's main job: set up, train the synthetic recipe end to end (about 30 minutes on
# 2 CPU cores), then transcribe an unseen test utterance and show it next to its reference.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
bash recipes/synthetic/run.sh "$@"

manifest=recipes/synthetic/data/default/test.jsonl
model=recipes/synthetic/exp/final.pt
if [[ " $* " == *" --quick "* ]]; then
  manifest=recipes/synthetic/data/quick/test.jsonl
  model=recipes/synthetic/exp/quick/final.pt
fi
read -r audio reference < <(.venv/bin/python -c "import json,sys; e=json.loads(open(sys.argv[1]).readline()); print(e['audio'], e['text'])" "$manifest")
echo
echo "== asr transcribe --model $model $audio"
.venv/bin/asr transcribe --model "$model" "$audio"
echo "reference: $reference"
