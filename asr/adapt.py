"""Fit a model to one voice: a few minutes of one speaker's transcribed recordings fine-tune a
checkpoint into a personal one (``asr adapt``; ``asr record`` makes the recordings).

The recordings come from a folder (audio files with same-stem ``.txt`` transcripts) or a
manifest. Part of them is held out to pick the best point of the fine-tuning; the rest trains.
What is updated and how is :class:`AdaptConfig`; its defaults are the method docs/adapt.md
chose by measurement. The result is an ordinary checkpoint of the base model's kind, with the
base model's word LM and a provenance entry saying what it was adapted from and on what.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import jiwer
import torch
from torch import nn

from asr.audio import SAMPLE_RATE, audio_duration, audio_files, change_speed, load_audio
from asr.checkpoint import Checkpoint, load_checkpoint, write_checkpoint
from asr.data.loader import ctc_min_frames
from asr.data.manifest import read_manifest
from asr.decoding import greedy_ctc_decode
from asr.features import LogMelFrontend, num_frames
from asr.models import canonical_name
from asr.text import normalize_text

MIN_SECONDS = 60.0  # below a minute, the held-out part is too small to stop at a good point
MIN_RECORDINGS = 6
RECOMMENDED = "2 to 30 minutes are recommended"


# the offline BiLSTM moved furthest at 1e-3; the streaming GRU got worse on new sentences at
# 1e-3 and better at 3e-4 (docs/adapt.md)
LEARNING_RATES = {"rnn_ctc": 1e-3, "streaming_gru": 3e-4}  # by canonical model name


class AdaptError(ValueError):
    """Recordings that cannot adapt a model (one-line message naming the file or the shortfall)."""


@dataclass
class AdaptConfig:
    """How a model is fitted to one voice (defaults: the method chosen in docs/adapt.md).

    ``layers``: ``"all"`` updates every weight; ``"top"`` the last recurrent layer, its norm and
    the output layer; ``"lhuc"`` only the layer norms' per-unit gains and biases and the output
    bias, a per-speaker rescaling of hidden units (LHUC, Swietojanski et al. 2016) that needs no
    new parameters, so the checkpoint keeps the base model's shape.
    """

    layers: str = "all"  # all | top | lhuc
    lr: float | None = None  # None: LEARNING_RATES for the model's kind
    max_updates: int = 200
    batch_seconds: float = 30.0  # audio per update
    eval_every: int = 10  # updates between held-out scores
    patience: int = 3  # held-out scores without a better one before stopping
    kl_weight: float = 0.0  # KL(base || adapted) per frame: keep the output close to the base model's
    l2sp_weight: float = 0.0  # squared distance to the base weights (L2-SP, Li et al. 2018)
    augment: bool = False  # speed 0.9/1.1 copies, SpecAugment, VTLP and dropout as in training
    held_out: float = 0.15  # share of the recordings kept out of training to choose the best point
    seed: int = 0

    def __post_init__(self) -> None:
        if self.layers not in ("all", "top", "lhuc"):
            raise ValueError(f"layers must be all, top or lhuc, got {self.layers!r}")


@dataclass
class Recording:
    id: str
    audio: str
    text: str  # normalised
    duration: float = 0.0


@dataclass
class AdaptResult:
    checkpoint: Checkpoint
    steps: int  # updates made until the best point
    held_out: dict = field(default_factory=dict)  # {"before": {...}, "after": {...}} greedy CER/WER
    seconds: float = 0.0


def find_recordings(source: str | os.PathLike, alphabet: str) -> list[Recording]:
    """Audio files with same-stem ``.txt`` transcripts under a folder, or a manifest's entries
    (JSONL with ``audio`` and ``text``). Audio without a transcript is left out (a folder may hold
    other files); a transcript the model cannot write is an :class:`AdaptError`."""
    source = Path(source)
    if source.is_dir():
        recordings = []
        for path in audio_files(source):
            transcript = path.with_suffix(".txt")
            if transcript.is_file():
                recordings.append(Recording(str(path.relative_to(source).with_suffix("")), str(path),
                                            transcript.read_text(encoding="utf-8"), 0.0))
        if not recordings:
            raise AdaptError(f"{source}: no audio files with a same-stem .txt transcript")
        where = {r.id: str(Path(r.audio).with_suffix(".txt")) for r in recordings}
    elif source.is_file():
        try:
            entries = read_manifest(source, required=("audio", "text"))
        except (OSError, ValueError) as err:
            raise AdaptError(f"{source}: not a folder of recordings nor a readable manifest ({err})") from None
        recordings = [Recording(str(e.get("id", i)), e["audio"], e["text"], 0.0) for i, e in enumerate(entries)]
        where = {r.id: f"{source}: entry {r.id}" for r in recordings}
    else:
        raise AdaptError(f"{source}: no such folder or manifest")
    for r in recordings:
        text, _ = normalize_text(r.text)
        unknown = sorted({c for c in text if c not in alphabet})
        if not text:
            raise AdaptError(f"{where[r.id]}: empty transcript")
        if unknown:
            raise AdaptError(f"{where[r.id]}: characters the model cannot write: {' '.join(map(repr, unknown))} "
                             f"(it writes {alphabet.strip()!r}; spell numbers and symbols out as words)")
        r.text = text
    return recordings


def split_held_out(recordings: list[Recording], share: float, seed: int = 0) -> tuple[list[Recording], list[Recording]]:
    """``(train, held_out)``: a seeded random ``share`` of the recordings (at least 2) held out."""
    order = list(recordings)
    random.Random(seed).shuffle(order)
    n = max(2, round(share * len(order)))
    return order[n:], order[:n]


class _Features:
    """Log-mel features of each recording (and of its speed-perturbed copies), computed once:
    a few minutes of speech fit in memory many times over."""

    def __init__(self, ckpt: Checkpoint, recordings: list[Recording], speeds: tuple[float, ...]) -> None:
        training = ckpt.training_config
        self.frontend = LogMelFrontend(ckpt.model_config.get("n_mels", 80), training.get("dither", 0.0)).eval()
        # the model hears half of its training silence padding on each side, as Transcriber gives it
        self.edge = int(training.get("data", {}).get("augment", {}).get("pad_s", 0.0) / 2 * SAMPLE_RATE)
        self.items: list[tuple[torch.Tensor, torch.Tensor]] = []  # (frames, n_mels), token ids
        self.tokenizer = ckpt.tokenizer
        stride = ckpt.model_config.get("time_stride", 4)
        for r in recordings:
            audio = load_audio(r.audio)  # AudioError names the file
            r.duration = len(audio) / SAMPLE_RATE
            tokens = torch.tensor(self.tokenizer.encode(r.text))
            if -(-num_frames(len(audio)) // stride) < ctc_min_frames(r.text):
                raise AdaptError(f"{r.audio}: {r.duration:.1f} s is too short for its transcript "
                                 f"({len(r.text)} characters); is it paired with the right .txt?")
            for speed in speeds:
                self.items.append((self._feats(audio if speed == 1.0 else change_speed(audio, speed)), tokens))

    @torch.no_grad()
    def _feats(self, audio: torch.Tensor) -> torch.Tensor:
        audio = nn.functional.pad(audio, (self.edge, self.edge))
        return self.frontend(audio)[0][0]

    def batches(self, batch_seconds: float, rng: random.Random, shuffle: bool = True):
        """``(indices, feats (batch, frames, n_mels), lengths, targets, target_lengths)`` of about
        ``batch_seconds`` each, padded; utterances of similar length together, batches shuffled."""
        order = sorted(range(len(self.items)), key=lambda i: len(self.items[i][0]) + rng.random() * 50)
        limit = batch_seconds * 100  # feature frames
        groups, group, frames = [], [], 0
        for i in order:
            if group and frames + len(self.items[i][0]) > limit:
                groups.append(group)
                group, frames = [], 0
            group.append(i)
            frames += len(self.items[i][0])
        groups += [group] if group else []
        if shuffle:
            rng.shuffle(groups)
        for group in groups:
            feats = [self.items[i][0] for i in group]
            tokens = [self.items[i][1] for i in group]
            yield (group, nn.utils.rnn.pad_sequence(feats, batch_first=True), torch.tensor([len(f) for f in feats]),
                   torch.cat(tokens), torch.tensor([len(t) for t in tokens]))


def trainable_parameters(model: nn.Module, layers: str) -> list[nn.Parameter]:
    """The parameters ``layers`` ("all", "top", "lhuc") updates; the others are frozen."""
    if layers == "all":
        return list(model.parameters())
    if layers == "lhuc":
        chosen = [p for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()]
        if not chosen:
            raise ValueError("layers=lhuc scales the layer norms' units; this model has no layer norm")
        return chosen + [model.output.bias]
    top = model.config.num_layers - 1
    names = [n for n, _ in model.named_parameters()
             if n.startswith(("output.", "lookahead.", f"encoder.norms.{top}."))
             or (n.startswith("encoder.rnn.") and (n.endswith(f"_l{top}") or n.endswith(f"_l{top}_reverse")))]
    params = dict(model.named_parameters())
    return [params[n] for n in names]


def _train_mode(model: nn.Module, augment: bool) -> None:
    """Dropout, SpecAugment and VTLP on with ``augment``; batch norm always frozen, since its
    statistics over one speaker's few minutes would replace the training data's."""
    model.train(augment)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


@torch.no_grad()
def held_out_scores(model: nn.Module, features: _Features, refs: list[str]) -> dict:
    """Greedy CER and WER, and the mean CTC loss per utterance, of ``model`` on held-out features
    (in the order of ``refs``)."""
    model.eval()
    hyps, loss = [""] * len(refs), 0.0
    for indices, feats, lengths, targets, target_lengths in features.batches(120.0, random.Random(0), shuffle=False):
        log_probs, out_lengths = model(feats, lengths)
        loss += nn.functional.ctc_loss(log_probs.transpose(0, 1), targets, out_lengths, target_lengths,
                                       zero_infinity=True, reduction="sum").item()
        for i, hyp in zip(indices, greedy_ctc_decode(log_probs, out_lengths, features.tokenizer)):
            hyps[i] = hyp.text
    return {"cer": round(jiwer.cer(refs, hyps), 4), "wer": round(jiwer.wer(refs, hyps), 4),
            "loss": round(loss / len(refs), 3)}


def _rank(scores: dict) -> tuple[float, float, float]:
    """Lower is better: CER first; WER, then the CTC loss, break ties (an untrained or badly
    mismatched model outputs nothing at all, and only its loss still shows progress)."""
    return scores["cer"], scores["wer"], scores["loss"]


def adapt(
    base: str | os.PathLike,
    source: str | os.PathLike,
    config: AdaptConfig | None = None,
    progress: Callable[..., object] | None = None,
) -> AdaptResult:
    """Fine-tune the checkpoint ``base`` on the recordings in ``source`` (see module docstring).

    ``progress(total=..., desc=...)`` makes a tqdm-like bar (default: tqdm on stderr).

    Raises:
        AdaptError: too little speech, or transcripts the model cannot write.
        asr.audio.AudioError: a recording that cannot be read.
    """
    from tqdm import tqdm

    config = config or AdaptConfig()
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    ckpt = load_checkpoint(base)
    recordings = find_recordings(source, ckpt.tokenizer.alphabet)
    train, held = split_held_out(recordings, config.held_out, config.seed)
    seconds = sum(audio_duration(r.audio) for r in recordings)  # AudioError names an unreadable file
    if seconds < MIN_SECONDS or len(recordings) < MIN_RECORDINGS:
        raise AdaptError(f"{source}: {seconds / 60:.1f} minutes of speech in {len(recordings)} recordings; "
                         f"adapting needs at least {MIN_SECONDS / 60:.0f} minute in {MIN_RECORDINGS} recordings "
                         f"({RECOMMENDED})")
    held_features = _Features(ckpt, held, (1.0,))
    train_features = _Features(ckpt, train, (0.9, 1.0, 1.1) if config.augment else (1.0,))

    model = ckpt.build_model()
    base_model = ckpt.build_model() if config.kl_weight > 0 else None
    for p in model.parameters():
        p.requires_grad_(False)
    params = trainable_parameters(model, config.layers)
    for p in params:
        p.requires_grad_(True)
    anchors = [p.detach().clone() for p in params] if config.l2sp_weight > 0 else None
    if config.lr is None:
        config = dataclasses.replace(config, lr=LEARNING_RATES[canonical_name(ckpt.model_name)])
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    refs = [r.text for r in held]

    start = time.perf_counter()
    before = held_out_scores(model, held_features, refs)
    best = _rank(before)
    best_state, best_step, after, waited, step = None, 0, before, 0, 0
    bar = (progress or (lambda **kw: tqdm(file=sys.stderr, unit="update", **kw)))(total=config.max_updates,
                                                                                   desc="adapting")
    bar.set_postfix_str(f"held-out CER {before['cer']:.3f}")
    while step < config.max_updates and waited < config.patience:
        for _, feats, lengths, targets, target_lengths in train_features.batches(config.batch_seconds, rng):
            _train_mode(model, config.augment)
            log_probs, out_lengths = model(feats, lengths)
            loss = nn.functional.ctc_loss(log_probs.transpose(0, 1), targets, out_lengths, target_lengths,
                                          blank=ckpt.tokenizer.blank_id, zero_infinity=True)
            if base_model is not None:
                with torch.no_grad():
                    base_log_probs, _ = base_model(feats, lengths)
                mask = (torch.arange(log_probs.shape[1])[None, :] < out_lengths[:, None]).unsqueeze(-1)
                kl = (base_log_probs.exp() * (base_log_probs - log_probs) * mask).sum() / mask.sum()
                loss = loss + config.kl_weight * kl
            if anchors is not None:
                loss = loss + config.l2sp_weight * sum((p - a).square().sum() for p, a in zip(params, anchors))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 5.0)
            optimizer.step()
            step += 1
            bar.update()
            if step % config.eval_every and step < config.max_updates:
                continue
            scores = held_out_scores(model, held_features, refs)
            if _rank(scores) < best:
                best, best_step, after, waited = _rank(scores), step, scores, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                waited += 1
            bar.set_postfix_str(f"held-out CER {scores['cer']:.3f} (best {best[0]:.3f})")
            if step >= config.max_updates or waited >= config.patience:
                break
    bar.close()
    state = best_state if best_state is not None else ckpt.state_dict
    elapsed = time.perf_counter() - start
    provenance = {
        "adapted_from": str(base),
        "base_provenance": ckpt.metadata.get("provenance", {}),
        "recordings": str(source),
        "minutes": round(seconds / 60, 2),
        "train_recordings": len(train),
        "held_out_recordings": len(held),
        "method": dataclasses.asdict(config),
        "updates": best_step,
        "held_out_greedy": {"before": before, "after": after},
        "seconds": round(elapsed, 1),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    metadata = {**ckpt.metadata, "provenance": provenance}
    adapted = dataclasses.replace(ckpt, state_dict={k: v.float() if v.is_floating_point() else v
                                                    for k, v in state.items()},
                                  metadata=metadata, trainer_state=None)
    return AdaptResult(adapted, best_step, {"before": before, "after": after}, elapsed)


def adapt_to_file(base, source, out: str | os.PathLike, config: AdaptConfig | None = None) -> AdaptResult:
    """:func:`adapt`, then write the checkpoint to ``out`` (atomically)."""
    result = adapt(base, source, config)
    write_checkpoint(out, result.checkpoint)
    return result
