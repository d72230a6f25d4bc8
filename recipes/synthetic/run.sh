#!/usr/bin/env bash
# Synthetic English recipe: a corpus of natural voices (RHVoice, festival, SVOX pico, hibari, piper,
# CMU flite) and espeak-ng in LibriSpeech layout (test voices AND sentences unseen in training) -> manifests -> CMVN -> BiLSTM-CTC -> average of the last
# epochs -> greedy decoding -> word 3-gram LM from the training text -> beam search with and
# without it -> WER/CER in RESULTS.md. Stages 10-11, run only when asked (--stage 10), train the
# streaming GRU for `asr stream`, give it the LM, and score it streamed chunk by chunk.
#
#   ./run.sh [--stage N] [--stop-stage M] [--quick] [--data DIR] [--exp DIR]
#
# Stages are idempotent: a finished stage leaves a .done marker and is skipped next time
# (delete the marker to redo it). An interrupted training resumes from exp/last.pt.
set -euo pipefail
cd "$(dirname "$0")"
default_stop_stage=9
source ../shared/stages.sh

if $quick; then
  data=${data_dir:-data/quick} exp=${exp_dir:-exp/quick} conf=conf/quick.yaml stream_conf=conf/gru_streaming_quick.yaml
  # a model past the all-blank plateau makes a lexicon search costly: a small grid on 10 dev utterances
  tune_grid="--lm-weights 0.5 1.5 --sample 10"
  corpus_args="--train-sentences 600 --dev-sentences 60 --test-sentences 100 --train-speakers 40 --dev-speakers 4 --test-speakers 6"
else
  data=${data_dir:-data/default} exp=${exp_dir:-exp} conf=conf/blstm_ctc.yaml stream_conf=conf/gru_streaming.yaml
  tune_grid="--lm-weights 1.0 1.5 2.0 --sample 100"
  # three quarters of the speakers are natural voices (tools/install_voices.sh; one not installed is
  # skipped): real speech is recognised far better after pre-training on voices of recorded people
  # (RESULTS.md, "Wider voices"). test and dev hear natural voices train never hears (RHVoice alan,
  # festival slt). quick stays espeak-ng alone, as its floors
  corpus_args="--train-sentences 9000 --dev-sentences 200 --test-sentences 300 --train-speakers 200 --natural-speakers 150 --dev-speakers 8 --test-speakers 8"
fi
mkdir -p "$data" "$exp"
# the committed RESULTS.md is written only by a default run
if $quick || [ -n "$exp_dir" ]; then results=$exp/RESULTS.md; else results=RESULTS.md; fi

if run_stage 1 "synthesize the corpus with espeak-ng (and natural voices)" "$data/.synth.done"; then
  python "$root/tools/synthesize_corpus.py" --out "$data/corpus" --seed 0 $corpus_args
  touch "$data/.synth.done"
fi

if run_stage 2 "manifests (validated)" "$data/.manifests.done"; then
  for split in train dev test; do
    asr prepare librispeech-tree --root "$data/corpus/$split" --out "$data/$split.jsonl"
  done
  touch "$data/.manifests.done"
fi

if run_stage 3 "global CMVN statistics" "$exp/.cmvn.done"; then
  asr compute-cmvn --manifest "$data/train.jsonl" --out "$exp/cmvn.pt"
  touch "$exp/.cmvn.done"
fi

if run_stage 4 "train ($conf)" "$exp/.train.done"; then
  asr_train --config "$conf" exp_dir="$exp" cmvn="$exp/cmvn.pt" \
    data.train="$data/train.jsonl" data.valid="$data/dev.jsonl"
  touch "$exp/.train.done"
fi

if run_stage 5 "average the last 2 epochs -> $exp/final.pt" "$exp/.average.done"; then
  asr average --exp-dir "$exp" --last 2 --out "$exp/final.pt"
  touch "$exp/.average.done"
fi

if run_stage 6 "decode dev and test (greedy)" "$exp/.decode.done"; then
  for split in dev test; do
    mkdir -p "$exp/decode_$split"
    asr decode --model "$exp/final.pt" --greedy --manifest "$data/$split.jsonl" --out "$exp/decode_$split/hyp.txt"
  done
  touch "$exp/.decode.done"
fi

