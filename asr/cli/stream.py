"""``asr stream``: live recognition from a microphone, or a file streamed like one."""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time

from asr.audio import SAMPLE_RATE, AudioError, check_audio, iter_audio_blocks
from asr.checkpoint import CheckpointError
from asr.cli.common import add_beam_options, add_runtime_option, add_verb, beam_options, error, fail, positive_int
from asr.microphone import Microphone, MicrophoneError, list_input_devices
from asr.pretrained import resolve_model
from asr.streaming import Recognizer


def register(verbs: argparse._SubParsersAction) -> None:
    p = add_verb(verbs, "stream", run, help="live recognition from a microphone (or a file streamed like one)")
    p.add_argument("--model", help="streaming checkpoint, trained with model=streaming_gru (default: the embedded "
                   "English streaming model, asr/pretrained/MODEL_CARD.md)")
    p.add_argument("--device", metavar="NAME|INDEX", help="input device (default: the system's default input)")
    p.add_argument("--list-devices", action="store_true", help="list the input devices and exit")
    p.add_argument("--chunk-ms", type=positive_int, default=80, metavar="MS",
                   help="audio fed to the model per step (default: 80; larger chunks cost less and wait longer: "
                   "tools/bench_streaming.py, README)")
    p.add_argument("--file", help="stream this audio file through the recognizer instead of a microphone")
    p.add_argument("--realtime", action="store_true", help="with --file: feed it at the pace of real time")
    p.add_argument("--max-seconds", type=float, metavar="S",
                   help="stop after S seconds of audio (default: at Ctrl-C or the end of --file)")
    add_runtime_option(p)
    add_beam_options(p)


def _recognizer(args: argparse.Namespace):
    if args.runtime == "torch":
        return Recognizer(resolve_model(args.model, "streaming"), beam=beam_options(args), greedy=args.greedy)
    from asr.runtime import StreamingRecognizer  # the export extra: onnxruntime

    if beam_options(args) is not None:
        raise ValueError("--runtime onnx decodes greedily: drop the beam search options")
    if args.model is None:
        raise ValueError("--runtime onnx needs --model DIR, a directory made by `asr export`")
    return StreamingRecognizer(args.model)


class Display:
    """Partials rewrite one terminal line, finals get their own; not a terminal: finals only.
    Collects the partials' latencies, which mean something only when audio comes in real time."""

    def __init__(self, live: bool) -> None:
        self.tty = sys.stdout.isatty()
        self.live = live
        self.finals: list[str] = []
        self.latencies: list[float] = []

    def show(self, event) -> None:
        if event.kind == "partial":
            self.latencies.append(event.latency)
            if self.tty:
                width = shutil.get_terminal_size().columns - 1
                sys.stdout.write("\r\033[K" + event.text[-width:])
                sys.stdout.flush()
            return
        if not event.text:  # the utterance held no words after all: clear its partial
            if self.tty:
                sys.stdout.write("\r\033[K")
            return
        self.finals.append(event.text)
        suffix = f"  ({event.latency * 1000:.0f} ms after its last word)" if self.tty and self.live else ""
        print(("\r\033[K" if self.tty else "") + event.text + suffix, flush=True)

    def close(self, seconds: float) -> str:
        """Clear the partial's line; the summary of the session."""
        if self.tty:
            sys.stdout.write("\r\033[K")
        summary = f"{len(self.finals)} utterance(s) finalised from {seconds:.1f} s of audio"
        if self.live and len(self.latencies) >= 2:
            p50, p95 = statistics.median(self.latencies), statistics.quantiles(self.latencies, n=20)[-1]
            summary += f"; partial latency p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms"
        return summary


def run(args: argparse.Namespace) -> int:
    mic = None
    try:
        if args.list_devices:
            devices = list_input_devices()
            if not devices:
                raise MicrophoneError("no audio input device found")
            for d in devices:
                print(f"{'*' if d.is_default else ' '} {d.index}: {d.name} ({d.channels} ch, {d.default_rate} Hz)")
            return 0
        if args.realtime and not args.file:
            return error(args, "--realtime needs --file")
        recognizer = _recognizer(args)
        if args.file:
            # the whole file checked now, as every reader checks it: a bad one is refused before
            # anything of it is recognised (a truncated MP3 shows only at its end)
            check_audio(args.file)
            source = iter_audio_blocks(args.file, seconds=args.chunk_ms / 1000)
        else:
            device = int(args.device) if args.device and args.device.isdigit() else args.device
            mic = Microphone(device, chunk_seconds=args.chunk_ms / 1000)
            rate = f" at {mic.capture_rate} Hz, resampled to {SAMPLE_RATE} Hz" if mic.capture_rate != SAMPLE_RATE else ""
            print(f"listening on {mic.name!r}{rate}; Ctrl-C to stop", file=sys.stderr)
            source = iter(mic)
    except AudioError as err:
        return fail(args, err, 1)
    except (CheckpointError, MicrophoneError, ImportError, ValueError, OSError) as err:
        return fail(args, err)

    display = Display(live=args.realtime or not args.file)
    seconds, start, status = 0.0, time.perf_counter(), 0
    try:
        for chunk in source:
            if args.realtime:  # a chunk is complete only once its last sample has been "spoken"
                time.sleep(max(0.0, start + seconds + len(chunk) / SAMPLE_RATE - time.perf_counter()))
            seconds += len(chunk) / SAMPLE_RATE
            for event in recognizer.accept_audio(chunk):
                display.show(event)
            if args.max_seconds is not None and seconds >= args.max_seconds:
                break
    except KeyboardInterrupt:
        pass
    except AudioError as err:
        status = fail(args, err, 1)
    finally:
        if mic is not None:
            mic.close()
    for event in recognizer.finish():
        display.show(event)
    print(display.close(seconds), file=sys.stderr)
    return status
