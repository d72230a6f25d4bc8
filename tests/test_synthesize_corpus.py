"""Tests for tools/synthesize_corpus.py on a tiny corpus (a few seconds on 2 cores)."""

import dataclasses
import importlib.util
import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.text import normalize_text
from conftest import requires_espeak, requires_flite

TOOL = Path(__file__).resolve().parents[1] / "tools" / "synthesize_corpus.py"


def _load_tool():
    # tools/ is not a package. dataclasses need the module in sys.modules.
    spec = importlib.util.spec_from_file_location("synthesize_corpus", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


sc = _load_tool()

CONFIG = sc.CorpusConfig(
    train_sentences=12,
    dev_sentences=3,
    test_sentences=3,
    train_speakers=3,
    dev_speakers=2,
    test_speakers=2,
    noise_prob=0.5,
    reverb_prob=0.5,
    seed=7,
)
UTT_ID = re.compile(r"(\d+)-(\d+)-(\d{4})")
TRANSCRIPT = re.compile(r"[A-Z']+( [A-Z']+)*")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """The same corpus built twice, with different numbers of processes."""
    root = tmp_path_factory.mktemp("synth")
    sc.synthesize_corpus(root / "a", CONFIG, jobs=2, progress=False)
    sc.synthesize_corpus(root / "b", CONFIG, jobs=1, progress=False)
    return root / "a", root / "b"


def _transcripts(out: Path) -> dict[str, dict[str, str]]:
    """split -> utterance id -> transcript."""
    result = {}
    for split in sc.SPLITS:
        result[split] = {}
        for trans in sorted((out / split).glob("*/*/*.trans.txt")):
            for line in trans.read_text().splitlines():
                utt_id, text = line.split(" ", 1)
                result[split][utt_id] = text
    return result


@requires_espeak
def test_librispeech_layout(corpora):
    out, _ = corpora
    assert sorted(p.name for p in out.iterdir()) == ["SPEAKERS.txt", "corpus.json", "dev", "test", "train"]
    assert not list(out.parent.glob(".a.*")), "temporary folder left behind"
    for split in sc.SPLITS:
        for speaker_dir in (out / split).iterdir():
            assert speaker_dir.name.isdigit()
            for chapter_dir in speaker_dir.iterdir():
                assert chapter_dir.name.isdigit()
                prefix = f"{speaker_dir.name}-{chapter_dir.name}"
                names = sorted(p.name for p in chapter_dir.iterdir())
                assert f"{prefix}.trans.txt" in names
                flacs = [n for n in names if n != f"{prefix}.trans.txt"]
                assert flacs == [f"{prefix}-{i:04d}.flac" for i in range(len(flacs))]
                lines = (chapter_dir / f"{prefix}.trans.txt").read_text().splitlines()
                assert [line.split(" ")[0] + ".flac" for line in lines] == flacs
    counts = {split: len(utts) for split, utts in _transcripts(out).items()}
    assert counts == {"train": 12, "dev": 3, "test": 3}


@requires_espeak
def test_transcripts_are_normalised(corpora):
    for utts in _transcripts(corpora[0]).values():
        for utt_id, text in utts.items():
            assert UTT_ID.fullmatch(utt_id)
            assert TRANSCRIPT.fullmatch(text), text
            assert normalize_text(text) == (text, Counter())  # what training and scoring use


@requires_espeak
def test_audio_is_16khz_mono_speech_of_plausible_length(corpora):
    out, _ = corpora
    for split, utts in _transcripts(out).items():
        for utt_id, text in utts.items():
            speaker, chapter, _ = utt_id.split("-")
            path = out / split / speaker / chapter / f"{utt_id}.flac"
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16")
            samples, _ = sf.read(path, dtype="float32")
            assert np.sqrt(np.mean(samples**2)) > 0.005, f"{utt_id} is silent"
            words = len(text.split())
            assert 0.15 * words < info.duration < 1.0 * words + 1.5, (utt_id, info.duration, words)


@requires_espeak
def test_held_out_splits_share_no_speaker_voice_or_sentence(corpora):
    out, _ = corpora
    meta = json.loads((out / "corpus.json").read_text())
    splits = meta["splits"]
    texts = {split: set(utts.values()) for split, utts in _transcripts(out).items()}
    speaker_ids = {split: {utt.split("-")[0] for utt in utts} for split, utts in _transcripts(out).items()}
    for a, b in [("train", "test"), ("train", "dev"), ("dev", "test")]:
        assert not texts[a] & texts[b]
        assert not speaker_ids[a] & speaker_ids[b]
        # Voice identity, not just ids: no variant, nor any near-identical variant, is shared.
        assert not set(splits[a]["variants"]) & set(splits[b]["variants"])
        assert not set(splits[a]["variant_families"]) & set(splits[b]["variant_families"])
        assert set(splits[b]["accents"]) - set(splits["train"]["accents"]), f"{b} has no unseen accent"
    speakers_txt = (out / "SPEAKERS.txt").read_text().splitlines()
    rows = [line.split("|") for line in speakers_txt if not line.startswith(";")]
    assert {(r[0].strip(), r[2].strip()) for r in rows} == {
        (sid, split) for split, ids in speaker_ids.items() for sid in ids
    }


@requires_espeak
def test_same_seed_gives_identical_corpus(corpora):
    a, b = corpora
    assert _transcripts(a) == _transcripts(b)
    flacs = sorted(p.relative_to(a) for p in a.rglob("*.flac"))
    assert flacs == sorted(p.relative_to(b) for p in b.rglob("*.flac"))
    for rel in flacs:
        assert np.array_equal(sf.read(a / rel, dtype="int16")[0], sf.read(b / rel, dtype="int16")[0]), rel
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "corpus.json").read_text() == (b / "corpus.json").read_text()


