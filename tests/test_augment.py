"""Waveform augmentation in training: what each option does to one utterance."""

import numpy as np
import torch

from asr.data.loader import AugmentConfig, augment_waveform


def tone(seconds: float = 0.5) -> torch.Tensor:
    return 0.3 * torch.sin(torch.arange(int(seconds * 16000)) * 0.05)


def test_pad_surrounds_the_utterance_with_silence():
    audio = tone()
    config = AugmentConfig(gain_db=0.0, pad_s=0.2)
    lengths = set()
    for seed in range(20):
        out = augment_waveform(audio, config, np.random.default_rng(seed))
        assert len(audio) <= len(out) <= len(audio) + 2 * 0.2 * 16000
        start = int(torch.nonzero(out).min())  # the tone's first sample is 0: its second is not
        assert torch.equal(out[start - 1 : start - 1 + len(audio)], audio)
        assert out[: start - 1].abs().sum() == 0 and out[start - 1 + len(audio) :].abs().sum() == 0
        lengths.add(len(out))
    assert len(lengths) > 10  # random amounts, not a fixed margin
    again = augment_waveform(audio, config, np.random.default_rng(3))
    assert torch.equal(again, augment_waveform(audio, config, np.random.default_rng(3)))


def test_gain_stays_within_its_range():
    audio = tone()
    for seed in range(20):
        out = augment_waveform(audio, AugmentConfig(gain_db=6.0), np.random.default_rng(seed))
        ratio_db = 20 * torch.log10(out.abs().max() / audio.abs().max())
        assert -6.0 - 1e-4 <= ratio_db <= 6.0 + 1e-4
