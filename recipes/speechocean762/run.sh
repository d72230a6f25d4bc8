#!/usr/bin/env bash
# speechocean762 recipe: English read by native Mandarin speakers, half of them children
# (Zhang et al., Interspeech 2021; OpenSLR 101; free for commercial and non-commercial use),
# read from ../shared/data/speechocean762 (see its ATTRIBUTION.md; nothing is copied here).
# Official split: train 125 speakers (6 held out as dev), test 125 other speakers.
# manifests -> CMVN -> BiLSTM-CTC -> average -> greedy decoding -> word 3-gram LM from the
# training prompts -> beam search + LM -> WER, children vs adults.
#
#   ./run.sh [--stage N] [--stop-stage M] [--quick] [--data DIR] [--exp DIR]
#            [--strategy real|finetune|mixed] [--data-root DIR | --download [--mirror URL]]
#
# --strategy finetune (default, the best at equal budget, RESULTS.md): from the synthetic
# recipe's model on speechocean762 + FSDD's spoken digits (conf/finetune.yaml; run
# recipes/synthetic/run.sh first); real: from scratch on speechocean762 (conf/blstm_ctc.yaml);
# mixed: speechocean762 + synthetic + FSDD (conf/mixed.yaml). The default strategy's model is
# exp/final.pt, the others' exp/<strategy>/.
# --data-root: the corpus folder (default: SPEECHOCEAN762_ROOT or ../../../shared/data/speechocean762);
# FSDD is read from FSDD_ROOT (default ../../../shared/data/fsdd);
# --download: fetch OpenSLR's tarball into DATA/download instead (--mirror: another base URL).
# Stage 8, run only when asked (--stage 8), fine-tunes the synthetic recipe's streaming GRU
# (recipes/synthetic/run.sh --stage 10) for `asr stream` on this corpus (conf/gru_streaming.yaml
# -> exp/streaming.pt; --quick: a small one from scratch), gives it stage 6's LM with weights
# tuned for it, and scores it streamed in 160 ms chunks, greedily and with the LM.
# --quick: 300 utterances per split, a small model, 5 epochs (CI). Stages are idempotent
# (.done markers); an interrupted training resumes from exp/last.pt.
set -euo pipefail
cd "$(dirname "$0")"

default_stop_stage=7
default_strategy=finetune
# this recipe's options; the others are ../shared/stages.sh's
strategy= data_root= download=false mirror=
shared=()
while [ $# -gt 0 ]; do
  case $1 in
    --strategy) strategy=$2; shift 2 ;;
    --data-root) data_root=$2; shift 2 ;;
    --download) download=true; shift ;;
    --mirror) download=true mirror=$2; shift 2 ;;
    *) shared+=("$1"); shift ;;
  esac
done
set -- "${shared[@]}"
source ../shared/stages.sh
# --quick trains conf/quick.yaml from scratch: strategy real unless another is asked for (an error)
$quick && strategy=${strategy:-real}
strategy=${strategy:-$default_strategy}

case $strategy in
  real) conf=conf/blstm_ctc.yaml ;;
  finetune) conf=conf/finetune.yaml ;;
  mixed) conf=conf/mixed.yaml ;;
  *) echo "error: --strategy is real, finetune or mixed, not '$strategy'" >&2; exit 2 ;;
esac
if $download && [ -n "$data_root" ]; then
  echo "error: --data-root uses an existing copy; --download and --mirror fetch one" >&2
  exit 2
fi
if $quick; then
  [ "$strategy" = real ] || { echo "error: --quick trains conf/quick.yaml from scratch (strategy real)" >&2; exit 2; }
  data=${data_dir:-data/quick} exp=${exp_dir:-exp/quick} conf=conf/quick.yaml stream_conf=conf/gru_streaming_quick.yaml
  subset="--max-utterances 300"
  tune_grid="--lm-weights 0.5 1.5 --word-scores 0 3 --sample 20"
