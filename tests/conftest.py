"""Shared test helpers: speech synthesised on the fly with espeak-ng (never committed audio)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.audio import resample

HAS_ESPEAK = shutil.which("espeak-ng") is not None
requires_espeak = pytest.mark.skipif(not HAS_ESPEAK, reason="espeak-ng not installed (apt-get install espeak-ng)")
requires_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed (apt-get install flite)")


def espeak(text: str, voice: str = "en-us", speed: int = 160, pitch: int = 50) -> torch.Tensor:
    """Synthesise ``text`` -> mono float32 16 kHz ``(samples,)``."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return resample(torch.from_numpy(audio), rate)


def write_audio(path, audio: torch.Tensor | np.ndarray, rate: int = 16000, channels: int = 1) -> None:
    """Write 16 kHz mono ``audio`` at another ``rate`` and channel count (for loader tests)."""
    audio = torch.as_tensor(audio)
    audio = resample(audio, 16000, rate)
    data = audio.numpy()
    if channels > 1:
        data = np.stack([data * (1.0 - 0.1 * c) for c in range(channels)], axis=1)
    sf.write(str(path), data, rate, subtype="PCM_16")


def run_while_progressing(args: list[str], stall_s: float = 600.0, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(args, capture_output=True, text=True)`` for a long end-to-end command, with
    no limit on its total time: it fails only after ``stall_s`` seconds without a byte of new
    output (every recipe stage prints; training's progress bar, at least every 30 s), so a slow
    or busy machine that is still working is waited for, and a hung command still ends the test."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(args, stdout=out, stderr=err, text=True, **kwargs)
        printed, last_progress = 0, time.monotonic()
        while process.poll() is None:
            time.sleep(1.0)
            now_printed = os.fstat(out.fileno()).st_size + os.fstat(err.fileno()).st_size
            if now_printed > printed:
                printed, last_progress = now_printed, time.monotonic()
            elif time.monotonic() - last_progress > stall_s:
                process.kill()
                process.wait()
                out.seek(0), err.seek(0)
                raise subprocess.TimeoutExpired(args, stall_s, out.read(), err.read())
        out.seek(0), err.seek(0)
        return subprocess.CompletedProcess(args, process.returncode, out.read(), err.read())


OVERFIT_SENTENCES = [
    "open the door please",
    "speech recognition is fun",
    "the cat sat on the mat",
    "bring me seven green apples",
]
OVERFIT_VOICES = ["en-us", "en-gb", "en-us+f2", "en-gb+m3"]


@dataclass
class TinyCheckpoint:
    path: Path
    cer: float
    steps: int
    seconds: float
    sentences: list[str]
    audio: list[torch.Tensor]


def ctc_step(model, optimizer, feats, feat_lengths, targets, target_lengths) -> None:
    """One plain CTC training step (the fixtures below train without the Trainer)."""
    model.train()
    log_probs, out_lengths = model(feats, feat_lengths)
    loss = torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), targets, out_lengths, target_lengths, zero_infinity=True)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()


def memorised_cer(model, feats, feat_lengths, tokenizer) -> float:
    """Greedy CER of ``model`` on the four memorised sentences."""
    import jiwer

    from asr.decoding import greedy_ctc_decode

    model.eval()
    with torch.no_grad():
        hyps = greedy_ctc_decode(*model(feats, feat_lengths), tokenizer)
    return jiwer.cer([s.upper() for s in OVERFIT_SENTENCES], [h.text for h in hyps])


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> TinyCheckpoint:
    """Train a small BLSTM-CTC until it memorises four espeak-ng utterances; save it."""
    if not HAS_ESPEAK:
        pytest.skip("espeak-ng not installed (apt-get install espeak-ng)")
    from asr.checkpoint import save_checkpoint
    from asr.features import LogMelFrontend, accumulate_stats
    from asr.models import build_model
    from asr.text import Tokenizer

    torch.manual_seed(0)
    tokenizer = Tokenizer()
    audio = [espeak(s, voice=v) for s, v in zip(OVERFIT_SENTENCES, OVERFIT_VOICES)]
    lengths = torch.tensor([len(a) for a in audio])
    feats, feat_lengths = LogMelFrontend()(torch.nn.utils.rnn.pad_sequence(audio, batch_first=True), lengths)
    targets = [torch.tensor(tokenizer.encode(s)) for s in OVERFIT_SENTENCES]
    target_lengths = torch.tensor([len(t) for t in targets])
    targets = torch.cat(targets)

    model = build_model(
        "blstm_ctc",
        {"hidden_size": 128, "num_layers": 2, "dropout": 0.0, "specaugment": {"freq_masks": 0, "time_masks": 0}},
        verbose=False,
    )
    model.cmvn.set_stats(*accumulate_stats(feats, feat_lengths))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    start, cer = time.perf_counter(), 1.0
    for step in range(1, 401):
        ctc_step(model, optimizer, feats, feat_lengths, targets, target_lengths)
        if step % 25 == 0:
            cer = memorised_cer(model, feats, feat_lengths, tokenizer)
            if cer < 0.02:
                break
    seconds = time.perf_counter() - start
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_checkpoint(path, model, "blstm_ctc", tokenizer, metadata={"cer": cer})
    return TinyCheckpoint(path, cer, step, seconds, OVERFIT_SENTENCES, audio)


