"""``asr serve``: streaming recognition over WebSocket, offline files over HTTP, and a page
that listens in the browser; one asyncio process (aiohttp).

Routes:

* ``GET /``, ``GET /app.js``: the page (``asr/web/``): microphone -> 16 kHz frames -> this server.
* ``GET /stream`` (WebSocket): the streaming protocol below, one :class:`~asr.streaming.Recognizer`
  session per connection.
* ``POST /transcribe``: an audio file as the body -> the JSON line of ``asr transcribe --format json``.
* ``GET /health``: ``{"streams": open streams, "max_streams": ..., "offline": bool}``.

The streaming protocol (docs/serve.md has it with examples):

1. client: ``{"type": "hello", "sample_rate": 48000, "format": "pcm16" | "float32"}`` (text);
   server: ``{"type": "ready", "sample_rate": 16000, "max_frame_bytes": ...}``.
2. client: binary frames of mono little-endian samples at its rate, of any size up to the limit
   (a frame may end mid-sample: the rest of the sample starts the next frame).
   server: ``{"type": "partial" | "final", "text", "utterance", "start", "end", "latency",
   "words": [{"word", "start", "end"}]}`` as the Recognizer emits them (times in seconds of the
   stream's audio at 16 kHz; latency: from the arrival of the frame holding ``end`` to the event).
3. client: ``{"type": "end"}``; server: the last finals, then close 1000.

A stream that breaks the protocol is closed with a code and a one-line reason (:class:`CloseCodes`
lists them); the others go on untouched. Recognition runs off the event loop, the streams'
models stepped in batches (:class:`asr.batch.Streams`): a stream's audio waits in its own queue
until its group of streams is stepped, and is then taken all at once (a stream that falls behind
catches up in bigger steps instead of stalling the others). A stream's session is dropped, and
its memory freed, when its connection ends for whatever reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal as signal_module
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from aiohttp import WSCloseCode, WSMsgType, web

from asr.audio import SAMPLE_RATE, AudioError
from asr.batch import Stream, Streams
from asr.decoding import BeamSearchOptions
from asr.streaming import Event, Recognizer

WEB_DIR = Path(__file__).resolve().parent / "web"
FORMATS = {"pcm16": np.dtype("<i2"), "float32": np.dtype("<f4")}
MIN_RATE, MAX_RATE = 8000, 192000


@dataclass
class ServeConfig:
    model: str  # streaming checkpoint
    offline_model: str | None = None  # offline checkpoint for POST /transcribe; None: that route answers 503
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (the one taken is printed)
    max_streams: int = 32  # more at once are refused (1013): each costs CPU, and late streams help no one
    max_frame_bytes: int = 1 << 20  # a larger WebSocket message closes its stream (1009); ~5 s of 48 kHz float32
    idle_timeout: float = 30.0  # seconds without a message before a stream is finalised and closed (1008)
    # seconds of received audio waiting for recognition before the server stops reading the socket
    # (TCP then slows the sender): bounds a stream's memory when a client sends faster than real time
    max_backlog: float = 30.0
    max_upload_bytes: int = 200 << 20  # POST /transcribe bodies (413 above)
    workers: int = os.cpu_count() or 1  # groups of streams stepped in batches, each in a thread; also searches
    max_batch: int = 128  # streams in one step of the model (1: each stream alone)
    beam: BeamSearchOptions | None = None  # decoding, as for asr stream / asr transcribe
    greedy: bool = False


class CloseCodes:
    """WebSocket close codes (RFC 6455 section 7.4.1) and when this server sends them."""

    NORMAL = 1000  # after the end message and the last finals
    GOING_AWAY = 1001  # the server is shutting down
    UNSUPPORTED = 1003  # audio before the hello, or a text message where audio or the end message belongs
    INVALID = 1007  # a hello that is not valid, or float32 audio that is not finite
    POLICY = 1008  # idle: no message for idle_timeout seconds (what was heard is finalised first)
    TOO_BIG = 1009  # a message over max_frame_bytes
    INTERNAL = 1011  # recognition failed (a bug: the server log has the traceback)
    BUSY = 1013  # max_streams are open: try again later


class ProtocolError(Exception):
    """Close the stream with ``code`` and ``reason`` (one line, at most 123 bytes in a close frame)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _Socket(web.WebSocketResponse):
    """aiohttp closes an oversized message's stream itself, with 1009 and no reason: give it one."""

    def __init__(self, max_frame_bytes: int) -> None:
        super().__init__(max_msg_size=max_frame_bytes)
        self.max_frame_bytes = max_frame_bytes

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        if code == CloseCodes.TOO_BIG and not message:
            message = f"frame over the limit of {self.max_frame_bytes} bytes".encode()
        return await super().close(code=code, message=message, drain=drain)


@dataclass
class Hello:
    sample_rate: int
    format: str


