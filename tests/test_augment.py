"""Waveform augmentation in training: what each option does, and that the batched path
(:func:`augment_batch`, in the loader or on the training device) gives what augmenting each
utterance alone gave."""

import numpy as np
import pytest
import torch
import torchaudio.functional as AF

from asr.audio import SAMPLE_RATE, lowpass, room_impulse_response
from asr.data.loader import (
    SPEEDS,
    AugmentConfig,
    BucketBatchSampler,
    UtteranceDataset,
    augment_batch,
    collate,
    draw_augmentation,
)


def tone(seconds: float = 0.5) -> torch.Tensor:
    return 0.3 * torch.sin(torch.arange(int(seconds * 16000)) * 0.05)


def augment_one(audio: torch.Tensor, config: AugmentConfig, rng: np.random.Generator) -> torch.Tensor:
    """One utterance through the library's path: drawn in the dataset, applied as a batch of one."""
    audio, plan = draw_augmentation(audio, config, rng)
    out, lengths = augment_batch(audio[None], torch.tensor([len(audio)]), [plan])
    return out[0, : int(lengths[0])]


def reference_augment(audio: torch.Tensor, config: AugmentConfig, rng: np.random.Generator) -> torch.Tensor:
    """The per-utterance augmentation that the batched path replaced, kept as the reference:
    padding, speed, room, band limit, noise, gain, each with a torchaudio call on this utterance alone."""
    if config.pad_s > 0:
        before, after = (int(rng.uniform(0, config.pad_s) * SAMPLE_RATE) for _ in range(2))
        audio = torch.nn.functional.pad(audio, (before, after))
    if config.speed_perturb:
        speed = SPEEDS[rng.integers(len(SPEEDS))]
        if speed != 1.0:
            audio = AF.resample(audio, int(SAMPLE_RATE * speed), SAMPLE_RATE)
    if config.reverb_prob > 0 and rng.random() < config.reverb_prob:
        rt60_s, drr_db = rng.uniform(*config.reverb_rt60_s), rng.uniform(*config.reverb_drr_db)
        wet = AF.convolve(audio, room_impulse_response(rt60_s, drr_db, rng))[: len(audio)]
        audio = wet * audio.norm() / wet.norm()
    if config.lowpass_prob > 0 and rng.random() < config.lowpass_prob:
        audio = AF.resample(AF.resample(audio, SAMPLE_RATE, 8000), 8000, SAMPLE_RATE)[: len(audio)]
    if config.noise_prob > 0 and rng.random() < config.noise_prob:
        snr = rng.uniform(*config.noise_snr_db)
        noise = torch.from_numpy(rng.standard_normal(len(audio)).astype(np.float32))
        if rng.random() < 0.5:
            noise = torch.cumsum(noise, 0)
            noise = noise - lowpass(noise, 20.0)
        audio = AF.add_noise(audio[None], noise[None], torch.tensor([snr], dtype=audio.dtype))[0]
    if config.gain_db > 0:
        audio = audio * 10 ** (rng.uniform(-config.gain_db, config.gain_db) / 20)
    return audio


def utterances(count: int = 12, seed: int = 0) -> list[torch.Tensor]:
    """Speech-like test signals of different lengths (0.3 to 3 s): noise under a syllable-rate envelope."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(rng.uniform(0.3, 3.0) * SAMPLE_RATE)
        envelope = np.abs(np.sin(np.arange(n) * 2 * np.pi * rng.uniform(2, 6) / SAMPLE_RATE))
        out.append(torch.from_numpy((0.2 * envelope * rng.standard_normal(n)).astype(np.float32)))
    return out


def batched(audios: list[torch.Tensor], config: AugmentConfig, seeds: list[int], device: str = "cpu"):
    """The batch as the loader builds it (padded, plans drawn per utterance), augmented on ``device``."""
    drawn = [draw_augmentation(a, config, np.random.default_rng(s)) for a, s in zip(audios, seeds)]
    padded = torch.nn.utils.rnn.pad_sequence([a for a, _ in drawn], batch_first=True)
    lengths = torch.tensor([len(a) for a, _ in drawn])
    return augment_batch(padded.to(device), lengths, [p for _, p in drawn])


# Batched and alone, a row's resampling sums the same kernel taps, but the convolution may add
# them in another order (its blocking depends on the batch's shape, the thread count and the
# CPU's kernels: AVX-512, AVX2 or none): each output sample can move by a few rounding errors
# of the sum, at most about sqrt(taps) ulps of the largest term. Measured: under one
# float32 epsilon of the row's peak on AVX-512, AVX2 and scalar kernels with 1 or 2 threads
# (docs/reliability.md); the bound is 8 epsilons of the row's peak, about 1e-6 of it, while a
# sample shifted by one or a gain off by 0.01 dB moves samples by 1e-3 of the peak or more
# (test_the_rounding_bound_catches_a_shifted_sample_and_a_wrong_gain).
ROUNDING = 8 * torch.finfo(torch.float32).eps


def assert_equal_to_rounding(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Each row of ``got (..., samples)`` equals ``expected``'s to ROUNDING of that row's peak."""
    assert got.shape == expected.shape
    bound = ROUNDING * expected.abs().amax(dim=-1, keepdim=True)
    excess = ((got - expected).abs() - bound).max()
    assert excess <= 0, f"differs by {float(excess):.3g} more than rounding"


