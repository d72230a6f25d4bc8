"""Training verbs: ``asr cache-audio``, ``compute-cmvn``, ``train``, ``average`` and ``compact``."""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
from pathlib import Path

import torch.distributed as dist

from asr.audio import AudioError
from asr.checkpoint import CheckpointError, average_checkpoints, compact_checkpoint, load_checkpoint, write_checkpoint
from asr.cli.common import add_verb, error, fail
from asr.config import load_config
from asr.data.manifest import cache_audio, read_manifest, write_manifest
from asr.train_setup import TrainConfig, compute_cmvn_stats, save_cmvn_stats
from asr.training import Trainer


def register(verbs: argparse._SubParsersAction) -> None:
    p = add_verb(verbs, "cache-audio", cache_audio_verb,
                 help="decode a manifest's audio once to 16 kHz FLAC (optionally speed-perturbed copies)")
    p.add_argument("--manifest", required=True, help="input manifest (JSONL)")
    p.add_argument("--out-dir", required=True, help="folder for the FLAC copies")
    p.add_argument("--out", required=True, help="manifest of the copies (JSONL)")
    p.add_argument("--speeds", type=float, nargs="+", default=[1.0],
                   help="one copy per speed, e.g. 0.9 1.0 1.1 (Kaldi-style speed perturbation; default: 1.0)")
    p.add_argument("--jobs", type=int, help="parallel processes (default: one per CPU)")

    p = add_verb(verbs, "compute-cmvn", compute_cmvn, help="global mean/variance statistics of a training manifest")
    p.add_argument("--manifest", required=True, help="training manifest (JSONL)")
    p.add_argument("--out", required=True, help="statistics file, e.g. exp/cmvn.pt")
    p.add_argument("--n-mels", type=int, default=80)
    p.add_argument("--max-utterances", type=int, default=2000, help="random sample size (default: 2000)")
    p.add_argument("--dither", type=float, default=1e-4,
                   help="the training config's dither, which floors the features (default: 1e-4, as training)")

    p = add_verb(verbs, "train", train, help="train a model; run under torchrun for several processes")
    p.add_argument("--config", help="YAML training configuration (see asr/train_setup.py: TrainConfig)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optim.lr=1e-3 model_config.hidden_size=512")

    p = add_verb(verbs, "average", average, help="average the weights of the last N epoch checkpoints")
    p.add_argument("--exp-dir", required=True, help="training directory with epoch-K.pt files")
    p.add_argument("--last", type=int, default=3, metavar="N", help="how many of the latest epochs (default: 3)")
    p.add_argument("--out", required=True, help="averaged checkpoint, e.g. exp/final.pt")

    p = add_verb(verbs, "compact", compact,
                 help="a checkpoint for shipping: float16 weights, no trainer state, provenance")
    p.add_argument("--model", required=True, help="checkpoint file")
    p.add_argument("--out", required=True, help="compact checkpoint to write")
    p.add_argument("--note", nargs="*", default=[], metavar="KEY=VALUE",
                   help="provenance to record beside the git commit and source, e.g. recipe=... data=...")


def cache_audio_verb(args: argparse.Namespace) -> int:
    try:
        copies = cache_audio(read_manifest(args.manifest), args.out_dir, args.speeds, args.jobs)
    except (AudioError, FileNotFoundError, ValueError) as err:
        return fail(args, err, 1)
    write_manifest(args.out, copies)
    hours = sum(entry["duration"] for entry in copies) / 3600
    print(f"wrote {len(copies)} entries ({hours:.2f} h) to {args.out}")
    return 0


def compute_cmvn(args: argparse.Namespace) -> int:
    try:
        save_cmvn_stats(compute_cmvn_stats(args.manifest, args.n_mels, args.max_utterances, args.dither), args.out)
    except AudioError as err:
        return fail(args, err, 1)
    except (OSError, ValueError) as err:
        return fail(args, err)
    print(f"wrote {args.out}")
    return 0


def train(args: argparse.Namespace) -> int:
    code = 0
    config = None
    try:
        config = load_config(TrainConfig, args.config, args.overrides)
        metrics = Trainer(config).fit()
        print(" ".join(f"{k}={v}" for k, v in metrics.items()))
    except KeyboardInterrupt:
        last = os.path.join(config.exp_dir, "last.pt") if config else "last.pt"
        hint = f"; {last} holds the last step: run the same command to resume" if os.path.exists(last) else ""
        print(f"{args.prog}: interrupted{hint}", file=sys.stderr)
        code = 130
    except AudioError as err:  # a training file the manifest check let through, e.g. deleted since
        code = fail(args, err, 1)
    except (ValueError, OSError, CheckpointError) as err:
        code = fail(args, err)
    if dist.is_initialized():
        # Under torchrun, gloo can leave a joinable C++ thread behind even after
        # destroy_process_group; its destructor then calls std::terminate during interpreter
        # teardown (SIGABRT in about 1 run in 10 on a loaded 2-core machine, pytorch#190489).
        # Every checkpoint is already written atomically, so skip the teardown altogether.
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def average(args: argparse.Namespace) -> int:
    epochs = sorted(
        (int(m.group(1)), p) for p in Path(args.exp_dir).glob("epoch-*.pt") if (m := re.fullmatch(r"epoch-(\d+)\.pt", p.name))
    )
    paths = [p for _, p in epochs[-args.last :]]
    if not paths:
        return error(args, f"{args.exp_dir}: no epoch-K.pt checkpoints to average")
    try:
        write_checkpoint(args.out, average_checkpoints(paths))
    except CheckpointError as err:
        return fail(args, err)
    print(f"averaged {', '.join(p.name for p in paths)} -> {args.out}")
    return 0


def compact(args: argparse.Namespace) -> int:
    notes = dict(note.split("=", 1) for note in args.note if "=" in note)
    if len(notes) != len(args.note):
        return error(args, "--note takes KEY=VALUE")
    source = Path(__file__).resolve().parent  # the code that trained and packs the model
    git = subprocess.run(["git", "-C", str(source), "describe", "--always", "--dirty", "--abbrev=40"],
                         capture_output=True, text=True)
    provenance = {"source": str(Path(args.model).resolve()), "git_commit": git.stdout.strip() or None,
                  "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **notes}
    try:
        ckpt = load_checkpoint(args.model)
        if ckpt.metadata.get("provenance"):  # compacted before, where it was trained (a GPU machine)
            provenance["trained"] = ckpt.metadata["provenance"]
        write_checkpoint(args.out, compact_checkpoint(ckpt, provenance))
    except CheckpointError as err:
        return fail(args, err)
    before, after = Path(args.model).stat().st_size, Path(args.out).stat().st_size
    print(f"{args.model} ({before / 1e6:.1f} MB) -> {args.out} ({after / 1e6:.1f} MB, float16 weights)")
    return 0