def parse_hello(text: str) -> Hello:
    """The client's first message -> :class:`Hello`; ProtocolError(1007) with what is wrong."""
    try:
        hello = json.loads(text)
    except ValueError:
        raise ProtocolError(CloseCodes.INVALID, "hello is not JSON") from None
    if not isinstance(hello, dict) or hello.get("type") != "hello":
        raise ProtocolError(CloseCodes.INVALID, 'expected {"type": "hello", "sample_rate": ..., "format": ...}')
    rate, fmt = hello.get("sample_rate"), hello.get("format", "pcm16")
    if not isinstance(rate, int) or isinstance(rate, bool) or not MIN_RATE <= rate <= MAX_RATE:
        raise ProtocolError(CloseCodes.INVALID, f"hello: sample_rate must be an integer from {MIN_RATE} to {MAX_RATE}")
    if fmt not in FORMATS:
        raise ProtocolError(CloseCodes.INVALID, f"hello: format must be one of {', '.join(FORMATS)}")
    return Hello(rate, fmt)


def event_json(event: Event) -> str:
    return json.dumps({
        "type": event.kind,
        "text": event.text,
        "utterance": event.utterance,
        "start": round(event.start, 3),
        "end": round(event.end, 3),
        "latency": round(event.latency, 4),
        "words": [{"word": w, "start": round(s, 3), "end": round(e, 3)} for w, s, e in event.words],
    }, ensure_ascii=False)