SPEED_AND_GAIN = AugmentConfig(speed_perturb=True, gain_db=6.0)
EVERYTHING = AugmentConfig(speed_perturb=True, gain_db=6.0, noise_prob=0.5, lowpass_prob=0.5, pad_s=0.3, reverb_prob=0.5)


@pytest.mark.parametrize("config", [SPEED_AND_GAIN, AugmentConfig(speed_perturb=True, gain_db=6.0, pad_s=0.3)],
                         ids=["speed+gain", "speed+gain+pad"])
def test_batched_speed_and_gain_equal_each_utterance_alone(config):
    audios, seeds = utterances(), list(range(100, 112))
    out, lengths = batched(audios, config, seeds)
    speeds = {draw_augmentation(a, config, np.random.default_rng(s))[1].speed for a, s in zip(audios, seeds)}
    assert speeds == set(SPEEDS)  # every speed group is exercised, with rows of different lengths in each
    for row, (audio, seed) in enumerate(zip(audios, seeds)):
        expected = reference_augment(audio, config, np.random.default_rng(seed))
        assert int(lengths[row]) == len(expected)
        assert_equal_to_rounding(out[row, : len(expected)], expected)
        assert not out[row, len(expected) :].any()  # the padding stays silent for the frontend


def test_the_rounding_bound_catches_a_shifted_sample_and_a_wrong_gain():
    audios, seeds = utterances(), list(range(100, 112))
    out, lengths = batched(audios, SPEED_AND_GAIN, seeds)
    for row in range(len(audios)):
        got = out[row, : int(lengths[row])]
        expected = reference_augment(audios[row], SPEED_AND_GAIN, np.random.default_rng(seeds[row]))
        assert_equal_to_rounding(got, expected)
        with pytest.raises(AssertionError, match="more than rounding"):
            assert_equal_to_rounding(torch.roll(got, 1), expected)
        with pytest.raises(AssertionError, match="more than rounding"):
            assert_equal_to_rounding(got * 10 ** (0.01 / 20), expected)


def test_batched_room_band_limit_and_noise_equal_each_utterance_alone():
    """Rooms, band limiting and noise too: the same random choices and lengths; the samples to float
    rounding (one row of 12 differs, by 1 ulp: a convolution or energy sum over a row of the
    batch can add in another order than over a tensor of its own)."""
    audios, seeds = utterances(), list(range(200, 212))
    out, lengths = batched(audios, EVERYTHING, seeds)
    plans = [draw_augmentation(a, EVERYTHING, np.random.default_rng(s))[1] for a, s in zip(audios, seeds)]
    assert any(p.band_limit for p in plans) and any(p.noise is not None for p in plans)
    assert any(p.rir is not None for p in plans) and any(p.rir is None for p in plans)
    for row, (audio, seed) in enumerate(zip(audios, seeds)):
        expected = reference_augment(audio, EVERYTHING, np.random.default_rng(seed))
        assert int(lengths[row]) == len(expected)
        torch.testing.assert_close(out[row, : len(expected)], expected, rtol=1e-5, atol=1e-6)
        assert not out[row, len(expected) :].any()


@pytest.mark.gpu
def test_batched_augmentation_on_cuda_matches_the_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    audios, seeds = utterances(), list(range(300, 312))
    cpu, cpu_lengths = batched(audios, EVERYTHING, seeds)
    gpu, gpu_lengths = batched(audios, EVERYTHING, seeds, device="cuda")
    assert torch.equal(cpu_lengths, gpu_lengths)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)


class _Tokens:
    """A tokenizer stand-in for entries whose text does not matter here."""

    def encode(self, text: str) -> list[int]:
        return [1, 2]


