"""Load on ``asr serve``: K concurrent streams on loopback, each sending its audio in real time.

Starts ``python -m asr serve`` (its own process, so that the clients' work does not share its
interpreter), then for each K opens K WebSocket streams at once. Each sends 16-bit 16 kHz frames
of ``--chunk-ms`` on the real-time schedule of a microphone (starts spread over one chunk, as
independent clients are) and then the end message. Columns:

* partial p50/p95: measured by the client, end to end: from sending the frame that holds an
  event's ``end`` (the audio of its text's last character) to receiving the event. Includes
  the chunk's wait for a worker, recognition, the look-ahead and the network.
* RTF/stream: the server's CPU seconds (user + system) per second of audio streamed.
* CPU: the server's CPU use in cores, averaged over the run (the machine has ``os.cpu_count()``).
* behind: streams the server did not keep up with: the last final came more than ``--behind-s``
  after the last frame was sent (a server that keeps up has one chunk and the look-ahead left).
* memory/stream: the server's resident memory at its peak while the K streams were open, less
  before they opened, divided by K (after a first short stream, which allocates what all
  reuse; memory the allocator kept from an earlier level is not counted again, so run the
  levels in ascending K).
* client lag: how late the clients' own sends ran against the real-time schedule (when this
  grows, the machine is too busy for the measurement to mean much).

    python tools/bench_serve.py                           # embedded model (else random weights), greedy
    python tools/bench_serve.py --lm                      # the embedded model's own word-LM search
    python tools/bench_serve.py --streams 1 4 --seconds 10
    python tools/bench_serve.py --streams 1 16 32 64 128 192 256 --max-batch 1   # each stream stepped alone
    python tools/bench_serve.py --model exp/streaming.pt --audio speech.flac --lm   # the model's own LM search

Without ``--model`` it uses the embedded streaming model, or, where the package has none yet,
a model of the recipes' size (3 x 320 GRU with layer norm) with random weights: its compute is
the same (greedy). A trained model streams real speech: the bundled sample clips, looped (or
``--audio``), since what the LM search costs depends on it; random weights stream speech-like noise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import aiohttp
import numpy as np
import torch
from bench_loader import cpu_seconds  # tools/ is on sys.path when a tool runs as a script
from bench_streaming import speech_like


def random_model(path: str) -> None:
    from asr.checkpoint import save_checkpoint
    from asr.models import build_model
    from asr.text import Tokenizer

    torch.manual_seed(0)
    model = build_model("streaming_gru", {"layer_norm": True}, verbose=False)
    save_checkpoint(path, model, "streaming_gru", Tokenizer())


@dataclass
class StreamResult:
    latencies: list[float] = field(default_factory=list)  # seconds, per partial
    tail: float = 0.0  # seconds from the last frame sent to the last final
    lag: float = 0.0  # worst lateness of a send against the real-time schedule
    close_code: int | None = None


def start_serve(model: str, options: list[str]) -> tuple[subprocess.Popen, str | None]:
    """``python -m asr serve`` on 127.0.0.1 (a free port) with ``model`` for both routes and
    ``options``: the process and its base URL, once it listens (None, said why, if it did not start)."""
    command = [sys.executable, "-m", "asr", "serve", "--model", model, "--offline-model", model,
               "--host", "127.0.0.1", "--port", "0", *options]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    if match := re.match(r"asr serve: (http://\S+?)/ ", line):
        return server, match.group(1)
    print(f"error: asr serve did not start ({line.strip()!r})", file=sys.stderr)
    server.terminate()
    server.wait(timeout=30)
    return server, None


def rss_bytes(pid: int) -> int:
    """Resident memory of a live process (Linux /proc)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def peak_rss(pid: int, stop: asyncio.Event, period: float = 0.2) -> int:
    """The highest resident memory of ``pid`` seen every ``period`` seconds until ``stop``."""
    peak = rss_bytes(pid)
    while not stop.is_set():
        peak = max(peak, rss_bytes(pid))
        try:
            await asyncio.wait_for(stop.wait(), period)
        except asyncio.TimeoutError:
            pass
    return max(peak, rss_bytes(pid))


