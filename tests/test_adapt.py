"""`asr adapt`: recordings from a folder or a manifest, the checks on them, which weights each
method updates, and a tiny trained model fitted to a voice it never heard (its held-out error
falls; the checkpoint keeps the base model's LM and says where it came from). Small models and
one thread keep them to seconds: docs/adapt.md measures the method on real voices."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import asr.adapt
from asr.adapt import AdaptConfig, AdaptError, adapt, find_recordings, split_held_out, trainable_parameters
from asr.checkpoint import LanguageModel, load_checkpoint, write_checkpoint
from asr.models import build_model
from asr.text import ALPHABET
from conftest import HAS_ESPEAK, OVERFIT_SENTENCES, espeak, requires_espeak, write_audio

# a voice the tiny model never heard: the four sentences it memorised, faster and higher
NEW_VOICE = [("en-us+m3", 185, 70), ("en-us+m3", 170, 60), ("en-us+m3", 200, 75)]


@pytest.fixture(scope="module")
def voice_dir(tmp_path_factory):
    """Twelve recordings of one new voice with same-stem transcripts, and an untranscribed file."""
    if not HAS_ESPEAK:
        pytest.skip("espeak-ng not installed (apt-get install espeak-ng)")
    folder = tmp_path_factory.mktemp("voice")
    for v, (voice, speed, pitch) in enumerate(NEW_VOICE):
        for s, sentence in enumerate(OVERFIT_SENTENCES):
            write_audio(folder / f"take{v}{s}.wav", espeak(sentence, voice, speed, pitch))
            (folder / f"take{v}{s}.txt").write_text(sentence.capitalize() + ".\n")
    write_audio(folder / "untranscribed.wav", espeak("nobody wrote this down"))
    return folder


@pytest.fixture(autouse=True)
def one_thread():
    """These models are too small to gain from a second thread, and on a busy machine a second
    thread makes each step many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory, voice_dir):
    """An untrained 2-layer BiLSTM-CTC with layer norm, its CMVN from the voice's features."""
    from asr.audio import load_audio
    from asr.checkpoint import save_checkpoint
    from asr.features import LogMelFrontend, accumulate_stats
    from asr.text import Tokenizer

    torch.manual_seed(0)
    model = build_model("blstm_ctc", {"hidden_size": 32, "num_layers": 2, "layer_norm": True, "dropout": 0.0},
                        verbose=False)
    audio = [load_audio(p) for p in sorted(voice_dir.glob("take*.wav"))]
    feats, lengths = LogMelFrontend()(torch.nn.utils.rnn.pad_sequence(audio, batch_first=True),
                                      torch.tensor([len(a) for a in audio]))
    model.cmvn.set_stats(*accumulate_stats(feats, lengths))
    path = tmp_path_factory.mktemp("small") / "small.pt"
    save_checkpoint(path, model, "blstm_ctc", Tokenizer())
    return path


def test_recordings_from_folder_and_manifest(tmp_path):
    for name, text in [("a", "Hello, world!"), ("sub/b", "It's me.")]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        write_audio(tmp_path / f"{name}.wav", torch.zeros(1600))
        (tmp_path / f"{name}.txt").write_text(text)
    write_audio(tmp_path / "no_text.flac", torch.zeros(1600))
    found = find_recordings(tmp_path, ALPHABET)
    assert [(r.id, r.text) for r in found] == [("a", "HELLO WORLD"), ("sub/b", "IT'S ME")]

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "x", "audio": str(tmp_path / "a.wav"), "text": "ok then"}) + "\n")
    assert [(r.id, r.text) for r in find_recordings(manifest, ALPHABET)] == [("x", "OK THEN")]


def test_recordings_errors_are_one_line(tmp_path):
    with pytest.raises(AdaptError, match="no audio files with a same-stem .txt transcript"):
        find_recordings(tmp_path, ALPHABET)
    with pytest.raises(AdaptError, match="no such folder or manifest"):
        find_recordings(tmp_path / "missing", ALPHABET)
    write_audio(tmp_path / "a.wav", torch.zeros(1600))
    (tmp_path / "a.txt").write_text("Room 101 costs $5")
    with pytest.raises(AdaptError, match=r"a.txt: characters the model cannot write: '\$' '0' '1' '5'"):
        find_recordings(tmp_path, ALPHABET)
    (tmp_path / "a.txt").write_text("...")
    with pytest.raises(AdaptError, match="a.txt: empty transcript"):
        find_recordings(tmp_path, ALPHABET)


def test_held_out_split_is_seeded_and_disjoint():
    items = list(range(40))
    train, held = split_held_out(items, 0.15, seed=3)
    assert len(held) == 6 and sorted(train + held) == items
    assert split_held_out(items, 0.15, seed=3) == (train, held)
    assert len(split_held_out(items[:5], 0.15)[1]) == 2  # never fewer than two held out


@pytest.mark.parametrize("name, config", [
    ("blstm_ctc", {"hidden_size": 16, "num_layers": 3, "layer_norm": True}),
    ("streaming_gru", {"hidden_size": 16, "num_layers": 3, "layer_norm": True}),
])
def test_trainable_parameters(name, config):
    model = build_model(name, config, verbose=False)
    names = {id(p): n for n, p in model.named_parameters()}
    assert len(trainable_parameters(model, "all")) == len(names)
    lhuc = {names[id(p)] for p in trainable_parameters(model, "lhuc")}
    assert lhuc == {n for n in names.values() if "norms." in n} | {"output.bias"}
    top = {names[id(p)] for p in trainable_parameters(model, "top")}
    assert {"output.weight", "output.bias"} <= top
    assert all("l0" not in n and "l1" not in n and "norms.0" not in n and "norms.1" not in n for n in top)
    assert any(n.endswith("_l2") for n in top) and any("norms.2" in n for n in top)
    with pytest.raises(ValueError, match="layer norm"):
        trainable_parameters(build_model(name, {**config, "layer_norm": False}, verbose=False), "lhuc")


