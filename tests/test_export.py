"""asr export and the torch-free runtime: the exported graphs give the PyTorch model's log-probs,
the numpy frontend gives LogMelFrontend's features, the runtime transcribes and streams as the
torch path does, and asr.runtime never imports torch."""

import json
import random
import subprocess
import sys
import textwrap

import jiwer
import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("onnxruntime")

from asr import runtime  # noqa: E402
from asr.checkpoint import LanguageModel, load_checkpoint, save_checkpoint  # noqa: E402
from asr.export import EXPORT_FORMAT, ExportConfig, StreamingStep, export_checkpoint  # noqa: E402
from asr.features import LogMelFrontend  # noqa: E402
from asr.models import build_model  # noqa: E402
from asr.streaming import Recognizer  # noqa: E402
from asr.text import Tokenizer  # noqa: E402
from conftest import espeak, requires_espeak  # noqa: E402

TOLERANCE = 1e-4  # fp32 graphs against PyTorch: max abs difference of log-probs
FRONTEND_TOLERANCE = 1e-3  # numpy float32 FFT against torch.stft: rounding only (measured 1.4e-4 on speech)
# Chunked against whole, the numpy frontend runs the same float32 code on fewer frames at a time;
# BLAS sums a mel band's power bins (at most 17 non-zero weights, all terms >= 0) in an order that
# can depend on the matrix's rows and the CPU's kernels: at most 16 roundings of the sum apart, a
# relative 16 eps that the log turns into an absolute 16 eps, plus the log's own rounding (8 eps
# for |log-mel| < 16). Measured: 3 eps with OpenBLAS's Zen, Haswell and Prescott kernels.
CHUNKING_TOLERANCE = 32 * np.finfo(np.float32).eps
NO_AUGMENT = {"dropout": 0.0, "specaugment": {"freq_masks": 0, "time_masks": 0}}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asr", *args], capture_output=True, text=True, timeout=600)


def random_checkpoint(path, name: str, seed: int = 0, **config) -> str:
    """A random-initialised model with non-trivial CMVN and batch-norm statistics, saved."""
    torch.manual_seed(seed)
    model = build_model(name, {**NO_AUGMENT, **config}, verbose=False)
    with torch.no_grad():
        model.cmvn.mean.normal_()
        model.cmvn.std.uniform_(0.5, 2.0)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    save_checkpoint(path, model, name, Tokenizer(), metadata={"config": {"dither": 1e-4}})
    return str(path)


def small_offline(tmp_path, **config) -> str:
    return random_checkpoint(tmp_path / "offline.pt", "blstm_ctc", hidden_size=48, num_layers=2, conv_channels=8,
                             **config)


def small_streaming(tmp_path, **config) -> str:
    return random_checkpoint(tmp_path / "streaming.pt", "streaming_gru", hidden_size=48, num_layers=2,
                             conv_channels=8, **config)


def torch_log_probs(checkpoint: str, feats: torch.Tensor) -> torch.Tensor:
    """PyTorch forward on one utterance's features ``(frames, n_mels)`` -> ``(frames', vocab)``."""
    model = load_checkpoint(checkpoint).build_model()
    with torch.no_grad():
        return model(feats[None], torch.tensor([len(feats)]))[0][0]


def features(audio: torch.Tensor) -> torch.Tensor:
    return LogMelFrontend(80, 1e-4).eval()(audio[None])[0][0]


def streamed(model: runtime.ExportedModel, feats: np.ndarray, rng: random.Random) -> np.ndarray:
    """The runtime's streaming step over random feature chunks (0 to 30 frames), then flush."""
    stepper, out, start = runtime.OnnxStepper(model), [], 0
    state = stepper.initial_state()
    while start < len(feats):
        size = rng.randint(0, 30)
        log_probs, state = stepper.step(feats[None, start : start + size], state)
        out.append(log_probs[0])
        start += size
    return np.concatenate([*out, stepper.flush(state)[0]])


# --- the numpy frontend ------------------------------------------------------------------------


