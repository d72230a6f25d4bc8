#!/usr/bin/env bash
# LibriSpeech recipe: download (checksummed) -> manifests -> CMVN -> 960 h training -> average
# of the last epochs -> greedy decoding of dev/test clean/other -> WER and exp/RESULTS.md.
#
#   ./run.sh [--stage N] [--stop-stage M] [--quick] [--data DIR] [--exp DIR] [--conf YAML]
#            [--data-root DIR | --mirror URL [--checksums MD5SUMS]] [--ngpu N]
#
# --data-root: an existing copy (holding LibriSpeech/<subset>/ or <subset>/); nothing is downloaded.
# --mirror: base URL instead of https://www.openslr.org/resources/ (12/<subset>.tar.gz);
# --checksums: md5sum-format list replacing the built-in MD5s of the files it names.
# --ngpu N: train on N GPUs with torchrun. --quick: train-clean-100 + dev/test-clean, tiny model (CI).
# Stages are idempotent (.done markers); an interrupted training resumes from exp/last.pt.
set -euo pipefail
cd "$(dirname "$0")"

# this recipe's options; the others are ../shared/stages.sh's
data_root= mirror= checksums= conf= ngpu=1
shared=()
while [ $# -gt 0 ]; do
  case $1 in
    --data-root) data_root=$2; shift 2 ;;
    --mirror) mirror=$2; shift 2 ;;
    --checksums) checksums=$2; shift 2 ;;
    --conf) conf=$2; shift 2 ;;
    --ngpu) ngpu=$2; shift 2 ;;
    *) shared+=("$1"); shift ;;
  esac
done
set -- "${shared[@]}"
source ../shared/stages.sh
if [ -n "$data_root" ] && [ -n "$mirror$checksums" ]; then
  echo "error: --data-root uses an existing copy; --mirror and --checksums are for downloading" >&2
  exit 2
fi

if $quick; then
  data=${data_dir:-data/quick} exp=${exp_dir:-exp/quick} conf=${conf:-conf/quick.yaml}
  train_sets=(train-clean-100) eval_sets=(dev-clean test-clean)
else
  data=${data_dir:-data} exp=${exp_dir:-exp} conf=${conf:-conf/blstm_ctc.yaml}
  train_sets=(train-clean-100 train-clean-360 train-other-500) eval_sets=(dev-clean dev-other test-clean test-other)
fi
corpus=${data_root:-$data/download}
mkdir -p "$data" "$exp"

if run_stage 1 "download, verify and extract ${train_sets[*]} ${eval_sets[*]}" "$data/.download.done"; then
  if [ -n "$data_root" ]; then
    echo "using the copy in $data_root: nothing to download"
  else
    asr prepare librispeech --download --data-root "$corpus" --subsets "${train_sets[@]}" "${eval_sets[@]}" \
      ${mirror:+--mirror "$mirror"} ${checksums:+--checksums "$checksums"}
    touch "$data/.download.done"
  fi
fi

if run_stage 2 "manifests (validated); train = ${train_sets[*]}" "$data/.manifests.done"; then
  asr prepare librispeech --data-root "$corpus" --subsets "${train_sets[@]}" "${eval_sets[@]}" --out "$data"
  for subset in "${train_sets[@]}"; do cat "$data/$subset.jsonl"; done > "$data/train.jsonl"
  touch "$data/.manifests.done"
fi

if run_stage 3 "global CMVN statistics" "$exp/.cmvn.done"; then
  asr compute-cmvn --manifest "$data/train.jsonl" --out "$exp/cmvn.pt"
  touch "$exp/.cmvn.done"
fi

if run_stage 4 "train ($conf, $ngpu process(es))" "$exp/.train.done"; then
  if [ "$ngpu" -gt 1 ]; then
    train=(torchrun --standalone --nproc_per_node "$ngpu" -m asr train)
  else
    train=(asr train)
  fi
  "${train[@]}" --config "$conf" exp_dir="$exp" cmvn="$exp/cmvn.pt" \
    data.train="$data/train.jsonl" data.valid="$data/dev-clean.jsonl"
  touch "$exp/.train.done"
fi

if run_stage 5 "average the last 5 epochs -> $exp/final.pt" "$exp/.average.done"; then
  asr average --exp-dir "$exp" --last 5 --out "$exp/final.pt"
  touch "$exp/.average.done"
fi

if run_stage 6 "decode ${eval_sets[*]} (greedy)" "$exp/.decode.done"; then
  device=$(python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
  for subset in "${eval_sets[@]}"; do
    mkdir -p "$exp/decode_$subset"
    asr decode --model "$exp/final.pt" --greedy --manifest "$data/$subset.jsonl" --out "$exp/decode_$subset/hyp.txt" \
      --device "$device" --batch-size 16
  done
  touch "$exp/.decode.done"
fi

# the committed RESULTS.md holds the published baselines next to ours: copy the table in by hand
if run_stage 7 "score -> $exp/RESULTS.md" "$exp/.score.done"; then
  score_splits "$exp" "$data" "${eval_sets[@]}"
  results_table "LibriSpeech recipe results" "$exp" \
    "recipes/librispeech/run.sh$($quick && echo ' --quick' || true) --conf $conf" "${eval_sets[@]}" \
    | update_results "$exp/RESULTS.md" scores
  touch "$exp/.score.done"
fi

if [ -f "$exp/.score.done" ]; then
  for subset in "${eval_sets[@]}"; do last_wer "$exp" "$subset"; done
  # every recipe's last line is "WER test <value>"; here the test set is test-clean
  echo "WER test $(awk '/^WER/ {print $2}' "$exp/decode_test-clean/score.txt")"
fi
