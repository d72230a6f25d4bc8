"""Soak ``asr serve``: a long, bounded run of clients that join, leave, stall and misbehave at random.

Starts ``python -m asr serve`` on 127.0.0.1 (a free port), streams each clip alone to learn its
finals, then keeps ``--clients`` client slots busy for ``--minutes``: each slot picks a client
at random (seeded) and runs it, bounded in time, then the next. Well-behaved clients stream a
clip in frames of random sizes at ``--speed`` times real time, some pausing mid-stream; the
others are faults: a hello that is not JSON or not valid, audio before the hello, text where
audio belongs, a frame over the limit, NaN audio, silence past the idle timeout, a client that
leaves without the end message, one whose connection is cut (TCP reset), and raw WebSocket
frames that break the protocol (unmasked, reserved bits, an unknown opcode, a stray
continuation, a length it never sends, random bytes).

It checks, and exits 1 unless all hold:

* no stream affects another: every well-behaved client's finals equal its clip's alone, and
  every fault gets its own close code (a broken frame: a closed connection);
* memory stays flat: the server's resident memory at the end (all clients gone) is within
  ``--max-growth-mib`` of what it was half-way through the run (the allocator takes a while
  to reach the high-water mark of a load: a leak goes on growing in the second half);
* the server never stops: it answers ``/health`` every few seconds throughout, and at the end
  with no stream open.

    python tools/soak_serve.py --minutes 20                      # embedded model, its sample clips
    python tools/soak_serve.py --minutes 1 --model tiny.pt --audio a.wav b.wav --speed 4 --report soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field

import aiohttp
import numpy as np
from bench_serve import rss_bytes, start_serve  # tools/ is on sys.path when a tool runs as a script

MAX_FRAME_BYTES = 1 << 16
WELL_BEHAVED = {"good": 6, "pausing": 2}
FAULTS = {  # kind: (weight, the close code the server must send; None: it closes the connection)
    "not JSON": (1, 1007),
    "bad hello": (1, 1007),
    "audio before hello": (1, 1003),
    "text mid-stream": (1, 1003),
    "frame over the limit": (1, 1009),
    "NaN audio": (1, 1007),
    "idle": (1, 1008),
    "leaves without end": (2, None),
    "connection reset": (2, None),
    "broken frame": (2, None),
}


@dataclass
class Outcome:
    kind: str
    ok: bool
    detail: str = ""


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)
    busy: int = 0  # refused with 1013: not a fault of the server's
    health_ok: int = 0
    health_failed: int = 0
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds since the load began, bytes)


def hello_json(fmt: str = "pcm16") -> str:
    return json.dumps({"type": "hello", "sample_rate": 16000, "format": fmt})


def random_frames(data: bytes, rng: random.Random, largest: int = 8000):
    """Frames of 1 to ``largest`` bytes: samples split across frames too."""
    start = 0
    while start < len(data):
        size = rng.randint(1, largest)
        yield data[start : start + size]
        start += size


async def read_events(ws) -> tuple[list[dict], int | None]:
    """Every event until the server closes, and its close code (1013: busy)."""
    events = []
    while (msg := await ws.receive()).type == aiohttp.WSMsgType.TEXT:
        events.append(json.loads(msg.data))
    return events, ws.close_code


def finals(events: list[dict]) -> list[str]:
    return [e["text"] for e in events if e["type"] == "final" and e["text"]]


async def stream_clip(url: str, pcm: bytes, rng: random.Random, speed: float, pause: float = 0.0) -> tuple[list[str], int | None]:
    """A well-behaved client: hello, the clip in random frames at ``speed`` x real time (with one
    pause of ``pause`` seconds somewhere), the end message; its finals and the close code."""
    pause_at = rng.randrange(len(pcm)) if pause else -1
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}/stream") as ws:
        await ws.send_str(hello_json())
        reader = asyncio.create_task(read_events(ws))
        sent, begin = 0, time.perf_counter()
        try:
            for frame in random_frames(pcm, rng):
                if sent <= pause_at < sent + len(frame):
                    await asyncio.sleep(pause)
                    begin += pause
                await ws.send_bytes(frame)
                sent += len(frame)
                await asyncio.sleep(max(0.0, begin + sent / 32000 / speed - time.perf_counter()))
            await ws.send_str(json.dumps({"type": "end"}))
        except ConnectionError:
            pass  # closed by the server (busy): the reader has the code
        events, code = await reader
    return finals(events), code


async def expect_close(url: str, first: str | bytes, then: list[str | bytes], fmt: str = "pcm16") -> int | None:
    """A client that says ``first`` (and ``then``) and waits for the server to close its stream."""
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}/stream") as ws:
        reader = asyncio.create_task(read_events(ws))
        try:
            for message in [first, *then]:
                await (ws.send_bytes(message) if isinstance(message, bytes) else ws.send_str(message))
        except ConnectionError:
            pass
        _, code = await reader
    return code


def ws_frame(opcode: int, payload: bytes, masked: bool = True, rsv: int = 0, length: int | None = None) -> bytes:
    """One WebSocket frame as RFC 6455 lays it out, right or deliberately wrong."""
    n = len(payload) if length is None else length
    head = bytes([0x80 | rsv << 4 | opcode])
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 1 << 16:
        head += bytes([mask_bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + n.to_bytes(8, "big")
    if masked:
        key = os.urandom(4)
        data = np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(key, np.uint8), len(payload))
        head, payload = head + key, data.tobytes()
    return head + payload


async def raw_socket(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket to ``/stream`` by hand (the handshake only), for frames no client library sends."""
    host, port = re.match(r"http://([^:/]+):(\d+)", url).groups()
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET /stream HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    response = await reader.readuntil(b"\r\n\r\n")
    if b" 101 " not in response.split(b"\r\n", 1)[0]:
        raise ConnectionError(f"no WebSocket: {response[:80]!r}")
    return reader, writer


