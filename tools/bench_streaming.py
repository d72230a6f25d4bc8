"""Streaming speed and latency of the Recognizer (frontend + streaming GRU-CTC + CTC decoding
+ endpointing) on one CPU thread, for 80, 160 and 320 ms chunks.

By default a model of random weights, decoded greedily: the model's cost does not depend on its
weights (the default-size model of the recipe unless overridden). With ``--model`` a trained
checkpoint is decoded as ``asr stream`` decodes it (beam search with the word LM it carries,
whose cost does depend on what the model hears: give real speech with ``--audio``). Columns:

* RTF: compute time / audio time.
* chunk p50/p95: compute time per chunk (what a live caller waits after each chunk).
* partial p50/p95: when audio arrives in real time (a chunk is complete when its last sample
  has been spoken), time from the end of the spoken word to the partial that shows its last
  character: chunk buffering + look-ahead wait + frontend window and subsampling + compute.
  The word's last sample is drawn uniformly within the 40 ms of audio that the character's
  output frame is the first to see (as for a model that emits a character as soon as its
  sound is over; a trained model may add delay of its own, not counted here).
* algorithmic: the same latency's worst case without compute: chunk + look-ahead
  (lookahead x 40 ms) + one output frame (40 ms: the first 25 ms window holding a sample
  completes within its 10 ms hop, then the 4x subsampling waits up to 3 more hops).

    python tools/bench_streaming.py                   # 60 s of audio, default model size
    python tools/bench_streaming.py --hidden 256 --layers 4 --lookahead 1
    python tools/bench_streaming.py --layer-norm      # the recipes' streaming models
    python tools/bench_streaming.py --model exp/streaming.pt --audio speech.flac [--greedy]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from asr.audio import SAMPLE_RATE, load_audio
from asr.features import HOP_LENGTH
from asr.models import build_model, count_parameters
from asr.streaming import Recognizer
from asr.text import Tokenizer


def speech_like(seconds: float, seed: int = 0) -> torch.Tensor:
    """Noise bursts of word-like lengths with pauses (no espeak needed; only the cost matters)."""
    g = torch.Generator().manual_seed(seed)
    audio = 0.01 * torch.randn(int(seconds * SAMPLE_RATE), generator=g)
    start = 0
    while start < len(audio):
        length = int(torch.randint(3000, 12000, (1,), generator=g))
        audio[start : start + length] *= 20
        start += length + int(torch.randint(1000, 8000, (1,), generator=g))
    return audio


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1] if len(values) > 1 else values[0]


def bench(recognizer: Recognizer, audio: torch.Tensor, chunk_ms: int) -> dict:
    chunk = chunk_ms * SAMPLE_RATE // 1000
    model = recognizer.model
    for start in range(0, 20 * chunk, chunk):  # warm-up
        recognizer.accept_audio(audio[start : start + chunk])
    recognizer.reset()
    computes, partials = [], []
    rng = random.Random(0)
    new_audio = model.config.time_stride * HOP_LENGTH / SAMPLE_RATE  # first seen by each output frame
    for k, start in enumerate(range(0, len(audio), chunk)):
        t0 = time.perf_counter()
        events = recognizer.accept_audio(audio[start : start + chunk])
        compute = time.perf_counter() - t0
        computes.append(compute)
        arrival = (start + chunk) / SAMPLE_RATE  # stream time at which the chunk is complete
        partials += [
            arrival + compute - (e.end - rng.uniform(0, new_audio)) for e in events if e.kind == "partial"
        ]
    recognizer.finish()
    frame = model.config.time_stride * HOP_LENGTH
    return {
        "rtf": sum(computes) / (len(audio) / SAMPLE_RATE),
        "chunk_p50": 1000 * percentile(computes, 50),
        "chunk_p95": 1000 * percentile(computes, 95),
        "partial_p50": 1000 * percentile(partials, 50),
        "partial_p95": 1000 * percentile(partials, 95),
        "partials": len(partials),
        "algorithmic": 1000 * (chunk + (model.config.lookahead + 1) * frame) / SAMPLE_RATE,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="audio to stream (default: 60)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunks", type=int, nargs="+", default=[80, 160, 320], metavar="MS")
    parser.add_argument("--hidden", type=int, help="GRU size (default: the model's default)")
    parser.add_argument("--layers", type=int, help="GRU layers (default: the model's default)")
    parser.add_argument("--lookahead", type=int, help="look-ahead output frames (default: the model's default)")
    parser.add_argument("--layer-norm", action="store_true", help="LayerNorm + residual per GRU layer, as the recipes train")
    parser.add_argument("--model", help="a trained streaming checkpoint instead (its own decoding; the size options do not apply)")
    parser.add_argument("--greedy", action="store_true", help="with --model: greedy, whatever the model carries")
    parser.add_argument("--audio", help="stream the first --seconds of this file (default: noise bursts shaped like speech)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model:
        def recognizer() -> Recognizer:
            return Recognizer(args.model, greedy=args.greedy)
    else:
        overrides = {"hidden_size": args.hidden, "num_layers": args.layers, "lookahead": args.lookahead,
                     "layer_norm": args.layer_norm or None}
        model = build_model("streaming_gru", {k: v for k, v in overrides.items() if v is not None}, verbose=False).eval()

        def recognizer() -> Recognizer:
            return Recognizer(model, Tokenizer())
    first = recognizer()
    c = first.model.config
    audio = load_audio(args.audio)[: int(args.seconds * SAMPLE_RATE)] if args.audio else speech_like(args.seconds)
    if first.beam_decoder is None:
        decoding = "greedy"
    else:
        o = first.beam_decoder.options
        decoding = (f"beam {o.beam_size}, LM weight {o.lm_weight}, word score {o.word_score}"
                    f"{', over a lexicon' if o.lexicon else ', lexicon-free'}")
    print(
        f"streaming_gru hidden {c.hidden_size} x {c.num_layers} layers{' with layer norm' if c.layer_norm else ''}, "
        f"look-ahead {c.lookahead} "
        f"({c.lookahead * c.time_stride * 10} ms), {count_parameters(first.model) / 1e6:.2f}M parameters, "
        f"{'weights of ' + args.model if args.model else 'random weights'}; decoding: {decoding}; "
        f"{len(audio) / SAMPLE_RATE:.0f} s of audio, {args.threads} thread(s), torch {torch.__version__}\n"
    )
    print("| chunk | RTF | chunk compute p50 / p95 | partial latency p50 / p95 | algorithmic (worst) |")
    print("|---|---|---|---|---|")
    for chunk_ms in args.chunks:
        r = bench(recognizer(), audio, chunk_ms)
        print(
            f"| {chunk_ms} ms | {r['rtf']:.4f} | {r['chunk_p50']:.1f} / {r['chunk_p95']:.1f} ms "
            f"| {r['partial_p50']:.0f} / {r['partial_p95']:.0f} ms ({r['partials']} partials) "
            f"| {r['algorithmic']:.0f} ms |",
            flush=True,
        )


if __name__ == "__main__":
    main()
