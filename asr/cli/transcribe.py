"""``asr transcribe``: files, directories or a manifest -> text, JSON or subtitles, with either runtime."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from asr.audio import SAMPLE_RATE, AudioError, iter_audio_blocks, split_on_silence
from asr.cli.common import (
    add_beam_options, add_runtime_option, add_verb, beam_options, error, fail, positive_int, warn,
)
from asr.cli.inputs import AUDIO_EXTENSIONS, clashing_stem, collect_inputs
from asr.cli.writers import EXTENSIONS, WRITERS
from asr.fileio import atomic_write
from asr.pretrained import resolve_model
from asr.transcribe import Transcriber, Transcript

SEGMENT_SECONDS = 30.0  # the ONNX runtime's segments, cut at pauses as the Transcriber cuts them


def register(verbs: argparse._SubParsersAction) -> None:
    p = add_verb(verbs, "transcribe", run, help="transcribe audio files with a trained model")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help=f"audio files ({', '.join(e[1:].upper() for e in AUDIO_EXTENSIONS)}; any rate, any "
                   "channels) or directories (searched recursively)")
    p.add_argument("--manifest", help="JSONL manifest: transcribe its entries' audio, labelled by their ids")
    p.add_argument("--model", help="checkpoint file (default: the embedded English model, asr/pretrained/MODEL_CARD.md)")
    p.add_argument("--format", choices=list(EXTENSIONS), default="text",
                   help="text: PATH<TAB>TEXT lines; json: text, duration and words with start, end and confidence "
                        "(one line per input); srt, vtt: subtitles (default: text)")
    p.add_argument("--output-dir", metavar="DIR", help="write DIR/<stem>.<txt|json|srt|vtt> per input instead of printing")
    p.add_argument("--batch-size", type=positive_int, default=1, metavar="N",
                   help="segments or short files run through the model together (default: 1)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run the model (default: cpu)")
    add_runtime_option(p)
    add_beam_options(p)


def run(args: argparse.Namespace) -> int:
    if args.runtime == "onnx":
        if args.format != "text" or args.output_dir or beam_options(args) is not None or args.device != "cpu":
            return fail(args, ValueError("--runtime onnx prints text, greedy, on the CPU: drop --format, "
                                         "--output-dir, --device and the beam search options"))
        if args.model is None:
            return error(args, "--runtime onnx needs --model DIR, a directory made by `asr export`")
    try:
        inputs, failures = collect_inputs(args.inputs, args.manifest)
    except (OSError, ValueError) as err:
        return fail(args, err)
    for failure in failures:
        error(args, failure)
    if not inputs and not failures:
        return error(args, "nothing to transcribe; give audio files, directories or --manifest")
    extension = EXTENSIONS[args.format]
    if args.output_dir:
        if (clash := clashing_stem(inputs)) is not None:
            return error(args, f"several inputs would write {Path(args.output_dir) / clash}.{extension}; "
                         "give them distinct names")
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    elif args.format in ("srt", "vtt") and len(inputs) > 1:
        return error(args, f"--format {args.format} makes one document per input; give --output-dir for {len(inputs)} inputs")

    paths = [item.audio for item in inputs]
    try:
        if args.runtime == "onnx":
            results = _onnx_results(args.model, paths)
        else:
            transcriber = Transcriber(resolve_model(args.model, "offline"), device=args.device,
                                      beam=beam_options(args), greedy=args.greedy)
            results = transcriber.transcribe_files(paths, batch_size=args.batch_size)
    except (RuntimeError, OSError, ImportError, ValueError) as err:
        return fail(args, err)
    write = WRITERS[args.format]
    total = len(inputs) + len(failures)  # the failures so far are directories without audio
    progress = tqdm(total=len(inputs), unit="file", file=sys.stderr, disable=len(inputs) < 2)
    for item, (_, result) in zip(inputs, results):
        progress.update()
        if isinstance(result, AudioError):
            failures.append(str(result))
            progress.write(f"{args.prog}: error: {result}", file=sys.stderr)
            continue
        if result.note:
            warn(args, f"{item.audio}: {result.note}", lambda line: progress.write(line, file=sys.stderr))
        fields = {"id": item.id, "audio": item.audio} if item.id else {"audio": item.audio}
        if args.output_dir:
            with atomic_write(Path(args.output_dir) / f"{item.stem}.{extension}") as f:
                f.write(write(result, **fields))
        elif args.format == "text":
            print(f"{item.label}\t{result.text}", flush=True)
        else:
            print(write(result, **fields), end="", flush=True)
    progress.close()
    if failures:  # each was reported on its own line as it happened; with several inputs, listed again here
        if total > 1:
            print(f"{args.prog}: {len(failures)} of {total} file(s) failed:", file=sys.stderr)
            print("\n".join(f"  {failure}" for failure in failures), file=sys.stderr)
        return 1
    return 0


def _onnx_results(directory: str, paths: list[str]) -> Iterator[tuple[str, Transcript | AudioError]]:
    """An export directory's greedy text for each file (no word times), segments cut as the
    Transcriber cuts them. Raises ExportDirError (a ValueError) at once for a bad directory."""
    from asr.runtime import Transcriber as OnnxTranscriber  # the export extra: onnxruntime

    transcriber = OnnxTranscriber(directory)

    def results() -> Iterator[tuple[str, Transcript | AudioError]]:
        for path in paths:
            try:
                segments = list(split_on_silence(iter_audio_blocks(path, seconds=SEGMENT_SECONDS),
                                                 SEGMENT_SECONDS, SEGMENT_SECONDS / 2))
            except AudioError as err:
                yield path, err
                continue
            texts = [transcriber.transcribe(segment.numpy()) for _, segment in segments]
            duration = max((start + len(s) / SAMPLE_RATE for start, s in segments), default=0.0)
            yield path, Transcript(" ".join(t for t in texts if t), duration)

    return results()
