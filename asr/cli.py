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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