async def one_stream(url: str, pcm: bytes, chunk_bytes: int, start_at: float, limit: float) -> StreamResult:
    """One client, given up ``limit`` seconds after its start (the server is far behind); a stream
    the server refuses, drops or does not finish in time counts by its close code (None: no close)."""
    result = StreamResult()
    try:
        await asyncio.wait_for(_one_stream(url, pcm, chunk_bytes, start_at, result), limit)
    except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError) as err:
        print(f"a stream failed: {err!r}", file=sys.stderr)
        result.close_code = None
    return result


async def _one_stream(url: str, pcm: bytes, chunk_bytes: int, start_at: float, result: StreamResult) -> None:
    sent: list[float] = []  # send time of each frame
    last_final = 0.0
    chunk_seconds = chunk_bytes / 2 / 16000
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}/stream") as ws:
        await ws.send_str(json.dumps({"type": "hello", "sample_rate": 16000, "format": "pcm16"}))
        if (await ws.receive()).type != aiohttp.WSMsgType.TEXT:  # refused (1013 when busy)
            result.close_code = ws.close_code
            return

        async def receive() -> None:
            nonlocal last_final
            while (msg := await ws.receive()).type == aiohttp.WSMsgType.TEXT:
                now, event = time.perf_counter(), json.loads(msg.data)
                frame = min(int(event["end"] / chunk_seconds - 1e-9), len(sent) - 1)
                if event["type"] == "partial":
                    result.latencies.append(now - sent[frame])
                else:
                    last_final = now
            result.close_code = ws.close_code

        reader = asyncio.create_task(receive())
        await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
        begin = time.perf_counter()
        for i in range(0, len(pcm), chunk_bytes):
            # a frame leaves once its last sample has been "spoken"
            due = begin + (i + chunk_bytes) / 2 / 16000
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            now = time.perf_counter()
            result.lag = max(result.lag, now - due)
            sent.append(now)
            await ws.send_bytes(pcm[i : i + chunk_bytes])
        await ws.send_str(json.dumps({"type": "end"}))
        await reader
    result.tail = max(0.0, last_final - sent[-1]) if last_final else 0.0


