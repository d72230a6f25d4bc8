#!/usr/bin/env bash
# English recipe: the embedded default models that `asr transcribe` and `asr stream` use without
# --model. Everything real in ../shared/data (LibriSpeech clips and CMU AN4: native speakers;
# speechocean762's read sentences: non-native; the keywords corpus's wake and command words,
# FSDD's digits; see their ATTRIBUTION.md files, nothing is copied here) mixed with the synthetic
# recipe's corpus (natural TTS voices and espeak-ng); the shipped models (asr/pretrained/, each
# pre-trained on synthetic speech and fine-tuned on real speech by an earlier run of this recipe)
# trained on on the mixture: the BiLSTM-CTC for files and the streaming GRU for the microphone.
# A general word 3-gram LM from every training transcript and LibriSpeech book text, weights tuned
# on a dev set of real and synthetic speech, attached to both. Every test set scored, greedy and
# with the LM, offline and streamed (RESULTS.md); then, when asked, both models stored compactly
# (float16) with their provenance in ../../asr/pretrained/, and the ablation of the mixture.
#
#   ./run.sh [--stage N] [--stop-stage M] [--data DIR] [--exp DIR]
#
# Stage 10 (run only when asked: --stage 10 --stop-stage 10) trains shorter runs, each without
# one part of the mixture, and scores them (RESULTS.md, "Ablation"). Stage 11 (--stage 11)
# replaces the embedded defaults in asr/pretrained/: a deliberate step, since the files are committed.
# The models keep the CMVN statistics of the checkpoints they start from.
# LIBRISPEECH_CLIPS_ROOT, AN4_ROOT, SPEECHOCEAN762_ROOT, KEYWORDS_ROOT and FSDD_ROOT override where
# the corpora are read from
# (default: ../shared/data/<corpus> beside the repository). Stages are idempotent (.done
# markers); an interrupted training resumes from its last.pt.
# TRAINED_DIR=DIR: models trained elsewhere (what tools/gpu_train_defaults.sh writes on a GPU:
# offline.pt, streaming.pt and their *_log.csv) stand in for stages 3-5, e.g.
# `TRAINED_DIR=DIR ./run.sh --exp exp_gpu --stage 3`, and `--stage 11` then ships them with their
# provenance (docs/training.md, "Training the defaults on a GPU").
set -euo pipefail
cd "$(dirname "$0")"
default_stop_stage=9
source ../shared/stages.sh
$quick && { echo "error: this recipe has no --quick mode; the other recipes' quick runs test its stages" >&2; exit 2; }

data=${data_dir:-data} exp=${exp_dir:-exp}
shared_data=$root/../shared/data
synthetic=../synthetic/data/default
# training mixture: the real corpora (the native ones at three speeds: an hour and a half of
# native speech is the scarcest part), the synthetic corpus
train_manifests=$data/librispeech-clips/train.jsonl,$data/an4/train.jsonl,$data/speechocean762/train.jsonl
train_manifests+=,$data/keywords/train.jsonl,$data/fsdd/train.jsonl,$synthetic/train.jsonl
tests="librispeech-clips an4 speechocean762 fsdd keywords synthetic"
tune_grid="--lm-weights 0.5 0.75 1.0 1.5 --word-scores 0 1 2.5 --sample 150"
mkdir -p "$data" "$exp"

# Each corpus in its own folder; Ogg Opus decoded once to FLAC (speed-perturbed copies of the
# training parts), so that the loader neither decodes Opus nor resamples every epoch. Test sets
# are named after their corpus: $data/<corpus>.jsonl.
# cache CORPUS PART [SPEEDS...]: $data/CORPUS/original/PART.jsonl decoded to FLAC -> $data/CORPUS/PART.jsonl
cache() {
  local corpus=$1 part=$2; shift 2
  asr cache-audio --manifest "$data/$corpus/original/$part.jsonl" ${1:+--speeds "$@"} \
    --out-dir "$data/$corpus/audio" --out "$data/$corpus/$part.jsonl"
}

