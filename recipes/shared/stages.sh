# Shared by every recipe's run.sh (sourced, not run): option parsing, stage selection with
# .done markers, and the RESULTS.md writer. Recipes keep their stages visible in run.sh.
#
# Options: --stage N, --stop-stage M, --quick (a recipe decides what quick means),
# --data DIR and --exp DIR (where data and models go; defaults chosen by the recipe).

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
[ -x "$root/.venv/bin/asr" ] && export PATH="$root/.venv/bin:$PATH"

stage=1
stop_stage=${default_stop_stage:-100}  # a recipe may leave optional stages after its default last one
quick=false
data_dir=
exp_dir=
while [ $# -gt 0 ]; do
  case $1 in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; stop_given=true; shift 2 ;;
    --quick) quick=true; shift ;;
    --data) data_dir=$2; shift 2 ;;
    --exp) exp_dir=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
# --stage N past the default last stage runs the optional stages from N on
if [ -z "${stop_given:-}" ] && [ "$stage" -gt "$stop_stage" ]; then stop_stage=100; fi

# asr_train --config FILE KEY=VALUE...: `asr train` on this machine's CPU cores. With two or
# more, two processes (DDP over gloo, via torchrun) of half the cores each. In float32 this
# trained 1.3x the audio per second of one process with two threads (107 + 111 against 165
# audio-s/s). In bf16, one process of two threads made 224-233 audio-s/s against 272 for the two
# (session 12), and twice the updates per epoch learn no more per epoch (synthetic dev CER 0.2652
# against 0.2655 after 3): at equal wall time two processes win (recipes/synthetic/RESULTS.md).
asr_train() {
  local ranks=$(( $(nproc) >= 2 ? 2 : 1 ))
  torchrun --standalone --nproc_per_node "$ranks" -m asr train "$@" threads=$(( $(nproc) / ranks ))
}

# run_stage N DESCRIPTION MARKER: true when stage N is selected and its marker is absent.
run_stage() {
  [ "$1" -ge "$stage" ] && [ "$1" -le "$stop_stage" ] || return 1
  if [ -f "$3" ]; then
    echo "== stage $1: $2: done already ($3)"
    return 1
  fi
  echo
  echo "== stage $1: $2 ($(date +%H:%M:%S))"
}

# score_splits [--by FIELD] EXP DATA NAME...: asr score for each decoding EXP/decode_NAME/hyp.txt
# -> EXP/decode_NAME/score.txt. NAME is a split (greedy decoding) or SPLIT_VARIANT, e.g.
# test_beam_lm, scored against DATA/SPLIT.jsonl; --by adds WER and CER per value of FIELD.
score_splits() {
  local by=() name
  [ "$1" = --by ] && by=(--by "$2") && shift 2
  local exp=$1 data=$2; shift 2
  for name in "$@"; do
    asr score "$data/${name%%_*}.jsonl" "$exp/decode_$name/hyp.txt" "${by[@]}" \
      --alignments "$exp/decode_$name/alignments.txt" > "$exp/decode_$name/score.txt"
  done
}

# score_rows EXP NAME...: a markdown table of the decodings' WER and CER (after score_splits).
score_rows() {
  local exp=$1 name; shift
  echo "| set | WER | CER |"
  echo "|---|---|---|"
  for name in "$@"; do
    echo "| $name | $(awk '/^WER/ {print $2}' "$exp/decode_$name/score.txt") | $(awk '/^CER/ {print $2}' "$exp/decode_$name/score.txt") |"
  done
}

# gpus: the GPUs nvidia-smi lists, e.g. "8 x NVIDIA H100 80GB HBM3", or "no GPU".
gpus() {
  local names
  names=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | sort | uniq -c | awk '{n = $1; $1 = ""; printf "%s%s x%s", sep, n, $0; sep = ", "}') || true
  echo "${names:-no GPU}"
}