# The test sentences, and 7% of their words, are unseen in training. The LM knows only the
# training text; the lexicon adds an English word list (Debian's wamerican, 100k words), so
# that the decoder can still produce a word the LM has never seen (it costs the LM's <unk>).
# Without the word list, the beam search is lexicon-free and may spell any word. Stage 8 puts
# the LM, the lexicon and the tuned weights into final.pt: `asr transcribe`'s default decoding.
words=/usr/share/dict/american-english
# the word scores tune-lm tries: a lexicon's words need no bonus to beat misspellings; a
# lexicon-free search needs one
word_scores() { if [ -f "$exp/lm/lexicon.txt" ]; then echo "-2 -1 0"; else echo "1 2.5 4"; fi; }
if run_stage 7 "word 3-gram LM from the training transcripts, and a lexicon" "$exp/.lm.done"; then
  mkdir -p "$exp/lm"
  asr lm --manifest "$data/train.jsonl" --order 3 --out "$exp/lm/3gram.arpa"
  if [ -f "$words" ]; then
    asr lexicon --manifest "$data/train.jsonl" --words "$words" --out "$exp/lm/lexicon.txt"
  else
    echo "no $words (Debian package wamerican): lexicon-free beam search" >&2
    rm -f "$exp/lm/lexicon.txt"
  fi
  touch "$exp/.lm.done"
fi

if run_stage 8 "beam search, and beam search + LM with weights tuned on dev" "$exp/.beam.done"; then
  lexicon=()
  [ -f "$exp/lm/lexicon.txt" ] && lexicon=(--lexicon "$exp/lm/lexicon.txt")
  asr tune-lm --model "$exp/final.pt" --manifest "$data/dev.jsonl" --lm "$exp/lm/3gram.arpa" "${lexicon[@]}" \
    $tune_grid --word-scores $(word_scores) --out "$exp/lm/weights.args"
  mkdir -p "$exp/decode_test_beam" "$exp/decode_test_beam_lm"
  asr decode --model "$exp/final.pt" --manifest "$data/test.jsonl" --no-lm --beam-size 32 \
    --out "$exp/decode_test_beam/hyp.txt"
  asr decode --model "$exp/final.pt" --manifest "$data/test.jsonl" --lm "$exp/lm/3gram.arpa" "${lexicon[@]}" \
    $(cat "$exp/lm/weights.args") --out "$exp/decode_test_beam_lm/hyp.txt"
  asr attach-lm --model "$exp/final.pt" --lm "$exp/lm/3gram.arpa" "${lexicon[@]}" $(cat "$exp/lm/weights.args")
  touch "$exp/.beam.done"
fi

if run_stage 9 "score -> $results" "$exp/.score.done"; then
  score_splits "$exp" "$data" dev test test_beam test_beam_lm
  {
    results_table "Synthetic recipe results" "$exp" "recipes/synthetic/run.sh$($quick && echo ' --quick' || true)" \
      dev test test_beam test_beam_lm
    echo
    echo "LM: \`$exp/lm/3gram.arpa\` (modified Kneser-Ney, training transcripts only); beam search"
    if [ -f "$exp/lm/lexicon.txt" ]; then
      echo "over \`$exp/lm/lexicon.txt\` ($(wc -l < "$exp/lm/lexicon.txt") words: the training words and $words);"
    else
      echo "lexicon-free;"
    fi
    echo "weights tuned on dev: \`$(cat "$exp/lm/weights.args")\`."
  } | update_results "$results" scores
  touch "$exp/.score.done"
fi

# Not run by default (--stage 10 runs 10 and 11): the streaming model for `asr stream`, trained
# like the BiLSTM and decoded by streaming each test utterance in 160 ms chunks (stage 10; the
# english recipe fine-tunes what it leaves), then given stage 7's LM with weights tuned for it,
# which it then carries, and scored (stage 11).
if run_stage 10 "train the streaming GRU ($stream_conf) -> $exp/streaming.pt" "$exp/.streaming_train.done"; then
  train_streaming "$stream_conf" "$exp" "$data" 2
  touch "$exp/.streaming_train.done"
fi

if run_stage 11 "the word LM for the streaming model; scores -> $results" "$exp/.streaming.done"; then
  streaming_lm "$exp" "$data" $tune_grid --word-scores $(word_scores)
  score_splits "$exp" "$data" test_streaming test_streaming_lm
  {
    echo "Streaming model \`$exp/streaming.pt\` ($stream_conf), streamed in 160 ms chunks (stages 10-11),"
    echo "greedy and with the word LM of stage 7 (weights tuned on dev: \`$(cat "$exp/lm/streaming_weights.args")\`):"
    echo
    score_rows "$exp" test_streaming test_streaming_lm
    echo
    echo '```'
    cat "$exp/streaming/log.csv"
    echo '```'
  } | update_results "$results" streaming
  touch "$exp/.streaming.done"
fi

last_wer "$exp" test