@pytest.fixture(scope="session")
def tiny_streaming_checkpoint(tmp_path_factory) -> TinyCheckpoint:
    """Train a small streaming GRU-CTC until it memorises the four espeak-ng utterances; save it.

    A live stream has silence around speech, so each step shows every utterance twice with
    random silence before (0-0.8 s) and after (0.3-1.2 s), plus two clips of silence alone.
    Trained without them, a unidirectional model takes a shortcut: it emits the first
    characters at the very start of the input, before any speech (it cannot know yet which
    utterance is coming, so it emits a blend of their openings), and it never learns that a
    long pause is all blank, which endpointing relies on.
    """
    if not HAS_ESPEAK:
        pytest.skip("espeak-ng not installed (apt-get install espeak-ng)")
    import math
    import random

    from asr.checkpoint import save_checkpoint
    from asr.features import LogMelFrontend, accumulate_stats
    from asr.models import build_model
    from asr.text import Tokenizer

    torch.manual_seed(0)
    rng = random.Random(0)
    # one thread: this model's ops are too small to gain from more, and on a busy 2-core
    # machine a second thread makes each step several times slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tokenizer = Tokenizer()
    frontend = LogMelFrontend()
    audio = [espeak(s, voice=v) for s, v in zip(OVERFIT_SENTENCES, OVERFIT_VOICES)]

    def batch(examples: list[tuple[float, int | None, float]]):
        """(silence before, utterance index or None for silence alone, silence after) each."""
        waves = [
            torch.cat([torch.zeros(int(lead * 16000)), audio[i] if i is not None else torch.zeros(0),
                       torch.zeros(int(trail * 16000))])
            for lead, i, trail in examples
        ]
        feats, lengths = frontend(torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), torch.tensor([len(w) for w in waves]))
        targets = [torch.tensor(tokenizer.encode(OVERFIT_SENTENCES[i]) if i is not None else [], dtype=torch.long)
                   for _, i, _ in examples]
        return feats, lengths, torch.cat(targets), torch.tensor([len(t) for t in targets])

    check_feats, check_lengths, _, _ = batch(list(zip((0.2, 0.7, 0.4, 0.9), range(4), (1.2, 0.8, 1.5, 1.0))))
    model = build_model(
        "streaming_gru",
        {"hidden_size": 128, "num_layers": 2, "conv_channels": 16, "lookahead": 2, "dropout": 0.0,
         "specaugment": {"freq_masks": 0, "time_masks": 0}},
        verbose=False,
    )
    model.cmvn.set_stats(*accumulate_stats(check_feats, check_lengths))
    max_steps = 600
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(  # warm-up, then cosine decay to a tenth
        optimizer, lambda s: min(1.0, (s + 1) / 30) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(s, max_steps) / max_steps)))
    )
    start, cer = time.perf_counter(), 1.0
    try:
        for step in range(1, max_steps + 1):
            examples = [(rng.uniform(0, 0.8), i, rng.uniform(0.3, 1.2)) for i in range(4) for _ in range(2)]
            examples += [(rng.uniform(0.5, 1.5), None, 0.0) for _ in range(2)]
            ctc_step(model, optimizer, *batch(examples))
            scheduler.step()
            if step % 25 == 0:
                cer = memorised_cer(model, check_feats, check_lengths, tokenizer)
                if cer < 0.02:
                    break
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    path = tmp_path_factory.mktemp("tiny_streaming") / "tiny_streaming.pt"
    save_checkpoint(path, model, "streaming_gru", tokenizer, metadata={"cer": cer})
    return TinyCheckpoint(path, cer, step, seconds, OVERFIT_SENTENCES, audio)