@requires_espeak
def test_metadata_and_idempotence(corpora):
    out, _ = corpora
    meta = json.loads((out / "corpus.json").read_text())
    # without natural voices, corpus.json is written as before they existed
    natural_fields = ("natural_speakers", "voices", "held_out_voices")
    assert meta["config"] == {k: v for k, v in dataclasses.asdict(CONFIG).items() if k not in natural_fields}
    assert "BSD" in meta["text"]["licence"]
    before = (out / "corpus.json").stat().st_mtime_ns
    assert sc.synthesize_corpus(out, CONFIG, progress=False) == meta
    assert (out / "corpus.json").stat().st_mtime_ns == before
    with pytest.raises(FileExistsError):
        sc.synthesize_corpus(out, dataclasses.replace(CONFIG, seed=8), progress=False)


@pytest.mark.parametrize(
    "text",
    [
        "Bank error in your favor. Collect 200 dollars now.",  # digits
        "Be careful, UGLY strikes nine out of ten!",  # all-caps word
        "Visit www.example.com for more details today.",  # URL
        "See http://example.org for the details.",  # URL
        "He met Mr. Smith at the station.",  # abbreviation
        "The value of x is larger than y.",  # single-letter variables
        "Call getValue on the object first.",  # camelCase code
        "Caf\u00e9 society is not what it was.",  # non-ASCII
        "Too short.",  # under three words
    ],
)
def test_clean_sentence_rejects(text):
    assert sc.clean_sentence(text) is None


def test_clean_sentence_normalises():
    sentence = sc.clean_sentence('"Don\'t panic," she said -- and it\'s well-known advice!')
    assert sentence.text == '"Don\'t panic," she said -- and it\'s well-known advice!'
    assert sentence.transcript == "DON'T PANIC SHE SAID AND IT'S WELL KNOWN ADVICE"


def test_split_sentences_keeps_abbreviated_sentence_whole():
    assert sc.split_sentences('He met Mr. Smith. Then he left!  "Why?" she asked.') == [
        "He met Mr. Smith.",
        "Then he left!",
        '"Why?" she asked.',
    ]


