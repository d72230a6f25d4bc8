#!/usr/bin/env bash
# Free Spoken Digit Dataset recipe: real recordings of ZERO..NINE (8 kHz, 6 speakers) read
# from ../shared/data/fsdd (CC BY-SA 4.0, see its ATTRIBUTION.md; nothing is copied here).
# Whole speakers are held out for test. The synthetic recipe's BiLSTM-CTC (run
# recipes/synthetic/run.sh first) fine-tuned on four speakers (conf/finetune.yaml), a few
# minutes on 2 CPUs; test decoded greedily and by beam search over the ten digit words (a
# lexicon of the training transcripts' words: the task's closed vocabulary).
#
#   ./run.sh [--stage N] [--stop-stage M] [--quick] [--data DIR] [--exp DIR] [FSDD_ROOT env var, default ../../../shared/data/fsdd]
#
# --quick: a small model from scratch (conf/quick.yaml), which CI runs.
# Stages are idempotent (.done markers); an interrupted training resumes from exp/last.pt.
set -euo pipefail
cd "$(dirname "$0")"
source ../shared/stages.sh

fsdd_root=${FSDD_ROOT:-$root/../shared/data/fsdd}
if $quick; then
  data=${data_dir:-data} exp=${exp_dir:-exp/quick} conf=conf/quick.yaml
else
  data=${data_dir:-data} exp=${exp_dir:-exp} conf=conf/finetune.yaml
fi
mkdir -p "$data" "$exp"
# the committed RESULTS.md is written only by a default run
if $quick || [ -n "$exp_dir" ]; then results=$exp/RESULTS.md; else results=RESULTS.md; fi

if run_stage 1 "manifests: train/dev on 4 speakers, test on 2 unseen speakers" "$data/.manifests.done"; then
  asr prepare fsdd --data-root "$fsdd_root" --out "$data"
  touch "$data/.manifests.done"
fi

if run_stage 2 "global CMVN statistics" "$exp/.cmvn.done"; then
  asr compute-cmvn --manifest "$data/train.jsonl" --out "$exp/cmvn.pt"
  touch "$exp/.cmvn.done"
fi

if run_stage 3 "train ($conf)" "$exp/.train.done"; then
  if ! $quick && [ ! -f ../synthetic/exp/final.pt ]; then
    echo "error: $conf starts from ../synthetic/exp/final.pt; run recipes/synthetic/run.sh first" >&2
    exit 1
  fi
  asr_train --config "$conf" exp_dir="$exp" cmvn="$exp/cmvn.pt" \
    data.train="$data/train.jsonl" data.valid="$data/dev.jsonl"
  touch "$exp/.train.done"
fi

if run_stage 4 "average the last 3 epochs -> $exp/final.pt" "$exp/.average.done"; then
  asr average --exp-dir "$exp" --last 3 --out "$exp/final.pt"
  touch "$exp/.average.done"
fi

# The lexicon (the ten digit words) goes into final.pt, which `asr transcribe` then searches
# over by default (--greedy to decode without it).
if run_stage 5 "decode test (unseen speakers): greedy, and beam search over the training words" "$exp/.decode.done"; then
  mkdir -p "$exp/decode_test" "$exp/decode_test_beam_lexicon"
  asr decode --model "$exp/final.pt" --greedy --manifest "$data/test.jsonl" --out "$exp/decode_test/hyp.txt"
  asr lexicon --manifest "$data/train.jsonl" --out "$exp/lexicon.txt"
  asr decode --model "$exp/final.pt" --manifest "$data/test.jsonl" --lexicon "$exp/lexicon.txt" \
    --out "$exp/decode_test_beam_lexicon/hyp.txt"
  asr attach-lm --model "$exp/final.pt" --lexicon "$exp/lexicon.txt"
  touch "$exp/.decode.done"
fi

if run_stage 6 "score -> $results" "$exp/.score.done"; then
  score_splits "$exp" "$data" test test_beam_lexicon
  results_table "FSDD recipe results (test = unseen speakers theo, yweweler)" "$exp" \
    "recipes/fsdd/run.sh$($quick && echo ' --quick' || true)" test test_beam_lexicon | update_results "$results" scores
  touch "$exp/.score.done"
fi

last_wer "$exp" test