if run_stage 1 "manifests of the real corpora; audio decoded once to FLAC" "$data/.manifests.done"; then
  # native read speech: 20 of the LibriSpeech clips' training speakers are the native dev voices;
  # its adapt part (three speakers' chapters) stays out of training, for docs/adapt.md
  asr prepare librispeech-clips --data-root "${LIBRISPEECH_CLIPS_ROOT:-$shared_data/librispeech_clips}" \
    --dev-speakers 20 --out "$data/librispeech-clips/original"
  cache librispeech-clips train 0.9 1.0 1.1 && cache librispeech-clips dev && cache librispeech-clips test
  mv "$data/librispeech-clips/test.jsonl" "$data/librispeech-clips.jsonl"
  asr prepare an4 --data-root "${AN4_ROOT:-$shared_data/an4}" --out "$data/an4/original"
  cache an4 train 0.9 1.0 1.1 && cache an4 test
  mv "$data/an4/test.jsonl" "$data/an4.jsonl"
  asr prepare speechocean762 --data-root "${SPEECHOCEAN762_ROOT:-$shared_data/speechocean762}" --dev-speakers 6 \
    --out "$data/speechocean762/original"
  cache speechocean762 train && cache speechocean762 dev && cache speechocean762 test
  mv "$data/speechocean762/test.jsonl" "$data/speechocean762.jsonl"
  asr prepare keywords --data-root "${KEYWORDS_ROOT:-$shared_data/keywords}" --out "$data/keywords/original"
  cache keywords train
  cp "$data/keywords/original/test.jsonl" "$data/keywords.jsonl"
  asr prepare fsdd --data-root "${FSDD_ROOT:-$shared_data/fsdd}" --out "$data/fsdd"
  cp "$data/fsdd/test.jsonl" "$data/fsdd.jsonl"
  touch "$data/.manifests.done"
fi

# The synthetic recipe's corpus: natural TTS voices and espeak-ng, test and dev voices unseen in
# train (its stages 1-2; nothing is redone when they have run).
if run_stage 2 "the synthetic corpus: ../synthetic/data/default" "$exp/.synthetic.done"; then
  bash ../synthetic/run.sh --stop-stage 2
  cp "$synthetic/test.jsonl" "$data/synthetic.jsonl"
  # validation and LM tuning: 20 native and 6 non-native held-out speakers, the synthetic dev voices
  cat "$data/librispeech-clips/dev.jsonl" "$data/speechocean762/dev.jsonl" "$synthetic/dev.jsonl" > "$data/dev.jsonl"
  # the embedded defaults that stages 3-4 start from, scored beside this run's models (stages 7-8)
  mkdir -p "$exp/start" && cp "$root/asr/pretrained/offline.pt" "$root/asr/pretrained/streaming.pt" "$exp/start/"
  touch "$exp/.synthetic.done"
fi