def test_load_sentences_from_text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("The cat sat on the mat.\nThe cat sat on the mat!\n42 is the answer.\nA dog barked loudly.\n")
    assert [s.transcript for s in sc.load_sentences(path)] == ["THE CAT SAT ON THE MAT", "A DOG BARKED LOUDLY"]


FLITE_CONFIG = dataclasses.replace(CONFIG, train_sentences=6, train_speakers=5, flite_speakers=2, noise_prob=0.0, reverb_prob=0.0)


@requires_espeak
@requires_flite
def test_flite_speakers_join_train_and_leave_the_espeak_speakers_as_they_were():
    voices = sc.tts.list_voices()
    speakers = sc.make_speakers(FLITE_CONFIG, voices)
    without = sc.make_speakers(dataclasses.replace(FLITE_CONFIG, train_speakers=3, flite_speakers=0), voices)
    assert speakers["train"][:3] == without["train"]
    assert speakers["dev"] == without["dev"] and speakers["test"] == without["test"]
    flite = speakers["train"][3:]
    assert [s.engine for s in flite] == ["flite", "flite"]
    assert [s.voice for s in flite] == list(sc.tts.FLITE_VOICES)[:2]
    assert all(sc.WARP[0] <= s.warp <= sc.WARP[1] for s in flite)
    assert len({s.id for split in speakers.values() for s in split}) == 5 + 2 + 2
    with pytest.raises(ValueError, match="flite_speakers"):
        sc.make_speakers(dataclasses.replace(FLITE_CONFIG, flite_speakers=6), voices)


@requires_flite
def test_flite_warp_scales_pitch_and_keeps_the_tempo():
    """A shorter vocal tract (warp > 1) raises F0 by the warp; the synthesis is slowed by as
    much, so the warped utterance lasts as long as the unwarped one."""
    import torch
    import torchaudio

    text = "The quick brown fox jumps over the lazy dog, said the old man quietly."
    pitch, seconds = {}, {}
    for factor in (0.9, 1.12):
        audio = sc.tts.flite(text, "slt", 1.0, 170, factor)
        f0 = torchaudio.functional.detect_pitch_frequency(torch.from_numpy(audio), sc.SAMPLE_RATE, freq_low=60, freq_high=500)
        pitch[factor], seconds[factor] = float(f0.median()), len(audio) / sc.SAMPLE_RATE
    assert pitch[1.12] / pitch[0.9] == pytest.approx(1.12 / 0.9, rel=0.08)
    assert seconds[1.12] / seconds[0.9] == pytest.approx(1.0, abs=0.06)


@requires_espeak
@requires_flite
def test_flite_corpus_audio_and_metadata(tmp_path):
    out = tmp_path / "corpus"
    meta = sc.synthesize_corpus(out, FLITE_CONFIG, jobs=2, progress=False)
    assert meta["flite"].startswith("flite-")
    train = meta["splits"]["train"]
    assert "flite" in train["accents"] and {"kal16", "awb"} <= set(train["variants"])
    assert "flite" not in meta["splits"]["dev"]["accents"] + meta["splits"]["test"]["accents"]
    flite_ids = {str(s["id"]) for s in train["speakers"] if s["accent"] == "flite"}
    utts = _transcripts(out)["train"]
    spoken = [u for u in utts if u.split("-")[0] in flite_ids]
    assert len(spoken) == 2  # 6 sentences, 5 speakers in turn
    for utt_id in spoken:
        speaker, chapter, _ = utt_id.split("-")
        samples, rate = sf.read(out / "train" / speaker / chapter / f"{utt_id}.flac", dtype="float32")
        words = len(utts[utt_id].split())
        assert rate == 16000 and np.sqrt(np.mean(samples**2)) > 0.005
        assert 0.15 * words < len(samples) / rate < 1.0 * words + 1.5
    # a corpus written before flite voices existed, of the same config, is still this one
    old = json.loads((out / "corpus.json").read_text())
    del old["config"]["flite_speakers"]
    (out / "corpus.json").write_text(json.dumps(old))
    no_flite = dataclasses.replace(FLITE_CONFIG, flite_speakers=0)
    assert sc.synthesize_corpus(out, no_flite, progress=False) == old


