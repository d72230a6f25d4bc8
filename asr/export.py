"""Export a checkpoint for deployment: ONNX (for :mod:`asr.runtime`, onnxruntime without torch)
or TorchScript (for libtorch), optionally with int8 weights.

An export directory alone is enough to transcribe::

    model.onnx | model.ts   the acoustic model (CMVN inside the graph; features in, log-probs out)
    model.json              what the runtime needs: model kind, frontend settings, tokens,
                            chunking and state shapes of the streaming step, decoding defaults
    lm.arpa, lexicon.txt    the word LM and lexicon, when the checkpoint carries them

The offline model takes features ``(batch, frames, n_mels)`` + lengths ``(batch,)`` and returns
log-probs ``(batch, frames', vocab)`` + lengths, as ``forward``; both axes are dynamic.

The streaming model is exported as its step function over a fixed chunk of ``chunk_frames``
feature frames (a multiple of the time stride): the convolution caches, GRU state and
look-ahead buffer are explicit inputs and outputs that the caller carries from chunk to
chunk (:class:`StreamingStep`); the batch axis is dynamic, so that a server steps many
streams in one call. In fp32 each GRU layer is ONNX's GRU op; for int8 the fixed
chunk lets the recurrence be unrolled into plain matrix products, which onnxruntime's dynamic
quantization turns into int8 ones (it has no int8 GRU); the input projection of all a chunk's
frames is one product.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from asr.checkpoint import Checkpoint, load_checkpoint
from asr.features import F_MAX, F_MIN, HOP_LENGTH, LOG_FLOOR, N_FFT, WIN_LENGTH
from asr.models.streaming_gru import StreamingGRUCTC
from asr.models.subsampling import KERNEL

FORMATS = ("onnx", "torchscript")
EXPORT_FORMAT = "asr-export-2"  # model.json's "format": asr.runtime.EXPORT_FORMAT (a test holds them equal)
OPSET = 17


@dataclass
class ExportConfig:
    format: str = "onnx"  # "onnx" or "torchscript"
    quantize: str | None = None  # "int8": dynamic int8 weights of the matrix products and LSTMs (onnx only)
    chunk_ms: int = 80  # streaming model: audio per step (a multiple of time_stride x 10 ms)


class StreamingStep(nn.Module):
    """:meth:`StreamingGRUCTC.step` with fixed shapes and the state as tensors, for export.

    Inputs: features ``(batch, chunk_frames, n_mels)``, ``valid`` ``(batch,)`` int64 (output frames
    of this chunk that are real: ``chunk_frames // stride`` except in the last, zero-padded chunk),
    and the state: ``conv1`` ``(batch, 1, 2, n_mels)``, ``conv2`` ``(batch, channels, 2, bins)``,
    ``hidden`` ``(layers, batch, hidden)``, ``lookahead`` ``(batch, lookahead, hidden)``, all zeros
    at the start (``state_shapes`` gives them for batch 1).

    Outputs: ``log_probs`` ``(batch, chunk_frames // stride, vocab)`` and the new state. The
    look-ahead buffer starts as ``lookahead`` zero frames instead of none, so the first
    ``lookahead`` output frames of a stream are not the utterance's and the caller drops them;
    from then on output frame ``k`` is stream frame ``k - lookahead``. GRU outputs past ``valid``
    are zeroed, as ``forward`` zeroes them past the end of an utterance; so after the last chunk,
    steps with ``valid`` 0 give, in their first ``lookahead`` outputs, what
    :meth:`StreamingGRUCTC.flush` gives: the frames still waiting for their look-ahead, with a
    future of zeros (one step, or more where a chunk has fewer outputs than the look-ahead). A
    flush output computed at every step would cost time at every step (docs/export.md).
    """

    def __init__(self, model: StreamingGRUCTC, chunk_frames: int, unroll: bool = False) -> None:
        super().__init__()
        config = model.config
        if chunk_frames <= 0 or chunk_frames % config.time_stride:
            raise ValueError(f"chunk of {chunk_frames} frames: must be a positive multiple of time_stride {config.time_stride}")
        self.model = model
        self.chunk_frames = chunk_frames
        self.outputs = chunk_frames // config.time_stride
        self.unroll = unroll
        # one single-layer GRU per layer (ONNX's GRU op), sharing the model's weights, so that
        # each layer's output passes through its layer norm before the next
        gru = model.encoder.rnn
        self.layers = nn.ModuleList()
        for layer in range(gru.num_layers):
            single = nn.GRU(gru.input_size if layer == 0 else gru.hidden_size, gru.hidden_size)  # (frames, 1, size)
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                setattr(single, f"{name}_l0", getattr(gru, f"{name}_l{layer}"))
            self.layers.append(single)

    def state_shapes(self) -> dict[str, list[int]]:
        config, sub = self.model.config, self.model.subsampling
        shapes = {f"conv{k + 1}": [1, c, KERNEL - 1, bins] for k, (c, bins) in enumerate(sub.in_shapes)}
        shapes["hidden"] = [config.num_layers, 1, config.hidden_size]
        shapes["lookahead"] = [1, config.lookahead, config.hidden_size]
        return shapes

    def forward(self, feats, valid, conv1, conv2, hidden, lookahead):
        model = self.model
        x = model.cmvn(feats).unsqueeze(1)  # (batch, 1, frames, mels)
        caches = []
        for conv, left in zip(model.subsampling.convs, (conv1, conv2)):
            x = torch.cat([left, x], dim=2)
            # a chunk that is a multiple of the strides consumes all but the last KERNEL - 1 frames
            caches.append(x[:, :, x.shape[2] - (KERNEL - 1) :])
            x = torch.relu(conv(x))
        # (frames', batch, out_dim) through the GRU layers: the layout of ONNX's GRU op, so that no
        # reshaping sits between them (each small node costs a streaming step time)
        x = model.subsampling.flatten(x).transpose(0, 1)
        states = []
        for layer in range(model.encoder.rnn.num_layers):
            x, h = self._gru_layer(x, hidden[layer : layer + 1], layer)
            states.append(h)
        mask = (torch.arange(self.outputs)[:, None] < valid).to(x.dtype)[:, :, None]  # (frames', batch, 1)
        x = (x * mask).transpose(0, 1)  # (batch, frames', hidden)
        x = torch.cat([lookahead, x], dim=1)
        look = model.config.lookahead
        waiting = x[:, x.shape[1] - look :]
        log_probs = model.output(model.lookahead.conv(x.transpose(1, 2)).transpose(1, 2)).log_softmax(dim=-1)
        return log_probs, caches[0], caches[1], torch.cat(states), waiting

    def _gru_layer(self, x: torch.Tensor, h: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One GRU layer over ``(frames, batch, input)`` from state ``(1, batch, hidden)``, then the
        model's layer norm and residual if it has them."""
        if self.unroll:
            y, h = self._unrolled_gru(x, h[0], layer)
            h = h[None]
        else:
            y, h = self.layers[layer](x, h)
        if self.model.encoder.norms is not None:
            y = self.model.encoder.norms[layer](y + x if y.shape == x.shape else y)
        return y, h

    def _unrolled_gru(self, x: torch.Tensor, h: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The GRU layer as plain matrix products, frame by frame (gates in PyTorch's order r, z, n):
        what onnxruntime's dynamic quantization can make int8 (it has no int8 GRU; its fp32 GRU
        kernel is faster than these products)."""
        gru = self.model.encoder.rnn
        size = gru.hidden_size
        # transposed once per layer, not per frame: ONNX's constant folding then stores each once
        w_ih, w_hh = getattr(gru, f"weight_ih_l{layer}").t(), getattr(gru, f"weight_hh_l{layer}").t()
        b_hh = getattr(gru, f"bias_hh_l{layer}")
        gates_x = x @ w_ih + getattr(gru, f"bias_ih_l{layer}")  # (frames, batch, 3 hidden), all frames at once
        outputs = []
        # one Split per tensor rather than a Slice per gate: fewer, larger graph nodes
        for row in gates_x.split(1, dim=0):
            x_rz, x_n = row[0].split([2 * size, size], dim=1)
            h_rz, h_n = (h @ w_hh + b_hh).split([2 * size, size], dim=1)
            r, z = torch.sigmoid(x_rz + h_rz).chunk(2, dim=1)
            n = torch.tanh(x_n + r * h_n)
            h = n + z * (h - n)  # (1 - z) n + z h, (batch, hidden)
            outputs.append(h)
        return torch.stack(outputs), h


STEP_INPUTS = ["feats", "valid", "conv1", "conv2", "hidden", "lookahead"]
STEP_OUTPUTS = ["log_probs", "conv1_out", "conv2_out", "hidden_out", "lookahead_out"]


def initial_state(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    return {name: torch.zeros(shape) for name, shape in shapes.items()}


def export_checkpoint(checkpoint: str | os.PathLike | Checkpoint, out_dir: str | os.PathLike,
                      config: ExportConfig | None = None) -> Path:
    """Write ``out_dir`` (see the module docstring) for ``checkpoint``; returns the model file."""
    config = config or ExportConfig()
    if config.format not in FORMATS:
        raise ValueError(f"unknown format {config.format!r}; choose one of: {', '.join(FORMATS)}")
    if config.quantize not in (None, "int8"):
        raise ValueError(f"unknown quantization {config.quantize!r}; the one supported is int8")
    if config.quantize and config.format != "onnx":
        raise ValueError("--quantize int8 is for --format onnx (onnxruntime's dynamic quantization)")
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    model = ckpt.build_model("cpu")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    training = ckpt.training_config
    meta = {
        "format": EXPORT_FORMAT,
        "model": ckpt.model_name,
        "model_file": "model.onnx" if config.format == "onnx" else "model.ts",
        "quantize": config.quantize,
        "tokens": ckpt.tokenizer.tokens,
        "blank_id": ckpt.tokenizer.blank_id,
        "frontend": {"sample_rate": 16000, "n_mels": model.config.n_mels, "dither": training.get("dither", 0.0),
                     "win_length": WIN_LENGTH, "hop_length": HOP_LENGTH, "n_fft": N_FFT, "f_min": F_MIN,
                     "f_max": F_MAX, "log_floor": LOG_FLOOR, "window": "hann-symmetric", "mel_scale": "htk"},
        "edge_samples": int(training.get("data", {}).get("augment", {}).get("pad_s", 0.0) / 2 * 16000),
        "time_stride": model.config.time_stride,
    }
    path = out / meta["model_file"]
    with torch.no_grad():
        if isinstance(model, StreamingGRUCTC):
            frames = config.chunk_ms // 10
            step = StreamingStep(model, frames, unroll=config.quantize == "int8").eval()
            shapes = step.state_shapes()
            meta["streaming"] = {"chunk_frames": frames, "lookahead": model.config.lookahead, "state": shapes,
                                 "inputs": STEP_INPUTS, "outputs": STEP_OUTPUTS}
            example = (torch.zeros(1, frames, model.config.n_mels), torch.tensor([step.outputs]),
                       *initial_state(shapes).values())
            batch_axes = {name: {1 if name.startswith("hidden") else 0: "batch"} for name in STEP_INPUTS + STEP_OUTPUTS}
            _write_graph(step, example, path, config.format, STEP_INPUTS, STEP_OUTPUTS, dynamic_axes=batch_axes)
        else:
            example = (torch.randn(2, 200, model.config.n_mels), torch.tensor([200, 150]))
            _write_graph(model, example, path, config.format, ["feats", "lengths"], ["log_probs", "out_lengths"],
                         dynamic_axes={"feats": {0: "batch", 1: "frames"}, "lengths": {0: "batch"},
                                       "log_probs": {0: "batch", 1: "out_frames"}, "out_lengths": {0: "batch"}})
    if config.quantize:
        _quantize_int8(path)
    if ckpt.language_model is not None:
        lm = ckpt.language_model
        if lm.arpa is not None:
            (out / "lm.arpa").write_text(lm.arpa)
        if lm.lexicon is not None:
            (out / "lexicon.txt").write_text(lm.lexicon)
        meta["language_model"] = {"arpa": "lm.arpa" if lm.arpa else None,
                                  "lexicon": "lexicon.txt" if lm.lexicon else None,
                                  "lm_weight": lm.lm_weight, "word_score": lm.word_score}
    (out / "model.json").write_text(json.dumps(meta, indent=1) + "\n")
    return path


def _write_graph(module: nn.Module, example: tuple, path: Path, fmt: str, inputs: list[str], outputs: list[str],
                 dynamic_axes: dict | None) -> None:
    # the tracer warns of every Python-level shape test it freezes; the tests check the
    # graphs on other shapes than the example's, which is what those warnings are about
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trace(module, example, path, fmt, inputs, outputs, dynamic_axes)


def _trace(module: nn.Module, example: tuple, path: Path, fmt: str, inputs: list[str], outputs: list[str],
           dynamic_axes: dict | None) -> None:
    if fmt == "torchscript":
        torch.jit.save(torch.jit.trace(module, example, check_trace=False), str(path))
        return
    # the TorchScript-based exporter: it turns aten::lstm into ONNX's LSTM, which onnxruntime
    # quantizes; the dynamo exporter would need onnxscript as well
    torch.onnx.export(module, example, str(path), input_names=inputs, output_names=outputs,
                      dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False)


def _quantize_int8(path: Path) -> None:
    """Dynamic int8 (weights quantized once, activations per call) of MatMul and LSTM, in place.

    Weights take 7 bits (``reduce_range``: -64..64): onnxruntime's u8 x s8 kernels on x86-64
    CPUs without VNNI (AVX2, AVX-512 before Cascade Lake and Zen 4) add two products in 16 bits,
    which 255 x 127 x 2 overflows and 255 x 64 x 2 does not, so the results hold on any CPU.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_suffix(".fp32.onnx")
    shutil.move(path, tmp)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic advises shape-inference pre-processing there, needless here
    try:
        quantize_dynamic(str(tmp), str(path), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         op_types_to_quantize=["MatMul", "LSTM"])
    finally:
        root.setLevel(level)
        tmp.unlink(missing_ok=True)


def describe(path: Path) -> str:
    meta = json.loads((path.parent / "model.json").read_text())
    return (f"{path} ({path.stat().st_size / 1e6:.2f} MB, {meta['model']}, {meta['quantize'] or 'fp32'}"
            + (f", {meta['streaming']['chunk_frames'] * 10} ms chunks" if "streaming" in meta else "") + ")")