async def run_level(url: str, pid: int, pcm: bytes, k: int, chunk_bytes: int, seed: int, max_tail: float) -> dict:
    rng = random.Random(seed)
    chunk_seconds = chunk_bytes / 2 / 16000
    start = time.perf_counter() + 1.0  # the connections open first
    rss0, done = rss_bytes(pid), asyncio.Event()
    memory = asyncio.create_task(peak_rss(pid, done))
    cpu0, wall0 = cpu_seconds([pid]), time.perf_counter()
    limit = 2.0 + len(pcm) / 32000 + max_tail
    results = await asyncio.gather(*(one_stream(url, pcm, chunk_bytes, start + rng.uniform(0, chunk_seconds), limit)
                                     for _ in range(k)))
    cpu, wall = cpu_seconds([pid]) - cpu0, time.perf_counter() - wall0
    done.set()
    rss = await memory
    latencies = sorted(x for r in results for x in r.latencies)
    audio_seconds = k * len(pcm) / 2 / 16000
    return {
        "k": k,
        "p50": statistics.median(latencies) if latencies else float("nan"),
        "p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else float("nan"),
        "rtf": cpu / audio_seconds,
        "cores": cpu / wall,
        "tails": [r.tail for r in results],
        "lag": max(r.lag for r in results),
        "closed": [r.close_code for r in results],
        "rss": rss,
        "per_stream": max(0, rss - rss0) / k,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="streaming checkpoint (default: the embedded one, else random weights)")
    parser.add_argument("--audio", help="speech to stream, looped to --seconds (default: the bundled sample clips, "
                                        "0.3 s apart; with random weights, speech-like noise bursts)")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8, 16, 32], metavar="K")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per stream (default: 20)")
    parser.add_argument("--chunk-ms", type=int, default=80, help="frame length the clients send (default: 80)")
    parser.add_argument("--lm", action="store_true", help="the model's own decoding (its word LM), not greedy")
    parser.add_argument("--workers", type=int, help="asr serve --workers (default: its own, the cores)")
    parser.add_argument("--max-batch", type=int, metavar="N",
                        help="asr serve --max-batch: streams stepped in one model call (1: each alone; default: its own)")
    parser.add_argument("--max-tail", type=float, default=60.0,
                        help="seconds after its audio that a stream still waiting for its last final is given up "
                             "(counted behind; bounds a level's time, default: 60)")
    parser.add_argument("--behind-s", type=float, default=1.0,
                        help="a stream whose last final comes later than this after its audio fell behind (default: 1)")
    args = parser.parse_args()

    from asr.audio import SAMPLE_RATE, load_audio
    from asr.pretrained import SAMPLES_DIR, default_model

    workdir = tempfile.mkdtemp(prefix="bench-serve-")
    model, label = args.model, args.model
    if model is None:
        try:
            model = label = str(default_model("streaming"))
        except FileNotFoundError:
            model, label = os.path.join(workdir, "random.pt"), "random weights, 3 x 320 GRU + layer norm (no embedded model)"
            random_model(model)
    if args.audio:
        audio = load_audio(args.audio)
    elif label == model:  # a trained model: real speech, since it says nothing, and its LM does nothing, on noise
        audio = torch.cat([torch.cat([load_audio(clip), torch.zeros(SAMPLE_RATE * 3 // 10)])
                           for clip in sorted(SAMPLES_DIR.glob("*.ogg"))])
    else:
        audio = speech_like(args.seconds)
    audio = audio.repeat(int(np.ceil(args.seconds * 16000 / len(audio))))[: int(args.seconds * 16000)]
    pcm = (audio.clamp(-1, 1) * 32767).numpy().astype("<i2").tobytes()
    chunk_bytes = args.chunk_ms * 16 * 2

    options = ["--max-streams", str(max(args.streams))] + ([] if args.lm else ["--greedy"])
    options += ["--workers", str(args.workers)] if args.workers else []
    options += ["--max-batch", str(args.max_batch)] if args.max_batch else []
    server, url = start_serve(model, options)
    if url is None:
        return 1
    try:
        print(f"model: {label}; decoding: {'the model' + chr(39) + 's own (LM)' if args.lm else 'greedy'}; "
              f"{args.seconds:g} s per stream in {args.chunk_ms} ms frames; {os.cpu_count()} cores; "
              f"max batch: {args.max_batch or 'the server' + chr(39) + 's default'}; load average before: {os.getloadavg()[0]:.2f}")
        print("| K | partial p50 ms | partial p95 ms | RTF/stream | server CPU (cores) | behind | server RSS MiB "
              "| memory/stream KiB | client lag ms |")
        print("|---|---|---|---|---|---|---|---|---|")
        # one short stream first: the server's first stream allocates what every later one reuses
        asyncio.run(run_level(url, server.pid, pcm[: 2 * SAMPLE_RATE], 1, chunk_bytes, seed=-1, max_tail=args.max_tail))
        for n, k in enumerate(args.streams):
            row = asyncio.run(run_level(url, server.pid, pcm, k, chunk_bytes, seed=n, max_tail=args.max_tail))
            behind = sum(t > args.behind_s for t in row["tails"]) + sum(c != 1000 for c in row["closed"])
            print(f"| {k} | {row['p50'] * 1000:.0f} | {row['p95'] * 1000:.0f} | {row['rtf']:.3f} | {row['cores']:.2f} "
                  f"| {behind} of {k} | {row['rss'] / 2**20:.0f} | {row['per_stream'] / 1024:.0f} | {row['lag'] * 1000:.0f} |",
                  flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
