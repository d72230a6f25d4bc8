"""Synthesise a multi-speaker English speech corpus with espeak-ng, in LibriSpeech layout.

The corpus feeds CPU training recipes, so it trades naturalness (espeak-ng is a
formant synthesiser) for speed, and makes up for it with variety: every speaker
is an espeak-ng accent combined with a voice variant plus its own pitch, speed,
intonation range, word gap and amplitude; every utterance jitters speed and
pitch, gets random leading/trailing silence, additive coloured noise at a
random SNR, sometimes synthetic reverberation, and a random level.

``--natural-speakers N`` makes N of the train speakers natural voices instead:
models of recorded people (RHVoice, festival, SVOX pico, hibari, CMU flite by default;
piper on request; ``tools/tts.py``), taken in turn from ``--voices``, each speaker with its own
pitch, speed and vocal-tract length (a resampling warp, 0.97-1.15 for men's voices and
0.88-1.03 for women's, which keeps them adults' voices). The voices of
``--held-out-voices`` never speak in train: test takes the first, dev the second
(and so on alternately), each with as large a share of its speakers as train's
natural share. A voice that is not installed is left out with one line on stderr.
``--flite-speakers N`` (CMU flite voices only, dev and test espeak-ng) makes the
corpus of recipes/synthetic/RESULTS.md's "Wider voices" tables.

Layout (identical to LibriSpeech, so LibriSpeech loaders read it unchanged)::

    OUT/SPEAKERS.txt
    OUT/corpus.json                      arguments, voices per split, text licence
    OUT/{train,dev,test}/<SPEAKER>/<CHAPTER>/<SPEAKER>-<CHAPTER>-<UTT:04d>.flac
    OUT/{train,dev,test}/<SPEAKER>/<CHAPTER>/<SPEAKER>-<CHAPTER>.trans.txt

Audio is 16 kHz mono 16-bit FLAC; transcripts are upper case A-Z, apostrophe
and single spaces. dev and test are held out from train twice over: their
sentences never occur in train (nor in each other), and their voices are built
from espeak-ng variant families and one accent per split that train never uses, and
from natural voices that train never uses.

Text: by default the non-offensive fortune(6) collection of Debian's
``fortunes``/``fortunes-min`` packages (fortune-mod 1.99.1), cut into sentences.
Debian ships it under the BSD licence of fortune-mod, "Copyright (c) 1991 The
Regents of the University of California" (see /usr/share/doc/fortunes/copyright);
the fortunes themselves are quotations from many authors and carry no separate
licence. ``--text FILE`` (one sentence per line) replaces it.

The output depends only on the arguments (and the installed voices and their
versions, which corpus.json records), not on ``--jobs``: two runs with the same
seed give byte-identical files.

Examples::

    # default corpus: 14.3 h train, 0.2 h dev, 0.3 h test (9 min on 2 busy cores)
    python tools/synthesize_corpus.py --out data/synth
    # natural voices: 150 of the 200 train speakers, 6 of dev's 8 and 6 of test's 8
    python tools/synthesize_corpus.py --out data/synth --natural-speakers 150
    # quick corpus for smoke tests: 25 min of audio in about 15 s
    python tools/synthesize_corpus.py --out data/synth_quick --train-sentences 300 \\
        --dev-sentences 40 --test-sentences 40 --train-speakers 20 \\
        --dev-speakers 4 --test-speakers 4
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import math
import multiprocessing as mp
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

import asr.audio

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ is no package: tts.py lies beside
import tts  # noqa: E402
from tts import SAMPLE_RATE, Accent, Variant, Voices  # noqa: E402

SPLITS = ("train", "dev", "test")

FORTUNE_DIR = Path("/usr/share/games/fortunes")
# Offensive fortunes live in FORTUNE_DIR/off/, which load_sentences never enters.
FORTUNE_SKIP = {"ascii-art": "pictures, not prose", "translate-me": "Latin and French"}
TEXT_LICENCE = (
    "fortune(6) collection, Debian packages fortunes/fortunes-min 1:1.99.1 "
    "(fortune-mod 1.99.1), non-offensive files only. Distributed under the BSD "
    "licence of fortune-mod: Copyright (c) 1991 The Regents of the University of "
    "California (see /usr/share/doc/fortunes/copyright). The fortunes are quotations "
    "from many authors; the copyright file gives them no separate licence."
)

PRIMARY_ACCENTS = ("en-us", "en-gb")

UTTS_PER_CHAPTER = 100
FIRST_SPEAKER_ID = 100
FIRST_CHAPTER_ID = 10000

# Per-speaker ranges. espeak-ng's defaults are pitch 50 (0-99), speed 175 wpm,
# amplitude 100. The final level is set after synthesis, so amplitude only decides
# how often loud variants (iven, Jacky) clip in espeak-ng's int16 output: above 100, often.
PITCH = (20, 80)
SPEED = (140, 205)
PITCH_RANGE_PERCENT = (50, 160)
AMPLITUDE = (50, 100)
WORD_GAP_PROB = 0.3
WORD_GAP = (1, 4)  # units of 10 ms
# Per-utterance jitter around the speaker's values.
SPEED_JITTER = 0.07
PITCH_JITTER = 5
# Per-utterance acoustic conditions.
SILENCE_S = (0.05, 0.6)
NOISE_FLOOR_SNR_DB = (50.0, 70.0)  # even "clean" speech is never digital silence
NOISE_MIN_HZ = 50.0  # keeps brown noise's power in the audible band
RT60_S = (0.15, 0.7)
DRR_DB = (0.0, 15.0)
LEVEL_DBFS = (-32.0, -18.0)  # speech RMS
PEAK = 0.98

FLITE_F0_HZ = {"M": (85, 150), "F": (150, 240)}
FLITE_SPEED_PERCENT = (85, 115)
FLITE_F0_JITTER_HZ = 8
WARP = (0.88, 1.15)
# Natural voices: percent of the voice's own F0 (where its engine moves F0) and rate.
NATURAL_PITCH_PERCENT = (90, 112)
NATURAL_SPEED_PERCENT = (85, 115)
NATURAL_PITCH_JITTER = 0.03
# Vocal-tract warps that keep a natural voice an adult's: lengthening a man's tract or shortening a
# woman's soon sounds far less human (PocketSphinx WER, tools/bench_voices.py --warp, 2026-12-07:
# RHVoice bdl 8% -> 22% at 0.88, festival ked 34% -> 56% at 0.92; SVOX pico 20% -> 40% at 1.06 and
# 89% at 1.15), while the other way costs little (bdl 9% at 1.15, RHVoice clb 9% at 0.88).
NATURAL_WARP = {"M": (0.97, 1.15), "F": (0.88, 1.03)}
DEFAULT_VOICES = "rhvoice,festival,pico,hibari,flite"  # piper:joe's licence is in doubt (tools/tts.py)
# Two of the most human voices, one male (Scottish) and one female: unseen speakers for test and dev.
DEFAULT_HELD_OUT_VOICES = "rhvoice:alan,festival:slt"


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    """Everything the corpus content depends on (``jobs`` only changes speed).

    ``train_sentences=0`` uses every sentence not taken by dev and test. Each train
    sentence is spoken by ``utts_per_sentence`` speakers, dev and test sentences once.
    """

    train_sentences: int = 13000
    dev_sentences: int = 200
    test_sentences: int = 300
    train_speakers: int = 200
    dev_speakers: int = 8
    test_speakers: int = 8
    utts_per_sentence: int = 1
    noise_prob: float = 0.5
    snr_min_db: float = 10.0
    snr_max_db: float = 40.0
    reverb_prob: float = 0.3
    seed: int = 0
    text: str | None = None
    flite_speakers: int = 0  # of train_speakers, CMU flite voices instead of espeak-ng ones
    natural_speakers: int = 0  # of train_speakers, natural voices (tools/tts.py) instead of espeak-ng ones
    voices: str = DEFAULT_VOICES  # engines and voice ids the natural speakers use
    held_out_voices: str = DEFAULT_HELD_OUT_VOICES  # natural voices for test and dev alone


# Fields added after corpora were written: an old corpus.json without them had these values.
ADDED_FIELDS = {"flite_speakers": 0, "natural_speakers": 0, "voices": DEFAULT_VOICES,
                "held_out_voices": DEFAULT_HELD_OUT_VOICES}


@dataclasses.dataclass(frozen=True)
class Sentence:
    text: str  # punctuated, fed to espeak-ng for natural prosody
    transcript: str  # upper case A-Z, apostrophe, single spaces


@dataclasses.dataclass(frozen=True)
class Speaker:
    id: int
    split: str
    accent: str  # espeak-ng accent, or the engine of a flite or natural voice
    variant: str  # espeak-ng variant, the flite voice, or a natural voice's id ("rhvoice:bdl")
    sex: str
    pitch: int  # espeak-ng's 0-99, flite's mean F0 in Hz, or percent of a natural voice's F0
    speed: int  # words per minute (espeak-ng), or percent of the flite or natural voice's own rate
    pitch_range: int  # percent of the variant's intonation range (espeak-ng)
    word_gap: int  # espeak-ng
    amplitude: int  # espeak-ng
    description: str
    warp: float = 1.0  # vocal-tract length factor (> 1 shorter: formants and F0 higher)

    @property
    def natural(self) -> bool:
        return self.variant in tts.NATURAL_VOICES

    @property
    def engine(self) -> str:
        return self.accent if self.natural or self.accent == "flite" else "espeak-ng"

    @property
    def voice(self) -> str:
        return self.variant if self.engine != "espeak-ng" else f"{self.accent}+{self.variant}"


@dataclasses.dataclass(frozen=True)
class Utterance:
    split: str
    speaker: Speaker
    chapter: int
    index: int
    sentence: Sentence

    @property
    def id(self) -> str:
        return f"{self.speaker.id}-{self.chapter}-{self.index:04d}"

    @property
    def path(self) -> str:
        return f"{self.split}/{self.speaker.id}/{self.chapter}/{self.id}.flac"


# ---------------------------------------------------------------------------- text

_ALLOWED = re.compile(r"[A-Za-z .,!?;:'\"()-]+")
_SENTENCE_BREAK = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')]))\s+(?=[\"'(]*[A-Z])")
_ATTRIBUTION = re.compile(r"^\s*--", re.M)
# espeak-ng expands these ("Mr." -> "mister") and a transcript would have to guess how.
_ABBREVIATION = re.compile(
    r"\b(?:[A-HJ-Z]|Mr|Mrs|Ms|Dr|St|Jr|Sr|Prof|Gen|Col|Capt|Lt|Sgt|Rev|Gov|Sen|Rep|Pres"
    r"|Mt|Ft|Ave|Inc|Ltd|Co|Corp|Bros|Esq|Hon|Messrs|Jan|Feb|Apr|Aug|Sept?|Oct|Nov|Dec"
    r"|vs|etc|al|cf|viz|approx|ca)\."
)


def normalize_transcript(text: str) -> str:
    """Upper-case ``text`` and keep A-Z, word-internal apostrophes and single spaces."""
    text = re.sub(r"[^A-Z']+", " ", text.upper().replace("-", " "))
    text = re.sub(r"(?<![A-Z])'|'(?![A-Z])", " ", text)
    return " ".join(text.split())


def clean_sentence(text: str, min_words: int = 3, max_words: int = 20) -> Sentence | None:
    """Return ``text`` as a :class:`Sentence`, or None if espeak-ng would not read it
    the way its transcript says (digits, symbols, abbreviations, all-caps acronyms,
    URLs, non-ASCII, code) or it is too short or long."""
    text = " ".join(text.split())
    if not _ALLOWED.fullmatch(text) or not re.match(r"[\"'(]*[A-Z]", text):
        return None
    if re.search(r"[A-Za-z]\.[A-Za-z]", text) or _ABBREVIATION.search(text):
        return None
    if re.search(r"[;:]-?[()]", text):  # emoticons
        return None
    for word in re.findall(r"[A-Za-z]+(?:'[A-Za-z]+)*", text):
        letters = word.replace("'", "")
        if re.search(r"[A-Z]{2}", letters):  # acronyms and shouting: NASA, IBMer, UGLY
            return None
        if len(word) == 1 and word not in "aAIO":  # variables and list labels: x, Q:
            return None
        if re.search(r"[a-z][A-Z]", word) and not re.match(r"Ma?c[A-Z]", word):
            return None  # camelCase identifiers
    transcript = normalize_transcript(text)
    if not min_words <= len(transcript.split()) <= max_words:
        return None
    return Sentence(text, transcript)


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences at ., ! or ? followed by an upper-case start.

    Breaks after an abbreviation ("Mr. Smith") are undone: the whole sentence
    comes back, for :func:`clean_sentence` to reject, rather than two fragments.
    """
    pieces = _SENTENCE_BREAK.split(" ".join(text.split()))
    for i in range(len(pieces) - 1, 0, -1):
        if re.search(_ABBREVIATION.pattern + r"[\"')]*$", pieces[i - 1]):
            pieces[i - 1] = pieces[i - 1] + " " + pieces.pop(i)
    return pieces


