"""Training data: an utterance Dataset, a length-bucketed batch sampler, and collation.

Randomness that happens per utterance (speed perturbation, gain, noise) is drawn from a
generator seeded by ``(seed, epoch, utterance index)``, not from worker processes' RNGs, so
the data stream is identical whatever the number of DataLoader workers and across a resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torchaudio.functional as AF
from torch.utils.data import Dataset, Sampler

from asr.audio import SAMPLE_RATE, AudioError, band_limit, change_speed, load_audio, lowpass
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
    lowpass_prob: float = 0.0  # probability of band-limiting to telephone band (8 kHz source)
    # silence of 0 to pad_s seconds before and after each utterance (zeros, which the trainer's
    # dither turns into faint noise): clips trimmed to the speech (FSDD) otherwise teach a model
    # that speech starts in the first analysis window, and it then drops first consonants
    pad_s: float = 0.0


def _item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def augment_waveform(audio: torch.Tensor, config: AugmentConfig, rng: np.random.Generator) -> torch.Tensor:
    """Apply :class:`AugmentConfig` to one mono 16 kHz waveform ``(samples,)``."""
    if config.pad_s > 0:
        before, after = (int(rng.uniform(0, config.pad_s) * SAMPLE_RATE) for _ in range(2))
        audio = torch.nn.functional.pad(audio, (before, after))
    if config.speed_perturb:
        audio = change_speed(audio, SPEEDS[rng.integers(len(SPEEDS))])
    if config.lowpass_prob > 0 and rng.random() < config.lowpass_prob:
        audio = band_limit(audio, 8000)
    if config.noise_prob > 0 and rng.random() < config.noise_prob:
        snr = rng.uniform(*config.noise_snr_db)
        noise = torch.from_numpy(rng.standard_normal(len(audio)).astype(np.float32))
        if rng.random() < 0.5:  # brown-ish noise: more like rooms and fans than white hiss
            noise = torch.cumsum(noise, 0)
            noise = noise - lowpass(noise, 20.0)
        audio = AF.add_noise(audio[None], noise[None], torch.tensor([snr], dtype=audio.dtype))[0]
    if config.gain_db > 0:
        audio = audio * 10 ** (rng.uniform(-config.gain_db, config.gain_db) / 20)
    return audio


class UtteranceDataset(Dataset):
    """Manifest entries -> ``(audio (samples,), token ids (tokens,), entry)``.

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
        if self.augment is not None:
            audio = augment_waveform(audio, self.augment, _item_rng(self.seed, epoch, index))
        return audio, torch.tensor(tokens, dtype=torch.long), entry


@dataclass
class Batch:
    audio: torch.Tensor  # (batch, samples)
    audio_lengths: torch.Tensor  # (batch,)
    targets: torch.Tensor  # (sum of target lengths,)
    target_lengths: torch.Tensor  # (batch,)
    ids: list[str]
    texts: list[str]

    def pin_memory(self) -> "Batch":
        self.audio = self.audio.pin_memory()
        return self


def collate(items: list) -> Batch | None:
    items = [item for item in items if item is not None]
    if not items:
        return None
    audio = [a for a, _, _ in items]
    tokens = [t for _, t, _ in items]
    return Batch(
        audio=torch.nn.utils.rnn.pad_sequence(audio, batch_first=True),
        audio_lengths=torch.tensor([len(a) for a in audio]),
        targets=torch.cat(tokens),
        target_lengths=torch.tensor([len(t) for t in tokens]),
        ids=[e.get("id", "") for _, _, e in items],
        texts=[e["text"] for _, _, e in items],
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