HELD_OUT = ("rhvoice:alan", "festival:slt")
NATURAL_CONFIG = dataclasses.replace(
    CONFIG, train_sentences=8, train_speakers=20, natural_speakers=15, dev_speakers=4, test_speakers=4,
    noise_prob=0.0, reverb_prob=0.0,
)


@requires_espeak
def test_natural_plan_keeps_held_out_voices_from_train_and_is_deterministic(monkeypatch):
    monkeypatch.setattr(sc.tts, "missing_reason", lambda voice_id: None)  # plan as if every voice were installed
    voices = sc.tts.list_voices()
    speakers = sc.make_speakers(NATURAL_CONFIG, voices)
    assert speakers == sc.make_speakers(NATURAL_CONFIG, voices)
    natural = {split: [s for s in speakers[split] if s.natural] for split in sc.SPLITS}
    assert len(natural["train"]) == 15 and len(speakers["train"]) == 20
    assert {s.voice for s in natural["train"]} == set(sc.tts.select_voices(sc.DEFAULT_VOICES)) - set(HELD_OUT)
    # test and dev: the train share (15 of 20) of their 4 speakers, each from its own held-out voice
    assert [s.voice for s in natural["test"]] == ["rhvoice:alan"] * 3
    assert [s.voice for s in natural["dev"]] == ["festival:slt"] * 3
    for split in sc.SPLITS:
        for s in natural[split]:
            voice = sc.tts.NATURAL_VOICES[s.voice]
            assert (s.engine, s.sex, s.split) == (voice.engine, voice.sex, split)
            assert sc.NATURAL_WARP[s.sex][0] <= s.warp <= sc.NATURAL_WARP[s.sex][1]
            assert s.pitch == 100 or voice.pitch
    assert len({s.id for split in speakers.values() for s in split}) == 28
    other_seed = sc.make_speakers(dataclasses.replace(NATURAL_CONFIG, seed=8), voices)
    assert [s.warp for s in other_seed["train"][5:]] != [s.warp for s in natural["train"]]


@requires_espeak
def test_a_natural_voice_that_is_not_installed_is_skipped_with_one_line(monkeypatch, capsys):
    missing = "not installed (tools/install_voices.sh)"
    monkeypatch.setattr(sc.tts, "missing_reason", lambda voice_id: missing if voice_id.startswith("rhvoice") else None)
    natural = sc.natural_voices(NATURAL_CONFIG)
    lines = capsys.readouterr().err.splitlines()
    rhvoices = ["rhvoice:bdl", "rhvoice:clb", "rhvoice:slt", "rhvoice:alan"]
    assert lines == [f"skipping voice {voice_id}: {missing}" for voice_id in rhvoices]
    assert natural.skipped == dict.fromkeys(rhvoices, missing)
    assert natural.splits["test"] == ["festival:slt"] and natural.splits["dev"] == []
    assert not any(v.startswith("rhvoice") for v in natural.splits["train"])
    speakers = sc.make_speakers(NATURAL_CONFIG, sc.tts.list_voices(), natural)
    assert not [s for s in speakers["dev"] if s.natural]  # dev keeps espeak-ng voices alone
    monkeypatch.setattr(sc.tts, "missing_reason", lambda voice_id: missing)
    with pytest.raises(ValueError, match="install_voices.sh"):
        sc.natural_voices(NATURAL_CONFIG)


SMALL_NATURAL = dataclasses.replace(
    NATURAL_CONFIG, train_speakers=5, natural_speakers=3, dev_speakers=2, test_speakers=2, voices="rhvoice:bdl,flite:slt"
)