def _fortune_files(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and not p.is_symlink() and not p.suffix and p.name not in FORTUNE_SKIP
    )


def load_sentences(path: str | Path | None = None) -> list[Sentence]:
    """Load clean, transcript-unique sentences in a deterministic order.

    ``path=None`` reads the fortune files in :data:`FORTUNE_DIR` (quotes split into
    sentences, attributions dropped). Otherwise ``path`` is a UTF-8 text file with
    one sentence per line. Both pass through :func:`clean_sentence`.
    """
    if path is None:
        candidates = []
        for file in _fortune_files(FORTUNE_DIR):
            for fortune in file.read_text("utf-8", errors="replace").split("\n%\n"):
                match = _ATTRIBUTION.search(fortune)  # "\t\t-- Mark Twain" ends a quote
                candidates += split_sentences(fortune[: match.start()] if match else fortune)
    else:
        candidates = Path(path).read_text("utf-8").splitlines()
    sentences, seen = [], set()
    for candidate in candidates:
        sentence = clean_sentence(candidate)
        if sentence is not None and sentence.transcript not in seen:
            seen.add(sentence.transcript)
            sentences.append(sentence)
    return sentences


def _shuffled(items: list, rng: np.random.Generator) -> list:
    return [items[i] for i in rng.permutation(len(items))]


