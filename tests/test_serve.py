"""``asr serve``: the WebSocket protocol against ``asr stream --file``, POST /transcribe against
``asr transcribe --format json``, and the faults (each closes its own stream with a clear code
and reason; the server stays up and the other streams' results are unchanged).

The server runs as ``python -m asr serve`` on 127.0.0.1 (a free port); every exchange is bounded
in time (``bounded``) and the server is stopped at the end of the module."""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf
import torch

aiohttp = pytest.importorskip("aiohttp", reason="asr serve needs aiohttp (pip install 'asr[serve]')")

from conftest import requires_espeak  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from soak_serve import random_frames  # noqa: E402  the soak's own way of cutting audio into frames

pytestmark = requires_espeak
MAX_STREAMS, IDLE_TIMEOUT, MAX_FRAME_BYTES = 3, 5.0, 65536


def bounded(coroutine, seconds: float = 120.0):
    """Run ``coroutine`` to completion, failing the test after ``seconds``."""
    return asyncio.run(asyncio.wait_for(coroutine, seconds))


def start_server(*args: str) -> tuple[subprocess.Popen, str]:
    """``asr serve --port 0 ARGS`` -> (process, base URL), once it listens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "asr", "serve", "--host", "127.0.0.1", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = ""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        line = process.stdout.readline()
        if line.startswith("asr serve: http://"):
            return process, re.match(r"asr serve: (http://\S+?)/ ", line).group(1)
    stop_server(process)
    pytest.fail(f"asr serve did not start: {line!r} {process.stderr.read()}")


def stop_server(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)
        raise


@pytest.fixture(scope="module")
def two_utterances(tiny_streaming_checkpoint, tmp_path_factory):
    """Two memorised sentences with a pause (two finals), as a 16-bit WAV file."""
    audio = tiny_streaming_checkpoint.audio
    path = tmp_path_factory.mktemp("serve") / "two.wav"
    sf.write(path, torch.cat([audio[3], torch.zeros(20000), audio[0], torch.zeros(8000)]).numpy(), 16000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def expected_finals(tiny_streaming_checkpoint, two_utterances) -> list[str]:
    """What `asr stream --file` prints for the file: one final per line."""
    result = subprocess.run(
        [sys.executable, "-m", "asr", "stream", "--model", str(tiny_streaming_checkpoint.path), "--file", str(two_utterances)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    finals = result.stdout.splitlines()
    sentences = tiny_streaming_checkpoint.sentences
    assert len(finals) == 2 and jiwer.cer([sentences[3].upper(), sentences[0].upper()], finals) < 0.05, finals
    return finals


@pytest.fixture(scope="module")
def server(tiny_streaming_checkpoint, tiny_checkpoint):
    process, url = start_server(
        "--model", str(tiny_streaming_checkpoint.path), "--offline-model", str(tiny_checkpoint.path),
        "--max-streams", str(MAX_STREAMS), "--idle-timeout", str(IDLE_TIMEOUT), "--max-frame-bytes", str(MAX_FRAME_BYTES),
    )
    yield url
    assert process.poll() is None, "the server died during the tests"
    assert stop_server(process) == 0


def pcm16(path) -> bytes:
    return sf.read(path, dtype="int16")[0].tobytes()



class Result:
    def __init__(self) -> None:
        self.events: list[dict] = []
        self.close_code: int | None = None
        self.reason = ""

    @property
    def finals(self) -> list[str]:
        return [e["text"] for e in self.events if e["type"] == "final" and e["text"]]


async def read_until_closed(ws, result: Result) -> Result:
    while (msg := await ws.receive()).type == aiohttp.WSMsgType.TEXT:
        result.events.append(json.loads(msg.data))
    if msg.type == aiohttp.WSMsgType.CLOSE:
        result.reason = msg.extra or ""
    result.close_code = ws.close_code
    return result


async def converse(url: str, frames, hello: dict | None = None, end: bool = True, pace: float = 0.0,
                   first: str | bytes | None = None) -> Result:
    """One stream: ``first`` (default: the hello), the frames (``pace`` seconds apart), the end
    message; every message the server sends, and how it closed."""
    hello = hello or {"type": "hello", "sample_rate": 16000, "format": "pcm16"}
    result = Result()
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}/stream") as ws:
        reader = asyncio.create_task(read_until_closed(ws, result))
        try:
            await (ws.send_bytes(first) if isinstance(first, bytes) else ws.send_str(first or json.dumps(hello)))
            for frame in frames:
                await (ws.send_str(frame) if isinstance(frame, str) else ws.send_bytes(frame))
                await asyncio.sleep(pace)
            if end:
                await ws.send_str(json.dumps({"type": "end"}))
        except ConnectionError:
            pass  # closed by the server: the reader has its code
        await reader
    return result


async def health(url: str) -> dict:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/health") as response:
        return await response.json()


async def wait_for_streams(url: str, count: int) -> dict:
    """Poll /health until ``count`` streams are open (bounded by the caller's timeout)."""
    while (state := await health(url))["streams"] != count:
        await asyncio.sleep(0.05)
    return state


@pytest.mark.parametrize("fmt", ["pcm16", "float32"])
def test_stream_random_frames_gives_asr_stream_finals(server, two_utterances, expected_finals, fmt):
    """Frames of random sizes (samples split between frames) -> the finals of `asr stream --file`,
    each with its words' times inside the utterance; partials grow towards them; close 1000."""
    data = pcm16(two_utterances)
    if fmt == "float32":
        data = (np.frombuffer(data, "<i2").astype("<f4") / 32768).tobytes()
    hello = {"type": "hello", "sample_rate": 16000, "format": fmt}
    result = bounded(converse(server, random_frames(data, random.Random(fmt), largest=6000), hello))
    print(result.events)
    assert result.events[0] == {"type": "ready", "sample_rate": 16000, "max_frame_bytes": MAX_FRAME_BYTES}
    assert result.finals == expected_finals
    assert result.close_code == 1000
    finals = [e for e in result.events if e["type"] == "final" and e["text"]]
    for event in finals:
        assert [w["word"] for w in event["words"]] == event["text"].split()
        times = [t for w in event["words"] for t in (w["start"], w["end"])]
        assert event["start"] <= times[0] and times == sorted(times) and times[-1] <= event["end"]
        assert event["latency"] >= 0
    partials = [e["text"] for e in result.events if e["type"] == "partial"]
    assert partials and all(any(f.startswith(p) for f in expected_finals) for p in partials)


def test_stream_resamples_the_client_rate(server, two_utterances, tiny_streaming_checkpoint):
    """48 kHz float32 from the client: resampled by the server to the memorised text."""
    from asr.audio import resample

    audio = torch.from_numpy(sf.read(two_utterances, dtype="float32")[0])
    data = resample(audio, 16000, 48000).numpy().astype("<f4").tobytes()
    hello = {"type": "hello", "sample_rate": 48000, "format": "float32"}
    result = bounded(converse(server, random_frames(data, random.Random(1), largest=40000), hello))
    sentences = tiny_streaming_checkpoint.sentences
    assert result.close_code == 1000
    assert jiwer.cer([sentences[3].upper(), sentences[0].upper()], result.finals) < 0.05, result.finals


def test_faults_close_their_own_stream_only(server, two_utterances, expected_finals, tmp_path):
    """While a good stream plays in real time, faulty clients come and go: each gets its close
    code and reason, state is freed, the good stream's finals are unchanged and the server stays up."""
    data = pcm16(two_utterances)
    hello = json.dumps({"type": "hello", "sample_rate": 16000, "format": "pcm16"})
    vanishing = tmp_path / "vanish.py"  # a client killed mid-utterance: its socket just drops
    vanishing.write_text(textwrap.dedent(f"""
        import asyncio, sys, aiohttp
        async def main():
            async with aiohttp.ClientSession() as s, s.ws_connect("{server}/stream") as ws:
                await ws.send_str({hello!r})
                await ws.receive()
                data = open(sys.argv[1], "rb").read()
                for i in range(0, len(data), 4000):
                    await ws.send_bytes(data[i : i + 4000])
                await ws.receive()  # a partial: the server is mid-utterance
                print("mid-utterance", flush=True)
                await asyncio.sleep(60)
        asyncio.run(main())
    """))
    half = tmp_path / "half.pcm"
    half.write_bytes(data[: len(data) // 3])

    faults_done = asyncio.Event()

    def good_frames():
        """The recording in 80 ms frames, then silence until the faults are done (no final)."""
        yield from (data[i : i + 2560] for i in range(0, len(data), 2560))
        while not faults_done.is_set():
            yield bytes(2560)

    async def good() -> Result:
        return await converse(server, good_frames(), pace=0.08)

    async def faults() -> dict:
        got = {}
        await wait_for_streams(server, 1)  # the good stream is open
        got["binary before hello"] = await converse(server, [], first=b"\x00\x01", end=False)
        got["hello not JSON"] = await converse(server, [], first="hello?", end=False)
        got["bad sample rate"] = await converse(server, [], {"type": "hello", "sample_rate": 44.1, "format": "pcm16"})
        got["text where audio belongs"] = await converse(server, [data[:3200], "more audio", data[3200:6400]])
        got["NaN audio"] = await converse(server, [np.full(800, np.nan, "<f4").tobytes()],
                                          {"type": "hello", "sample_rate": 16000, "format": "float32"})
        got["frame over the limit"] = await converse(server, [data[:3200], bytes(MAX_FRAME_BYTES + 2)])
        got["no end message"] = await converse(server, random_frames(data, random.Random(2), largest=6000), end=False)

        client = await asyncio.create_subprocess_exec(sys.executable, str(vanishing), str(half), stdout=subprocess.PIPE)
        assert (await client.stdout.readline()).decode().strip() == "mid-utterance"
        await wait_for_streams(server, 2)
        client.kill()
        await client.wait()
        await wait_for_streams(server, 1)  # its session is gone

        # max_streams: the good stream and two idle ones are open, the fourth is refused
        async with aiohttp.ClientSession() as session:
            held = [await session.ws_connect(f"{server}/stream") for _ in range(MAX_STREAMS - 1)]
            for ws in held:
                await ws.send_str(hello)
                assert json.loads((await ws.receive()).data)["type"] == "ready"
            got["more than max-streams"] = await converse(server, [data[:3200]])
            for ws in held:
                await ws.send_str(json.dumps({"type": "end"}))
                assert (await ws.receive()).type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1000
        faults_done.set()
        return got

    async def both():
        return await asyncio.gather(good(), faults())

    good_result, got = bounded(both(), 180)
    for name, result in got.items():
        print(f"{name}: {result.close_code} {result.reason!r} {result.finals}")
    assert good_result.close_code == 1000 and good_result.finals == expected_finals
    codes = {name: result.close_code for name, result in got.items()}
    assert codes == {
        "binary before hello": 1003,
        "hello not JSON": 1007,
        "bad sample rate": 1007,
        "text where audio belongs": 1003,
        "NaN audio": 1007,
        "frame over the limit": 1009,
        "no end message": 1008,
        "more than max-streams": 1013,
    }
    assert "hello first" in got["binary before hello"].reason
    assert "sample_rate" in got["bad sample rate"].reason
    assert '"end"' in got["text where audio belongs"].reason
    assert f"limit of {MAX_FRAME_BYTES} bytes" in got["frame over the limit"].reason
    assert "idle" in got["no end message"].reason
    assert "busy" in got["more than max-streams"].reason
    # a stream left without its end message is finalised before it is closed
    assert got["no end message"].finals == expected_finals
    assert bounded(health(server), 30) == {"streams": 0, "max_streams": MAX_STREAMS, "offline": True}


def test_post_transcribe_gives_asr_transcribe_json(server, tiny_checkpoint, two_utterances, tmp_path):
    cli = subprocess.run(
        [sys.executable, "-m", "asr", "transcribe", "--model", str(tiny_checkpoint.path), "--format", "json",
         str(two_utterances)],
        capture_output=True, text=True, timeout=300,
    )
    assert cli.returncode == 0, cli.stderr
    expected = json.loads(cli.stdout)
    del expected["audio"]

    async def post(body: bytes) -> tuple[int, dict]:
        async with aiohttp.ClientSession() as session, session.post(f"{server}/transcribe", data=body) as response:
            return response.status, await response.json()

    status, got = bounded(post(two_utterances.read_bytes()))
    assert status == 200 and got == expected and got["text"]
    status, got = bounded(post(b"RIFF not really a WAV file"))
    assert status == 400 and got["error"]


def test_page_and_its_script_are_served(server):
    async def get(path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session, session.get(f"{server}{path}") as response:
            return response.status, await response.text()

    status, page = bounded(get("/"))
    assert status == 200 and '<script src="app.js">' in page and 'id="mic"' in page
    status, script = bounded(get("/app.js"))
    assert status == 200 and "AudioWorkletProcessor" in script and '"/stream"' not in script


def test_shutdown_closes_open_streams_with_1001(tiny_streaming_checkpoint):
    process, url = start_server("--model", str(tiny_streaming_checkpoint.path), "--offline-model", str(tiny_streaming_checkpoint.path))

    async def open_then_stop() -> Result:
        async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}/stream") as ws:
            await ws.send_str(json.dumps({"type": "hello", "sample_rate": 16000, "format": "pcm16"}))
            await ws.receive()
            process.send_signal(signal.SIGTERM)
            return await read_until_closed(ws, Result())

    try:
        result = bounded(open_then_stop(), 60)
        assert result.close_code == 1001
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            stop_server(process)


def test_serve_without_a_model_fails_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "asr", "serve", "--model", str(tmp_path / "missing.pt"), "--port", "0"],
                            capture_output=True, text=True, timeout=120)
    lines = result.stderr.splitlines()  # (a warning may say that POST /transcribe has no model)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert lines[-1].startswith("asr serve: error: ") and "missing.pt" in lines[-1], result.stderr


# ---------------------------------------------------------------------------------------------
# A real browser: headless Chromium, its fake microphone fed from a WAV file, driven through the
# DevTools protocol (a WebSocket, spoken here with aiohttp: no driver or browser download)

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)


