"""``asr record`` and ``asr adapt``: a personal model from a few minutes of one voice (docs/adapt.md)."""

from __future__ import annotations

import argparse
import sys

from asr.adapt import AdaptConfig, AdaptError, adapt_to_file
from asr.audio import AudioError
from asr.checkpoint import CheckpointError
from asr.cli.common import add_verb, error, fail, positive_int
from asr.microphone import Microphone, MicrophoneError
from asr.pretrained import resolve_model
from asr.record import PromptError, read_prompts, run_session


def register(verbs: argparse._SubParsersAction) -> None:
    p = add_verb(verbs, "record", record,
                 help="read prompts aloud into the microphone: NAME.wav + NAME.txt pairs for asr adapt")
    p.add_argument("out_dir", metavar="DIR",
                   help="folder for the recordings (prompts already recorded there are passed over)")
    p.add_argument("--prompts", metavar="FILE", help="your own prompts, one per line (default: the shipped list of "
                   "200 English sentences)")
    p.add_argument("--count", type=positive_int, metavar="N", help="stop after N prompts (default: all)")
    p.add_argument("--device", metavar="NAME|INDEX", help="input device (default: the system's default input; "
                   "asr stream --list-devices lists them)")

    p = add_verb(verbs, "adapt", adapt,
                 help="fine-tune a model to one voice from a folder of transcribed recordings (docs/adapt.md)")
    p.add_argument("source", metavar="DIR|MANIFEST", help="audio files with same-stem .txt transcripts (what asr "
                   "record writes), or a JSONL manifest")
    p.add_argument("--out", required=True, help="the adapted checkpoint to write")
    p.add_argument("--model", help="checkpoint to adapt (default: the embedded offline model)")
    p.add_argument("--streaming", action="store_true",
                   help="adapt the embedded streaming model (for asr stream, serve)")
    p.add_argument("--max-updates", type=positive_int, metavar="N", help="most updates (default: 200; docs/adapt.md)")


def record(args: argparse.Namespace) -> int:
    try:
        prompts = read_prompts(args.prompts)
        device = int(args.device) if args.device and args.device.isdigit() else args.device
        mic = Microphone(device, chunk_seconds=0.05)
    except (PromptError, MicrophoneError, ValueError, OSError) as err:
        return fail(args, err)
    print(f"recording from {mic.name!r} into {args.out_dir}; each take stops after a pause", file=sys.stderr)
    try:
        run_session(prompts, args.out_dir, iter(mic), limit=args.count, live_meter=sys.stderr.isatty())
    except EOFError:  # input closed: what was kept is written
        print(file=sys.stderr)
    finally:
        mic.close()
    return 0


def adapt(args: argparse.Namespace) -> int:
    if args.model and args.streaming:
        return error(args, "give --model or --streaming, not both")
    config = AdaptConfig() if args.max_updates is None else AdaptConfig(max_updates=args.max_updates)
    try:
        base = resolve_model(args.model, "streaming" if args.streaming else "offline")
        result = adapt_to_file(base, args.source, args.out, config)
    except (AudioError, AdaptError) as err:  # the recordings, not the command line, are at fault
        return fail(args, err, 1)
    except (CheckpointError, ValueError, OSError) as err:
        return fail(args, err)
    before, after = result.held_out["before"], result.held_out["after"]
    print(f"wrote {args.out}: {result.steps} updates in {result.seconds / 60:.1f} min; held-out greedy WER "
          f"{before['wer']:.3f} -> {after['wer']:.3f}, CER {before['cer']:.3f} -> {after['cer']:.3f}", file=sys.stderr)
    return 0