@requires_espeak
def test_natural_corpus_audio_and_metadata(tmp_path):
    for voice_id in ("rhvoice:bdl", "flite:slt", *HELD_OUT):
        if reason := sc.tts.missing_reason(voice_id):
            pytest.skip(f"{voice_id}: {reason}")
    out = tmp_path / "corpus"
    meta = sc.synthesize_corpus(out, SMALL_NATURAL, jobs=2, progress=False)
    assert meta["config"] == dataclasses.asdict(SMALL_NATURAL)
    assert meta["natural_voices"]["splits"] == {"train": ["rhvoice:bdl", "flite:slt"], "dev": ["festival:slt"], "test": ["rhvoice:alan"]}
    assert set(meta["natural_voices"]["engines"]) == {"rhvoice", "flite", "festival"}
    splits = meta["splits"]
    assert {"rhvoice:bdl", "flite:slt"} <= set(splits["train"]["variants"])
    assert not set(splits["train"]["variants"]) & set(HELD_OUT)
    assert "rhvoice:alan" in splits["test"]["variants"] and "festival:slt" in splits["dev"]["variants"]
    utts = _transcripts(out)
    natural_ids = {str(s["id"]) for split in sc.SPLITS for s in splits[split]["speakers"] if s["variant"] in sc.tts.NATURAL_VOICES}
    spoken = [(split, u) for split in sc.SPLITS for u in utts[split] if u.split("-")[0] in natural_ids]
    assert {split for split, _ in spoken} == set(sc.SPLITS)
    for split, utt_id in spoken:
        speaker, chapter, _ = utt_id.split("-")
        samples, rate = sf.read(out / split / speaker / chapter / f"{utt_id}.flac", dtype="float32")
        words = len(utts[split][utt_id].split())
        assert rate == 16000 and np.sqrt(np.mean(samples**2)) > 0.005
        assert 0.15 * words < len(samples) / rate < 1.0 * words + 1.5
    assert sc.synthesize_corpus(out, SMALL_NATURAL, progress=False) == meta


@requires_flite
def test_a_natural_engine_that_crashes_on_a_sentence_hands_it_to_flite(monkeypatch, tmp_path, capsys):
    speaker = sc.Speaker(id=7, split="train", accent="festival", variant="festival:ked", sex="M", pitch=100,
                         speed=100, pitch_range=0, word_gap=0, amplitude=0, description="festival:ked")
    utterance = sc.Utterance("train", speaker, chapter=1, index=0, sentence=sc.Sentence("Hello there.", "HELLO THERE"))

    def crash(*args):
        raise sc.subprocess.CalledProcessError(-11, ["text2wave"])

    monkeypatch.setitem(sc.tts.ENGINES, "festival", crash)
    (tmp_path / Path(utterance.path).parent).mkdir(parents=True)
    speaker_id, samples = sc._write_utterance(utterance, NATURAL_CONFIG, tmp_path)
    assert speaker_id == 7 and samples > 0.3 * sc.SAMPLE_RATE
    assert sf.info(tmp_path / utterance.path).samplerate == sc.SAMPLE_RATE
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {utterance.id}: festival:ked failed (-11); spoken by flite:rms instead"]


def test_an_engine_killed_by_a_signal_is_run_again(monkeypatch):
    calls = []
    real_run = sc.tts.subprocess.run

    def crash_first(command, **kwargs):  # the first try dies by SIGSEGV; the next writes the WAV
        calls.append(command)
        if len(calls) == 1:
            return sc.subprocess.CompletedProcess(command, -11)
        sf.write(command[-1], np.zeros(160, dtype=np.float32), 16000)
        return real_run(["true"], **kwargs)

    monkeypatch.setattr(sc.tts.subprocess, "run", crash_first)
    samples, rate = sc.tts._read_wav(["engine", "{wav}"])
    assert len(calls) == 2 and rate == 16000 and len(samples) == 160
    calls.clear()
    monkeypatch.setattr(sc.tts.subprocess, "run", lambda command, **kwargs: calls.append(command) or
                        sc.subprocess.CompletedProcess(command, -11))
    with pytest.raises(sc.subprocess.CalledProcessError):
        sc.tts._read_wav(["engine", "{wav}"])
    assert len(calls) == 3