async def broken_frame(url: str, pcm: bytes, rng: random.Random) -> str:
    """Hello and some audio, then a frame that breaks the protocol: the server must end the connection."""
    reader, writer = await raw_socket(url)
    writer.write(ws_frame(0x1, hello_json().encode()) + ws_frame(0x2, pcm[: rng.randrange(2, 32000, 2)]))
    how = rng.choice(["unmasked", "reserved bits", "unknown opcode", "stray continuation", "random bytes", "short frame"])
    bad = {
        "unmasked": lambda: ws_frame(0x2, bytes(640), masked=False),
        "reserved bits": lambda: ws_frame(0x2, bytes(640), rsv=0b011),
        "unknown opcode": lambda: ws_frame(0x3, b"?"),
        "stray continuation": lambda: ws_frame(0x0, bytes(64)),
        "random bytes": lambda: rng.randbytes(rng.randint(1, 4096)),
        "short frame": lambda: ws_frame(0x2, bytes(100), length=MAX_FRAME_BYTES - 1),  # then silence
    }[how]()
    writer.write(bad)
    await writer.drain()
    try:  # the server answers with a close frame and ends the connection (the short frame: its idle timeout)
        while await asyncio.wait_for(reader.read(65536), 60):
            pass
    finally:
        writer.transport.abort()
    return how


async def connection_reset(url: str, pcm: bytes, rng: random.Random) -> None:
    """Hello and part of a clip in real time, then the connection is cut (TCP reset, no close frame)."""
    reader, writer = await raw_socket(url)
    writer.write(ws_frame(0x1, hello_json().encode()))
    for i in range(0, rng.randrange(2, len(pcm), 2), 2560):
        writer.write(ws_frame(0x2, pcm[i : i + 2560]))
        await writer.drain()
        await asyncio.sleep(0.08)
    writer.transport.abort()


async def leave_without_end(url: str, pcm: bytes, rng: random.Random) -> None:
    """Part of a clip, then a normal close from the client's side, without the end message."""
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}/stream") as ws:
        await ws.send_str(hello_json())
        for frame in random_frames(pcm[: rng.randrange(2, len(pcm), 2)], rng):
            await ws.send_bytes(frame)
            await asyncio.sleep(len(frame) / 32000)


