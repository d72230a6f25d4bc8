import math

import pytest
import torch
import torchaudio

from asr.features import VTLP, GlobalCMVN, LogMelFrontend, SpecAugment, accumulate_stats, num_frames, warp_mel_bins
from conftest import espeak, requires_espeak

# Our frontend and Kaldi's differ in one documented way: Kaldi's triangular filters are linear
# in mel, torchaudio's are linear in Hz (same centres and edges). On speech and noise this
# changes log energies by at most ~0.02; anything larger is a real mismatch (window, frame
# positions, FFT size, log floor).
KALDI_TOLERANCE = 0.05


def kaldi_reference(audio: torch.Tensor) -> torch.Tensor:
    return torchaudio.compliance.kaldi.fbank(
        audio[None] * 1.0,
        num_mel_bins=80,
        frame_length=25.0,
        frame_shift=10.0,
        dither=0.0,
        preemphasis_coefficient=0.0,
        remove_dc_offset=False,
        window_type="hanning",
        round_to_power_of_two=True,
        low_freq=20.0,
        high_freq=0.0,
        use_energy=False,
        snip_edges=True,
        sample_frequency=16000,
    )


def _signals():
    gen = torch.Generator().manual_seed(0)
    yield "noise", 0.1 * torch.randn(16000 * 2, generator=gen)
    t = torch.arange(16000 * 2) / 16000
    yield "chirp", 0.5 * torch.sin(2 * torch.pi * (100 + 1900 * t) * t)


@pytest.mark.parametrize("name, audio", list(_signals()))
def test_matches_kaldi_fbank(name, audio):
    feats, lengths = LogMelFrontend().eval()(audio[None])
    reference = kaldi_reference(audio)
    assert feats.shape[1:] == reference.shape
    assert lengths.item() == reference.shape[0] == num_frames(len(audio))
    diff = (feats[0] - reference).abs()
    # skip bins whose energy sits at the log floor, where both are flat noise
    assert diff[reference > -10].max() < KALDI_TOLERANCE, f"{name}: max diff {diff.max():.4f}"


@requires_espeak
def test_matches_kaldi_fbank_on_speech():
    audio = espeak("The quick brown fox jumps over the lazy dog.")
    feats, _ = LogMelFrontend().eval()(audio[None])
    reference = kaldi_reference(audio)
    loud = reference > -5  # speech frames, not digital silence between words
    assert (feats[0] - reference).abs()[loud].max() < KALDI_TOLERANCE


def test_frame_count_and_batch_lengths():
    audio = torch.randn(2, 16000)
    lengths = torch.tensor([16000, 1000])
    feats, frame_lengths = LogMelFrontend()(audio, lengths)
    assert feats.shape == (2, 98, 80)
    assert frame_lengths.tolist() == [98, 4]
    assert num_frames(399) == 0 and num_frames(400) == 1 and num_frames(560) == 2


def test_frames_only_see_their_window():
    """Frame t depends on samples [160 t, 160 t + 400) only (needed for streaming)."""
    audio = torch.randn(16000)
    frontend = LogMelFrontend().eval()
    full, _ = frontend(audio[None])
    changed = audio.clone()
    changed[8000:] = 0
    part, _ = frontend(changed[None])
    last_untouched = (8000 - 400) // 160
    assert torch.equal(full[0, : last_untouched + 1], part[0, : last_untouched + 1])
    assert not torch.equal(full[0, last_untouched + 1], part[0, last_untouched + 1])


def test_dither_only_in_training():
    audio = torch.zeros(1, 4000)
    frontend = LogMelFrontend(dither=1e-3)
    assert torch.equal(frontend.eval()(audio)[0], frontend.eval()(audio)[0])
    assert not torch.equal(frontend.train()(audio)[0], frontend.train()(audio)[0])


def test_energy_floor_is_the_dithers_expected_energy():
    """Digital silence reads as the mean energy of dithered silence, bin by bin (what the model
    heard in training); louder signals are untouched."""
    frontend = LogMelFrontend(dither=1e-4)
    silence, _ = frontend.eval()(torch.zeros(1, 16000))
    assert torch.allclose(silence, silence[0, 0].expand_as(silence))
    torch.manual_seed(0)
    dithered = frontend.mel(1e-4 * torch.randn(1, 160000 + 240))  # (1, mels, frames)
    assert torch.allclose(silence[0, 0].exp(), dithered.mean(dim=(0, 2)).clamp_min(1e-6), rtol=0.1)
    assert silence[0, 0].mean() > math.log(1e-6) + 1  # above the fixed floor that dither 0 keeps
    speech_level = 0.05 * torch.randn(1, 16000)
    assert torch.equal(frontend.eval()(speech_level)[0], LogMelFrontend().eval()(speech_level)[0])


def test_global_cmvn_from_stats():
    feats = torch.randn(3, 50, 80) * 3 + 7
    lengths = torch.tensor([50, 20, 35])
    cmvn = GlobalCMVN(80)
    cmvn.set_stats(*accumulate_stats(feats, lengths))
    valid = torch.cat([feats[0, :50], feats[1, :20], feats[2, :35]])
    normalised = cmvn(valid[None])[0]
    assert normalised.mean(0).abs().max() < 1e-4
    assert (normalised.std(0, unbiased=False) - 1).abs().max() < 1e-3
    assert "mean" in cmvn.state_dict() and "std" in cmvn.state_dict()


def test_specaugment_masks_in_training_only():
    feats = torch.ones(4, 200, 80)
    lengths = torch.tensor([200, 150, 100, 50])
    aug = SpecAugment(freq_masks=2, freq_width=10, time_masks=2, time_width=20)
    assert torch.equal(aug.eval()(feats, lengths), feats)
    torch.manual_seed(0)
    masked = aug.train()(feats, lengths)
    assert (masked == 0).any() and (masked == 1).any()
    # time masks never exceed max_time_ratio of the utterance per mask
    for i, length in enumerate(lengths.tolist()):
        fully_masked_frames = (masked[i, :length] == 0).all(dim=1).sum().item()
        assert fully_masked_frames <= 2 * min(20, int(0.2 * length))


@pytest.mark.parametrize("hz, alpha", [(500, 1.1), (1200, 0.9), (3000, 1.15), (2000, 0.85)])
def test_vtlp_warp_matches_a_frequency_scaled_signal(hz, alpha):
    """Warping the features of a tone by alpha gives the features of the tone at alpha * hz:
    same peak bin, and much closer to them than the unwarped features are."""
    frontend = LogMelFrontend().eval()
    t = torch.arange(16000) / 16000

    def feats(f):
        return frontend(torch.sin(2 * torch.pi * f * t)[None])[0]

    original, reference = feats(hz), feats(hz * alpha)
    warped = warp_mel_bins(original, torch.tensor([alpha]))
    assert warped[0].mean(0).argmax() == reference[0].mean(0).argmax() != original[0].mean(0).argmax()
    assert (warped - reference).abs().mean() < 0.75 * (original - reference).abs().mean()


def test_vtlp_in_training_only():
    feats = torch.randn(3, 50, 80)
    vtlp = VTLP(max_warp=0.1)
    assert torch.equal(vtlp.eval()(feats), feats)
    assert torch.allclose(warp_mel_bins(feats, torch.ones(3)), feats, atol=1e-5)  # alpha 1: identity
    warped = vtlp.train()(feats)
    assert warped.shape == feats.shape and not torch.allclose(warped, feats)
    with pytest.raises(ValueError, match="max_warp"):
        VTLP(max_warp=0.7)
