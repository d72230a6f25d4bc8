"""``asr export``: a checkpoint -> ONNX or TorchScript, for the torch-free runtime (docs/export.md)."""

from __future__ import annotations

import argparse

from asr.checkpoint import CheckpointError
from asr.cli.common import add_verb, fail, positive_int
from asr.export import ExportConfig, describe, export_checkpoint
from asr.pretrained import resolve_model


def register(verbs: argparse._SubParsersAction) -> None:
    p = add_verb(verbs, "export", run, help="export a checkpoint to ONNX (for `--runtime onnx`, no torch needed) "
                 "or TorchScript, optionally with int8 weights (docs/export.md)")
    p.add_argument("--model", help="checkpoint file (default: the embedded default model of its kind)")
    p.add_argument("--kind", choices=["offline", "streaming"], default="offline",
                   help="without --model: which embedded default to export (default: offline)")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the model, model.json and the LM files")
    p.add_argument("--quantize", choices=["int8"], help="dynamic int8 weights (onnxruntime; onnx only)")
    p.add_argument("--chunk-ms", type=positive_int, default=80, metavar="MS",
                   help="streaming models: audio per step of the exported graph (a multiple of 10 ms x the "
                   "model's time stride; default: 80)")


def run(args: argparse.Namespace) -> int:
    try:
        model = resolve_model(args.model, args.kind)  # FileNotFoundError, one line, if none is embedded
        if args.chunk_ms % 10:
            raise ValueError(f"--chunk-ms {args.chunk_ms}: must be a multiple of 10 ms")
        path = export_checkpoint(model, args.out, ExportConfig(args.format, args.quantize, args.chunk_ms))
    except (CheckpointError, OSError, ImportError, ValueError) as err:
        return fail(args, err)
    print(f"wrote {describe(path)}")
    return 0