async def run_client(kind: str, url: str, clips: list[bytes], references: list[list[str]], rng: random.Random,
                     args: argparse.Namespace, tally: Tally) -> None:
    index = rng.randrange(len(clips))
    pcm = clips[index]
    if kind in WELL_BEHAVED:
        pause = rng.uniform(0.5, args.idle_timeout / 2) if kind == "pausing" else 0.0
        got, code = await stream_clip(url, pcm, rng, args.speed, pause)
        if code == 1013:
            tally.busy += 1
            return
        ok = code == 1000 and got == references[index]
        tally.outcomes.append(Outcome(kind, ok, "" if ok else f"clip {index}: close {code}, finals {got} != {references[index]}"))
        return
    expected = FAULTS[kind][1]
    hello, audio = hello_json(), pcm[:6400]
    if kind == "connection reset":
        await connection_reset(url, pcm, rng)
        tally.outcomes.append(Outcome(kind, True))
        return
    if kind == "leaves without end":
        await leave_without_end(url, pcm, rng)
        tally.outcomes.append(Outcome(kind, True))
        return
    if kind == "broken frame":
        how = await broken_frame(url, pcm, rng)
        tally.outcomes.append(Outcome(f"{kind}: {how}", True))
        return
    first, then = {
        "not JSON": (rng.choice(["hello?", "{", '{"type": "hello"', rng.randbytes(20).hex()]), []),
        "bad hello": (json.dumps({"type": "hello", "sample_rate": rng.choice([0, 44.1, "16000", 10**9]), "format": "pcm16"}), []),
        "audio before hello": (audio, []),
        "text mid-stream": (hello, [audio, rng.choice(["more audio", "{}", '{"type": "pause"}'])]),
        "frame over the limit": (hello, [audio, bytes(MAX_FRAME_BYTES + rng.randint(1, 4096))]),
        "NaN audio": (hello_json("float32"), [np.full(800, rng.choice([np.nan, np.inf]), "<f4").tobytes()]),
        "idle": (hello, [audio]),
    }[kind]
    code = await expect_close(url, first, then)
    if code == 1013:
        tally.busy += 1
        return
    tally.outcomes.append(Outcome(kind, code == expected, "" if code == expected else f"close {code}, expected {expected}"))


async def slot(number: int, url: str, clips, references, args, deadline: float, tally: Tally) -> None:
    """One client after another until the deadline, each picked at random and bounded in time."""
    rng = random.Random(f"{args.seed}-{number}")
    kinds = {**WELL_BEHAVED, **{kind: weight for kind, (weight, _) in FAULTS.items()}}
    longest = max(len(c) for c in clips) / 32000
    bound = longest / args.speed + args.idle_timeout + 60
    await asyncio.sleep(rng.uniform(0, 2))  # the clients do not all arrive at once
    while time.monotonic() < deadline:
        kind = rng.choices(list(kinds), weights=list(kinds.values()))[0]
        try:
            await asyncio.wait_for(run_client(kind, url, clips, references, rng, args, tally), bound)
        except (asyncio.TimeoutError, aiohttp.ClientError, ConnectionError, OSError) as err:
            tally.outcomes.append(Outcome(kind, False, f"client failed: {err!r}"))
        await asyncio.sleep(rng.uniform(0, 1))


async def watch(url: str, pid: int, start: float, stop: asyncio.Event, tally: Tally) -> None:
    """/health and the server's memory every few seconds until ``stop``."""
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            tally.rss.append((time.monotonic() - start, rss_bytes(pid)))
            try:
                async with session.get(f"{url}/health", timeout=aiohttp.ClientTimeout(total=10)) as response:
                    await response.json()
                    tally.health_ok += response.status == 200
                    tally.health_failed += response.status != 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                tally.health_failed += 1
            try:
                await asyncio.wait_for(stop.wait(), 2.0)
            except asyncio.TimeoutError:
                pass


