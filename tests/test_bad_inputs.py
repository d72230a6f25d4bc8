"""Bad inputs, as a new user would give them: each gets one clear line, ``asr VERB: error: ...``,
and the documented exit status (README, "Exit codes and errors"): 1 when an input file could
not be used (the others are still processed) or an output could not be written, 2 for usage
errors and unusable models, configs or manifests, 130 after Ctrl-C.

The table runs each command through ``asr.cli.main`` in this process (what the ``asr`` console
script calls), which keeps some sixty cases within a minute or two on 2 cores; the cases that
need a process of their own (Ctrl-C, a file-size limit, memory, a recipe's stage 1) run
``python -m asr`` or ``run.sh`` as a subprocess. The models are untrained and tiny: only the
handling of the inputs is under test, never what a model hears.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.checkpoint import load_checkpoint, save_checkpoint
from asr.cli import main
from asr.models import build_model
from asr.text import Tokenizer

REPO = Path(__file__).resolve().parents[1]
RATE = 16000
TABLE = os.environ.get("ASR_SUITE_TABLE")  # a JSONL file: each case's command and outcome, for docs/reliability.md


# ---------------------------------------------------------------------------------------------
# inputs, made once per module in one folder


def tone(seconds: float, rate: int = RATE, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * 440 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype("float32")


def truncated(path: Path, data_path: Path) -> Path:
    data = data_path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Every input file of the table, by name."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    f: dict[str, Path] = {}

    def write(name, data, rate=RATE, **kwargs):
        f[name] = root / name
        sf.write(str(f[name]), data, rate, **kwargs)

    speech = tone(1.5)
    write("good.wav", speech, subtype="PCM_16")
    write("good.flac", speech, format="FLAC", subtype="PCM_16")
    write("good.ogg", speech, format="OGG", subtype="VORBIS")
    write("good.mp3", tone(3.0), format="MP3", subtype="MPEG_LAYER_III")
    write("good.opus", tone(4.0), format="OGG", subtype="OPUS")  # long enough for several Ogg pages
    for name in ("wav", "flac", "ogg", "mp3", "opus"):
        f[f"truncated.{name}"] = truncated(root / f"truncated.{name}", f[f"good.{name}"])
        f[f"garbage.{name}"] = root / f"garbage.{name}"
        f[f"garbage.{name}"].write_bytes(rng.bytes(4000))
        f[f"empty.{name}"] = root / f"empty.{name}"
        f[f"empty.{name}"].write_bytes(b"")
    write("u8.wav", speech, subtype="PCM_U8")
    write("s24.wav", speech, subtype="PCM_24")
    write("float.wav", speech, subtype="FLOAT")
    nan = speech.copy()
    nan[100] = np.nan
    write("nan.wav", nan, subtype="FLOAT")
    write("six_channels.wav", np.stack([speech * (1 - 0.1 * c) for c in range(6)], axis=1), subtype="PCM_16")
    for rate in (8000, 22050, 44100, 48000, 96000):
        write(f"rate{rate}.wav", tone(1.0, rate), rate, subtype="PCM_16")
    write("10ms.wav", tone(0.01), subtype="PCM_16")
    write("silence.wav", np.zeros(RATE, dtype="float32"), subtype="PCM_16")
    write("clipping.wav", np.clip(speech * 8, -1, 1), subtype="PCM_16")
    write("over_full_scale.wav", speech * 8, subtype="FLOAT")  # float WAV beyond +-1.0
    f["not_audio.txt"] = root / "not_audio.txt"
    f["not_audio.txt"].write_text("hello\n")

    mixed = root / "mixed"
    mixed.mkdir()
    for name in ("good.wav", "garbage.mp3", "truncated.flac", "good.ogg"):
        (mixed / name).write_bytes(f[name].read_bytes())
    f["mixed"] = mixed
    (root / "no_audio").mkdir()
    (root / "no_audio" / "notes.txt").write_text("nothing to hear\n")
    f["no_audio"] = root / "no_audio"

    # manifests: only id and audio (all asr transcribe and asr decode use), relative paths,
    # missing keys, not UTF-8, one bad file among good ones
    def manifest(name, entries, raw=None):
        f[name] = root / name
        if raw is not None:
            f[name].write_bytes(raw)
        else:
            f[name].write_text("".join(json.dumps(e) + "\n" for e in entries))

    manifest("minimal.jsonl", [{"id": "a", "audio": str(f["good.wav"])}, {"id": "b", "audio": str(f["good.flac"])}])
    manifest("relative.jsonl", [{"id": "a", "audio": "good.wav"}, {"id": "b", "audio": "rate8000.wav"}])
    manifest("no_audio_key.jsonl", [{"id": "a", "path": str(f["good.wav"])}])
    manifest("latin1.jsonl", None, raw=('{"id": "a", "audio": "caf\xe9.wav"}\n').encode("latin-1"))
    manifest("not_json.jsonl", None, raw=b'{"id": "a", "audio": \n')
    manifest("one_bad.jsonl", [{"id": "a", "audio": str(f["good.wav"])}, {"id": "b", "audio": str(f["truncated.mp3"])},
                               {"id": "c", "audio": str(f["good.ogg"])}])
    manifest("train_bad_audio.jsonl", [
        {"id": "a", "audio": str(f["good.wav"]), "duration": 1.5, "text": "A", "speaker": "s"},
        {"id": "b", "audio": str(f["truncated.flac"]), "duration": 1.5, "text": "B", "speaker": "s"},
    ])

    # transcripts for asr score: not UTF-8, digits
    f["ref.txt"] = root / "ref.txt"
    f["ref.txt"].write_text("u1\tTHE CAT SAT\nu2\tIN 1990 WE MET\n")
    f["hyp.txt"] = root / "hyp.txt"
    f["hyp.txt"].write_text("u1\tTHE CAT SAT\nu2\tIN NINETEEN NINETY WE MET\n")
    f["hyp_latin1.txt"] = root / "hyp_latin1.txt"
    f["hyp_latin1.txt"].write_bytes("u1\tCAF\xc9\n".encode("latin-1"))

    # a LibriSpeech-layout tree: a non-UTF-8 transcript; and one with an unknown character and a bad file
    tree = root / "tree_latin1" / "1" / "2"
    tree.mkdir(parents=True)
    (tree / "1-2.trans.txt").write_bytes("1-2-0001 CAF\xc9 OL\xc9\n".encode("latin-1"))
    sf.write(str(tree / "1-2-0001.flac"), speech, RATE)
    f["tree_latin1"] = root / "tree_latin1"
    tree = root / "tree_mixed" / "1" / "2"
    tree.mkdir(parents=True)
    (tree / "1-2.trans.txt").write_text("1-2-0001 HELLO THERE\n1-2-0002 PRICE £ ONLY\n1-2-0003 BROKEN FILE\n")
    for utt in ("0001", "0002"):
        sf.write(str(tree / f"1-2-{utt}.flac"), speech, RATE)
    truncated(tree / "1-2-0003.flac", f["good.flac"])
    f["tree_mixed"] = root / "tree_mixed"

    f["epochs_empty"] = root / "epochs_empty"
    f["epochs_empty"].mkdir()
    return f


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Untrained tiny checkpoints (offline and streaming) and broken ones."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    m = {"offline": root / "offline.pt", "streaming": root / "streaming.pt"}
    save_checkpoint(m["offline"], build_model("blstm_ctc", {"hidden_size": 16, "num_layers": 1, "conv_channels": 4},
                                              verbose=False), "blstm_ctc", Tokenizer())
    save_checkpoint(m["streaming"], build_model("streaming_gru", {"hidden_size": 16, "num_layers": 1, "conv_channels": 4},
                                                verbose=False), "streaming_gru", Tokenizer())
    data = m["offline"].read_bytes()
    m["truncated"] = root / "truncated.pt"
    m["truncated"].write_bytes(data[: len(data) // 2])
    m["foreign"] = root / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, m["foreign"])  # a torch file, not ours
    m["text"] = root / "text.pt"
    m["text"].write_text("not a checkpoint\n")
    m["epochs_truncated"] = root / "epochs_truncated"
    m["epochs_truncated"].mkdir()
    (m["epochs_truncated"] / "epoch-1.pt").write_bytes(data)
    (m["epochs_truncated"] / "epoch-2.pt").write_bytes(data[:1000])
    return m


# ---------------------------------------------------------------------------------------------
# the table


@dataclass
class Case:
    name: str
    argv: list[str]  # {name} is a file of `files`, {model:name} a model of `models`, {tmp} a fresh folder
    status: int
    message: str | None  # regex the error (or warning) line must match in full; None: no stderr line expected
    stdout: str | None = None  # regex searched in stdout
    also: list[str] = field(default_factory=list)  # more lines stderr must hold (regex, full line)


TRANSCRIBE = ["transcribe", "--model", "{model:offline}"]
OK = None


def cannot_read(name: str, reason: str) -> str:
    return rf"asr transcribe: error: \S*{re.escape(name)}: {reason}"


CASES = [
    # -- asr transcribe: damaged files (exit 1: the file is named, the others would go on)
    Case("corrupt WAV (random bytes)", [*TRANSCRIBE, "{garbage.wav}"], 1,
         cannot_read("garbage.wav", r"cannot read audio: not an audio file soundfile can read \(unrecognised format\)")),
    Case("corrupt FLAC", [*TRANSCRIBE, "{garbage.flac}"], 1,
         cannot_read("garbage.flac", r"cannot read audio: not an audio file soundfile can read \(unrecognised format\)")),
    Case("corrupt OGG", [*TRANSCRIBE, "{garbage.ogg}"], 1,
         cannot_read("garbage.ogg", r"cannot read audio: not an audio file soundfile can read \(unrecognised format\)")),
    Case("garbage with a .mp3 extension", [*TRANSCRIBE, "{garbage.mp3}"], 1,
         cannot_read("garbage.mp3", r"cannot read audio: not an audio file soundfile can read \(corrupt or not audio\)")),
    Case("a text file", [*TRANSCRIBE, "{not_audio.txt}"], 1,
         cannot_read("not_audio.txt", r"cannot read audio: not an audio file soundfile can read \(unrecognised format\)")),
    Case("empty WAV", [*TRANSCRIBE, "{empty.wav}"], 1, cannot_read("empty.wav", r"empty file \(0 bytes\)")),
    Case("empty FLAC", [*TRANSCRIBE, "{empty.flac}"], 1, cannot_read("empty.flac", r"empty file \(0 bytes\)")),
    Case("empty OGG", [*TRANSCRIBE, "{empty.ogg}"], 1, cannot_read("empty.ogg", r"empty file \(0 bytes\)")),
    Case("empty MP3", [*TRANSCRIBE, "{empty.mp3}"], 1, cannot_read("empty.mp3", r"empty file \(0 bytes\)")),
    Case("truncated WAV", [*TRANSCRIBE, "{truncated.wav}"], 1,
         cannot_read("truncated.wav", r"truncated file \(header declares \d+ bytes, file has \d+\)")),
    Case("truncated FLAC", [*TRANSCRIBE, "{truncated.flac}"], 1,
         cannot_read("truncated.flac", r"truncated or corrupt \(flac decoder lost sync\)")),
    Case("truncated OGG", [*TRANSCRIBE, "{truncated.ogg}"], 1,
         cannot_read("truncated.ogg", r"cannot read audio: malformed audio file \(truncated or corrupt\)")),
    # libsndfile decodes a cut Opus stream to the cut without an error: refused, not half transcribed
    Case("truncated Opus", [*TRANSCRIBE, "{truncated.opus}"], 1,
         cannot_read("truncated.opus", r"truncated file \(its Ogg stream has no end page\)")),
    # refused, not half transcribed, and mpg123's resync notes stay off the terminal
    Case("truncated MP3", [*TRANSCRIBE, "{truncated.mp3}"], 1,
         cannot_read("truncated.mp3", r"truncated file \(\d+ of \d+ frames readable\)")),
    Case("NaN in a float WAV", [*TRANSCRIBE, "{nan.wav}"], 1, cannot_read("nan.wav", "contains NaN or infinite samples")),
    Case("10 ms clip", [*TRANSCRIBE, "{10ms.wav}"], 1,
         cannot_read("10ms.wav", r"too short \(10 ms of audio; at least 25 ms, one analysis window, is needed\)")),
    Case("missing file", [*TRANSCRIBE, "{tmp}/nope.flac"], 1, cannot_read("nope.flac", "no such file")),
    Case("directory without audio", [*TRANSCRIBE, "{no_audio}"], 1,
         r"asr transcribe: error: \S+no_audio: no audio files \(\.wav, \.flac, \.ogg, \.opus, \.mp3\) in this directory"),
    Case("directory mixing good and bad files", [*TRANSCRIBE, "{mixed}"], 1,
         r"asr transcribe: 2 of 4 file\(s\) failed:", stdout=r"mixed/good\.ogg\t.*\n.*mixed/good\.wav\t",
         also=[cannot_read("garbage.mp3", r"cannot read audio: .*"), cannot_read("truncated.flac", r"truncated or corrupt .*"),
               r"  \S+mixed/garbage\.mp3: cannot read audio: .*", r"  \S+mixed/truncated\.flac: truncated or corrupt .*"]),
    # -- asr transcribe: unusual but good files (exit 0, nothing on stderr)
    Case("8-bit WAV", [*TRANSCRIBE, "{u8.wav}"], 0, OK, stdout=r"u8\.wav\t"),
    Case("24-bit WAV", [*TRANSCRIBE, "{s24.wav}"], 0, OK, stdout=r"s24\.wav\t"),
    Case("float WAV", [*TRANSCRIBE, "{float.wav}"], 0, OK, stdout=r"float\.wav\t"),
    Case("6 channels", [*TRANSCRIBE, "{six_channels.wav}"], 0, OK, stdout=r"six_channels\.wav\t"),
    *[Case(f"{rate / 1000:g} kHz", [*TRANSCRIBE, f"{{rate{rate}.wav}}"], 0, OK, stdout=rf"rate{rate}\.wav\t")
      for rate in (8000, 22050, 44100, 48000, 96000)],
    Case("good MP3", [*TRANSCRIBE, "{good.mp3}"], 0, OK, stdout=r"good\.mp3\t"),
    Case("clipping", [*TRANSCRIBE, "{clipping.wav}"], 0, OK, stdout=r"clipping\.wav\t"),
    Case("float WAV beyond full scale", [*TRANSCRIBE, "{over_full_scale.wav}"], 0, OK, stdout=r"over_full_scale\.wav\t"),
    # empty text, and the one line that says why
    Case("digital silence", [*TRANSCRIBE, "{silence.wav}"], 0,
         r"asr transcribe: warning: \S+silence\.wav: digital silence \(every sample is 0\): nothing to transcribe",
         stdout=r"silence\.wav\t\n"),
    # -- asr transcribe: manifests
    Case("manifest with only id and audio", [*TRANSCRIBE, "--manifest", "{minimal.jsonl}"], 0, OK, stdout=r"^a\t.*\nb\t"),
    Case("manifest with relative paths (from its folder)", [*TRANSCRIBE, "--manifest", "{relative.jsonl}"], 0, OK,
         stdout=r"^a\t.*\nb\t"),
    Case("manifest without an audio key", [*TRANSCRIBE, "--manifest", "{no_audio_key.jsonl}"], 2,
         r"asr transcribe: error: \S+no_audio_key\.jsonl:1: missing key\(s\) audio"),
    Case("manifest not UTF-8", [*TRANSCRIBE, "--manifest", "{latin1.jsonl}"], 2,
         r"asr transcribe: error: \S+latin1\.jsonl: not UTF-8 text \(byte 0xe9 at offset 25\)"),
    Case("manifest not JSON", [*TRANSCRIBE, "--manifest", "{not_json.jsonl}"], 2,
         r"asr transcribe: error: \S+not_json\.jsonl:1: not valid JSON \(.*\)"),
    Case("missing manifest", [*TRANSCRIBE, "--manifest", "{tmp}/none.jsonl"], 2,
         r"asr transcribe: error: \S+none\.jsonl: No such file or directory"),
    # -- models (exit 2)
    Case("truncated checkpoint", ["transcribe", "--model", "{model:truncated}", "{good.wav}"], 2,
         r"asr transcribe: error: \S+truncated\.pt: not a readable checkpoint \(\w+\)"),
    Case("foreign checkpoint (a torch file)", ["transcribe", "--model", "{model:foreign}", "{good.wav}"], 2,
         r"asr transcribe: error: \S+foreign\.pt: not an asr checkpoint \(expected format asr-checkpoint-1\)"),
    Case("text file as checkpoint", ["transcribe", "--model", "{model:text}", "{good.wav}"], 2,
         r"asr transcribe: error: \S+text\.pt: not a readable checkpoint \(\w+\)"),
    Case("missing checkpoint", ["transcribe", "--model", "{tmp}/none.pt", "{good.wav}"], 2,
         r"asr transcribe: error: \S+none\.pt: no such checkpoint file"),
    # -- usage (exit 2; argparse's own errors read the same)
    Case("nothing to transcribe", TRANSCRIBE, 2,
         r"asr transcribe: error: nothing to transcribe; give audio files, directories or --manifest"),
    Case("unknown option", [*TRANSCRIBE, "--colour", "{good.wav}"], 2,
         r"asr transcribe: error: unrecognized arguments: --colour", also=[r"usage: .*", r" +\[.*"]),
    # -- asr stream --file
    Case("stream: offline model", ["stream", "--model", "{model:offline}", "--file", "{good.wav}"], 2,
         r"asr stream: error: \S+offline\.pt: a blstm_ctc model cannot stream; train one with model=streaming_gru"),
    Case("stream: truncated MP3 refused before any text",
         ["stream", "--model", "{model:streaming}", "--file", "{truncated.mp3}"], 1,
         r"asr stream: error: \S+truncated\.mp3: truncated file \(\d+ of \d+ frames readable\)", stdout=r"^$"),
    Case("stream: 10 ms clip", ["stream", "--model", "{model:streaming}", "--file", "{10ms.wav}"], 1,
         r"asr stream: error: \S+10ms\.wav: too short \(10 ms of audio; .*\)"),
    Case("stream: missing file", ["stream", "--model", "{model:streaming}", "--file", "{tmp}/none.wav"], 1,
         r"asr stream: error: \S+none\.wav: no such file"),
    Case("stream: a 6-channel file is fine", ["stream", "--model", "{model:streaming}", "--file", "{six_channels.wav}"],
         0, r"\d+ utterance\(s\) finalised from 1\.5 s of audio"),
    # -- asr decode
    Case("decode: one bad file among good ones", ["decode", "--model", "{model:offline}", "--greedy",
                                                  "--manifest", "{one_bad.jsonl}", "--out", "{tmp}/hyp.txt"], 1,
         r"asr decode: error: \S+truncated\.mp3: truncated file \(\d+ of \d+ frames readable\)"),
    Case("decode: streaming model, chunked, bad file", ["decode", "--model", "{model:streaming}", "--greedy", "--chunk-ms",
                                                        "160", "--manifest", "{one_bad.jsonl}", "--out", "{tmp}/hyp.txt"], 1,
         r"asr decode: error: \S+truncated\.mp3: truncated file \(\d+ of \d+ frames readable\)"),
    Case("decode: foreign checkpoint", ["decode", "--model", "{model:foreign}", "--manifest", "{minimal.jsonl}",
                                        "--out", "{tmp}/hyp.txt"], 2,
         r"asr decode: error: \S+foreign\.pt: not an asr checkpoint \(expected format asr-checkpoint-1\)"),
    Case("decode: manifest without audio", ["decode", "--model", "{model:offline}", "--manifest", "{no_audio_key.jsonl}",
                                            "--out", "{tmp}/hyp.txt"], 2,
         r"asr decode: error: \S+no_audio_key\.jsonl:1: missing key\(s\) audio"),
    # -- asr prepare
    Case("prepare: transcript not UTF-8", ["prepare", "librispeech-tree", "--root", "{tree_latin1}", "--out", "{tmp}/m.jsonl"],
         1, r"asr prepare: error: \S+1-2\.trans\.txt: not UTF-8 text \(byte 0xc9 at offset 12\)"),
    Case("prepare: unknown characters and a truncated file are dropped and counted",
         ["prepare", "librispeech-tree", "--root", "{tree_mixed}", "--out", "{tmp}/m.jsonl"], 0, OK,
         stdout=r"kept 1 of 3 entries, dropped 2\n  unmappable characters: 1 \(e\.g\. 1-2-0002: '£' in 'PRICE £ ONLY'\)\n"
                r"  unreadable audio: 1 \(e\.g\. 1-2-0003: \S+1-2-0003\.flac: truncated or corrupt"),
    Case("prepare: missing folder", ["prepare", "librispeech-tree", "--root", "{tmp}/none", "--out", "{tmp}/m.jsonl"], 1,
         r"asr prepare: error: \S+none: no such directory"),
    Case("prepare fsdd: missing corpus", ["prepare", "fsdd", "--data-root", "{tmp}/none", "--out", "{tmp}/fsdd"], 1,
         r"asr prepare: error: .*none.*"),
    # -- asr train (exit 2: the configuration cannot be used)
    Case("train: missing config file", ["train", "--config", "{tmp}/none.yaml"], 2,
         r"asr train: error: \S+none\.yaml: No such file or directory"),
    Case("train: missing manifest", ["train", "data.train={tmp}/none.jsonl", "exp_dir={tmp}/exp", "threads=1"], 2,
         r"asr train: error: \S+none\.jsonl: No such file or directory"),
    Case("train: unknown option", ["train", "epocs=3"], 2, r"asr train: error: unknown TrainConfig option\(s\): epocs; .*"),
    Case("train: init_from a foreign checkpoint", ["train", "init_from={model:foreign}", "exp_dir={tmp}/exp", "threads=1"],
         2, r"asr train: error: \S+foreign\.pt: not an asr checkpoint \(expected format asr-checkpoint-1\)"),
    # -- asr compute-cmvn: a file that cannot be used (exit 1)
    Case("compute-cmvn: truncated file", ["compute-cmvn", "--manifest", "{train_bad_audio.jsonl}", "--out", "{tmp}/cmvn.pt"],
         1, r"asr compute-cmvn: error: \S+truncated\.flac: truncated or corrupt \(flac decoder lost sync\)"),
    # -- asr score
    Case("score: missing references", ["score", "{tmp}/none.txt", "{hyp.txt}"], 2,
         r"asr score: error: \S+none\.txt: No such file or directory"),
    Case("score: hypotheses not UTF-8", ["score", "{ref.txt}", "{hyp_latin1.txt}"], 2,
         r"asr score: error: \S+hyp_latin1\.txt: not UTF-8 text \(byte 0xc9 at offset 6\)"),
    Case("score: digits are not words any model can say", ["score", "{ref.txt}", "{hyp.txt}"], 0, OK,
         stdout=r"^WER 0\.0000 \(S=0, D=0, I=0, N=3\)\nCER 0\.0000\n1 reference\(s\) hold characters outside the "
                r"alphabet \(e\.g\. digits\) and are not scored, as training leaves them out: u2"),
    # -- asr average
    Case("average: no epoch checkpoints", ["average", "--exp-dir", "{epochs_empty}", "--out", "{tmp}/final.pt"], 2,
         r"asr average: error: \S+epochs_empty: no epoch-K\.pt checkpoints to average"),
    Case("average: a truncated epoch checkpoint", ["average", "--exp-dir", "{model:epochs_truncated}", "--out",
                                                   "{tmp}/final.pt"], 2,
         r"asr average: error: \S+epoch-2\.pt: not a readable checkpoint \(\w+\)"),
]


def expand(argv: list[str], files: dict, models: dict, tmp: Path) -> list[str]:
    def one(match):
        key = match.group(1)
        if key == "tmp":
            return str(tmp)
        if key.startswith("model:"):
            return str(models[key[6:]])
        return str(files[key])

    return [re.sub(r"\{([^}]+)\}", one, arg) for arg in argv]


def run_main(argv: list[str], capfd) -> tuple[int, str, str]:
    """``asr ARGV`` in this process: exit status, stdout, stderr (file descriptors, so that
    anything a native library writes is caught too)."""
    capfd.readouterr()
    try:
        status = main(argv)
    except SystemExit as exit:  # argparse's usage errors
        status = exit.code
    out, err = capfd.readouterr()
    return status, out, err


def stderr_lines(err: str) -> list[str]:
    """stderr's lines without progress bars (tqdm's "3/4 [00:01<00:00, ...]", redrawn after
    carriage returns)."""
    return [line for line in err.replace("\r", "\n").splitlines()
            if line.strip() and not re.search(r"\d+(/\d+)? \[\d+:\d+", line)]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(case: Case, files, models, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths in a manifest are found from its folder, not from here
    status, out, err = run_main(expand(case.argv, files, models, tmp_path), capfd)
    lines = stderr_lines(err)
    print(f"exit {status}\nstdout: {out!r}\nstderr: {lines}")
    assert status == case.status
    expected = [case.message] if case.message else []
    unmatched = [line for line in lines if not any(re.fullmatch(pattern, line) for pattern in expected + case.also)]
    assert not unmatched, f"unexpected stderr lines (native chatter, tracebacks?): {unmatched}"
    for pattern in expected + case.also:
        assert any(re.fullmatch(pattern, line) for line in lines), f"no stderr line matches {pattern!r}"
    if case.stdout is not None:
        assert re.search(case.stdout, out, re.M), out
    if TABLE:
        shown = [re.sub(r"\S*/(inputs|models|test_bad_input)[^/\s]*/", "", arg) for arg in ["asr", *expand(case.argv, files, models, tmp_path)]]
        line = next((line for line in lines if re.fullmatch(case.message, line)), "") if case.message else ""
        with open(TABLE, "a") as f:
            f.write(json.dumps({"case": case.name, "command": " ".join(shown), "status": status,
                                "message": re.sub(r"\S*/(inputs|models|test_bad_input)[^/\s]*/", "", line)}) + "\n")


def test_every_error_is_one_line_with_the_verb(capfd, files, models, tmp_path):
    """Not a case of the table: the table's expectations themselves say `asr VERB: error:`, so
    that a new case cannot slip in with another form."""
    for case in CASES:
        if case.status:
            verb = case.argv[0]
            assert case.message.startswith(f"asr {verb}: "), case.name


def test_unreadable_file(files, models, tmp_path, capfd, monkeypatch):
    """Permissions: root (CI) reads any file, so there the refusal is emulated where the
    library asks (os.access); as another user the file is really made unreadable."""
    path = tmp_path / "locked.wav"
    path.write_bytes(files["good.wav"].read_bytes())
    path.chmod(0)
    if os.geteuid() == 0:
        real_access = os.access
        monkeypatch.setattr("asr.audio.os.access", lambda p, mode: False if Path(p) == path else real_access(p, mode))
    status, out, err = run_main(["transcribe", "--model", str(models["offline"]), str(path)], capfd)
    assert status == 1
    assert stderr_lines(err) == [f"asr transcribe: error: {path}: permission denied"]


def test_same_file_same_verdict_everywhere(files):
    """One input path: whole-file loading (training, caching, LM tuning), block streaming
    (transcribe, stream --file), the full check (stream --file, manifest validation) accept and
    refuse the same files with the same first words."""
    from asr.audio import AudioError, check_audio, iter_audio_blocks, load_audio
    from asr.data.manifest import validate_entries

    names = [n for n in files if re.search(r"\.(wav|flac|ogg|mp3|txt)$", n)]
    for name in names:
        verdicts = []
        for read in (load_audio, lambda p: torch.cat(list(iter_audio_blocks(p, seconds=0.5))), check_audio):
            try:
                read(files[name])
                verdicts.append("ok")
            except AudioError as err:
                verdicts.append(str(err).split("(")[0].split(":")[1].strip())
        assert len(set(verdicts)) == 1, (name, verdicts)
        kept, _ = validate_entries([{"id": "x", "audio": str(files[name]), "text": "A"}], progress=False)
        assert bool(kept) == (verdicts[0] == "ok"), name


# ---------------------------------------------------------------------------------------------
# cases that need a process of their own


def asr_process(*args, preexec_fn=None, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

    def setup():
        # a shell without job control starts background jobs with SIGINT ignored, and children
        # inherit that (Python then installs no KeyboardInterrupt): give the child Ctrl-C back
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if preexec_fn is not None:
            preexec_fn()

    return subprocess.Popen([sys.executable, "-m", "asr", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, preexec_fn=setup, **kwargs)


def wait_for_line(stream, pattern: str, limit: int = 10_000) -> str:
    """Read ``stream`` until a line matches (what the process has done so far, never a clock)."""
    for _ in range(limit):
        line = stream.readline()
        if not line:
            raise AssertionError(f"stream ended before a line matching {pattern!r}")
        if re.search(pattern, line):
            return line
    raise AssertionError(f"no line matching {pattern!r}")


def test_ctrl_c_during_transcription(files, models, tmp_path):
    """SIGINT after the first file: exit 130 with one line; every output file written is whole."""
    inputs = tmp_path / "many"
    inputs.mkdir()
    for i in range(400):
        (inputs / f"f{i:03d}.wav").write_bytes(files["good.wav"].read_bytes())
    out = tmp_path / "out"
    process = asr_process("transcribe", "--model", models["offline"], "--format", "json", "--output-dir", out, inputs)
    while not (out.is_dir() and any(out.glob("*.json"))):  # the first file is done
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert [line for line in stderr_lines(stderr)] == ["asr transcribe: interrupted"]
    written = sorted(out.iterdir())
    assert 0 < len(written) < 400
    for path in written:  # whole JSON documents, no temporary files left
        assert path.suffix == ".json" and json.loads(path.read_text())["audio"].endswith(f"{path.stem}.wav")


def tiny_training_manifest(tmp_path: Path, files) -> Path:
    entries = [{"id": f"u{i}", "audio": str(files["good.wav"]), "duration": 1.5, "text": "A TONE", "speaker": "s"}
               for i in range(8)]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return manifest


TRAIN_OVERRIDES = ["model_config.hidden_size=16", "model_config.num_layers=1", "model_config.conv_channels=4",
                   "data.max_frames=400", "data.num_workers=0", "threads=1", "log_every_steps=1"]


def test_ctrl_c_during_training_saves_a_resumable_step(files, tmp_path):
    manifest = tiny_training_manifest(tmp_path, files)
    exp = tmp_path / "exp"
    args = ["train", f"data.train={manifest}", f"exp_dir={exp}", "epochs=1000", "save_every_steps=100000",
            *TRAIN_OVERRIDES]
    process = asr_process(*args)
    wait_for_line(process.stdout, r"^training \d+ steps")
    while not (exp / "log.csv").exists():  # an epoch or more done: well inside the loop
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr_lines(stderr)[-1] == (f"asr train: interrupted; {exp / 'last.pt'} holds the last step: "
                                        "run the same command to resume")
    state = load_checkpoint(exp / "last.pt").trainer_state
    assert state["step"] > 0
    assert not list(exp.glob(".*.tmp")), "no half-written file left behind"
    for epoch in exp.glob("epoch-*.pt"):
        load_checkpoint(epoch)  # every checkpoint left is whole

    # the same command resumes at the saved step (one more step and done)
    resumed = asr_process(*args[:-len(TRAIN_OVERRIDES)], f"max_steps={state['step'] + 1}", *TRAIN_OVERRIDES)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert f"step {state['step']}" in stdout and "resumed from" in stdout


def limit_file_size(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # writes past it fail with EFBIG
    return apply


@pytest.mark.parametrize("what", ["cmvn", "arpa", "log"])
def test_full_disk_leaves_nothing_half_written(what, files, tmp_path):
    """A real OS error on write (RLIMIT_FSIZE: EFBIG, as a full disk gives ENOSPC): exit 1, one
    line naming the file, and no partial file where the output would be (CMVN statistics, an
    ARPA LM, the training log and checkpoints)."""
    manifest = tiny_training_manifest(tmp_path, files)
    if what == "cmvn":
        out = tmp_path / "cmvn.pt"
        args, limit = ["compute-cmvn", "--manifest", manifest, "--out", out], 200
    elif what == "arpa":
        out = tmp_path / "lm.arpa"
        big = tmp_path / "text.jsonl"  # enough distinct words for an ARPA file of some kilobytes
        big.write_text("".join(json.dumps({"id": str(i), "audio": "x", "duration": 1, "speaker": "s",
                                           "text": f"WORD{chr(65 + i % 26)}{chr(65 + i // 26 % 26)} AND MORE"}) + "\n"
                               for i in range(600)))
        args, limit = ["lm", "--manifest", big, "--out", out], 2000
    else:
        out = tmp_path / "exp" / "epoch-1.pt"
        args, limit = ["train", f"data.train={manifest}", f"exp_dir={tmp_path / 'exp'}", "epochs=1", *TRAIN_OVERRIDES], 4000
    process = asr_process(*args, preexec_fn=limit_file_size(limit))
    _, stderr = process.communicate(timeout=300)
    lines = stderr_lines(stderr)
    assert process.returncode == 1, stderr
    assert re.fullmatch(rf"asr {args[0]}: error: \S+: File too large", lines[-1]), lines
    assert not out.exists()
    leftovers = [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers
    if what == "log":  # the log, written before the checkpoint, is whole: a header and one row
        rows = (tmp_path / "exp" / "log.csv").read_text().splitlines()
        assert len(rows) == 2 and rows[0].startswith("epoch,step,train_loss")


def peak_memory_mb(*args) -> tuple[float, subprocess.CompletedProcess]:
    code = ("import resource, sys; from asr.cli import main; status = main(sys.argv[1:]); "
            "print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(status)")
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    kb = int(re.search(r"maxrss (\d+)", result.stderr).group(1))
    return kb / 1024, result


def test_very_long_file_memory_stays_bounded(models, tmp_path):
    """Half an hour at 8 kHz would be 115 MB of float32 at 16 kHz, loaded whole; read in blocks
    and cut in segments, transcribing it takes about the memory of a short file."""
    short, long = tmp_path / "short.flac", tmp_path / "long.flac"
    noise = (0.01 * np.random.default_rng(0).standard_normal(8000 * 60)).astype("float32")
    sf.write(str(short), noise[:8000], 8000, format="FLAC", subtype="PCM_16")
    with sf.SoundFile(str(long), "w", 8000, 1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(30):  # one minute at a time: the test itself stays small
            f.write(noise)
    baseline, _ = peak_memory_mb("transcribe", "--model", models["offline"], "--greedy", short)
    peak, result = peak_memory_mb("transcribe", "--model", models["offline"], "--greedy", long)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{long}\t")
    print(f"peak RSS: short file {baseline:.0f} MB, half an hour {peak:.0f} MB")
    assert peak - baseline < 50, (baseline, peak)


# ---------------------------------------------------------------------------------------------
# the recipes' stage 1


@pytest.mark.parametrize("recipe, variable", [("fsdd", "FSDD_ROOT"), ("speechocean762", "SPEECHOCEAN762_ROOT")])
def test_recipe_stage_1_without_its_corpus(recipe, variable, tmp_path):
    env = {**os.environ, variable: str(tmp_path / "no-corpus"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", str(REPO / "recipes" / recipe / "run.sh"), "--quick", "--stop-stage", "1",
         "--data", str(tmp_path / "data"), "--exp", str(tmp_path / "exp")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1 and re.fullmatch(r"asr prepare: error: .*no-corpus.*", lines[0]), lines
    assert not (tmp_path / "data" / ".manifests.done").exists()
