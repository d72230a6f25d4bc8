"""Command line: ``asr transcribe | ...``; each verb is a thin layer over library functions."""

from __future__ import annotations

import argparse
import sys


def _transcribe(args: argparse.Namespace) -> int:
    from asr.audio import AudioError
    from asr.checkpoint import CheckpointError
    from asr.transcribe import Transcriber

    try:
        transcriber = Transcriber(args.model, device=args.device)
    except (CheckpointError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failures = []
    for path in args.files:
        try:
            result = transcriber.transcribe_file(path)
        except AudioError as err:
            failures.append(path)
            print(f"error: {err}", file=sys.stderr)
            continue
        print(f"{path}\t{result.text}", flush=True)
    if failures:
        print(f"{len(failures)} of {len(args.files)} file(s) failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description="Speech recognition toolkit.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("transcribe", help="transcribe audio files with a trained model")
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files (WAV, FLAC, OGG, MP3; any rate, any channels)")
    p.add_argument("--model", required=True, help="checkpoint file, e.g. recipes/synthetic/exp/final.pt")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run the model (default: cpu)")
    p.set_defaults(func=_transcribe)
    _add_prepare(verbs)
    _add_training(verbs)
    _add_score(verbs)
    return parser


def _add_training(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("compute-cmvn", help="global mean/variance statistics of a training manifest")
    p.add_argument("--manifest", required=True, help="training manifest (JSONL)")
    p.add_argument("--out", required=True, help="statistics file, e.g. exp/cmvn.pt")
    p.add_argument("--n-mels", type=int, default=80)
    p.add_argument("--max-utterances", type=int, default=2000, help="random sample size (default: 2000)")
    p.set_defaults(func=_compute_cmvn)

    p = verbs.add_parser("train", help="train a model; run under torchrun for several processes")
    p.add_argument("--config", help="YAML training configuration (see asr/training.py: TrainConfig)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optim.lr=1e-3 model_config.hidden_size=512")
    p.set_defaults(func=_train)

    p = verbs.add_parser("average", help="average the weights of the last N epoch checkpoints")
    p.add_argument("--exp-dir", required=True, help="training directory with epoch-K.pt files")
    p.add_argument("--last", type=int, default=3, metavar="N", help="how many of the latest epochs (default: 3)")
    p.add_argument("--out", required=True, help="averaged checkpoint, e.g. exp/final.pt")
    p.set_defaults(func=_average)

    p = verbs.add_parser("decode", help="transcribe every utterance of a manifest to id<TAB>text")
    p.add_argument("--model", required=True, help="checkpoint file")
    p.add_argument("--manifest", required=True, help="JSONL manifest to decode")
    p.add_argument("--out", required=True, help="hypotheses file (id<TAB>text), for asr score")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.set_defaults(func=_decode)


def _compute_cmvn(args: argparse.Namespace) -> int:
    from asr.training import compute_cmvn_stats, save_cmvn_stats

    save_cmvn_stats(compute_cmvn_stats(args.manifest, args.n_mels, args.max_utterances), args.out)
    print(f"wrote {args.out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from asr.config import load_config
    from asr.training import TrainConfig, Trainer

    try:
        config = load_config(TrainConfig, args.config, args.overrides)
        metrics = Trainer(config).fit()
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(" ".join(f"{k}={v}" for k, v in metrics.items()))
    return 0


def _average(args: argparse.Namespace) -> int:
    import re
    from pathlib import Path

    from asr.checkpoint import CheckpointError, average_checkpoints, write_checkpoint

    epochs = sorted(
        (int(m.group(1)), p) for p in Path(args.exp_dir).glob("epoch-*.pt") if (m := re.fullmatch(r"epoch-(\d+)\.pt", p.name))
    )
    paths = [p for _, p in epochs[-args.last :]]
    try:
        write_checkpoint(args.out, average_checkpoints(paths))
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"averaged {', '.join(p.name for p in paths)} -> {args.out}")
    return 0


def _decode(args: argparse.Namespace) -> int:
    from asr.transcribe import decode_manifest

    failures = decode_manifest(args.model, args.manifest, args.out, device=args.device)
    return 1 if failures else 0


def _add_score(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("score", help="WER and CER of hypotheses against references, with the top errors")
    p.add_argument("ref", metavar="REF", help="references: id<TAB>text lines or a JSONL manifest")
    p.add_argument("hyp", metavar="HYP", help="hypotheses, same formats (e.g. the output of asr transcribe)")
    p.add_argument("--alignments", metavar="FILE", help="write each utterance's REF/HYP alignment here")
    p.add_argument("--top", type=int, default=10, metavar="N", help="most frequent errors to list (default: 10)")
    p.set_defaults(func=_score)


def _score(args: argparse.Namespace) -> int:
    from asr.metrics import read_transcripts, score, write_alignments

    try:
        report = score(read_transcripts(args.ref), read_transcripts(args.hyp))
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.summary(top=args.top))
    if args.alignments:
        write_alignments(report, args.alignments)
    return 0


def _add_prepare(verbs: argparse._SubParsersAction) -> None:
    """`asr prepare librispeech` (optionally download) and `asr prepare librispeech-tree` (any tree)."""
    p = verbs.add_parser("prepare", help="build validated JSONL manifests for a corpus")
    corpora = p.add_subparsers(dest="corpus", required=True, metavar="CORPUS")

    q = corpora.add_parser("librispeech", help="LibriSpeech subsets, downloaded and checksummed if asked")
    q.add_argument("--data-root", required=True, help="holds LibriSpeech/<subset>/ (downloads go here)")
    q.add_argument("--download", action="store_true", help="download, verify and extract missing subsets first")
    q.add_argument("--mirror", help="base URL instead of https://www.openslr.org/resources/ (needs --download)")
    q.add_argument("--subsets", nargs="+", metavar="SUBSET", help="default: all seven standard subsets")
    q.add_argument("--with-lm", action="store_true", help="also fetch the LM files to DATA_ROOT/lm (with --download)")
    q.add_argument("--out", required=True, help="directory for <subset>.jsonl")
    q.set_defaults(func=_prepare_librispeech)

    q = corpora.add_parser("fsdd", help="Free Spoken Digit Dataset, split by speaker")
    q.add_argument("--data-root", required=True, help="FSDD folder with transcripts.tsv and recordings/")
    q.add_argument("--test-speakers", nargs="+", default=["theo", "yweweler"], metavar="NAME",
                   help="speakers held out for test (default: theo yweweler)")
    q.add_argument("--out", required=True, help="directory for train/dev/test.jsonl")
    q.set_defaults(func=_prepare_fsdd)

    q = corpora.add_parser("librispeech-tree", help="any LibriSpeech-layout tree (e.g. synthetic) to one manifest")
    q.add_argument("--root", required=True, help="directory with SPEAKER/CHAPTER/*.flac and *.trans.txt")
    q.add_argument("--out", required=True, help="manifest file, e.g. data/train.jsonl")
    q.set_defaults(func=_prepare_librispeech_tree)


def _prepare_librispeech(args: argparse.Namespace) -> int:
    from asr.data.librispeech import (
        SUBSETS, ChecksumError, DownloadError, download_librispeech, prepare_librispeech,
    )

    if (args.mirror or args.with_lm) and not args.download:
        print("error: --mirror and --with-lm need --download", file=sys.stderr)
        return 2
    subsets = args.subsets or list(SUBSETS)
    try:
        if args.download:
            download_librispeech(args.data_root, subsets, mirror=args.mirror, include_lm=args.with_lm)
        prepare_librispeech(args.data_root, args.out, subsets)
    except (ChecksumError, DownloadError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _prepare_fsdd(args: argparse.Namespace) -> int:
    from asr.data.fsdd import prepare_fsdd

    try:
        prepare_fsdd(args.data_root, args.out, args.test_speakers)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _prepare_librispeech_tree(args: argparse.Namespace) -> int:
    from asr.data.manifest import librispeech_tree_to_entries, validate_entries, write_manifest

    try:
        entries = librispeech_tree_to_entries(args.root)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    kept, report = validate_entries(entries)
    print(report.summary())
    write_manifest(args.out, kept)
    print(f"wrote {len(kept)} entries to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