def _held_out_variants(variants: list[Variant], need: int, rng: np.random.Generator) -> list[Variant]:
    """Take whole variant families, alternately female and male, until ``need`` variants.

    The result interleaves the families so that consecutive speakers differ most.
    """
    families: dict[str, list[Variant]] = {}
    for variant in variants:
        families.setdefault(variant.family, []).append(variant)
    order = _shuffled([families[name] for name in sorted(families)], rng)
    taken: list[list[Variant]] = []
    sexes = itertools.cycle("FM")
    while sum(map(len, taken)) < need and order:
        sex = next(sexes)
        family = next((f for f in order if f[0].sex == sex), order[0])
        order.remove(family)
        taken.append(family)
    depth = max(map(len, taken), default=0)
    return [family[i] for i in range(depth) for family in taken if i < len(family)]


def _speaker(id: int, split: str, accent: Accent, variant: Variant, rng: np.random.Generator) -> Speaker:
    pitch = int(rng.integers(PITCH[0], PITCH[1] + 1))
    speed = int(rng.integers(SPEED[0], SPEED[1] + 1))
    pitch_range = int(rng.integers(PITCH_RANGE_PERCENT[0], PITCH_RANGE_PERCENT[1] + 1))
    amplitude = int(rng.integers(AMPLITUDE[0], AMPLITUDE[1] + 1))
    gap = int(rng.integers(WORD_GAP[0], WORD_GAP[1] + 1)) if rng.random() < WORD_GAP_PROB else 0
    return Speaker(
        id=id,
        split=split,
        accent=accent.code,
        variant=variant.file,
        sex=variant.sex,
        pitch=pitch,
        speed=speed,
        pitch_range=pitch_range,
        word_gap=gap,
        amplitude=amplitude,
        description=f"{accent.description}+{variant.name} pitch={pitch} speed={speed}",
    )


