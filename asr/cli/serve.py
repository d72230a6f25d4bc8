"""``asr serve``: the WebSocket / HTTP server (the serve extra: aiohttp)."""

from __future__ import annotations

import argparse
import os

from asr.checkpoint import CheckpointError
from asr.cli.common import add_beam_options, add_verb, beam_options, fail, positive_int, warn
from asr.pretrained import resolve_model


def register(verbs: argparse._SubParsersAction) -> None:
    p = add_verb(verbs, "serve", run, help="streaming recognition over WebSocket, files over HTTP, and a page at / "
                 "that listens in the browser (protocol: docs/serve.md)")
    p.add_argument("--model", help="streaming checkpoint (default: the embedded streaming model)")
    p.add_argument("--offline-model", metavar="CKPT",
                   help="offline checkpoint for POST /transcribe (default: the embedded offline model; "
                   "without one, that route answers 503)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: any free one, printed)")
    p.add_argument("--max-streams", type=positive_int, default=32, metavar="N",
                   help="streams open at once; more are refused with close code 1013 (default: 32)")
    p.add_argument("--max-frame-bytes", type=positive_int, default=1 << 20, metavar="B",
                   help="largest WebSocket message; a larger one closes its stream with 1009 (default: 1 MiB)")
    p.add_argument("--idle-timeout", type=float, default=30.0, metavar="S",
                   help="seconds without a message before a stream is finalised and closed with 1008 (default: 30)")
    p.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1, metavar="N",
                   help="groups of streams stepped in batches, each by a thread; also threads for word-LM "
                   "searches (default: the number of cores)")
    p.add_argument("--max-batch", type=positive_int, default=128, metavar="N",
                   help="streams stepped in one call of the model (default: 128; 1: each stream alone)")
    add_beam_options(p)


def run(args: argparse.Namespace) -> int:
    try:
        from asr.serve import ServeConfig, serve  # the serve extra: aiohttp

        model = resolve_model(args.model, "streaming")
        try:
            offline = resolve_model(args.offline_model, "offline")
        except FileNotFoundError as err:
            if args.offline_model:
                raise
            warn(args, f"{err}; POST /transcribe is off")
            offline = None
        config = ServeConfig(model=str(model), offline_model=str(offline) if offline else None, host=args.host,
                             port=args.port, max_streams=args.max_streams, max_frame_bytes=args.max_frame_bytes,
                             idle_timeout=args.idle_timeout, workers=args.workers, max_batch=args.max_batch,
                             beam=beam_options(args),
                             greedy=args.greedy)
        serve(config)
    except (CheckpointError, ImportError, ValueError, OSError) as err:
        return fail(args, err)
    return 0
