"""Shared test helpers: speech synthesised on the fly with espeak-ng (never committed audio)."""

from __future__ import annotations

import io
import shutil
import subprocess
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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> TinyCheckpoint:
    """Train a small BLSTM-CTC until it memorises four espeak-ng utterances; save it."""
    if not HAS_ESPEAK:
        pytest.skip("espeak-ng not installed (apt-get install espeak-ng)")
    import jiwer

    from asr.checkpoint import save_checkpoint
    from asr.decoding import greedy_ctc_decode
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
        model.train()
        log_probs, out_lengths = model(feats, feat_lengths)
        loss = torch.nn.functional.ctc_loss(
            log_probs.transpose(0, 1), targets, out_lengths, target_lengths, zero_infinity=True
        )
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        if step % 25 == 0:
            model.eval()
            with torch.no_grad():
                hyps = greedy_ctc_decode(*model(feats, feat_lengths), tokenizer)
            cer = jiwer.cer([s.upper() for s in OVERFIT_SENTENCES], [h.text for h in hyps])
            if cer < 0.02:
                break
    seconds = time.perf_counter() - start
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_checkpoint(path, model, "blstm_ctc", tokenizer, metadata={"cer": cer})
    return TinyCheckpoint(path, cer, step, seconds, OVERFIT_SENTENCES, audio)