# require_manifests LIST: stop with an error naming the first missing manifest of LIST
# (comma-separated), which another recipe's run.sh makes.
require_manifests() {
  local manifest
  for manifest in ${1//,/ }; do
    [ -f "$manifest" ] || { echo "error: $manifest not found: its recipe's run.sh makes it" >&2; exit 1; }
  done
}

# train_streaming CONF EXP DATA LAST [TRAIN]: the streaming GRU of CONF trained on TRAIN
# (manifests, comma-separated; default DATA/train.jsonl) in EXP/streaming (CMVN from
# EXP/cmvn.pt), its last LAST epochs averaged into EXP/streaming.pt, and DATA/test.jsonl decoded
# streamed in 160 ms chunks into EXP/decode_test_streaming/hyp.txt.
train_streaming() {
  local conf=$1 exp=$2 data=$3 last=$4 train=${5:-$3/train.jsonl}
  asr_train --config "$conf" exp_dir="$exp/streaming" cmvn="$exp/cmvn.pt" \
    data.train="$train" data.valid="$data/dev.jsonl"
  asr average --exp-dir "$exp/streaming" --last "$last" --out "$exp/streaming.pt"
  mkdir -p "$exp/decode_test_streaming"
  asr decode --model "$exp/streaming.pt" --manifest "$data/test.jsonl" --chunk-ms 160 --greedy \
    --out "$exp/decode_test_streaming/hyp.txt"
}

# streaming_lm EXP DATA TUNE_ARGS...: the recipe's word LM (EXP/lm/3gram.arpa, and
# EXP/lm/lexicon.txt where there is one) for EXP/streaming.pt, with weights tuned on
# DATA/dev.jsonl for this model (asr tune-lm TUNE_ARGS), attached to it (`asr stream`'s default
# decoding); then DATA/test.jsonl streamed with it in 160 ms chunks into
# EXP/decode_test_streaming_lm/hyp.txt.
streaming_lm() {
  local exp=$1 data=$2 lexicon=()
  shift 2
  [ -f "$exp/lm/lexicon.txt" ] && lexicon=(--lexicon "$exp/lm/lexicon.txt")
  asr tune-lm --model "$exp/streaming.pt" --manifest "$data/dev.jsonl" --lm "$exp/lm/3gram.arpa" "${lexicon[@]}" \
    "$@" --out "$exp/lm/streaming_weights.args"
  asr attach-lm --model "$exp/streaming.pt" --lm "$exp/lm/3gram.arpa" "${lexicon[@]}" $(cat "$exp/lm/streaming_weights.args")
  mkdir -p "$exp/decode_test_streaming_lm"
  asr decode --model "$exp/streaming.pt" --manifest "$data/test.jsonl" --chunk-ms 160 \
    --out "$exp/decode_test_streaming_lm/hyp.txt"
}

# results_table TITLE EXP COMMAND SPLIT...: print a RESULTS.md section from the score files.
results_table() {
  local title=$1 exp=$2 command=$3; shift 3
  echo "# $title"
  echo
  echo "Produced by \`$command\` on $(date -u +%Y-%m-%d), $(nproc) CPU cores, $(gpus)."
  echo "Model: \`$exp/final.pt\`. Decoding: SPLIT = greedy CTC; SPLIT_beam = beam search; SPLIT_beam_lm ="
  echo "beam search with the word LM (and the lexicon given below, if any); SPLIT_beam_lexicon = beam search"
  echo "over the training transcripts' words; SPLIT_streaming = the streaming model, streamed in chunks"
  echo "(SPLIT_streaming_lm: with the word LM)."
  echo
  score_rows "$exp" "$@"
  echo
  echo "Training curve (\`$exp/log.csv\`):"
  echo
  echo '```'
  cat "$exp/log.csv"
  echo '```'
  for name in "$@"; do
    echo
    echo "\`asr score\` on $name (alignments: \`$exp/decode_$name/alignments.txt\`):"
    echo
    echo '```'
    cat "$exp/decode_$name/score.txt"
    echo '```'
  done
}

# update_results FILE REGION: standard input replaces FILE's lines from "<!-- run.sh: REGION -->"
# to "<!-- run.sh: REGION end -->", or is appended as that region when FILE has none. What lies
# outside the regions (notes written by hand: how a configuration was chosen) is kept.
update_results() {
  local file=$1 begin="<!-- run.sh: $2 -->" end="<!-- run.sh: $2 end -->" block
  block=$(mktemp)
  { echo "$begin"; cat; echo "$end"; } > "$block"
  if [ -f "$file" ] && grep -qxF "$begin" "$file" && grep -qxF "$end" "$file"; then
    awk -v begin="$begin" -v end="$end" -v block="$block" '
      $0 == begin { while ((getline line < block) > 0) print line; inside = 1; next }
      $0 == end { inside = 0; next }
      !inside' "$file" > "$file.tmp"
  elif [ -s "$file" ]; then
    { cat "$file"; echo; cat "$block"; } > "$file.tmp"
  else
    cp "$block" "$file.tmp"
  fi
  mv "$file.tmp" "$file"
  rm -f "$block"
}

# last_wer EXP SPLIT: print the recipe's closing line "WER SPLIT <value>" (nothing, and success,
# when a partial run has not scored SPLIT yet: another recipe may run this one's first stages).
last_wer() {
  if [ -f "$1/decode_$2/score.txt" ]; then
    echo "WER $2 $(awk '/^WER/ {print $2}' "$1/decode_$2/score.txt")"
  fi
}