# the configs that trained the models (stage 11 records them); models trained elsewhere name theirs
offline_config=recipes/english/conf/finetune.yaml streaming_config=recipes/english/conf/streaming.yaml
if [ -n "${TRAINED_DIR:-}" ]; then
  trained_config() { python -c "import sys; from asr.checkpoint import load_checkpoint
print(load_checkpoint(sys.argv[1]).metadata['provenance']['config'])" "$1"; }
  offline_config=$(trained_config "$TRAINED_DIR/offline.pt") streaming_config=$(trained_config "$TRAINED_DIR/streaming.pt")
  if run_stage 3 "models trained elsewhere: $TRAINED_DIR -> $exp/final.pt, $exp/streaming.pt (stages 3-5)" "$exp/.average.done"; then
    mkdir -p "$exp/offline" "$exp/streaming"
    cp "$TRAINED_DIR/offline.pt" "$exp/final.pt" && cp "$TRAINED_DIR/offline_log.csv" "$exp/offline/log.csv"
    cp "$TRAINED_DIR/streaming.pt" "$exp/streaming.pt" && cp "$TRAINED_DIR/streaming_log.csv" "$exp/streaming/log.csv"
    touch "$exp/.train.done" "$exp/.streaming_train.done" "$exp/.average.done"
  fi
fi

if run_stage 3 "continue training the shipped BiLSTM-CTC on the mixture (conf/finetune.yaml)" "$exp/.train.done"; then
  asr_train --config conf/finetune.yaml exp_dir="$exp/offline" \
    data.train="$train_manifests" data.valid="$data/dev.jsonl"
  touch "$exp/.train.done"
fi

if run_stage 4 "continue training the shipped streaming GRU on the mixture (conf/streaming.yaml)" "$exp/.streaming_train.done"; then
  asr_train --config conf/streaming.yaml exp_dir="$exp/streaming" \
    data.train="$train_manifests" data.valid="$data/dev.jsonl"
  touch "$exp/.streaming_train.done"
fi

# The budgets give about 6 epochs of the mixture to the BiLSTM and 3 to the GRU: the BiLSTM's last
# two are averaged; the GRU's first epoch, still at a high learning rate, would only blur its last.
if run_stage 5 "average the last 2 epochs -> $exp/final.pt; the last epoch -> $exp/streaming.pt" "$exp/.average.done"; then
  asr average --exp-dir "$exp/offline" --last 2 --out "$exp/final.pt"
  asr average --exp-dir "$exp/streaming" --last 1 --out "$exp/streaming.pt"
  touch "$exp/.average.done"
fi

# A word 3-gram from every training transcript (each sentence once, not the speed copies): the
# LibriSpeech clips and AN4, speechocean762's prompts, the keywords, the digits and the synthetic
# corpus's 9,000 fortune sentences; and 1.1 M words of LibriSpeech book text (lm_text/, which
# holds none of the adapt or test speakers' sentences), bigrams seen once and trigrams seen twice
# or less left out so that the LM ships inside the models (docs/training.md, "Word LM"). The search
# stays lexicon-free, so that a word the LM never saw can still be spelled.
if run_stage 6 "word 3-gram LM; weights tuned on dev for each model and attached" "$exp/.lm.done"; then
  mkdir -p "$exp/lm"
  asr lm --manifest "$data/librispeech-clips/original/train.jsonl" "$data/an4/original/train.jsonl" \
    "$data/speechocean762/original/train.jsonl" "$data/keywords/original/train.jsonl" \
    "$data/fsdd/train.jsonl" "$synthetic/train.jsonl" \
    --text "${LIBRISPEECH_CLIPS_ROOT:-$shared_data/librispeech_clips}/lm_text/train-clean-100_dev-clean.txt.gz" \
    --order 3 --prune 0 1 2 --out "$exp/lm/3gram.arpa"
  asr tune-lm --model "$exp/final.pt" --manifest "$data/dev.jsonl" --lm "$exp/lm/3gram.arpa" $tune_grid \
    --out "$exp/lm/weights.args"
  asr attach-lm --model "$exp/final.pt" --lm "$exp/lm/3gram.arpa" $(cat "$exp/lm/weights.args")
  asr tune-lm --model "$exp/streaming.pt" --manifest "$data/dev.jsonl" --lm "$exp/lm/3gram.arpa" $tune_grid \
    --out "$exp/lm/streaming_weights.args"
  asr attach-lm --model "$exp/streaming.pt" --lm "$exp/lm/3gram.arpa" $(cat "$exp/lm/streaming_weights.args")
  touch "$exp/.lm.done"
fi

# decode NAME MODEL ARGS...: every test set decoded into $exp/decode_<set>_NAME/hyp.txt
decode() {
  local name=$1 model=$2 set; shift 2
  for set in $tests; do
    mkdir -p "$exp/decode_${set}_$name"
    asr decode --model "$model" --manifest "$data/$set.jsonl" "$@" --out "$exp/decode_${set}_$name/hyp.txt"
  done
}

# the offline and the streaming decodings side by side, one CPU thread each; this run's models
# (greedy, lm, streaming, streaming_lm) and the ones it started from (start_greedy, ...)
if run_stage 7 "decode every test set: offline and streamed in 160 ms chunks, greedy and with the LM" "$exp/.decode.done"; then
  (export OMP_NUM_THREADS=1
   for prefix in "" start_; do
     model=$exp/final.pt; [ -n "$prefix" ] && model=$exp/start/offline.pt
     decode ${prefix}greedy "$model" --greedy; decode ${prefix}lm "$model"
   done) &
  offline=$!
  (export OMP_NUM_THREADS=1
   for prefix in "" start_; do
     model=$exp/streaming.pt; [ -n "$prefix" ] && model=$exp/start/streaming.pt
     decode ${prefix}streaming "$model" --chunk-ms 160 --greedy; decode ${prefix}streaming_lm "$model" --chunk-ms 160
   done) &
  streaming=$!
  wait $offline && wait $streaming
  touch "$exp/.decode.done"
fi

# scores_table PREFIX: one row per test set, WER / CER of the four decodings
scores_table() {
  echo "| test set | offline greedy | offline + LM | streaming greedy | streaming + LM |"
  echo "|---|---|---|---|---|"
  for set in $tests; do
    row="| $set |"
    for variant in greedy lm streaming streaming_lm; do
      score=$exp/decode_${set}_$1$variant/score.txt
      row+=" $(awk '/^WER/ {print $2}' "$score") / $(awk '/^CER/ {print $2}' "$score") |"
    done
    echo "$row"
  done
}

if run_stage 8 "score -> RESULTS.md" "$exp/.score.done"; then
  for variant in greedy lm streaming streaming_lm start_greedy start_lm start_streaming start_streaming_lm; do
    score_splits --by age_group "$exp" "$data" "speechocean762_$variant"
    score_splits --by source "$exp" "$data" "keywords_$variant"
    score_splits "$exp" "$data" "librispeech-clips_$variant" "an4_$variant" "fsdd_$variant" "synthetic_$variant"
  done
  {
    echo "Produced by \`recipes/english/run.sh\` on $(date -u +%Y-%m-%d), $(nproc) CPU cores, $(gpus)."
    echo "Models: \`$exp/final.pt\` (offline) and \`$exp/streaming.pt\` (streamed in 160 ms chunks); LM weights"
    echo "tuned on dev: offline \`$(cat "$exp/lm/weights.args")\`, streaming \`$(cat "$exp/lm/streaming_weights.args")\`."
    echo
    scores_table ""
    echo
    echo "WER / CER. The embedded defaults this run started from (\`$exp/start/\`, each with its own LM), on the same test sets:"
    echo
    scores_table start_
    echo
    echo "By speaker age (speechocean762) and by source (keywords), this run's offline model + LM:"
    echo
    echo '```'
    sed -n '/^by age_group:/,$p' "$exp/decode_speechocean762_lm/score.txt"
    sed -n '/^by source:/,$p' "$exp/decode_keywords_lm/score.txt"
    echo '```'
    echo
    echo "Training curves (\`$exp/offline/log.csv\`, \`$exp/streaming/log.csv\`):"
    echo
    echo '```'
    cat "$exp/offline/log.csv"
    echo
    cat "$exp/streaming/log.csv"
    echo '```'
  } | update_results RESULTS.md scores
  touch "$exp/.score.done"
fi

# Robustness of the offline default (greedy): quieter, louder, in noise, at 8 kHz, with silence around
if run_stage 9 "robustness conditions (tools/bench_robustness.py) -> RESULTS.md" "$exp/.robustness.done"; then
  python "$root/tools/bench_robustness.py" --model "$exp/final.pt" --manifest "$data/speechocean762.jsonl" \
    --sample 300 --gains-db -20 10 --snrs-db 20 10 --rt60s-s 0.3 0.7 --sample-rates 8000 --silences-s 0.5 > "$exp/robustness.md"
  update_results RESULTS.md robustness < "$exp/robustness.md"
  touch "$exp/.robustness.done"
fi

# What each part of the mixture buys: shorter runs from the model stage 3 started from, each without one
# part (the native corpora; the natural voices, replaced by a corpus of the same sentences spoken
# by the espeak-ng and flite voices the shipped models were pre-trained on; the rooms), scored
# greedy on every real test set beside the whole mixture at the same budget. One process of one
# thread each, two side by side.
ablation_steps=1000
real_tests="librispeech-clips an4 speechocean762 keywords fsdd"
ablate() {
  local name=$1 set; shift
  local dir=$exp/ablation/$name
  OMP_NUM_THREADS=1 asr train --config conf/finetune.yaml exp_dir="$dir" init_from="$exp/start/offline.pt" \
    data.valid="$data/dev.jsonl" max_steps=$ablation_steps threads=1 "$@" > "$dir.log" 2>&1
  asr average --exp-dir "$dir" --last 1 --out "$dir/final.pt"
  for set in $real_tests; do
    mkdir -p "$dir/decode_${set}_greedy"
    OMP_NUM_THREADS=1 asr decode --model "$dir/final.pt" --manifest "$data/$set.jsonl" --greedy \
      --out "$dir/decode_${set}_greedy/hyp.txt"
  done
  score_splits "$dir" "$data" $(for set in $real_tests; do echo "${set}_greedy"; done)
}
if run_stage 10 "ablation: $ablation_steps batches without each part of the mixture -> RESULTS.md" "$exp/.ablation.done"; then
  mkdir -p "$exp/ablation"
  old_voices=$data/synthetic-espeak-flite
  if [ ! -f "$old_voices/train.jsonl" ]; then
    python "$root/tools/synthesize_corpus.py" --out "$old_voices/corpus" --seed 0 --train-sentences 9000 \
      --dev-sentences 200 --test-sentences 300 --train-speakers 200 --flite-speakers 100 --dev-speakers 8 --test-speakers 8
    asr prepare librispeech-tree --root "$old_voices/corpus/train" --out "$old_voices/train.jsonl"
  fi
  native=$data/librispeech-clips/train.jsonl,$data/an4/train.jsonl,
  ablate all data.train="$train_manifests" & first=$!
  ablate no_native data.train="${train_manifests#"$native"}" & second=$!
  wait $first && wait $second
  ablate espeak_flite_voices data.train="${train_manifests/"$synthetic/train.jsonl"/"$old_voices/train.jsonl"}" & first=$!
  ablate no_rooms data.train="$train_manifests" data.augment.reverb_prob=0 & second=$!
  wait $first && wait $second
  {
    echo "Produced by \`recipes/english/run.sh --stage 10 --stop-stage 10\` on $(date -u +%Y-%m-%d): each run"
    echo "$ablation_steps batches of conf/finetune.yaml from the shipped offline model, greedy WER / CER:"
    echo
    echo "| mixture | $(echo $real_tests | sed 's/ / | /g') |"
    echo "|---|---|---|---|---|---|"
    for name in all no_native espeak_flite_voices no_rooms; do
      row="| $name |"
      for set in $real_tests; do
        score=$exp/ablation/$name/decode_${set}_greedy/score.txt
        row+=" $(awk '/^WER/ {print $2}' "$score") / $(awk '/^CER/ {print $2}' "$score") |"
      done
      echo "$row"
    done
  } | update_results RESULTS.md ablation
  touch "$exp/.ablation.done"
fi

# Not run by default: replace the embedded defaults (committed files) with this run's models,
# weights in float16, with their provenance (this recipe, its config, the git commit, the data).
if run_stage 11 "store both models compactly in asr/pretrained/" "$exp/.pretrained.done"; then
  data_note="LibriSpeech clips train (230 speakers, 0.83 h) and AN4 train (74 speakers, 0.71 h) at speeds 0.9/1.0/1.1, speechocean762 train (119 speakers), keywords train (1974 speakers), FSDD train (4 speakers), the synthetic corpus (150 natural TTS voices, 50 espeak-ng voices); trained on from the models shipped before"
  asr compact --model "$exp/final.pt" --out "$root/asr/pretrained/offline.pt" \
    --note recipe=recipes/english/run.sh "config=$offline_config" "data=$data_note"
  asr compact --model "$exp/streaming.pt" --out "$root/asr/pretrained/streaming.pt" \
    --note recipe=recipes/english/run.sh "config=$streaming_config" "data=$data_note"
  # the float16 weights decode as the float32 ones: every test set again, greedy, with the shipped files
  decode compact_greedy "$root/asr/pretrained/offline.pt" --greedy
  decode compact_streaming "$root/asr/pretrained/streaming.pt" --chunk-ms 160 --greedy
  {
    echo "The shipped files (\`asr/pretrained/\`, float16 weights: offline $(du -k "$root/asr/pretrained/offline.pt" | cut -f1) kB,"
    echo "streaming $(du -k "$root/asr/pretrained/streaming.pt" | cut -f1) kB, LM included) against the float32 models, greedy WER:"
    echo
    echo "| test set | offline float32 | offline float16 | streaming float32 | streaming float16 |"
    echo "|---|---|---|---|---|"
    for set in $tests; do
      score_splits "$exp" "$data" "${set}_compact_greedy" "${set}_compact_streaming"
      row="| $set |"
      for variant in greedy compact_greedy streaming compact_streaming; do
        row+=" $(awk '/^WER/ {print $2}' "$exp/decode_${set}_$variant/score.txt") |"
      done
      echo "$row"
    done
  } | update_results RESULTS.md compact
  touch "$exp/.pretrained.done"
fi

last_wer "$exp" speechocean762_lm