else
  exp_default=exp
  [ "$strategy" = "$default_strategy" ] || exp_default=exp/$strategy
  data=${data_dir:-data} exp=${exp_dir:-$exp_default} stream_conf=conf/gru_streaming.yaml
  subset=
  tune_grid="--lm-weights 1.0 1.5 2.0 2.5 --word-scores 0 1 2.5 4 --sample 60"
fi
# FSDD (stage 1): 8 kHz recordings of single words, which speechocean762's 16 kHz sentences lack;
# mixed also trains on the synthetic recipe's corpus (recipes/synthetic/run.sh makes it)
case $strategy in
  real) train_manifests=$data/train.jsonl ;;
  finetune) train_manifests=$data/train.jsonl,$data/fsdd/train.jsonl ;;
  mixed) train_manifests=$data/train.jsonl,../synthetic/data/default/train.jsonl,$data/fsdd/train.jsonl ;;
esac
lm_text=$data/original/train.jsonl
$quick || lm_text+=,../synthetic/data/default/train.jsonl
mkdir -p "$data" "$exp"

# Each Ogg Opus file is decoded once to FLAC in $data/audio, the training split also at 0.9x
# and 1.1x speed (offline speed perturbation; the configs turn the on-the-fly one off), so the
# data loader does not decode and resample every epoch on CPU cores the model needs.
if run_stage 1 "manifests (6 training speakers held out as dev; speaker ages); audio decoded once to FLAC" "$data/.manifests.done"; then
  if $download; then
    corpus=(--download-dir "$data/download" ${mirror:+--mirror "$mirror"})
  else
    corpus=(--data-root "${data_root:-${SPEECHOCEAN762_ROOT:-$root/../shared/data/speechocean762}}")
  fi
  asr prepare speechocean762 "${corpus[@]}" --dev-speakers 6 $subset --out "$data/original"
  asr cache-audio --manifest "$data/original/train.jsonl" --speeds 0.9 1.0 1.1 \
    --out-dir "$data/audio" --out "$data/train.jsonl"
  for split in dev test; do
    asr cache-audio --manifest "$data/original/$split.jsonl" --out-dir "$data/audio" --out "$data/$split.jsonl"
  done
  touch "$data/.manifests.done"
fi
if [ "$strategy" != real ] && run_stage 1 "FSDD manifests (spoken digits: its 4 training speakers train here)" "$data/fsdd/.manifests.done"; then
  asr prepare fsdd --data-root "${FSDD_ROOT:-$root/../shared/data/fsdd}" --out "$data/fsdd"
  touch "$data/fsdd/.manifests.done"
fi

if run_stage 2 "global CMVN statistics (speechocean762 train, whatever the strategy)" "$exp/.cmvn.done"; then
  asr compute-cmvn --manifest "$data/train.jsonl" --out "$exp/cmvn.pt"
  touch "$exp/.cmvn.done"
fi

if run_stage 3 "train, strategy $strategy ($conf)" "$exp/.train.done"; then
  require_manifests "$train_manifests"
  if [ "$strategy" = finetune ] && [ ! -f ../synthetic/exp/final.pt ]; then
    echo "error: --strategy finetune starts from ../synthetic/exp/final.pt; run recipes/synthetic/run.sh first" >&2
    exit 1
  fi
  asr_train --config "$conf" exp_dir="$exp" cmvn="$exp/cmvn.pt" \
    data.train="$train_manifests" data.valid="$data/dev.jsonl"
  touch "$exp/.train.done"
fi

if run_stage 4 "average the last 3 epochs -> $exp/final.pt" "$exp/.average.done"; then
  asr average --exp-dir "$exp" --last 3 --out "$exp/final.pt"
  touch "$exp/.average.done"
fi

if run_stage 5 "decode dev and test (greedy)" "$exp/.decode.done"; then
  for split in dev test; do
    mkdir -p "$exp/decode_$split"
    asr decode --model "$exp/final.pt" --greedy --manifest "$data/$split.jsonl" --out "$exp/decode_$split/hyp.txt"
  done
  touch "$exp/.decode.done"
