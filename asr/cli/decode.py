"""Evaluation verbs: ``asr decode`` (a manifest -> id<TAB>text) and ``asr score`` (WER, CER)."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from asr.cli.common import add_beam_options, add_verb, beam_options, fail, positive_int
from asr.metrics import group_summary, read_transcripts, score_by_group, write_alignments
from asr.metrics import score as score_transcripts
from asr.evaluate import decode_manifest


def register(verbs: argparse._SubParsersAction) -> None:
    p = add_verb(verbs, "decode", decode, help="transcribe every utterance of a manifest to id<TAB>text")
    p.add_argument("--model", required=True, help="checkpoint file")
    p.add_argument("--manifest", required=True, help="JSONL manifest to decode")
    p.add_argument("--out", required=True, help="hypotheses file (id<TAB>text), for asr score")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch-size", type=positive_int, default=1, metavar="N",
                   help="segments or short files run through the model together (default: 1)")
    p.add_argument("--chunk-ms", type=positive_int, metavar="MS",
                   help="streaming models: stream each utterance through the recognizer in chunks of MS, "
                   "endpointing included, as `asr stream` would")
    add_beam_options(p)

    p = add_verb(verbs, "score", score, help="WER and CER of hypotheses against references, with the top errors")
    p.add_argument("ref", metavar="REF", help="references: id<TAB>text lines or a JSONL manifest")
    p.add_argument("hyp", metavar="HYP", help="hypotheses, same formats (e.g. the output of asr transcribe)")
    p.add_argument("--alignments", metavar="FILE", help="write each utterance's REF/HYP alignment here")
    p.add_argument("--top", type=int, default=10, metavar="N", help="most frequent errors to list (default: 10)")
    p.add_argument("--by", metavar="FIELD",
                   help="also WER/CER for each value of this field of the REF manifest (e.g. age_group)")


def decode(args: argparse.Namespace) -> int:
    try:
        failures = decode_manifest(
            args.model, args.manifest, args.out, device=args.device, beam=beam_options(args),
            batch_size=args.batch_size, chunk_ms=args.chunk_ms, greedy=args.greedy,
            on_error=lambda err: tqdm.write(f"{args.prog}: error: {err}", file=sys.stderr),
        )
    except (RuntimeError, OSError, ImportError, ValueError) as err:
        return fail(args, err)
    return 1 if failures else 0


def score(args: argparse.Namespace) -> int:
    try:
        refs, hyps = read_transcripts(args.ref), read_transcripts(args.hyp)
        report = score_transcripts(refs, hyps)
        groups = score_by_group(refs, hyps, read_transcripts(args.ref, field=args.by)) if args.by else None
    except (OSError, ValueError) as err:
        return fail(args, err)
    print(report.summary(top=args.top))
    if groups:
        print(group_summary(args.by, groups))
    if args.alignments:
        try:
            write_alignments(report, args.alignments)
        except OSError as err:
            return fail(args, err, 1)
    return 0