async def soak(url: str, pid: int, clips: list[bytes], args: argparse.Namespace) -> tuple[Tally, dict]:
    tally = Tally()
    rng = random.Random(args.seed)
    # each clip alone, before the load: what every well-behaved client must get
    references = []
    for pcm in clips:
        got, code = await stream_clip(url, pcm, rng, speed=1e9)
        if code != 1000:
            raise RuntimeError(f"a clip streamed alone closed with {code}")
        references.append(got)
    rss_initial = rss_bytes(pid)
    start = time.monotonic()
    deadline = start + args.minutes * 60
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch(url, pid, start, stop, tally))
    await asyncio.gather(*(slot(n, url, clips, references, args, deadline, tally) for n in range(args.clients)))
    async with aiohttp.ClientSession() as session:
        for _ in range(100):  # the server notices the last connections' ends
            async with session.get(f"{url}/health") as response:
                health = await response.json()
            if health["streams"] == 0:
                break
            await asyncio.sleep(0.1)
    stop.set()
    await watcher
    half = next((rss for t, rss in tally.rss if t >= args.minutes * 30), tally.rss[-1][1])
    memory = {"initial": rss_initial, "half": half, "end": rss_bytes(pid), "peak": max(rss for _, rss in tally.rss)}
    return tally, {"references": references, "health_at_end": health, "memory": memory}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="streaming checkpoint (default: the embedded one)")
    parser.add_argument("--audio", nargs="+", help="clips the clients stream (default: the bundled sample clips)")
    parser.add_argument("--minutes", type=float, default=20.0, help="how long clients keep coming (default: 20)")
    parser.add_argument("--clients", type=int, default=24, help="clients at a time (default: 24)")
    parser.add_argument("--speed", type=float, default=1.0, help="well-behaved clients send at this x real time (default: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--idle-timeout", type=float, default=5.0, help="asr serve --idle-timeout (default: 5)")
    parser.add_argument("--lm", action="store_true", help="the model's own decoding (its word LM), not greedy")
    parser.add_argument("--max-growth-mib", type=float, default=32.0,
                        help="the server's memory at the end may exceed its memory half-way by this much (default: 32)")
    parser.add_argument("--serve-args", default="", help="more options for asr serve, as one string")
    parser.add_argument("--report", help="also write the figures here, as JSON")
    args = parser.parse_args()

    import torch

    from asr.audio import SAMPLE_RATE, load_audio
    from asr.pretrained import SAMPLES_DIR, default_model

    model = args.model or str(default_model("streaming"))
    paths = args.audio or sorted(str(p) for p in SAMPLES_DIR.glob("*.ogg"))
    pause = torch.zeros(SAMPLE_RATE // 2)  # each clip ends in silence, as a speaker pauses
    singles = [torch.cat([load_audio(p), pause]) for p in paths]
    # and each with the next after it: two utterances in one stream, the second after an endpoint
    pairs = [torch.cat([a, b]) for a, b in zip(singles, singles[1:] + singles[:1])] if len(singles) > 1 else []
    clips = [(audio.clamp(-1, 1) * 32767).numpy().astype("<i2").tobytes() for audio in singles + pairs]

    options = ["--max-streams", str(args.clients + 8), "--max-frame-bytes", str(MAX_FRAME_BYTES),
               "--idle-timeout", str(args.idle_timeout), *args.serve_args.split()] + ([] if args.lm else ["--greedy"])
    began = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    server, url = start_serve(model, options)
    if url is None:
        return 1
    try:
        print(f"soak: {args.minutes:g} min from {began}, seed {args.seed}, {args.clients} clients at a time, "
              f"{len(clips)} clips at {args.speed:g}x real time; asr serve --model {model} {' '.join(options)}", flush=True)
        tally, extra = asyncio.run(soak(url, server.pid, clips, args))
        alive = server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=30)

    kinds = collections.Counter(o.kind for o in tally.outcomes)
    failed = [o for o in tally.outcomes if not o.ok]
    well = [o for o in tally.outcomes if o.kind in WELL_BEHAVED]
    memory = {name: value / 2**20 for name, value in extra["memory"].items()}
    growth = memory["end"] - memory["half"]
    report = {
        "minutes": args.minutes, "seed": args.seed, "clients": args.clients, "began": began,
        "streams": len(tally.outcomes), "well_behaved": len(well), "identical": sum(o.ok for o in well),
        "faults": len(tally.outcomes) - len(well), "by_kind": dict(sorted(kinds.items())), "busy": tally.busy,
        "failures": [f"{o.kind}: {o.detail}" for o in failed],
        "memory_mib": {name: round(value, 1) for name, value in memory.items()},
        # the server's memory at each tenth of the run: a leak grows steadily, an allocator levels off
        "memory_timeline_mib": [round(next((rss for t, rss in tally.rss if t >= args.minutes * 6 * tenth),
                                           tally.rss[-1][1]) / 2**20, 1) for tenth in range(11)],
        "health_ok": tally.health_ok, "health_failed": tally.health_failed,
        "streams_open_at_end": extra["health_at_end"]["streams"], "server_alive": alive,
    }
    print(f"streams served: {report['streams']} ({report['well_behaved']} well-behaved, {report['identical']} of them "
          f"with the finals of their clip alone; {report['faults']} faults injected; {tally.busy} refused as busy)")
    print("by kind: " + ", ".join(f"{kind} {count}" for kind, count in report["by_kind"].items()))
    print(f"server memory (RSS, MiB): {memory['initial']:.0f} after the clips alone, {memory['half']:.0f} half-way "
          f"through the run, {memory['end']:.0f} at the end, {memory['peak']:.0f} at the peak")
    print("server memory at each tenth of the run (MiB): " + " ".join(f"{m:.0f}" for m in report["memory_timeline_mib"]))
    print(f"/health: {tally.health_ok} answered, {tally.health_failed} failed; streams open at the end: "
          f"{report['streams_open_at_end']}; server alive at the end: {alive}")
    for failure in report["failures"][:20]:
        print(f"FAILED {failure}")
    if args.report:
        with open(args.report, "w") as f:
            json.dump(report, f, indent=1)
    ok = (not failed and alive and tally.health_failed == 0 and report["streams_open_at_end"] == 0
          and growth <= args.max_growth_mib and report["identical"] > 0)
    print(f"soak: {'passed' if ok else 'FAILED'} (memory growth over the second half: {growth:+.1f} MiB, "
          f"limit {args.max_growth_mib:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