class DevTools:
    """One page of a Chromium started with ``--remote-debugging-port``."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.calls = 0

    async def call(self, method: str, **params) -> dict:
        self.calls += 1
        await self.ws.send_json({"id": self.calls, "method": method, "params": params})
        while True:  # events (no id) are skipped
            message = await self.ws.receive_json()
            if message.get("id") == self.calls:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    async def evaluate(self, expression: str):
        # userGesture: the click counts as the user's, as the page's AudioContext needs
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, userGesture=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")


async def chromium_page(url: str, wav, profile) -> tuple[asyncio.subprocess.Process, DevTools, object]:
    """Chromium showing ``url`` with ``wav`` as its microphone (played once, then silence)."""
    process = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop", "--autoplay-policy=no-user-gesture-required",
        "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "--window-size=900,600", url,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    while not (line := (await process.stderr.readline()).decode()).startswith("DevTools listening on"):
        if not line:
            raise RuntimeError("chromium exited before listening for DevTools")
    port = re.search(r"ws://127.0.0.1:(\d+)/", line).group(1)
    asyncio.get_running_loop().create_task(drain(process.stderr))
    session = aiohttp.ClientSession()
    async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
        page = next(t for t in await response.json() if t["type"] == "page")
    ws = await session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
    return process, DevTools(ws), session


async def drain(stream) -> None:
    while await stream.readline():
        pass


def test_browser_page_transcribes_its_microphone(server, tiny_streaming_checkpoint, tmp_path):
    """Headless Chromium opens the page, its fake microphone plays a memorised sentence once: the
    page shows partials, then the final, and a latency; Stop ends the stream normally (1000).
    With ASR_SERVE_SCREENSHOT=FILE.png, a screenshot of the page mid-utterance is saved there."""
    if CHROMIUM is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    import base64
    import os

    wav = tmp_path / "mic.wav"
    audio = torch.cat([torch.zeros(8000), tiny_streaming_checkpoint.audio[1], torch.zeros(24000)])
    sf.write(wav, audio.numpy(), 16000, subtype="PCM_16")
    screenshot = os.environ.get("ASR_SERVE_SCREENSHOT")
    page_state = ("[...document.querySelectorAll('#finals p')].map(p => p.textContent).join('|') + '\\n' + "
                  "document.getElementById('partial').textContent + '\\n' + "
                  "document.getElementById('status').textContent + '\\n' + document.getElementById('latency').textContent")

    async def run() -> tuple[list[str], list[str], str, str]:
        process, page, session = await chromium_page(f"{server}/", wav, tmp_path / "profile")
        partials = []
        try:
            # the tab shows about:blank first, which is "complete" too: wait for the page itself
            while not await page.evaluate("document.readyState == 'complete' && !!document.getElementById('mic')"):
                await asyncio.sleep(0.1)
            await page.evaluate("document.getElementById('mic').click()")
            while True:  # until the first final: the sentence, then silence (the endpoint)
                finals, partial, status, latency = (await page.evaluate(page_state)).split("\n")
                assert not status.startswith(("closed", "no microphone")), status
                if partial and partial not in partials:
                    partials.append(partial)
                    if screenshot and len(partials) == 3:
                        shot = await page.call("Page.captureScreenshot", format="png")
                        with open(screenshot, "wb") as f:
                            f.write(base64.b64decode(shot["data"]))
                if finals:
                    break
                await asyncio.sleep(0.05)
            await page.evaluate("document.getElementById('mic').click()")  # Stop
            while (status := (await page.evaluate(page_state)).split("\n")[2]) not in ("stopped",) and not status.startswith("closed"):
                await asyncio.sleep(0.05)
            finals = (await page.evaluate(page_state)).split("\n")[0].split("|")
            return finals, partials, status, latency
        finally:
            await session.close()
            process.kill()
            await process.wait()

    finals, partials, status, latency = bounded(run(), 150)
    print(finals, partials, status, latency)
    sentence = tiny_streaming_checkpoint.sentences[1].upper()
    assert status == "stopped"  # closed with 1000 after the end message
    assert len(finals) == 1 and jiwer.cer(sentence, finals[0]) < 0.1, finals
    assert len(partials) >= 2, partials  # the text grew as it was spoken
    assert re.fullmatch(r"latency \d+ ms \(median \d+ ms\)", latency)
    assert bounded(health(server), 30)["streams"] == 0