@requires_espeak
def test_adapt_to_a_new_voice(tiny_checkpoint, voice_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(asr.adapt, "MIN_SECONDS", 10.0)  # the voice folder holds 25 s
    base = load_checkpoint(tiny_checkpoint.path)
    lm = LanguageModel(arpa=None, lexicon="OPEN O P E N |\n", lm_weight=0.5, word_score=1.0)
    base_path = tmp_path / "base_with_lm.pt"
    write_checkpoint(base_path, dataclasses.replace(base, language_model=lm))

    config = AdaptConfig(lr=3e-3, max_updates=30, eval_every=5, batch_seconds=10.0, held_out=0.25, patience=6)
    result = adapt(base_path, voice_dir, config)
    before, after = result.held_out["before"], result.held_out["after"]
    assert after["cer"] < before["cer"], result.held_out
    assert result.steps > 0

    adapted = result.checkpoint
    assert adapted.language_model == lm and adapted.model_name == base.model_name
    provenance = adapted.metadata["provenance"]
    assert provenance["adapted_from"] == str(base_path) and provenance["updates"] == result.steps
    assert provenance["train_recordings"] == 9 and provenance["held_out_recordings"] == 3
    assert provenance["method"]["lr"] == 3e-3 and provenance["held_out_greedy"]["after"] == after
    changed = [k for k, v in adapted.state_dict.items() if not torch.equal(v.float(), base.state_dict[k].float())]
    assert changed and all("running_" not in k and "cmvn" not in k for k in changed)  # batch norm, CMVN kept


@requires_espeak
@pytest.mark.parametrize("layers, allowed", [
    ("top", ("output.", "encoder.norms.1.", "_l1", "_l1_reverse")),
    ("lhuc", ("output.bias", "encoder.norms.")),
])
def test_only_the_chosen_weights_change(small_model, voice_dir, monkeypatch, layers, allowed):
    monkeypatch.setattr(asr.adapt, "MIN_SECONDS", 10.0)
    config = AdaptConfig(layers=layers, lr=1e-2, max_updates=4, eval_every=2, batch_seconds=10.0)
    result = adapt(small_model, voice_dir, config)
    base = load_checkpoint(small_model).state_dict
    changed = {k for k, v in result.checkpoint.state_dict.items() if not torch.equal(v, base[k])}
    assert result.steps > 0 and changed
    assert all(k.startswith(allowed) or k.endswith(allowed) for k in changed), changed


def run_asr(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "asr", *args], capture_output=True, text=True, timeout=300, env=env)


@requires_espeak
def test_adapt_verb_errors(small_model, voice_dir, tmp_path):
    result = run_asr("adapt", str(voice_dir), "--model", str(small_model), "--out", str(tmp_path / "x.pt"))
    assert result.returncode == 1
    assert re.match(rf"asr adapt: error: {voice_dir}: 0\.\d minutes of speech in 12 recordings; "
                    "adapting needs at least 1 minute", result.stderr), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.pt").exists()

    (tmp_path / "bad.wav").write_bytes(b"RIFF not really a wav")
    (tmp_path / "bad.txt").write_text("hello")
    result = run_asr("adapt", str(tmp_path), "--model", str(small_model), "--out", str(tmp_path / "x.pt"))
    assert result.returncode == 1 and result.stderr.startswith("asr adapt: error: ") and "bad.wav" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    result = run_asr("adapt", str(voice_dir), "--model", str(tmp_path / "none.pt"), "--out", str(tmp_path / "x.pt"))
    assert result.returncode == 2 and "none.pt: no such checkpoint file" in result.stderr


@pytest.mark.slow
@requires_espeak
def test_adapt_verb_then_transcribe(small_model, voice_dir, tmp_path):
    """`asr adapt` on a folder, then `asr transcribe --model` with what it wrote."""
    folder = tmp_path / "voice"
    folder.mkdir()
    for path in voice_dir.iterdir():  # five copies of each take: above the one-minute minimum
        for k in range(5):
            (folder / f"{path.stem}_{k}{path.suffix}").write_bytes(path.read_bytes())
    out = tmp_path / "my.pt"
    result = run_asr("adapt", str(folder), "--model", str(small_model), "--out", str(out), "--max-updates", "10")
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}: " in result.stderr and "held-out greedy WER" in result.stderr
    assert load_checkpoint(out).metadata["provenance"]["recordings"] == str(folder)
    result = run_asr("transcribe", "--model", str(out), str(voice_dir / "take00.wav"))
    assert result.returncode == 0 and result.stdout.startswith(f"{voice_dir / 'take00.wav'}\t"), result.stderr


@pytest.mark.parametrize("name, lr", [("blstm_ctc", 1e-3), ("rnn_ctc", 1e-3), ("streaming_gru", 3e-4)])
def test_default_learning_rate_follows_the_model(voice_dir, tmp_path, monkeypatch, name, lr):
    from asr.checkpoint import save_checkpoint
    from asr.text import Tokenizer

    monkeypatch.setattr(asr.adapt, "MIN_SECONDS", 10.0)
    path = tmp_path / f"{name}.pt"
    save_checkpoint(path, build_model(name, {"hidden_size": 16, "num_layers": 1}, verbose=False), name, Tokenizer())
    result = adapt(path, voice_dir, AdaptConfig(max_updates=1, eval_every=1))
    assert result.checkpoint.metadata["provenance"]["method"]["lr"] == lr
    assert result.checkpoint.model_name == name
