"""Training data: an utterance Dataset, a length-bucketed batch sampler, and collation.

Randomness that happens per utterance (speed perturbation, gain, noise) is drawn from a
generator seeded by ``(seed, epoch, utterance index)``, not from worker processes' RNGs, so
the data stream is identical whatever the number of DataLoader workers and across a resume.
The dataset draws every choice (:func:`draw_augmentation`); :func:`augment_batch` applies
them, in the loader workers or on the training device, with the same result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

from asr.audio import (
    SAMPLE_RATE,
    AudioError,
    add_noise,
    load_audio,
    lowpass,
    resample,
    resampled_length,
    reverberate,
    room_impulse_response,
    speed_rate,
)
from asr.features import num_frames
from asr.text import Tokenizer, UnknownCharactersError

SPEEDS = (0.9, 1.0, 1.1)


@dataclass
class AugmentConfig:
    """Waveform augmentation applied in training (each independently, per utterance)."""

    speed_perturb: bool = False  # 0.9 / 1.0 / 1.1 speed (tempo and pitch), Ko et al. 2015
    gain_db: float = 6.0  # random gain in [-gain_db, +gain_db] dB (fine-tuning configs use 20: see recipes)
    noise_prob: float = 0.0  # probability of adding white/pink-ish noise
    noise_snr_db: tuple[float, float] = (5.0, 30.0)
    # probability of a room: a statistical impulse response (asr.audio.room_impulse_response)
    # with a reverberation time and a direct-to-reverberant ratio drawn from these ranges
    reverb_prob: float = 0.0
    reverb_rt60_s: tuple[float, float] = (0.2, 0.8)
    reverb_drr_db: tuple[float, float] = (0.0, 12.0)
    lowpass_prob: float = 0.0  # probability of band-limiting to telephone band (8 kHz source)
    # silence of 0 to pad_s seconds before and after each utterance (zeros, which the trainer's
    # dither turns into faint noise): clips trimmed to the speech (FSDD) otherwise teach a model
    # that speech starts in the first analysis window, and it then drops first consonants
    pad_s: float = 0.0


def _item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


@dataclass
class AugmentPlan:
    """One utterance's augmentation after its padding, as :func:`augment_batch` applies it
    (speed, room, band limit, noise, gain, in that order)."""

    speed: float = 1.0
    rir: torch.Tensor | None = None  # (taps,): the room's impulse response
    band_limit: bool = False
    # (samples after the speed change,): drawn with the other choices rather than on the
    # training device, so that a run sees the same noise whatever device it trains on
    noise: torch.Tensor | None = None
    snr_db: float = 0.0
    gain: float = 1.0


def draw_augmentation(
    audio: torch.Tensor, config: AugmentConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, AugmentPlan]:
    """Pad one waveform ``(samples,)`` with silence and draw the rest of its augmentation.

    Returns the padded waveform ``(samples',)`` and its :class:`AugmentPlan`. The draws are
    made from ``rng`` in the order the augmentations apply, so the plan is a function of the
    generator's seed alone (see the module docstring).
    """
    if config.pad_s > 0:
        before, after = (int(rng.uniform(0, config.pad_s) * SAMPLE_RATE) for _ in range(2))
        audio = torch.nn.functional.pad(audio, (before, after))
    plan = AugmentPlan()
    if config.speed_perturb:
        plan.speed = SPEEDS[rng.integers(len(SPEEDS))]
    if config.reverb_prob > 0 and rng.random() < config.reverb_prob:
        rt60_s, drr_db = rng.uniform(*config.reverb_rt60_s), rng.uniform(*config.reverb_drr_db)
        plan.rir = room_impulse_response(rt60_s, drr_db, rng)
    if config.lowpass_prob > 0 and rng.random() < config.lowpass_prob:
        plan.band_limit = True
    if config.noise_prob > 0 and rng.random() < config.noise_prob:
        plan.snr_db = rng.uniform(*config.noise_snr_db)
        samples = resampled_length(len(audio), speed_rate(plan.speed))
        noise = torch.from_numpy(rng.standard_normal(samples).astype(np.float32))
        if rng.random() < 0.5:  # brown-ish noise: more like rooms and fans than white hiss
            noise = torch.cumsum(noise, 0)
            noise = noise - lowpass(noise, 20.0)
        plan.noise = noise
    if config.gain_db > 0:
        plan.gain = 10 ** (rng.uniform(-config.gain_db, config.gain_db) / 20)
    return audio, plan


def _resample_rows(
    audio: torch.Tensor, lengths: list[int], orig_rate: int, new_rate: int
) -> tuple[torch.Tensor, list[int]]:
    """Resample a zero-padded batch ``(rows, samples)`` whose rows hold ``lengths`` samples.

    Returns ``(rows, samples')``, zero-padded again, and the new lengths. Each row's samples
    are those of resampling the row alone: the sinc kernel reads zeros past a row's end, as it
    does past a lone signal's (torchaudio pads with zeros), and what it spreads into the
    padding is cleared.
    """
    if orig_rate == new_rate:
        return audio[:, : max(lengths)], lengths
    new_lengths = [resampled_length(n, orig_rate, new_rate) for n in lengths]
    out = resample(audio[:, : max(lengths)], orig_rate, new_rate)[:, : max(new_lengths)]
    return _clear_padding(out, new_lengths), new_lengths


def _clear_padding(audio: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Zero what lies past each row's length in ``audio (rows, samples)``, in place."""
    if min(lengths) == audio.shape[1]:  # no padding (a batch of one, say)
        return audio
    positions = torch.arange(audio.shape[1], device=audio.device)
    limits = torch.tensor(lengths, device=audio.device)
    return audio.masked_fill_(positions >= limits[:, None], 0.0)


def _change_speeds(audio: torch.Tensor, lengths: list[int], speeds: list[float]) -> tuple[torch.Tensor, list[int]]:
    """Each row of a zero-padded batch ``(batch, samples)`` at its speed: ``(batch, samples')``
    and the new lengths; the rows that share a speed are resampled in one call."""
    groups = {speed: [i for i, s in enumerate(speeds) if s == speed] for speed in sorted(set(speeds))}
    if len(groups) == 1:  # one speed for all (a batch of one, say): no regrouping
        return _resample_rows(audio, lengths, speed_rate(speeds[0]), SAMPLE_RATE)
    out_lengths = [resampled_length(n, speed_rate(s)) for n, s in zip(lengths, speeds)]
    out = audio.new_zeros(len(speeds), max(out_lengths))
    for speed, rows in groups.items():
        group, _ = _resample_rows(audio[rows], [lengths[i] for i in rows], speed_rate(speed), SAMPLE_RATE)
        out[rows, : group.shape[1]] = group
    return out, out_lengths


def augment_batch(
    audio: torch.Tensor, lengths: torch.Tensor, plans: list[AugmentPlan]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply each utterance's :class:`AugmentPlan` to a zero-padded batch.

    ``audio (batch, samples)`` on any device, ``lengths (batch,)`` on the CPU; returns the
    augmented batch ``(batch, samples')``, zero-padded, on the same device (a new tensor), and
    its lengths on the CPU. The rows that share a speed are resampled in one call, three calls
    a batch on a GPU where the loader's CPU cores made one per utterance. Each row comes out as
    it would alone (:func:`_resample_rows`): with speed and gain, the samples that augmenting
    each utterance by itself gave, to float rounding (the convolution may add a row's terms in
    another order for another batch shape, thread count or CPU).
    """
    lengths = [int(n) for n in lengths]
    out, out_lengths = _change_speeds(audio, lengths, [p.speed for p in plans])
    rooms = [i for i, p in enumerate(plans) if p.rir is not None]
    limited = [i for i, p in enumerate(plans) if p.band_limit]
    noisy = [i for i, p in enumerate(plans) if p.noise is not None]
    if (rooms or limited or noisy) and out.data_ptr() == audio.data_ptr():
        out = out.clone()  # written in place below
    for i in rooms:  # one by one: each row its own room, cut at its own end
        n = out_lengths[i]
        out[i, :n] = reverberate(out[i, :n], plans[i].rir)
    if limited:  # as if recorded at 8 kHz: down and up again, each step cleared past the row's end
        rows_lengths = [out_lengths[i] for i in limited]
        narrow, narrow_lengths = _resample_rows(out[limited], rows_lengths, SAMPLE_RATE, 8000)
        wide, _ = _resample_rows(narrow, narrow_lengths, 8000, SAMPLE_RATE)
        out[limited, : max(rows_lengths)] = _clear_padding(wide[:, : max(rows_lengths)], rows_lengths)
    for i in noisy:  # one by one: the SNR is each utterance's own energy ratio
        n = out_lengths[i]
        out[i, :n] = add_noise(out[i, :n], plans[i].noise.to(out.device), plans[i].snr_db)
    gains = torch.tensor([p.gain for p in plans], dtype=out.dtype).to(out.device)
    return out * gains[:, None], torch.tensor(out_lengths)


class UtteranceDataset(Dataset):
    """Manifest entries -> ``(audio (samples,), token ids (tokens,), entry, plan)``.

    With ``augment``, ``audio`` is padded as it says and ``plan`` is the rest of the
    utterance's :class:`AugmentPlan`, applied to whole batches by :func:`augment_batch`;
    without, ``plan`` is None.

    Indexed by ``(index, epoch)`` pairs from :class:`BucketBatchSampler`; see the
    module docstring for why. An unreadable file returns ``None`` and is skipped by
    :func:`collate` with a warning instead of stopping an epoch.
    """

    def __init__(
        self,
        entries: list[dict],
        tokenizer: Tokenizer,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.entries = entries
        self.tokenizer = tokenizer
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        entry = self.entries[index]
        try:
            audio = load_audio(entry["audio"])
            tokens = self.tokenizer.encode(entry["text"])
        except (AudioError, UnknownCharactersError) as err:
            print(f"warning: skipping {entry.get('id', index)}: {err}", flush=True)
            return None
        plan = None
        if self.augment is not None:
            audio, plan = draw_augmentation(audio, self.augment, _item_rng(self.seed, epoch, index))
        return audio, torch.tensor(tokens, dtype=torch.long), entry, plan


@dataclass
class Batch:
    audio: torch.Tensor  # (batch, samples), zero-padded
    audio_lengths: torch.Tensor  # (batch,)
    targets: torch.Tensor  # (sum of target lengths,)
    target_lengths: torch.Tensor  # (batch,)
    ids: list[str]
    texts: list[str]
    # augmentation still to apply (see augmented()); None once applied, or without augmentation
    plans: list[AugmentPlan] | None = None

    def pin_memory(self) -> "Batch":
        self.audio = self.audio.pin_memory()
        return self

    def to(self, device: torch.device) -> "Batch":
        """The audio on ``device`` (the rest stays on the CPU)."""
        return replace(self, audio=self.audio.to(device, non_blocking=True))

    def augmented(self) -> "Batch":
        """The batch with its augmentation plans applied, on the device its audio is on."""
        if self.plans is None:
            return self
        audio, lengths = augment_batch(self.audio, self.audio_lengths, self.plans)
        return replace(self, audio=audio, audio_lengths=lengths, plans=None)

    def augmented_seconds(self) -> float:
        """Seconds of audio in the batch once augmented (without applying anything)."""
        plans = self.plans or [AugmentPlan()] * len(self.ids)
        samples = sum(resampled_length(int(n), speed_rate(p.speed)) for n, p in zip(self.audio_lengths, plans))
        return samples / SAMPLE_RATE


def _augment_one(audio: torch.Tensor, plan: AugmentPlan) -> torch.Tensor:
    """:func:`augment_batch` on one waveform ``(samples,)`` -> ``(samples',)``."""
    out, _ = augment_batch(audio[None], torch.tensor([len(audio)]), [plan])
    return out[0]


def _pad(rows: list[torch.Tensor]) -> torch.Tensor:
    """Waveforms ``(samples,)`` zero-padded into ``(rows, longest)``. In a loader worker the
    tensor is made in shared memory, as torch's default_collate makes its batches: the batch
    has to reach the training process through shared memory, and sending a tensor made
    elsewhere copies it there first."""
    shape = (len(rows), max(len(row) for row in rows))
    if get_worker_info() is None:
        out = torch.empty(shape, dtype=rows[0].dtype)
    else:
        storage = torch.UntypedStorage._new_shared(math.prod(shape) * rows[0].element_size())
        out = torch.empty(0, dtype=rows[0].dtype).set_(storage).view(shape)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
        out[i, len(row) :] = 0
    return out


def collate(items: list, augment: bool = True) -> Batch | None:
    """:class:`UtteranceDataset` items -> a zero-padded :class:`Batch`; unreadable items
    (None) are left out. ``augment``: apply the items' plans here, in the loader worker; else
    the batch carries them for the training device to apply (``Batch.augmented``)."""
    items = [item for item in items if item is not None]
    if not items:
        return None
    audio = [a for a, _, _, _ in items]
    tokens = [t for _, t, _, _ in items]
    plans = [p for _, _, _, p in items] if items[0][3] is not None else None
    if augment and plans is not None:
        # one utterance at a time on the loader's CPU: oneDNN's convolution over a whole padded
        # batch runs at less than half the speed (tools/bench_loader.py)
        audio = [_augment_one(a, p) for a, p in zip(audio, plans)]
        plans = None
    return Batch(
        audio=_pad(audio),
        audio_lengths=torch.tensor([len(a) for a in audio]),
        targets=torch.cat(tokens),
        target_lengths=torch.tensor([len(t) for t in tokens]),
        ids=[e.get("id", "") for _, _, e, _ in items],
        texts=[e["text"] for _, _, e, _ in items],
        plans=plans,
    )


def ctc_min_frames(text: str) -> int:
    """Fewest output frames CTC needs for ``text``: one per character plus a blank between repeats."""
    return len(text) + sum(a == b for a, b in zip(text, text[1:]))


def filter_for_ctc(
    entries: list[dict],
    output_lengths: Callable[[torch.Tensor], torch.Tensor],
    max_duration: float | None = None,
    slowest_speed: float = 1.0,
) -> tuple[list[dict], dict[str, int]]:
    """Drop utterances a CTC model cannot learn from (too short for their transcript, or too long).

    ``output_lengths`` maps feature frames to model output frames. With speed perturbation the
    fastest version is the shortest, so the check uses the highest speed.
    """
    fastest = max(SPEEDS) if slowest_speed < 1.0 else 1.0
    frames = torch.tensor([num_frames(int(e["duration"] * SAMPLE_RATE / fastest)) for e in entries])
    out = output_lengths(frames).tolist() if entries else []
    kept, dropped = [], {"transcript longer than output frames": 0, "longer than max_duration": 0}
    for entry, n in zip(entries, out):
        if max_duration is not None and entry["duration"] > max_duration:
            dropped["longer than max_duration"] += 1
        elif ctc_min_frames(entry["text"]) > n:
            dropped["transcript longer than output frames"] += 1
        else:
            kept.append(entry)
    return kept, dropped


class BucketBatchSampler(Sampler):
    """Batches of similar-length utterances whose padded size is capped.

    Utterances are sorted by duration (with a little seeded jitter each epoch so batches are
    not identical every epoch) and packed greedily so that ``batch size x longest frames``
    never exceeds ``max_frames``: a 35 s utterance gets a small batch of its own instead of
    an out-of-memory error. The order of batches is shuffled per epoch from ``seed``, except
    in the first epoch with ``sortagrad`` (DeepSpeech 2): shortest batches first, which gets
    CTC out of its initial all-blank plateau sooner.

    Distributed: the epoch's batch list is cut to a multiple of ``world_size`` and rank ``r``
    takes every ``world_size``-th batch, so every rank runs the same number of steps.

    Resumable: ``set_epoch(e, start=k)`` skips the first ``k`` batches (per rank) of epoch ``e``.
    Yields lists of ``(index, epoch)`` keys for :class:`UtteranceDataset`.
    """

    def __init__(
        self,
        durations: list[float],
        max_frames: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        max_speed_factor: float = 1.0,
        sortagrad: bool = False,
    ) -> None:
        self.frames = np.array([num_frames(int(d * SAMPLE_RATE / max_speed_factor)) for d in durations])
        if len(self.frames) and self.frames.max() > max_frames:
            raise ValueError(
                f"max_frames={max_frames} is smaller than the longest utterance ({self.frames.max()} frames); "
                "raise max_frames or set a lower max_duration"
            )
        self.max_frames = max_frames
        self.shuffle, self.seed, self.sortagrad = shuffle, seed, sortagrad
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        keys = self.frames * (rng.uniform(0.95, 1.05, len(self.frames)) if self.shuffle else 1.0)
        batches, current, longest = [], [], 0
        for index in np.argsort(keys, kind="stable"):
            longest_if_added = max(longest, self.frames[index])
            if current and longest_if_added * (len(current) + 1) > self.max_frames:
                batches.append(current)
                current, longest_if_added = [], self.frames[index]
            current.append(int(index))
            longest = longest_if_added
        if current:
            batches.append(current)
        if self.shuffle and not (self.sortagrad and self.epoch == 0):
            order = rng.permutation(len(batches))
            batches = [batches[i] for i in order]
        usable = len(batches) // self.world_size * self.world_size if self.world_size > 1 else len(batches)
        return batches[:usable][self.rank :: self.world_size]

    def __len__(self) -> int:
        """Batches per epoch for this rank (independent of ``start``)."""
        return len(self._batches())

    def __iter__(self):
        batches = self._batches()
        for b in range(self.start, len(batches)):
            yield [(i, self.epoch) for i in batches[b]]