class Server:
    """The models, the worker pool and the open streams; :meth:`app` is the aiohttp application."""

    def __init__(self, config: ServeConfig) -> None:
        from asr.transcribe import Transcriber

        self.config = config
        self.recognizer = Recognizer(config.model, beam=config.beam, greedy=config.greedy)
        self.transcriber = None
        if config.offline_model is not None:
            self.transcriber = Transcriber(config.offline_model, beam=config.beam, greedy=config.greedy)
        self.offline_lock = threading.Lock()  # one offline transcription at a time (its decoder is stateful)
        # one new session at a time: loading a word LM silences file descriptor 2 for a moment
        # (asr.audio.quiet_native_stderr), which two threads at once could leave silenced
        self.session_lock = threading.Lock()
        # sessions, word-LM searches and offline transcriptions; the streams' models are
        # stepped in batches by the groups' own threads
        self.pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="asr-serve")
        self.streams = Streams(self.recognizer, config.workers, config.max_batch, self.pool)
        self.sockets: set[web.WebSocketResponse] = set()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_upload_bytes)
        app.router.add_get("/", lambda _: web.FileResponse(WEB_DIR / "index.html"))
        app.router.add_get("/app.js", lambda _: web.FileResponse(WEB_DIR / "app.js"))
        app.router.add_get("/health", self.health)
        app.router.add_get("/stream", self.stream)
        app.router.add_post("/transcribe", self.transcribe)
        app.on_startup.append(self.startup)
        app.on_shutdown.append(self.shutdown)
        return app

    async def startup(self, app: web.Application) -> None:
        self.streams.start()

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"streams": len(self.sockets), "max_streams": self.config.max_streams,
                                  "offline": self.transcriber is not None})

    async def shutdown(self, app: web.Application) -> None:
        for ws in list(self.sockets):
            await ws.close(code=CloseCodes.GOING_AWAY, message=b"server shutting down")
        self.streams.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def stream(self, request: web.Request) -> web.WebSocketResponse:
        ws = _Socket(self.config.max_frame_bytes)
        await ws.prepare(request)
        if len(self.sockets) >= self.config.max_streams:
            reason = f"server busy: {self.config.max_streams} streams open, try again later"
            await ws.close(code=CloseCodes.BUSY, message=reason.encode())
            return ws
        self.sockets.add(ws)
        try:
            code, reason = await self._converse(ws)
        except ProtocolError as err:
            code, reason = err.code, err.reason
        except ConnectionError:
            code, reason = None, ""  # the client has gone
        finally:
            self.sockets.discard(ws)  # the session goes with this frame: its state is freed
        if code is not None and not ws.closed:
            await ws.close(code=code, message=reason.encode()[:123])
        return ws

    async def _receive(self, ws: web.WebSocketResponse):
        """The next message, or ProtocolError(1008) after idle_timeout seconds without one."""
        try:
            return await ws.receive(timeout=self.config.idle_timeout)
        except asyncio.TimeoutError:
            raise ProtocolError(CloseCodes.POLICY, f"idle: no message for {self.config.idle_timeout:g} s") from None

    async def _converse(self, ws: web.WebSocketResponse) -> tuple[int | None, str]:
        """Hello, audio, end. Returns the close code and reason (None: the client has gone)."""
        loop = asyncio.get_running_loop()
        msg = await self._receive(ws)
        if msg.type == WSMsgType.BINARY:
            raise ProtocolError(CloseCodes.UNSUPPORTED, "audio before the hello: send the JSON hello first")
        if msg.type != WSMsgType.TEXT:
            return None, ""
        hello = parse_hello(msg.data)
        # a session with a word LM loads its own copy of it: not on the event loop
        session = await loop.run_in_executor(self.pool, self._new_session)
        await ws.send_json({"type": "ready", "sample_rate": SAMPLE_RATE, "max_frame_bytes": self.config.max_frame_bytes})
        stream = self.streams.open(session, hello.sample_rate, int(self.config.max_backlog * SAMPLE_RATE))
        recognition = asyncio.create_task(self._send_events(ws, stream))
        receiving = asyncio.create_task(self._read_audio(ws, hello, stream))
        try:
            await asyncio.wait({recognition, receiving}, return_when=asyncio.FIRST_COMPLETED)
            if recognition.done():  # it ends only after the end message, or when it failed
                recognition.result()
            try:
                ended = receiving.result()
            except ProtocolError as err:
                if err.code != CloseCodes.POLICY:
                    raise
                stream.close()  # idle: finalise what was heard, then close with the reason
                await recognition
                raise
            if not ended:
                return None, ""
            await recognition
            return CloseCodes.NORMAL, "end of stream"
        finally:
            # a step or search still running in a thread finishes there, unseen
            self.streams.drop(stream)
            for task in (recognition, receiving):
                task.cancel()
            await asyncio.gather(recognition, receiving, return_exceptions=True)

    def _new_session(self) -> Recognizer:
        with self.session_lock:
            return self.recognizer.new_session()

    async def _read_audio(self, ws: web.WebSocketResponse, hello: Hello, stream: Stream) -> bool:
        """Audio frames into ``stream`` until the end message (True) or the client has gone (False)."""
        dtype = FORMATS[hello.format]
        partial = b""  # the start of a sample split between frames
        while True:
            msg = await self._receive(ws)
            if msg.type == WSMsgType.BINARY:
                data = partial + msg.data
                whole = len(data) // dtype.itemsize * dtype.itemsize
                partial = data[whole:]
                samples = np.frombuffer(data[:whole], dtype)
                if hello.format == "pcm16":
                    samples = samples.astype(np.float32) / 32768.0
                elif not np.isfinite(samples).all():
                    raise ProtocolError(CloseCodes.INVALID, "float32 audio holds NaN or infinity")
                else:
                    samples = samples.astype(np.float32)  # native byte order, writable
                stream.put(samples)
                await stream.wait_for_room()
            elif msg.type == WSMsgType.TEXT:
                try:
                    message = json.loads(msg.data)
                except ValueError:
                    message = None
                if isinstance(message, dict) and message.get("type") == "end":
                    stream.close()
                    return True
                raise ProtocolError(CloseCodes.UNSUPPORTED, 'expected binary audio or {"type": "end"}')
            else:  # closed by the client, an oversized frame (aiohttp has closed it, 1009), or an error
                return False

    async def _send_events(self, ws: web.WebSocketResponse, stream: Stream) -> None:
        """The stream's events as they come, until its last final (after the end message)."""
        while (event := await stream.outbox.get()) is not None:
            if isinstance(event, BaseException):
                raise ProtocolError(CloseCodes.INTERNAL, "recognition failed") from event
            await ws.send_str(event_json(event))

    async def transcribe(self, request: web.Request) -> web.Response:
        if self.transcriber is None:
            return web.json_response({"error": "no offline model: start asr serve with --offline-model CKPT"}, status=503)
        body = await request.read()
        if not body:
            return web.json_response({"error": "empty body: POST an audio file"}, status=400)
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self.pool, self._transcribe_bytes, body)
        except AudioError as err:
            return web.json_response({"error": str(err)}, status=400)
        return web.Response(text=json.dumps(result.to_dict(), ensure_ascii=False) + "\n", content_type="application/json")

    def _transcribe_bytes(self, body: bytes):
        # the Transcriber reads files in bounded blocks (and any format soundfile knows): hand it one
        with tempfile.NamedTemporaryFile(prefix="asr-serve-", suffix=".audio") as f:
            f.write(body)
            f.flush()
            with self.offline_lock:
                return self.transcriber.transcribe_file(f.name)


async def start(config: ServeConfig) -> tuple[web.AppRunner, Server, int]:
    """Start serving; returns the runner (``await runner.cleanup()`` stops it), the server and its port."""
    # one thread per op: the model's ops are small, and the pool's workers already use the cores
    torch.set_num_threads(1)
    server = Server(config)
    # at shutdown, open streams get 1001 at once (Server.shutdown); then wait a little for requests
    runner = web.AppRunner(server.app(), access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    port = runner.addresses[0][1]
    return runner, server, port


def serve(config: ServeConfig) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM)."""

    async def main() -> None:
        runner, server, port = await start(config)
        stop = asyncio.Event()
        for signal in (signal_module.SIGINT, signal_module.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signal, stop.set)
        offline = "on" if server.transcriber is not None else "off (no offline model)"
        print(f"asr serve: http://{config.host}:{port}/ (streams at ws://{config.host}:{port}/stream, "
              f"at most {config.max_streams}; POST /transcribe {offline})", flush=True)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()  # open streams are closed with 1001

    asyncio.run(main())
