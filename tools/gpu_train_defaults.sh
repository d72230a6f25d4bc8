#!/usr/bin/env bash
# The one command of a GPU session for issue #21: train the embedded default models (offline
# BiLSTM-CTC, streaming GRU) on one GPU for a fixed time on the pack that tools/pack_for_gpu.py
# made (.carry/english), and write what comes back into --out: compact float16 checkpoints
# (no LM: recipes/english attaches it here), the training logs and a summary with the audio hours
# trained per GPU hour. docs/training.md ("Training the defaults on a GPU") has the device call.
#
#   bash tools/gpu_train_defaults.sh --out DIR [--minutes 6] [--mode continue|scratch]
#        [--one-at-a-time] [--repeat 4] [--models "offline streaming"] [--pack .carry/english]
#        [--device cuda|cpu] [--work DIR] [--wheels .whl] [-- KEY=VALUE...]
#
# --mode continue (default): train on from asr/pretrained/*.pt at their sizes (conf/gpu_offline.yaml,
#   conf/gpu_streaming.yaml); scratch: the larger models from nothing (conf/gpu_*_large.yaml).
# Both models train at once on the one GPU, each for --minutes, each with half the CPU cores as
# loader workers; --one-at-a-time gives each all the cores, one after the other (2 x --minutes).
# An epoch is --repeat passes over the pack (each with its own augmentation): a GPU takes one pass
# in seconds, and validation, checkpoints and the loader's start come once an epoch.
# KEY=VALUE after -- go to both trainings (e.g. data.max_frames=32000). Wheels in --wheels are
# installed first (the GPU machine lacks soundfile and jiwer); --device cpu tests it all here.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
minutes=6 mode=continue models="offline streaming" pack=.carry/english device=cuda out= work=/tmp/gpu_train
wheels=.whl together=true repeat=4
while [ $# -gt 0 ]; do
  case $1 in
    --minutes) minutes=$2; shift 2 ;;
    --mode) mode=$2; shift 2 ;;
    --models) models=$2; shift 2 ;;
    --pack) pack=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --wheels) wheels=$2; shift 2 ;;
    --one-at-a-time) together=false; shift ;;
    --repeat) repeat=$2; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$out" ] || { echo "error: --out DIR is required" >&2; exit 2; }
case $mode in continue) suffix= ;; scratch) suffix=_large ;; *) echo "error: --mode continue|scratch" >&2; exit 2 ;; esac
mkdir -p "$out" "$work"
out=$(cd "$out" && pwd) work=$(cd "$work" && pwd) pack=$(cd "$pack" && pwd)
started=$(date +%s)

export PYTHONPATH=$root PYTHONUNBUFFERED=1
if compgen -G "$wheels/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site" "$wheels"/*.whl
  export PYTHONPATH=$work/site:$root
fi
python3 - "$device" <<'EOF'
import sys, torch, soundfile, jiwer
print(f"torch {torch.__version__}, soundfile {soundfile.__version__} (libsndfile {soundfile.__libsndfile_version__}) from {soundfile.__file__}, jiwer from {jiwer.__file__}")
if sys.argv[1] == "cuda":
    if not torch.cuda.is_available():
        sys.exit("error: no CUDA device")
    print(f"GPU: {torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
EOF
cores=$(nproc)
if $together; then workers=$(( (cores - 2) / 2 )); else workers=$(( cores - 2 )); fi
[ "$workers" -ge 1 ] || workers=1

train=$( (ls "$pack"/{librispeech-clips_train,an4_train,speechocean762_train,keywords_train,fsdd_train,synthetic_train}.jsonl 2>/dev/null || true) | paste -sd,)
valid=$( (ls "$pack"/{librispeech-clips_dev,speechocean762_dev,synthetic_dev}.jsonl 2>/dev/null || true) | paste -sd,)
[ -n "$train" ] || { echo "error: no training manifests in $pack (tools/pack_for_gpu.py makes them)" >&2; exit 1; }
echo "pack: $(python3 -c "import json, sys; p = json.load(open(sys.argv[1])); print(f\"{sum(s['hours'] for s in p['sets'].values()):.2f} h at {p['kbps']:g} kbps\")" "$pack/pack.json")"

common=(data.train="$(for _ in $(seq "$repeat"); do echo "$train"; done | paste -sd,)" data.valid="$valid" data.num_workers=$workers max_minutes=$minutes device=$device threads=2)
[ "$device" = cpu ] && common+=(precision=fp32)
if [ "$mode" = scratch ]; then
  python3 -m asr compute-cmvn --manifest "$train" --out "$work/cmvn.pt"
  common+=(cmvn="$work/cmvn.pt")
fi

# train NAME: asr train with conf/gpu_NAME[_large].yaml into $work/NAME, afresh (a run on a time
# budget does not resume: its clock would start again); its output in $out/NAME_train.log
train() {
  local name=$1 t0=$(date +%s); shift
  rm -rf "${work:?}/$name"
  (cd recipes/english && python3 -m asr train --config "conf/gpu_$name$suffix.yaml" exp_dir="$work/$name" \
    "${common[@]}" "$@") > "$out/${name}_train.log" 2>&1
  echo "$name: trained in $(( $(date +%s) - t0 )) s"
}
status=0
if $together; then
  pids=()
  for name in $models; do train "$name" "$@" & pids+=($!); done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
else
  for name in $models; do train "$name" "$@" || status=1; done
fi
for name in $models; do tail -n 3 "$out/${name}_train.log"; done
[ $status = 0 ] || { echo "error: a training failed (see its log in $out)" >&2; exit 1; }

# the last two epochs averaged where four or more ran (else the last, which ended at the lowest
# learning rate), float16, with provenance
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
for name in $models; do
  epochs=$(ls "$work/$name"/epoch-*.pt | wc -l)
  python3 -m asr average --exp-dir "$work/$name" --last $(( epochs >= 4 ? 2 : 1 )) --out "$work/$name/final.pt"
  python3 -m asr compact --model "$work/$name/final.pt" --out "$out/$name.pt" --note \
    recipe=tools/gpu_train_defaults.sh "config=recipes/english/conf/gpu_$name$suffix.yaml" "mode=$mode" \
    "minutes=$minutes" "repeat=$repeat" "together=$together" "device=${gpu:-$device}" "pack=$(python3 -c "import json, sys; print(json.dumps(json.load(open(sys.argv[1]))['sets']))" "$pack/pack.json")"
  cp "$work/$name/log.csv" "$out/${name}_log.csv"
done

# audio hours trained per GPU hour: each model's training loop (validation excluded); when both
# trained at once the GPU's is their sum
python3 - "$out" "$together" $models <<'EOF' | tee "$out/summary.txt"
import csv, sys
out, together, models = sys.argv[1], sys.argv[2] == "true", sys.argv[3:]
total = 0.0
for name in models:
    rows = list(csv.DictReader(open(f"{out}/{name}_log.csv")))
    rate = sum(float(r["audio_s_per_s"]) for r in rows) / len(rows)
    total += rate
    last = rows[-1]
    print(f"{name}: {len(rows)} epochs, {last['step']} steps, {rate:.0f} audio h per GPU h (audio-s/s), "
          f"last valid CER {last.get('valid_cer')} WER {last.get('valid_wer')}")
if together and len(models) > 1:
    print(f"together on one GPU: {total:.0f} audio h per GPU h")
EOF
echo "all done in $(( $(date +%s) - started )) s; in $out: $(cd "$out" && ls | paste -sd' ')"