def test_the_loader_gives_the_same_batches_for_any_worker_count_and_either_place(tmp_path):
    """Whatever the number of workers, and whether the loader or the training device applies
    the plans, the augmented batches are the same: every choice is drawn per utterance. The
    samples to rounding: a worker runs torch on one thread, the main process on all cores."""
    import soundfile as sf

    entries = []
    for i, audio in enumerate(utterances(10, seed=1)):
        path = tmp_path / f"{i}.flac"
        sf.write(path, audio.numpy(), SAMPLE_RATE)
        entries.append({"id": str(i), "audio": str(path), "text": "a b", "duration": len(audio) / SAMPLE_RATE})
    dataset = UtteranceDataset(entries, _Tokens(), EVERYTHING, seed=5)
    sampler = BucketBatchSampler([e["duration"] for e in entries], 2000, seed=5, max_speed_factor=0.9)
    sampler.set_epoch(1)

    def batches(workers: int, augment: bool):
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                             collate_fn=lambda items: collate(items, augment=augment))
        return [b.augmented() for b in loader]

    reference = batches(0, True)
    assert len(reference) > 1
    for workers, augment in ((2, True), (2, False), (0, False)):
        for a, b in zip(reference, batches(workers, augment), strict=True):
            assert a.ids == b.ids and torch.equal(a.audio_lengths, b.audio_lengths)
            assert_equal_to_rounding(b.audio, a.audio)


def test_augmented_seconds_counts_the_speed_changed_audio():
    audios, seeds = utterances(6), list(range(6))
    drawn = [draw_augmentation(a, SPEED_AND_GAIN, np.random.default_rng(s)) for a, s in zip(audios, seeds)]
    batch = collate([(a, torch.tensor([1]), {"id": "x", "text": "a"}, p) for a, p in drawn], augment=False)
    assert batch.plans is not None
    expected = batch.augmented_seconds()
    assert expected == pytest.approx(int(batch.augmented().audio_lengths.sum()) / SAMPLE_RATE)


def test_pad_surrounds_the_utterance_with_silence():
    audio = tone()
    config = AugmentConfig(gain_db=0.0, pad_s=0.2)
    lengths = set()
    for seed in range(20):
        out = augment_one(audio, config, np.random.default_rng(seed))
        assert len(audio) <= len(out) <= len(audio) + 2 * 0.2 * 16000
        start = int(torch.nonzero(out).min())  # the tone's first sample is 0: its second is not
        assert torch.equal(out[start - 1 : start - 1 + len(audio)], audio)
        assert out[: start - 1].abs().sum() == 0 and out[start - 1 + len(audio) :].abs().sum() == 0
        lengths.add(len(out))
    assert len(lengths) > 10  # random amounts, not a fixed margin
    again = augment_one(audio, config, np.random.default_rng(3))
    assert torch.equal(again, augment_one(audio, config, np.random.default_rng(3)))


def test_gain_stays_within_its_range():
    audio = tone()
    for seed in range(20):
        out = augment_one(audio, AugmentConfig(gain_db=6.0), np.random.default_rng(seed))
        ratio_db = 20 * torch.log10(out.abs().max() / audio.abs().max())
        assert -6.0 - 1e-4 <= ratio_db <= 6.0 + 1e-4


@pytest.mark.parametrize("rt60_s, drr_db", [(0.3, 0.0), (0.8, 10.0)])
def test_a_room_decays_by_60_db_over_its_reverberation_time(rt60_s, drr_db):
    """The impulse response has the decay and the direct-to-reverberant ratio asked for:
    Schroeder's backward integral of its tail falls 20 dB in a third of rt60 (a noisy tail's
    decay is measured over the first 20 dB, as T20 is), and the direct sound stands drr_db above
    the tail's energy."""
    rir = room_impulse_response(rt60_s, drr_db, np.random.default_rng(0)).double()
    assert len(rir) == int(rt60_s * SAMPLE_RATE) and rir[0] == 1.0
    tail = rir[1:] ** 2
    assert 10 * torch.log10(1.0 / tail.sum()) == pytest.approx(drr_db, abs=1e-6)
    schroeder = torch.flip(torch.cumsum(torch.flip(tail, [0]), 0), [0])
    decay_db = 10 * torch.log10(schroeder / schroeder[0])
    t20 = int(torch.nonzero(decay_db < -20)[0]) / SAMPLE_RATE
    assert t20 == pytest.approx(rt60_s / 3, rel=0.1)


def test_a_room_smears_speech_and_keeps_its_length_and_energy():
    """A burst then silence: the room's tail rings on into the silence, the length and the
    energy stay, and the room is a function of the seed."""
    audio = torch.cat([tone(0.3), torch.zeros(8000)])
    config = AugmentConfig(gain_db=0.0, reverb_prob=1.0, reverb_drr_db=(0.0, 3.0))
    out = augment_one(audio, config, np.random.default_rng(0))
    assert len(out) == len(audio)
    assert out.norm() == pytest.approx(float(audio.norm()), rel=1e-5)
    burst_end = len(tone(0.3))
    ringing = out[burst_end : burst_end + 1600].pow(2).mean() / out[:burst_end].pow(2).mean()
    assert 10 * torch.log10(ringing) > -30  # the first 100 ms of silence, within 30 dB of the burst
    assert torch.equal(out, augment_one(audio, config, np.random.default_rng(0)))
    assert not torch.equal(out, augment_one(audio, config, np.random.default_rng(1)))