def _flite_speaker(id: int, voice: str, rng: np.random.Generator) -> Speaker:
    sex = tts.FLITE_VOICES[voice]
    f0 = int(rng.integers(FLITE_F0_HZ[sex][0], FLITE_F0_HZ[sex][1] + 1))
    speed = int(rng.integers(FLITE_SPEED_PERCENT[0], FLITE_SPEED_PERCENT[1] + 1))
    warp = round(float(rng.uniform(*WARP)), 3)
    return Speaker(
        id=id, split="train", accent="flite", variant=voice, sex=sex, pitch=f0, speed=speed,
        pitch_range=100, word_gap=0, amplitude=100, warp=warp,
        description=f"flite+{voice} f0={f0}Hz speed={speed}% warp={warp}",
    )


def _natural_speaker(id: int, split: str, voice_id: str, rng: np.random.Generator) -> Speaker:
    voice = tts.NATURAL_VOICES[voice_id]
    pitch = int(rng.integers(NATURAL_PITCH_PERCENT[0], NATURAL_PITCH_PERCENT[1] + 1)) if voice.pitch else 100
    speed = int(rng.integers(NATURAL_SPEED_PERCENT[0], NATURAL_SPEED_PERCENT[1] + 1))
    warp = round(float(rng.uniform(*NATURAL_WARP[voice.sex])), 3)
    return Speaker(
        id=id, split=split, accent=voice.engine, variant=voice_id, sex=voice.sex, pitch=pitch, speed=speed,
        pitch_range=100, word_gap=0, amplitude=100, warp=warp,
        description=f"{voice_id} pitch={pitch}% speed={speed}% warp={warp}",
    )


@dataclasses.dataclass(frozen=True)
class NaturalVoices:
    splits: dict[str, list[str]]  # split -> the installed voice ids its natural speakers use
    skipped: dict[str, str]  # voice id -> why it cannot speak here


def natural_voices(config: CorpusConfig) -> NaturalVoices:
    """The natural voices of each split: train's from ``config.voices`` less the held-out
    ones; test takes the installed held-out voices 1, 3, ..., dev 2, 4, .... A voice that is
    not installed is skipped with one line on stderr."""
    held = tts.select_voices(config.held_out_voices)
    wanted = [v for v in tts.select_voices(config.voices) if v not in held]
    if not config.natural_speakers:
        return NaturalVoices({split: [] for split in SPLITS}, {})
    skipped = {v: reason for v in wanted + held if (reason := tts.missing_reason(v))}
    for voice_id, reason in skipped.items():
        print(f"skipping voice {voice_id}: {reason}", file=sys.stderr)
    held = [v for v in held if v not in skipped]
    train = [v for v in wanted if v not in skipped]
    if not train:
        raise ValueError(f"natural_speakers={config.natural_speakers} but none of the voices '{config.voices}' "
                         "is installed here (tools/install_voices.sh)")
    return NaturalVoices({"train": train, "dev": held[1::2], "test": held[0::2]}, skipped)


def _natural_count(config: CorpusConfig, split: str, natural: NaturalVoices) -> int:
    if split == "train":
        return config.natural_speakers
    if not natural.splits[split]:
        return 0
    share = config.natural_speakers / max(1, config.train_speakers)
    return min(getattr(config, f"{split}_speakers"), round(getattr(config, f"{split}_speakers") * share))


def _pairs(accents: list[Accent], variants: list[Variant], rng: np.random.Generator) -> Iterator[tuple[Accent, Variant]]:
    """Endless (accent, variant) pairs: every variant once, then each again with the
    next accent, so that few speakers cover many voices."""
    accents, variants = _shuffled(accents, rng), _shuffled(variants, rng)
    for turn in itertools.count():
        for i, variant in enumerate(variants):
            yield accents[(i + turn) % len(accents)], variant


