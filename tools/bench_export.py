"""Exported models against the PyTorch path: size, speed (RTF), cold start, and WER fp32 vs int8.

For each model (offline BiLSTM-CTC, streaming GRU-CTC) and each way of running it:

* PyTorch fp32: the checkpoint with asr (Transcriber / streaming Recognizer, greedy).
* ONNX fp32 / ONNX int8: ``asr export`` and the torch-free :mod:`asr.runtime`.
* TorchScript: ``asr export --format torchscript``, run by torch.jit (features and greedy
  decoding as the runtime does them; the streaming row has no endpointing).

Columns: size (model file; the checkpoint for PyTorch), RTF (CPU time, and wall time, / audio
time, one thread, greedy, after a 1 s warm-up; the streaming model in ``--chunk-ms`` chunks), cold start
(a new process's wall time from its start to the first partial of the streaming model, or to
the transcript of a 5 s file for the offline model: interpreter, imports, model load and first
chunks; the fastest of ``--cold-runs``, the others paying for a cold page cache or a busy CPU;
and the CPU time that process had used by then, which is what it costs on an idle machine less
the waits for the disk), and the max abs difference of the log-probs from PyTorch's on the
first 10 s. On a
loaded machine report the ratios, which the same run measures under the same load.

By default random-initialised models of the synthetic recipe's configs (cost does not depend on
the weights); ``--offline-model`` / ``--streaming-model`` take trained checkpoints. The audio is
real speech (``--audio``, by default a bundled clip repeated), since a trained model gives no
partial, and so no cold-start time, on noise.
``--wer MANIFEST`` (repeatable) adds greedy WER of ONNX fp32 and int8 on those test sets
(streaming: streamed in chunks with endpointing, as ``asr decode --chunk-ms`` does).

    python tools/bench_export.py                             # sizes, RTF, cold start
    python tools/bench_export.py --offline-model exp/final.pt --wer data/default/test.jsonl --skip-speed
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# every row runs on one thread: numpy's BLAS too (its threads would otherwise spin on after the
# frontend's matrix product, adding CPU time to whatever runs next); set before numpy loads it
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import yaml  # noqa: E402

from asr import runtime  # noqa: E402
from asr.audio import SAMPLE_RATE, load_audio  # noqa: E402
from asr.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from asr.export import ExportConfig, export_checkpoint  # noqa: E402
from asr.features import LogMelFrontend, StreamingLogMel  # noqa: E402
from asr.models import build_model  # noqa: E402
from asr.pretrained import SAMPLES_DIR  # noqa: E402
from asr.streaming import Recognizer, stream_audio  # noqa: E402
from asr.text import Tokenizer  # noqa: E402
from asr.transcribe import Transcriber  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"offline": ROOT / "recipes/synthetic/conf/blstm_ctc.yaml",
           "streaming": ROOT / "recipes/synthetic/conf/gru_streaming.yaml"}
ROWS = ("PyTorch fp32", "ONNX fp32", "ONNX int8", "TorchScript")


def random_checkpoint(kind: str, path: Path) -> Path:
    config = yaml.safe_load(CONFIGS[kind].read_text())
    torch.manual_seed(0)
    model = build_model(config["model"], config["model_config"], verbose=False)
    save_checkpoint(path, model, config["model"], Tokenizer(), metadata={"config": {"dither": config["dither"]}})
    return path


def exports(ckpt: Path, work: Path, chunk_ms: int) -> dict[str, Path]:
    """ONNX fp32, ONNX int8 and TorchScript directories of ``ckpt``."""
    dirs = {"ONNX fp32": work / "onnx", "ONNX int8": work / "int8", "TorchScript": work / "ts"}
    for row, config in (("ONNX fp32", ExportConfig(chunk_ms=chunk_ms)),
                        ("ONNX int8", ExportConfig(quantize="int8", chunk_ms=chunk_ms)),
                        ("TorchScript", ExportConfig(format="torchscript", chunk_ms=chunk_ms))):
        export_checkpoint(ckpt, dirs[row], config)
    return dirs


def model_size(row: str, ckpt: Path, dirs: dict[str, Path]) -> float:
    if row == "PyTorch fp32":
        return ckpt.stat().st_size / 1e6
    return next(p for p in dirs[row].iterdir() if p.name.startswith("model.") and p.suffix != ".json").stat().st_size / 1e6


def torchscript_stream(directory: Path, audio: torch.Tensor, chunk: int) -> str:
    """The TorchScript step graph driven as asr.runtime drives the ONNX one (no endpointing)."""
    import json

    meta = json.loads((directory / "model.json").read_text())
    spec, stride = meta["streaming"], meta["time_stride"]
    step = torch.jit.load(str(directory / "model.ts"))
    frontend = StreamingLogMel(meta["frontend"]["n_mels"], meta["frontend"]["dither"])
    state = [torch.zeros(shape) for shape in spec["state"].values()]
    buffer, best = torch.zeros(1, 0, meta["frontend"]["n_mels"]), []
    valid = torch.tensor([spec["chunk_frames"] // stride])
    with torch.inference_mode():
        for start in range(0, len(audio), chunk):
            buffer = torch.cat([buffer, frontend.accept_audio(audio[start : start + chunk])], dim=1)
            while buffer.shape[1] >= spec["chunk_frames"]:
                log_probs, *state = step(buffer[:, : spec["chunk_frames"]], valid, *state)
                buffer = buffer[:, spec["chunk_frames"] :]
                best += log_probs[0].argmax(-1).tolist()
    return "".join(meta["tokens"][t] for t in best if t)


def streaming_runner(row: str, ckpt: Path, dirs: dict[str, Path], chunk: int):
    """A function of the audio that streams it; the model is loaded here, outside the timing."""
    if row == "PyTorch fp32":
        recognizer = Recognizer(ckpt, greedy=True)
        return lambda audio: stream_audio(recognizer, audio, chunk)
    if row == "TorchScript":
        return lambda audio: torchscript_stream(dirs[row], audio, chunk)
    recognizer = runtime.StreamingRecognizer(dirs[row], threads=1)
    return lambda audio: runtime.stream_audio(recognizer, audio.numpy(), chunk)


def offline_runner(row: str, ckpt: Path, dirs: dict[str, Path]):
    if row == "PyTorch fp32":
        transcriber = Transcriber(str(ckpt), greedy=True)
        return transcriber.transcribe_audio
    if row == "TorchScript":
        model, frontend = torch.jit.load(str(dirs[row] / "model.ts")), LogMelFrontend(80, 1e-4).eval()

        def run(audio: torch.Tensor) -> None:
            with torch.inference_mode():
                model(*frontend(audio[None]))[0].argmax(-1)

        return run
    transcriber = runtime.Transcriber(dirs[row], threads=1)
    return lambda audio: transcriber.transcribe(audio.numpy())


def max_difference(kind: str, row: str, ckpt: Path, dirs: dict[str, Path], audio: torch.Tensor) -> float:
    """Max abs difference of the row's log-probs from PyTorch's forward on ``audio``'s features
    (the streaming model's ONNX and TorchScript graphs stepped chunk by chunk)."""
    import json

    feats, lengths = LogMelFrontend(80, 1e-4).eval()(audio[None])
    with torch.inference_mode():
        expected = load_checkpoint(ckpt).build_model()(feats, lengths)[0][0]
        if row == "PyTorch fp32":
            return 0.0
        if row.startswith("ONNX"):
            got = torch.from_numpy(runtime.ExportedModel(dirs[row]).log_probs(feats[0].numpy()))
        elif kind == "offline":
            got = torch.jit.load(str(dirs[row] / "model.ts"))(feats, lengths)[0][0]
        else:
            meta = json.loads((dirs[row] / "model.json").read_text())
            spec, stride = meta["streaming"], meta["time_stride"]
            step, size = torch.jit.load(str(dirs[row] / "model.ts")), spec["chunk_frames"]
            state, outputs = [torch.zeros(shape) for shape in spec["state"].values()], []
            for start in range(0, feats.shape[1], size):
                chunk = feats[:, start : start + size]
                valid = torch.tensor([-(-chunk.shape[1] // stride)])
                chunk = torch.nn.functional.pad(chunk, (0, 0, 0, size - chunk.shape[1]))
                log_probs, *state = step(chunk, valid, *state)
                outputs.append(log_probs[0])
            for _ in range(-(-spec["lookahead"] // (size // stride))):  # the look-ahead's frames, as asr.runtime
                log_probs, *state = step(torch.zeros_like(chunk), torch.tensor([0]), *state)
                outputs.append(log_probs[0])
            got = torch.cat(outputs)[spec["lookahead"] :][: len(expected)]
    return float((got - expected).abs().max())


def rtf(run, audio: torch.Tensor) -> tuple[float, float]:
    """CPU time and wall time / audio time, after a warm-up on the first second (first-call
    allocations). Every row runs on one thread, so CPU time is its compute time even when other
    processes share the cores, which inflates wall time by however much CPU they take."""
    run(audio[:SAMPLE_RATE])
    wall, cpu = time.perf_counter(), time.process_time()
    run(audio)
    seconds = len(audio) / SAMPLE_RATE
    return (time.process_time() - cpu) / seconds, (time.perf_counter() - wall) / seconds


COLD = {
    ("streaming", "PyTorch fp32"): """
import torch; torch.set_num_threads(1)
from asr.audio import load_audio
from asr.streaming import Recognizer
r, a = Recognizer({model!r}, greedy=True), load_audio({wav!r})
""",
    ("streaming", "ONNX"): """
from asr.runtime import StreamingRecognizer, load_audio
r, a = StreamingRecognizer({model!r}), load_audio({wav!r})
""",
    ("streaming", "TorchScript"): """
import torch; torch.set_num_threads(1)
m = torch.jit.load({model!r} + "/model.ts")
from asr.features import StreamingLogMel
from asr.audio import load_audio
a, f = load_audio({wav!r}), StreamingLogMel(80)
with torch.inference_mode():
    s = [torch.zeros(1, 1, 2, 80), torch.zeros(1, 32, 2, 40), torch.zeros(3, 1, 320), torch.zeros(1, 2, 320)]
    m(f.accept_audio(a[:1280 + 240])[:, :8], torch.tensor([2]), *s)
print("first", time.process_time(), flush=True)
""",
    ("offline", "PyTorch fp32"): """
import torch; torch.set_num_threads(1)
from asr.transcribe import Transcriber
Transcriber({model!r}, greedy=True).transcribe_file({wav!r})
print("first", time.process_time(), flush=True)
""",
    ("offline", "ONNX"): """
from asr.runtime import Transcriber
Transcriber({model!r}).transcribe_file({wav!r})
print("first", time.process_time(), flush=True)
""",
    ("offline", "TorchScript"): """
import torch; torch.set_num_threads(1)
m = torch.jit.load({model!r} + "/model.ts")
from asr.features import LogMelFrontend
from asr.audio import load_audio
with torch.inference_mode():
    m(*LogMelFrontend(80, 1e-4).eval()(load_audio({wav!r})[None]))
print("first", time.process_time(), flush=True)
""",
}
FIRST_PARTIAL = """
for k in range(0, len(a), 1280):
    if any(e.kind == "partial" for e in r.accept_audio(a[k:k + 1280])):
        print("first", time.process_time(), flush=True)
        break
"""


def cold_start(kind: str, row: str, model: str, wav: Path) -> tuple[float, float]:
    """Wall seconds from spawning a fresh interpreter to its first result line, and the CPU
    seconds the process had used by then (which other processes' load does not inflate)."""
    code = "import time\n" + COLD[(kind, row.split()[0] if row.startswith("ONNX") else row)]
    if kind == "streaming" and row != "TorchScript":
        code += FIRST_PARTIAL
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code.format(model=model, wav=str(wav))], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = proc.stdout.readline().split()
    elapsed = time.perf_counter() - start
    proc.wait()
    if not line or line[0] != "first":
        raise RuntimeError(f"cold start of {kind} {row} gave no result")
    return elapsed, float(line[1])


def wer(kind: str, directory: Path, manifest: str, chunk: int) -> float:
    import jiwer

    from asr.data.manifest import read_manifest
    from asr.text import normalize_text

    refs, hyps = [], []
    if kind == "streaming":
        recognizer = runtime.StreamingRecognizer(directory)
    else:
        transcriber = runtime.Transcriber(directory)
    for entry in read_manifest(manifest):
        audio = load_audio(entry["audio"]).numpy()
        hyps.append(runtime.stream_audio(recognizer, audio, chunk) if kind == "streaming" else transcriber.transcribe(audio))
        refs.append(normalize_text(entry["text"])[0])
    return jiwer.wer(refs, hyps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--offline-model", help="trained offline checkpoint (default: random, recipe size)")
    parser.add_argument("--streaming-model", help="trained streaming checkpoint (default: random, recipe size)")
    parser.add_argument("--kinds", nargs="+", choices=["offline", "streaming"], default=["offline", "streaming"])
    parser.add_argument("--seconds", type=float, default=60.0, help="audio for the RTF (default: 60)")
    parser.add_argument("--audio", default=str(SAMPLES_DIR / "speechocean762-005670189.ogg"),
                        help="speech to time, repeated to --seconds; its first 5 s for the cold start "
                             "(default: a bundled speechocean762 clip: a trained model emits no partial on noise)")
    parser.add_argument("--chunk-ms", type=int, default=80)
    parser.add_argument("--cold-runs", type=int, default=3, help="cold starts per row; the fastest is shown (default: 3)")
    parser.add_argument("--skip-speed", action="store_true", help="WER only")
    parser.add_argument("--wer", action="append", default=[], metavar="MANIFEST", help="test set for WER fp32 vs int8")
    args = parser.parse_args()

    torch.set_num_threads(1)
    chunk = SAMPLE_RATE * args.chunk_ms // 1000
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        speech = load_audio(args.audio)
        audio = speech.repeat(-(-int(args.seconds * SAMPLE_RATE) // len(speech)))[: int(args.seconds * SAMPLE_RATE)]
        wav = work / "five.wav"
        import soundfile

        soundfile.write(wav, audio[: 5 * SAMPLE_RATE].numpy(), SAMPLE_RATE)
        for kind in args.kinds:
            given = getattr(args, f"{kind}_model")
            ckpt = Path(given) if given else random_checkpoint(kind, work / f"{kind}.pt")
            dirs = exports(ckpt, work / kind, args.chunk_ms)
            params = sum(v.numel() for v in load_checkpoint(ckpt).state_dict.values()) / 1e6
            source = given or f"random weights, {CONFIGS[kind].relative_to(ROOT)}"
            if not args.skip_speed:
                print(f"\n{kind} model ({source}; {params:.2f}M values), 1 thread, greedy"
                      + (f", {args.chunk_ms} ms chunks" if kind == "streaming" else "")
                      + f", {args.seconds:.0f} s of audio")
                print("| runtime | size (MB) | RTF (CPU time) | / PyTorch | RTF (wall) | cold start: CPU (s) | wall (s) | max abs log-prob difference |")
                print("|---|---|---|---|---|---|---|---|")
                base = None
                for row in ROWS:
                    run = streaming_runner(row, ckpt, dirs, chunk) if kind == "streaming" else \
                        offline_runner(row, ckpt, dirs)
                    speed, wall = rtf(run, audio)
                    base = base or speed
                    model = str(ckpt) if row == "PyTorch fp32" else str(dirs[row])
                    difference = max_difference(kind, row, ckpt, dirs, audio[: 10 * SAMPLE_RATE])
                    cold, cold_cpu = min(cold_start(kind, row, model, wav) for _ in range(args.cold_runs))
                    print(f"| {row} | {model_size(row, ckpt, dirs):.2f} | {speed:.4f} | {speed / base:.2f} | {wall:.4f} | {cold_cpu:.2f} | {cold:.2f} | {difference:.1e} |",
                          flush=True)
            for manifest in args.wer:
                fp32, int8 = (wer(kind, dirs[row], manifest, chunk) for row in ("ONNX fp32", "ONNX int8"))
                print(f"{kind} WER on {manifest} ({source}): fp32 {fp32:.4f}, int8 {int8:.4f}, "
                      f"difference {int8 - fp32:+.4f}", flush=True)


if __name__ == "__main__":
    main()