@requires_espeak
def test_numpy_frontend_equals_logmel_frontend():
    settings = json.loads(json.dumps({"sample_rate": 16000, "n_mels": 80, "dither": 1e-4, "win_length": 400,
                                      "hop_length": 160, "n_fft": 512, "f_min": 20.0, "f_max": 8000.0,
                                      "log_floor": 1e-6}))
    speech = torch.cat([torch.zeros(4000), espeak("open the door please"), torch.zeros(3000)])
    noise = 0.1 * torch.randn(12345, generator=torch.Generator().manual_seed(0))
    for audio in (speech, noise, torch.zeros(399), torch.zeros(400)):
        expected = features(audio)[: max(0, (len(audio) - 400) // 160 + 1)].numpy()
        got = runtime.LogMel(settings)(audio.numpy())
        assert got.shape == expected.shape
        if len(got):
            assert np.abs(got - expected).max() <= FRONTEND_TOLERANCE
    # chunked: the same frames whatever the chunking, to rounding (CHUNKING_TOLERANCE); one
    # sample lost between chunks shows far above it
    whole = runtime.LogMel(settings)(speech.numpy())
    assert np.abs(chunked(settings, speech.numpy()) - whole).max() <= CHUNKING_TOLERANCE
    lost = np.concatenate([speech[:20000], speech[20001:], [0.0]]).astype(np.float32)
    assert np.abs(chunked(settings, lost) - whole).max() > 1000 * CHUNKING_TOLERANCE


def chunked(settings: dict, audio: np.ndarray) -> np.ndarray:
    """StreamingLogMel's frames of ``audio`` fed in random chunks of 1 to 3,000 samples."""
    stream, rng, chunks, start = runtime.StreamingLogMel(runtime.LogMel(settings)), random.Random(0), [], 0
    while start < len(audio):
        size = rng.randint(1, 3000)
        chunks.append(stream.accept_audio(audio[start : start + size]))
        start += size
    return np.concatenate(chunks)


# --- parity of the exported graphs ---------------------------------------------------------------


@pytest.mark.parametrize("layer_norm", [False, True])
def test_offline_onnx_equals_pytorch_on_random_batches(tmp_path, layer_norm):
    ckpt = small_offline(tmp_path, layer_norm=layer_norm)
    export_checkpoint(ckpt, tmp_path / "onnx")
    session = runtime.ExportedModel(tmp_path / "onnx").session
    model = load_checkpoint(ckpt).build_model()
    for frames, lengths in ((301, [301, 200, 57]), (64, [64]), (9, [9, 5])):  # other sizes than the export's example
        feats = torch.randn(len(lengths), frames, 80, generator=torch.Generator().manual_seed(frames))
        with torch.no_grad():
            expected, expected_lengths = model(feats, torch.tensor(lengths))
        got, got_lengths = session.run(None, {"feats": feats.numpy(), "lengths": np.array(lengths, np.int64)})
        assert got_lengths.tolist() == expected_lengths.tolist()
        for b, n in enumerate(expected_lengths.tolist()):
            assert np.abs(got[b, :n] - expected[b, :n].numpy()).max() <= TOLERANCE


@pytest.mark.parametrize("layer_norm,chunk_ms", [(False, 80), (True, 80), (True, 40), (True, 160)])
def test_streaming_onnx_over_random_chunks_equals_forward(tmp_path, layer_norm, chunk_ms):
    ckpt = small_streaming(tmp_path, layer_norm=layer_norm)
    export_checkpoint(ckpt, tmp_path / "onnx", ExportConfig(chunk_ms=chunk_ms))
    model = runtime.ExportedModel(tmp_path / "onnx")
    rng = random.Random(chunk_ms)
    for frames in (333, 8, 5, 1):
        feats = torch.randn(frames, 80, generator=torch.Generator().manual_seed(frames))
        expected = torch_log_probs(ckpt, feats).numpy()
        got = streamed(model, feats.numpy(), rng)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= TOLERANCE
        # the whole utterance at once (the runtime's transcription path) too
        assert np.abs(model.log_probs(feats.numpy()) - expected).max() <= TOLERANCE


def test_streaming_step_rejects_a_chunk_off_the_stride(tmp_path):
    model = load_checkpoint(small_streaming(tmp_path)).build_model()
    with pytest.raises(ValueError, match="multiple of time_stride 4"):
        StreamingStep(model, 6)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_unrolled_step_equals_the_gru_op_step(tmp_path, layer_norm):
    """The int8 export's unrolled recurrence computes what the fp32 export's GRU op does."""
    model = load_checkpoint(small_streaming(tmp_path, layer_norm=layer_norm)).build_model().eval()
    steps = [StreamingStep(model, 8, unroll=unroll).eval() for unroll in (False, True)]
    state = {name: torch.randn(shape) * 0.5 for name, shape in steps[0].state_shapes().items()}
    feats = torch.randn(1, 8, model.config.n_mels)
    with torch.no_grad():
        outputs = [step(feats, torch.tensor([2]), *state.values()) for step in steps]
    for gru_op, unrolled in zip(*outputs):
        assert (gru_op - unrolled).abs().max() <= 1e-5


@requires_espeak
def test_exported_models_equal_pytorch_on_test_utterances(tiny_checkpoint, tiny_streaming_checkpoint, tmp_path):
    """The trained tiny fixtures on an utterance they were trained on and one they were not."""
    for ckpt in (tiny_checkpoint, tiny_streaming_checkpoint):
        export_checkpoint(ckpt.path, tmp_path / ckpt.path.stem)
        model = runtime.ExportedModel(tmp_path / ckpt.path.stem)
        for audio in (ckpt.audio[1], espeak("bring the green door", voice="en-gb")):
            feats = features(audio)
            expected = torch_log_probs(str(ckpt.path), feats).numpy()
            got = streamed(model, feats.numpy(), random.Random(0)) if model.streaming else model.log_probs(feats.numpy())
            assert np.abs(got - expected).max() <= TOLERANCE


def test_torchscript_exports_equal_pytorch(tmp_path):
    offline, streaming = small_offline(tmp_path, layer_norm=True), small_streaming(tmp_path, layer_norm=True)
    path = export_checkpoint(offline, tmp_path / "ts_offline", ExportConfig(format="torchscript"))
    feats = torch.randn(2, 150, 80, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([150, 77])
    with torch.no_grad():
        expected, _ = load_checkpoint(offline).build_model()(feats, lengths)
        got, got_lengths = torch.jit.load(str(path))(feats, lengths)
    assert got_lengths.tolist() == [38, 20]
    assert (got[0] - expected[0]).abs().max() <= TOLERANCE and (got[1, :20] - expected[1, :20]).abs().max() <= TOLERANCE

    path = export_checkpoint(streaming, tmp_path / "ts_streaming", ExportConfig(format="torchscript"))
    meta = json.loads((tmp_path / "ts_streaming" / "model.json").read_text())
    step, spec = torch.jit.load(str(path)), meta["streaming"]
    state = [torch.zeros(shape) for shape in spec["state"].values()]
    feats = torch.randn(64, 80, generator=torch.Generator().manual_seed(1))  # 8 chunks of 8 frames
    outputs = []
    with torch.no_grad():
        for start in range(0, 64, spec["chunk_frames"]):
            log_probs, *state = step(feats[None, start : start + 8], torch.tensor([2]), *state)
            outputs.append(log_probs[0])
        flush, *_ = step(torch.zeros(1, 8, 80), torch.tensor([0]), *state)  # the look-ahead's frames
    expected = torch_log_probs(streaming, feats)
    got = torch.cat([*outputs, flush[0]])[spec["lookahead"] :][: len(expected)]
    assert got.shape == expected.shape and (got - expected).abs().max() <= TOLERANCE


# Mean abs difference of int8 log-probs from fp32's on these small random models: measured 0.007
# (7-bit weights); another model's differ by 0.6-0.7, and 8-bit weights whose u8 x s8 products
# overflow 16 bits (onnxruntime on a CPU without VNNI) by 0.11.
INT8_TOLERANCE = 0.02


def test_int8_exports_are_smaller_and_close(tmp_path):
    import onnx

    feats = np.random.default_rng(0).standard_normal((200, 80)).astype(np.float32)
    for name, ckpt in (("offline", small_offline(tmp_path, layer_norm=True)),
                       ("streaming", small_streaming(tmp_path, layer_norm=True))):
        fp32 = export_checkpoint(ckpt, tmp_path / f"{name}_fp32")
        int8 = export_checkpoint(ckpt, tmp_path / f"{name}_int8", ExportConfig(quantize="int8"))
        assert int8.stat().st_size < 0.5 * fp32.stat().st_size
        # every integer weight within -64..64: a u8 x s8 pair sums within int16 on any CPU's kernel
        weights = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(int8)).graph.initializer
                   if t.data_type == onnx.TensorProto.INT8 and t.name.endswith("_quantized")]
        assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64
        a = runtime.ExportedModel(tmp_path / f"{name}_fp32").log_probs(feats)
        b = runtime.ExportedModel(tmp_path / f"{name}_int8").log_probs(feats)
        assert a.shape == b.shape
        # int8 is not exact, but far closer to fp32 than to another model
        assert 0 < np.abs(a - b).mean() < INT8_TOLERANCE
    export_checkpoint(random_checkpoint(tmp_path / "other.pt", "streaming_gru", seed=1, hidden_size=48, num_layers=2,
                                        conv_channels=8, layer_norm=True), tmp_path / "other")
    assert np.abs(runtime.ExportedModel(tmp_path / "other").log_probs(feats) - a).mean() > 10 * INT8_TOLERANCE


def test_export_directory_carries_the_language_model(tmp_path):
    ckpt = load_checkpoint(small_offline(tmp_path))
    ckpt.language_model = LanguageModel(arpa="\\data\\\nngram 1=1\n", lexicon="HI H I |\n", lm_weight=1.5,
                                        word_score=2.0)
    export_checkpoint(ckpt, tmp_path / "onnx")
    meta = json.loads((tmp_path / "onnx" / "model.json").read_text())
    assert meta["language_model"] == {"arpa": "lm.arpa", "lexicon": "lexicon.txt", "lm_weight": 1.5, "word_score": 2.0}
    assert (tmp_path / "onnx" / "lm.arpa").read_text() == "\\data\\\nngram 1=1\n"
    assert (tmp_path / "onnx" / "lexicon.txt").read_text() == "HI H I |\n"
    assert meta["tokens"] == Tokenizer().tokens and meta["frontend"]["dither"] == 1e-4


# --- the runtime against the torch path ---------------------------------------------------------


@requires_espeak
def test_runtime_transcribes_like_asr_transcribe_greedy(tiny_checkpoint, tmp_path):
    wav = tmp_path / "utt.wav"
    # as memorised: the tiny model, trained without silence around its sentences, misreads them with it
    sf.write(wav, tiny_checkpoint.audio[2].numpy(), 16000)
    assert cli("export", "--model", str(tiny_checkpoint.path), "--out", str(tmp_path / "onnx")).returncode == 0
    expected = cli("transcribe", "--model", str(tiny_checkpoint.path), "--greedy", str(wav))
    got = cli("transcribe", "--runtime", "onnx", "--model", str(tmp_path / "onnx"), str(wav))
    assert expected.returncode == got.returncode == 0, got.stderr
    assert got.stdout == expected.stdout
    text = expected.stdout.split("\t")[1].strip()
    assert jiwer.cer("THE CAT SAT ON THE MAT", text) < 0.1  # the memorised sentence, not a blank or garbage
    assert runtime.Transcriber(tmp_path / "onnx").transcribe_file(wav) == text


@requires_espeak
def test_runtime_streams_like_the_recognizer(tiny_streaming_checkpoint, tmp_path):
    """The same final events (text, utterance, times) as asr.streaming.Recognizer, greedy, with
    endpoints between utterances and chunks that are no multiple of the graph's. Partials may
    come later: the graph waits for a whole chunk of features where the PyTorch step emits each
    output frame as soon as its features are in (80 ms chunks of audio give 6, 14, 22, ...
    frames, never a multiple of the graph's 8), so they are checked to grow towards the final."""
    export_checkpoint(tiny_streaming_checkpoint.path, tmp_path / "onnx")
    audio, gap = tiny_streaming_checkpoint.audio, torch.zeros(24000)
    stream = torch.cat([gap[:4000], audio[0], gap, audio[2], gap, audio[1], gap[:6000]])
    sentences = [tiny_streaming_checkpoint.sentences[i].upper() for i in (0, 2, 1)]
    for chunk in (1280, 2000, 517):
        expected = _events(Recognizer(tiny_streaming_checkpoint.path, greedy=True), stream, chunk)
        got = _events(runtime.StreamingRecognizer(tmp_path / "onnx"), stream.numpy(), chunk)
        finals = [e for e in expected if e[0] == "final"]
        assert [e[2] for e in finals] == [0, 1, 2]
        assert jiwer.cer(sentences, [e[1] for e in finals]) < 0.05
        assert [e for e in got if e[0] == "final"] == finals
        for kind, text, utterance, *_ in got:
            assert kind == "final" or finals[utterance][1].startswith(text)


def _events(recognizer, audio, chunk: int) -> list[tuple]:
    events = []
    for start in range(0, len(audio), chunk):
        events += recognizer.accept_audio(audio[start : start + chunk])
    events += recognizer.finish()
    return [(e.kind, e.text, e.utterance, round(e.start, 4), round(e.end, 4)) for e in events]


def test_runtime_never_imports_torch(tmp_path):
    """A process in which importing torch fails runs the runtime end to end."""
    export_checkpoint(small_offline(tmp_path), tmp_path / "offline")
    export_checkpoint(small_streaming(tmp_path), tmp_path / "streaming", ExportConfig(quantize="int8"))
    wav = tmp_path / "noise.wav"
    sf.write(wav, 0.1 * np.random.default_rng(0).standard_normal(20000).astype(np.float32), 16000)
    script = textwrap.dedent(f"""
        import sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "torchaudio"):
                    raise ImportError("torch is blocked in this test")

        sys.meta_path.insert(0, NoTorch())
        from asr.runtime import StreamingRecognizer, Transcriber, load_audio, stream_audio

        text = Transcriber({str(tmp_path / "offline")!r}).transcribe_file({str(wav)!r})
        streamed = stream_audio(StreamingRecognizer({str(tmp_path / "streaming")!r}), load_audio({str(wav)!r}), 1280)
        assert not any(name.split(".")[0] in ("torch", "torchaudio") for name in sys.modules)
        print("ok", len(text) + len(streamed) >= 0)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "True"]
    # and the blocker does block: the same process cannot import torch
    blocked = subprocess.run([sys.executable, "-c", script.replace("from asr.runtime", "import torch\nfrom asr.runtime")],
                             capture_output=True, text=True, timeout=300)
    assert blocked.returncode != 0 and "torch is blocked" in blocked.stderr


# --- command line errors -------------------------------------------------------------------------


def test_export_and_runtime_errors_are_one_line(tmp_path):
    done = cli("export", "--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and done.stderr.startswith("asr export: error: ") and done.stderr.count("\n") == 1
    ckpt = small_offline(tmp_path)
    done = cli("export", "--model", ckpt, "--format", "torchscript", "--quantize", "int8", "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "int8 is for --format onnx" in done.stderr
    done = cli("transcribe", "--runtime", "onnx", "--model", str(tmp_path), str(tmp_path / "x.wav"))
    assert done.returncode == 2 and "not an export directory" in done.stderr
    export_checkpoint(ckpt, tmp_path / "offline")
    (tmp_path / "empty").mkdir()  # reported as with the torch runtime, not skipped
    done = cli("transcribe", "--runtime", "onnx", "--model", str(tmp_path / "offline"), str(tmp_path / "empty"))
    assert done.returncode == 1 and f"asr transcribe: error: {tmp_path / 'empty'}: no audio files" in done.stderr
    done = cli("stream", "--runtime", "onnx", "--model", str(tmp_path / "offline"), "--file", str(tmp_path / "x.wav"))
    assert done.returncode == 2 and "cannot stream" in done.stderr
    with pytest.raises(runtime.ExportDirError, match="16 kHz"):
        sf.write(tmp_path / "8k.wav", np.zeros(8000, np.float32), 8000)
        runtime.load_audio(tmp_path / "8k.wav")
    # an export an older asr wrote (its streaming graph had other outputs): export it again
    assert runtime.EXPORT_FORMAT == EXPORT_FORMAT
    meta = json.loads((tmp_path / "offline" / "model.json").read_text())
    (tmp_path / "offline" / "model.json").write_text(json.dumps({**meta, "format": "asr-export-1"}))
    done = cli("transcribe", "--runtime", "onnx", "--model", str(tmp_path / "offline"), str(tmp_path / "8k.wav"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "export the checkpoint again" in done.stderr