def make_speakers(
    config: CorpusConfig, voices: Voices, natural: NaturalVoices | None = None
) -> dict[str, list[Speaker]]:
    """Create every split's speakers, deterministically from ``config.seed``.

    test, then dev, take whole variant families (about one variant per speaker,
    at most a sixth of all variants each) and, given four or more regional
    accents, one accent each, which some of their speakers use alongside the
    train accents. train speakers alternate female and male and spread over all
    remaining (accent, variant) pairs; after them come ``flite_speakers`` flite
    voices in turn, then ``natural_speakers`` of ``natural``'s (default:
    :func:`natural_voices`) train voices in turn. test and dev end with their share of
    natural speakers from their held-out voices. Speaker ids are allocated test
    first, so that the held-out splits do not change when train grows, and adding
    flite or natural speakers to train leaves its espeak-ng ones as they were.
    """
    natural = natural_voices(config) if natural is None else natural
    rng = np.random.default_rng([config.seed, 1])
    regional = [a for a in voices.accents if a.code not in PRIMARY_ACCENTS]
    held_accents = dict(zip(("test", "dev"), _shuffled(regional, rng))) if len(regional) >= 4 else {}
    train_accents = [a for a in voices.accents if a not in held_accents.values()]
    cap = max(1, len(voices.variants) // 6)
    remaining = list(voices.variants)
    speakers: dict[str, list[Speaker]] = {}
    ids = itertools.count(FIRST_SPEAKER_ID)
    for split_index, split in enumerate(("test", "dev", "train")):
        n = getattr(config, f"{split}_speakers")
        srng = np.random.default_rng([config.seed, 2, split_index])
        if split == "train":
            pools = [[v for v in remaining if v.sex == sex] for sex in "FM"]
            pairs = [_pairs(train_accents, pool, srng) for pool in pools if pool]
        else:
            variants = _held_out_variants(remaining, min(n, cap), rng)
            remaining = [v for v in remaining if v not in variants]
            accents = [held_accents[split]] if held_accents else []
            accents += _shuffled(train_accents, srng)
            pairs = [zip(itertools.cycle(accents), itertools.cycle(variants))] if variants else []
        n_other = _natural_count(config, split, natural) + (config.flite_speakers if split == "train" else 0)
        if split == "train" and not 0 <= n_other <= n:
            raise ValueError(f"flite_speakers + natural_speakers = {n_other} must lie between 0 and train_speakers={n}")
        if n > n_other and not pairs:
            raise ValueError(f"no espeak-ng variants left for {split}")
        speakers[split] = [
            _speaker(next(ids), split, *next(pairs[i % len(pairs)]), srng) for i in range(n - n_other)
        ]
        if split != "train":
            speakers[split] += _natural_speakers(config, split, natural, ids)
    if config.flite_speakers:
        flite_voices = itertools.cycle(tts.list_flite_voices())
        frng = np.random.default_rng([config.seed, 4])
        speakers["train"] += [_flite_speaker(next(ids), next(flite_voices), frng) for _ in range(config.flite_speakers)]
    speakers["train"] += _natural_speakers(config, "train", natural, ids)
    return speakers


def _natural_speakers(config: CorpusConfig, split: str, natural: NaturalVoices, ids: Iterator[int]) -> list[Speaker]:
    voice_ids = itertools.cycle(natural.splits[split])
    rng = np.random.default_rng([config.seed, 5, SPLITS.index(split)])
    return [_natural_speaker(next(ids), split, next(voice_ids), rng) for _ in range(_natural_count(config, split, natural))]


def plan_corpus(
    config: CorpusConfig, sentences: list[Sentence], speakers: dict[str, list[Speaker]]
) -> list[Utterance]:
    """Give every split its sentences and every utterance a speaker, chapter and index.

    A seeded shuffle of ``sentences`` gives test the first ones, dev the next and
    train the rest. Speakers take turns, so each speaks about as often; a train
    sentence's repeats start the turns at different speakers. A speaker's
    utterances fill chapters of up to :data:`UTTS_PER_CHAPTER`.
    """
    n = {"test": config.test_sentences, "dev": config.dev_sentences}
    n["train"] = config.train_sentences or len(sentences) - n["test"] - n["dev"]
    if min(n.values()) < 0 or sum(n.values()) > len(sentences):
        raise ValueError(f"asked for {n} sentences but only {len(sentences)} are available")
    order = np.random.default_rng([config.seed, 0]).permutation(len(sentences))
    shuffled = iter([sentences[i] for i in order])
    chapters = itertools.count(FIRST_CHAPTER_ID)
    utterances = []
    for split in ("test", "dev", "train"):
        texts = list(itertools.islice(shuffled, n[split]))
        talkers = speakers[split]
        if texts and not talkers:
            raise ValueError(f"{split} has sentences but no speakers")
        repeats = config.utts_per_sentence if split == "train" else 1
        spoken: dict[int, list[Sentence]] = {s.id: [] for s in talkers}
        for copy in range(repeats):
            offset = copy * max(1, len(talkers) // repeats)
            for i, sentence in enumerate(texts):
                spoken[talkers[(i + offset) % len(talkers)].id].append(sentence)
        for speaker in talkers:
            said = spoken[speaker.id]
            for start in range(0, len(said), UTTS_PER_CHAPTER):
                chapter = next(chapters)
                for index, sentence in enumerate(said[start : start + UTTS_PER_CHAPTER]):
                    utterances.append(Utterance(split, speaker, chapter, index, sentence))
    return utterances


# --------------------------------------------------------------------------- audio


def _fft_size(n: int) -> int:
    """Smallest 2**a * 3**b * 5**c >= n: numpy's FFT is 10x slower on large prime factors."""
    best = 1 << (n - 1).bit_length()
    odd5 = 1
    while odd5 < best:
        odd = odd5
        while odd < best:
            best = min(best, odd << (-(-n // odd) - 1).bit_length())
            odd *= 3
        odd5 *= 5
    return best


def coloured_noise(length: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-power noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown)."""
    size = _fft_size(length)
    spectrum = np.fft.rfft(rng.standard_normal(size, dtype=np.float32))
    freqs = np.maximum(np.fft.rfftfreq(size, 1 / SAMPLE_RATE), NOISE_MIN_HZ)
    noise = np.fft.irfft(spectrum * freqs ** (-exponent / 2), size)[:length]
    return (noise / np.sqrt(np.mean(noise**2))).astype(np.float32)


def reverberate(samples: np.ndarray, rt60: float, drr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with the training loader's statistical room impulse response
    (:func:`asr.audio.room_impulse_response`). Keeps the input length."""
    rir = asr.audio.room_impulse_response(rt60, drr_db, rng).numpy()
    size = _fft_size(len(samples) + len(rir) - 1)
    wet = np.fft.irfft(np.fft.rfft(samples, size) * np.fft.rfft(rir, size), size)
    return wet[: len(samples)].astype(np.float32)


def augment(speech: np.ndarray, config: CorpusConfig, rng: np.random.Generator) -> np.ndarray:
    """Pad with silence, maybe reverberate, add noise and set a random level; int16 out."""
    lead, trail = (int(rng.uniform(*SILENCE_S) * SAMPLE_RATE) for _ in range(2))
    audio = np.pad(speech, (lead, trail))
    if rng.random() < config.reverb_prob:
        audio = reverberate(audio, rng.uniform(*RT60_S), rng.uniform(*DRR_DB), rng)
    speech_power = float(np.mean(audio[lead : lead + len(speech)] ** 2))
    if rng.random() < config.noise_prob:
        snr_db = rng.uniform(config.snr_min_db, config.snr_max_db)
    else:
        snr_db = rng.uniform(*NOISE_FLOOR_SNR_DB)
    noise = coloured_noise(len(audio), rng.uniform(0.0, 2.0), rng)
    audio += noise * math.sqrt(speech_power * 10 ** (-snr_db / 10))
    gain = 10 ** (rng.uniform(*LEVEL_DBFS) / 20) / math.sqrt(speech_power)
    gain = min(gain, PEAK / float(np.abs(audio).max()))
    return np.round(audio * (gain * 32767)).astype(np.int16)


def synthesize_utterance(utterance: Utterance, config: CorpusConfig) -> np.ndarray:
    """Return ``utterance`` as 16 kHz int16 samples, seeded by its id alone."""
    speaker = utterance.speaker
    rng = np.random.default_rng([config.seed, 3, speaker.id, utterance.chapter, utterance.index])
    jitter = rng.uniform(1 - SPEED_JITTER, 1 + SPEED_JITTER)
    if speaker.natural:
        voice = tts.NATURAL_VOICES[speaker.variant]
        pitch = speaker.pitch / 100 * (1 + rng.uniform(-NATURAL_PITCH_JITTER, NATURAL_PITCH_JITTER)) if voice.pitch else 1.0
        seed = int(rng.integers(2**31))
        speech = tts.speak(speaker.variant, utterance.sentence.text, speaker.speed / 100 * jitter, pitch, speaker.warp, seed)
    elif speaker.engine == "flite":
        f0 = speaker.pitch + int(rng.integers(-FLITE_F0_JITTER_HZ, FLITE_F0_JITTER_HZ + 1))
        speech = tts.flite(utterance.sentence.text, speaker.variant, speaker.speed / 100 * jitter, f0, speaker.warp)
    else:
        pitch = int(np.clip(speaker.pitch + rng.integers(-PITCH_JITTER, PITCH_JITTER + 1), 0, 99))
        speech = tts.espeak(
            utterance.sentence.text, speaker.voice, round(speaker.speed * jitter), pitch,
            speaker.pitch_range, speaker.amplitude, speaker.word_gap,
        )
    return augment(speech, config, rng)


def _init_worker() -> None:
    # One process per core already; intra-op threads would only oversubscribe.
    torch.set_num_threads(1)
    # Ctrl-C is the parent's to handle: it terminates the pool and removes the
    # temporary folder, without a traceback from every worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# a natural voice's engine that fails on a sentence gives it to the flite voice of the same sex
FALLBACK_VOICES = {"F": "flite:slt", "M": "flite:rms"}


def _write_utterance(utterance: Utterance, config: CorpusConfig, root: Path) -> tuple[int, int]:
    try:
        samples = synthesize_utterance(utterance, config)
    except subprocess.CalledProcessError as err:
        if not utterance.speaker.natural:
            raise
        fallback = FALLBACK_VOICES[utterance.speaker.sex]
        print(f"warning: {utterance.id}: {utterance.speaker.variant} failed ({err.returncode}); "
              f"spoken by {fallback} instead", file=sys.stderr)
        speaker = dataclasses.replace(utterance.speaker, variant=fallback, accent="flite")
        samples = synthesize_utterance(dataclasses.replace(utterance, speaker=speaker), config)
    sf.write(root / utterance.path, samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return utterance.speaker.id, len(samples)


# -------------------------------------------------------------------------- corpus


def _text_source(config: CorpusConfig) -> dict:
    if config.text is not None:
        return {"source": str(config.text), "licence": "as given by the source of --text"}
    files = [p.name for p in _fortune_files(FORTUNE_DIR)]
    return {"source": f"{FORTUNE_DIR}: {', '.join(files)}", "licence": TEXT_LICENCE}


def _natural_meta(natural: NaturalVoices) -> dict:
    used = [voice_id for split in SPLITS for voice_id in natural.splits[split]]
    engines = sorted({tts.NATURAL_VOICES[voice_id].engine for voice_id in used})
    return {
        "splits": natural.splits,
        "skipped": natural.skipped,
        "engines": {engine: tts.engine_version(engine) for engine in engines},
        "licences": {voice_id: tts.NATURAL_VOICES[voice_id].licence for voice_id in used},
    }


def _write_speakers_txt(path: Path, speakers: dict[str, list[Speaker]], seconds: dict[int, float]) -> None:
    everyone = sorted((s for split in SPLITS for s in speakers[split]), key=lambda s: s.id)
    natural = any(s.natural for s in everyone)
    kinds, name = ("espeak-ng and natural-voice", "accent+variant or engine:voice") if natural else ("espeak-ng (and flite)", "accent+variant")
    lines = [
        f"; Synthetic {kinds} speakers written by tools/synthesize_corpus.py",
        f"; in the format of LibriSpeech's SPEAKERS.TXT; NAME is {name} and settings",
        ";ID  |SEX| SUBSET           |MINUTES| NAME",
    ]
    for s in everyone:
        lines.append(f"{s.id:<5}| {s.sex} | {s.split:<16} | {seconds[s.id] / 60:5.2f} | {s.description}")
    path.write_text("\n".join(lines) + "\n")


def synthesize_corpus(
    out: str | Path,
    config: CorpusConfig = CorpusConfig(),
    jobs: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Synthesise the corpus described by ``config`` into ``out``; return its metadata.

    Returns at once if ``out`` already holds a complete corpus of the same
    ``config``. Any other existing, non-empty ``out`` is an error unless
    ``overwrite``. The corpus is built in a hidden sibling folder and renamed into
    place, so an interrupted run never leaves a corpus that looks complete.
    ``jobs`` processes (default: all CPUs) synthesise in parallel.
    """
    out = Path(out)
    wanted = dataclasses.asdict(config)
    # a corpus without natural voices keeps the corpus.json it had before they existed
    natural_fields = ("natural_speakers", "voices", "held_out_voices")
    written = {k: v for k, v in wanted.items() if config.natural_speakers or k not in natural_fields}
    if (out / "corpus.json").is_file():
        meta = json.loads((out / "corpus.json").read_text())
        if ADDED_FIELDS | meta.get("config", {}) == wanted:
            print(f"{out} already holds this corpus; nothing to do", file=sys.stderr)
            return meta
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} holds something else; remove it or pass --overwrite")
    jobs = jobs or len(os.sched_getaffinity(0))

    voices = tts.list_voices()
    sentences = load_sentences(config.text)
    natural = natural_voices(config)
    speakers = make_speakers(config, voices, natural)
    utterances = plan_corpus(config, sentences, speakers)

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        chapters: dict[Path, list[Utterance]] = {}
        for utterance in utterances:
            chapters.setdefault(tmp / Path(utterance.path).parent, []).append(utterance)
        for folder, said in chapters.items():
            folder.mkdir(parents=True)
            lines = [f"{u.id} {u.sentence.transcript}\n" for u in said]
            (folder / f"{said[0].speaker.id}-{said[0].chapter}.trans.txt").write_text("".join(lines))

        seconds = {s.id: 0.0 for split in SPLITS for s in speakers[split]}
        start = time.perf_counter()
        # fork, not spawn: children must not re-import this file, which tests load
        # by path and which is no importable package module.
        with mp.get_context("fork").Pool(jobs, initializer=_init_worker) as pool:
            work = functools.partial(_write_utterance, config=config, root=tmp)
            results = pool.imap_unordered(work, utterances, chunksize=8)
            for speaker_id, n in tqdm(results, total=len(utterances), unit="utt", disable=not progress):
                seconds[speaker_id] += n / SAMPLE_RATE
        wall = time.perf_counter() - start

        _write_speakers_txt(tmp / "SPEAKERS.txt", speakers, seconds)
        family = {v.file: v.family for v in voices.variants} | {v: f"flite-{v}" for v in tts.FLITE_VOICES}
        family |= {voice_id: voice_id for voice_id in tts.NATURAL_VOICES}
        splits = {}
        for split in SPLITS:
            said = [u for u in utterances if u.split == split]
            splits[split] = {
                "hours": round(sum(seconds[s.id] for s in speakers[split]) / 3600, 4),
                "utterances": len(said),
                "sentences": len({u.sentence.transcript for u in said}),
                "accents": sorted({s.accent for s in speakers[split]}),
                "variants": sorted({s.variant for s in speakers[split]}),
                "variant_families": sorted({family[s.variant] for s in speakers[split]}),
                "speakers": [
                    dataclasses.asdict(s) | {"minutes": round(seconds[s.id] / 60, 3)}
                    for s in speakers[split]
                ],
            }
        meta = {
            "format": "LibriSpeech",
            "sample_rate": SAMPLE_RATE,
            "config": written,
            "espeak_ng": tts.espeak_version(),
            **({"flite": tts.flite_version()} if config.flite_speakers else {}),
            **({"natural_voices": _natural_meta(natural)} if config.natural_speakers else {}),
            "text": _text_source(config) | {"sentences_available": len(sentences)},
            "voices": {
                "accents": [dataclasses.asdict(a) for a in voices.accents],
                "variants": [dataclasses.asdict(v) for v in voices.variants],
                "excluded_variants": voices.excluded,
            },
            "splits": splits,
        }
        # Written last: its presence marks the corpus complete.
        (tmp / "corpus.json").write_text(json.dumps(meta, indent=1) + "\n")
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)

    audio_s = sum(seconds.values())
    hours = ", ".join(f"{split} {splits[split]['hours']:.2f} h" for split in SPLITS)
    print(
        f"wrote {out}: {hours}; {audio_s / 3600:.2f} h in {wall:.0f} s with {jobs} jobs "
        f"= {audio_s / wall:.0f} s of audio per second",
        file=sys.stderr,
    )
    return meta


def main(argv: list[str] | None = None) -> None:
    defaults = CorpusConfig()
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="corpus folder")
    parser.add_argument("--train-sentences", type=int, default=defaults.train_sentences,
                        help="train sentences; 0 = all not used by dev and test")
    parser.add_argument("--dev-sentences", type=int, default=defaults.dev_sentences,
                        help="dev sentences, spoken once each")
    parser.add_argument("--test-sentences", type=int, default=defaults.test_sentences,
                        help="test sentences, spoken once each")
    parser.add_argument("--train-speakers", type=int, default=defaults.train_speakers,
                        help="train voices (accent+variant+pitch+speed)")
    parser.add_argument("--dev-speakers", type=int, default=defaults.dev_speakers,
                        help="dev voices, from variants and an accent train never uses")
    parser.add_argument("--test-speakers", type=int, default=defaults.test_speakers,
                        help="test voices, from variants and an accent train and dev never use")
    parser.add_argument("--utts-per-sentence", type=int, default=defaults.utts_per_sentence,
                        help="speakers per train sentence")
    parser.add_argument("--noise-prob", type=float, default=defaults.noise_prob,
                        help="chance of audible noise; the rest get a 50-70 dB SNR noise floor")
    parser.add_argument("--snr-min-db", type=float, default=defaults.snr_min_db,
                        help="lowest SNR of audible noise (white to brown, uniform in dB)")
    parser.add_argument("--snr-max-db", type=float, default=defaults.snr_max_db,
                        help="highest SNR of audible noise")
    parser.add_argument("--reverb-prob", type=float, default=defaults.reverb_prob,
                        help="chance of synthetic reverberation (RT60 0.15-0.7 s)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="same arguments and seed give byte-identical corpora")
    parser.add_argument("--flite-speakers", type=int, default=defaults.flite_speakers,
                        help="of the train speakers, CMU flite voices (apt-get install flite); dev and test stay espeak-ng")
    parser.add_argument("--natural-speakers", type=int, default=defaults.natural_speakers,
                        help="of the train speakers, natural voices from --voices (tools/install_voices.sh); "
                        "dev and test get the same share from --held-out-voices")
    parser.add_argument("--voices", default=defaults.voices,
                        help="engines or voice ids (e.g. rhvoice:bdl) the natural speakers use: "
                        + ", ".join(tts.NATURAL_VOICES))
    parser.add_argument("--held-out-voices", default=defaults.held_out_voices,
                        help="natural voices only test (1st, 3rd, ...) and dev (2nd, ...) hear, never train")
    parser.add_argument("--text", default=defaults.text,
                        help="text file, one sentence per line, instead of the fortunes")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)),
                        help="parallel processes")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing corpus made with other arguments")
    args = parser.parse_args(argv)
    config = CorpusConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(CorpusConfig)})
    try:
        synthesize_corpus(args.out, config, jobs=args.jobs, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