fi

# A word 3-gram from training text only: the training prompts (once each, not the speed
# copies) and, but for --quick, the synthetic corpus's training sentences, which cut the test
# words the LM has never seen from 5.9% to 1.1%. Test sentences are mostly unseen, so the beam
# search is lexicon-free and any word can still be spelled. Weights tuned on dev. The LM and
# its weights go into final.pt, which `asr transcribe` then decodes with by default.
if run_stage 6 "word 3-gram LM from the training text; beam search + LM on test" "$exp/.lm.done"; then
  mkdir -p "$exp/lm" "$exp/decode_test_beam_lm"
  require_manifests "$lm_text"
  asr lm --manifest ${lm_text//,/ } --order 3 --out "$exp/lm/3gram.arpa"
  asr tune-lm --model "$exp/final.pt" --manifest "$data/dev.jsonl" --lm "$exp/lm/3gram.arpa" \
    $tune_grid --out "$exp/lm/weights.args"
  asr decode --model "$exp/final.pt" --manifest "$data/test.jsonl" --lm "$exp/lm/3gram.arpa" \
    $(cat "$exp/lm/weights.args") --out "$exp/decode_test_beam_lm/hyp.txt"
  asr attach-lm --model "$exp/final.pt" --lm "$exp/lm/3gram.arpa" $(cat "$exp/lm/weights.args")
  touch "$exp/.lm.done"
fi

# by_age NAME...: each decoding's WER and CER for children and adults, for RESULTS.md
by_age() {
  local name
  for name in "$@"; do
    echo
    echo "$name: WER and CER by speaker age (children: 15 or younger, adults: 19 or older):"
    echo
    echo '```'
    sed -n '/^by age_group:/,$p' "$exp/decode_$name/score.txt"
    echo '```'
  done
}

# the committed RESULTS.md holds the comparison with other systems: copy our rows in by hand
if run_stage 7 "score, children vs adults -> $exp/RESULTS.md" "$exp/.score.done"; then
  score_splits --by age_group "$exp" "$data" dev test test_beam_lm
  {
    results_table "speechocean762 recipe results (strategy $strategy)" "$exp" \
      "recipes/speechocean762/run.sh$($quick && echo ' --quick' || true) --strategy $strategy" dev test test_beam_lm
    echo
    echo "LM weights tuned on dev: \`$(cat "$exp/lm/weights.args")\`."
    by_age test test_beam_lm
  } | update_results "$exp/RESULTS.md" scores
  touch "$exp/.score.done"
fi

if run_stage 8 "train the streaming GRU ($stream_conf) -> $exp/streaming.pt; decode streamed" "$exp/.streaming.done"; then
  if ! $quick && [ ! -f ../synthetic/exp/streaming.pt ]; then
    echo "error: stage 8 fine-tunes ../synthetic/exp/streaming.pt; run recipes/synthetic/run.sh --stage 10 first" >&2
    exit 1
  fi
  train_streaming "$stream_conf" "$exp" "$data" 3
  streaming_lm "$exp" "$data" $tune_grid
  score_splits --by age_group "$exp" "$data" test_streaming test_streaming_lm
  {
    echo "Streaming model \`$exp/streaming.pt\` ($stream_conf), streamed in 160 ms chunks (stage 8),"
    echo "greedy and with the word LM of stage 6 (weights tuned on dev: \`$(cat "$exp/lm/streaming_weights.args")\`):"
    echo
    score_rows "$exp" test_streaming test_streaming_lm
    by_age test_streaming test_streaming_lm
    echo
    echo '```'
    cat "$exp/streaming/log.csv"
    echo '```'
  } | update_results "$exp/RESULTS.md" streaming
  touch "$exp/.streaming.done"
fi

last_wer "$exp" test
