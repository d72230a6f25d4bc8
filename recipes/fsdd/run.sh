#!/usr/bin/env bash
# Free Spoken Digit Dataset recipe: real recordings of ZERO..NINE (8 kHz, 6 speakers) read
# from ../shared/data/fsdd (CC BY-SA 4.0, see its ATTRIBUTION.md; nothing is copied here).
# Whole speakers are held out for test. BiLSTM-CTC over characters; a few minutes on 2 CPUs.
#
#   ./run.sh [--stage N] [--stop-stage M] [--quick] [--data DIR] [--exp DIR] [FSDD_ROOT env var, default ../../../shared/data/fsdd]
#
# Stages are idempotent (.done markers); an interrupted training resumes from exp/last.pt.
set -euo pipefail
cd "$(dirname "$0")"
source ../shared/stages.sh

fsdd_root=${FSDD_ROOT:-$root/../shared/data/fsdd}
if $quick; then
  data=${data_dir:-data} exp=${exp_dir:-exp/quick} conf=conf/quick.yaml
else
  data=${data_dir:-data} exp=${exp_dir:-exp} conf=conf/blstm_ctc.yaml
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
  asr_train --config "$conf" exp_dir="$exp" cmvn="$exp/cmvn.pt" \
    data.train="$data/train.jsonl" data.valid="$data/dev.jsonl"
  touch "$exp/.train.done"
fi

if run_stage 4 "average the last 3 epochs -> $exp/final.pt" "$exp/.average.done"; then
  asr average --exp-dir "$exp" --last 3 --out "$exp/final.pt"
  touch "$exp/.average.done"
fi

if run_stage 5 "decode test (unseen speakers)" "$exp/.decode.done"; then
  mkdir -p "$exp/decode_test"
  asr decode --model "$exp/final.pt" --manifest "$data/test.jsonl" --out "$exp/decode_test/hyp.txt"
  touch "$exp/.decode.done"
fi

if run_stage 6 "score -> $results" "$exp/.score.done"; then
  score_splits "$exp" "$data" test
  write_results "$results" "FSDD recipe results (test = unseen speakers theo, yweweler)" "$exp" \
    "recipes/fsdd/run.sh$($quick && echo ' --quick' || true)" test
  touch "$exp/.score.done"
fi

last_wer "$exp" test
