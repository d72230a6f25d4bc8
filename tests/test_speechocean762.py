"""speechocean762: Kaldi files -> manifests with ages, bad entries counted; download against a
local HTTP server (never the internet); `asr prepare speechocean762`."""

import hashlib
import io
import json

import numpy as np
import pytest
import soundfile as sf

from asr.cli import main
from asr.data.librispeech import ChecksumError, DownloadError
from asr.data.manifest import read_manifest
from asr.data.speechocean762 import download_speechocean762, prepare_speechocean762
from httpserver import serve, tar_gz

# speaker -> (age, utterance ids); 0001 and 0003 are children, 1027 and 1029 adults
TRAIN = {"0001": (6, ["000010011", "000010035"]), "0003": (15, ["000030012"]),
         "1027": (37, ["010270004", "010270009"]), "1029": (19, ["010290001"])}
TEST = {"0005": (9, ["000050003"]), "1033": (30, ["010330002"])}
TEXTS = ["WE CALL IT BEAR", "ZERO THREE FIVE ONE", "MARK IS GOING TO SEE ELEPHANT", "KATE LOVES CHINA",
         "IT'S TRUE", "TWO SIX FOUR EIGHT", "THREE TWO TWO SEVEN", "I LIKE APPLES"]


def _audio(seconds: float, fmt: str) -> bytes:
    buffer = io.BytesIO()
    noise = 0.1 * np.random.default_rng(0).standard_normal(int(16000 * seconds))
    if fmt == "WAV":
        sf.write(buffer, noise.astype("float32"), 16000, format="WAV", subtype="PCM_16")
    else:
        sf.write(buffer, noise.astype("float32"), 16000, format="OGG", subtype="OPUS")
    return buffer.getvalue()


def corpus_files(extension: str = "ogg") -> dict[str, bytes]:
    """A speechocean762-layout tree, relative path -> bytes (``extension``: ogg as in the
    shared copy, WAV as in OpenSLR's tarball)."""
    files, texts = {}, iter(TEXTS)
    for split, speakers in (("train", TRAIN), ("test", TEST)):
        rows = {name: [] for name in ("text", "wav.scp", "utt2spk", "spk2age", "spk2gender")}
        for speaker, (age, utterances) in speakers.items():
            rows["spk2age"].append(f"{speaker}\t{age}")
            rows["spk2gender"].append(f"{speaker}\tf")
            for utt in utterances:
                path = f"WAVE/SPEAKER{speaker}/{utt}.{extension}"
                files[path] = _audio(1.0 + 0.25 * len(files), "WAV" if extension == "WAV" else "OGG")
                rows["text"].append(f"{utt}\t{next(texts)}")
                rows["wav.scp"].append(f"{utt}\t{path}")
                rows["utt2spk"].append(f"{utt} {speaker}")  # Kaldi allows a space too
        for name, lines in rows.items():
            files[f"{split}/{name}"] = ("\n".join(lines) + "\n").encode()
    return files


def write_tree(root, files):
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    return root


def test_prepare_writes_manifests_with_ages(tmp_path, capsys):
    corpus = write_tree(tmp_path / "corpus", corpus_files())
    manifests = prepare_speechocean762(corpus, tmp_path / "data", progress=False)
    assert sorted(manifests) == ["test", "train"]
    train = read_manifest(manifests["train"])
    assert [e["id"] for e in train] == [u for _, utts in TRAIN.values() for u in utts]
    first = train[0]
    assert first["audio"] == str(corpus.resolve() / "WAVE/SPEAKER0001/000010011.ogg")
    assert (first["text"], first["speaker"], first["age"]) == ("WE CALL IT BEAR", "0001", 6)
    assert first["duration"] == pytest.approx(1.0, abs=0.01)
    assert {e["speaker"]: e["age_group"] for e in train} == {
        "0001": "child", "0003": "child", "1027": "adult", "1029": "adult"}
    assert [e["age"] for e in read_manifest(manifests["test"])] == [9, 30]
    out = capsys.readouterr().out
    assert "train: 6 utterances (3 by children, 3 by adults), 4 speakers" in out


def test_bad_entries_are_dropped_and_counted(tmp_path, capsys):
    files = corpus_files()
    files["train/text"] += b"000019999\tA TRANSCRIPT WITHOUT AUDIO\n"
    files["train/wav.scp"] += b"000018888\tWAVE/SPEAKER0001/000018888.ogg\n"  # audio without transcript
    files["WAVE/SPEAKER0001/000018888.ogg"] = files["WAVE/SPEAKER0001/000010011.ogg"]
    files["WAVE/SPEAKER0003/000030012.ogg"] = b""  # empty file
    files["WAVE/SPEAKER1027/010270009.ogg"] = b"OggS but not really"
    files["train/text"] = files["train/text"].replace(b"KATE LOVES CHINA", b"KATE LOVES 2 CATS")
    files["train/spk2age"] = files["train/spk2age"].replace(b"1029\t19", b"1029\tadult")  # not a number
    corpus = write_tree(tmp_path / "corpus", files)
    manifests = prepare_speechocean762(corpus, tmp_path / "data", progress=False)
    kept = read_manifest(manifests["train"])
    assert [e["id"] for e in kept] == ["000010011", "000010035", "010290001"]
    assert kept[-1]["age"] is None and kept[-1]["age_group"] == "unknown"
    out = capsys.readouterr().out
    assert "kept 3 of 8 entries, dropped 5" in out
    for reason in ("no transcript: 1", "unmappable characters: 1", "missing audio: 1", "empty audio: 1",
                   "unreadable audio: 1"):
        assert reason in out
    assert "1 of unknown age" in out


def test_dev_speakers_and_a_spread_subset(tmp_path):
    corpus = write_tree(tmp_path / "corpus", corpus_files())
    manifests = prepare_speechocean762(corpus, tmp_path / "data", dev_speakers=2, max_utterances=2, progress=False)
    dev, train = read_manifest(manifests["dev"]), read_manifest(manifests["train"])
    assert {e["speaker"] for e in dev} == {"0001", "1027"}  # one child, one adult
    assert {e["speaker"] for e in train} == {"0003", "1029"}
    assert len(read_manifest(manifests["test"])) == 2
    manifests = prepare_speechocean762(corpus, tmp_path / "subset", max_utterances=3, progress=False)
    # spread over the speakers, not the first three utterances (two speakers, both children)
    assert [e["speaker"] for e in read_manifest(manifests["train"])] == ["0001", "0003", "1027"]


def test_missing_corpus_is_a_one_line_error(tmp_path, capsys):
    assert main(["prepare", "speechocean762", "--data-root", str(tmp_path), "--out", str(tmp_path / "data")]) == 1
    assert capsys.readouterr().err.strip() == (
        f"asr prepare: error: {tmp_path / 'train'}: no wav.scp or text; is {tmp_path} a speechocean762 folder?"
    )


# OpenSLR's tarball: one speechocean762/ folder with 16 kHz WAV files
ARCHIVE = tar_gz({f"speechocean762/{path}": data for path, data in corpus_files("WAV").items()})
MD5 = hashlib.md5(ARCHIVE).hexdigest()


@pytest.fixture
def server():
    with serve({"101/speechocean762.tar.gz": ARCHIVE}) as httpd:
        yield httpd


def test_download_extract_prepare_and_rerun(server, tmp_path):
    corpus = download_speechocean762(tmp_path / "dl", server.url, checksum=MD5, progress=False)
    assert corpus == tmp_path / "dl" / "speechocean762"
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["speechocean762", "speechocean762.done"]
    manifests = prepare_speechocean762(corpus, tmp_path / "data", progress=False)
    assert read_manifest(manifests["test"])[0]["audio"].endswith("WAVE/SPEAKER0005/000050003.WAV")
    requests = len(server.requests)
    assert download_speechocean762(tmp_path / "dl", server.url, checksum=MD5, progress=False) == corpus
    assert len(server.requests) == requests


def test_download_resumes_a_partial_file(server, tmp_path):
    (tmp_path / "speechocean762.tar.gz.part").write_bytes(ARCHIVE[:1000])  # an interrupted run's
    download_speechocean762(tmp_path, server.url, checksum=MD5, progress=False)
    assert server.requests == [("/101/speechocean762.tar.gz", "bytes=1000-")]
    assert (tmp_path / "speechocean762" / "train" / "wav.scp").is_file()


def test_corrupt_download_is_rejected(server, tmp_path, capsys):
    server.files["101/speechocean762.tar.gz"] = ARCHIVE[:-100] + bytes(100)
    with pytest.raises(ChecksumError, match=f"md5 checksum mismatch \\(expected {MD5}"):
        download_speechocean762(tmp_path / "dl", server.url, checksum=MD5, progress=False)
    assert list((tmp_path / "dl").iterdir()) == []  # no .part, no archive, no tree, no marker

    argv = ["prepare", "speechocean762", "--download-dir", str(tmp_path / "dl"), "--mirror", server.url,
            "--md5", MD5, "--out", str(tmp_path / "data")]
    assert main(argv) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert error.startswith("asr prepare: error: speechocean762.tar.gz: md5 checksum mismatch")
    assert not (tmp_path / "data").exists()


def test_archive_without_the_corpus_is_refused(server, tmp_path):
    server.files["101/speechocean762.tar.gz"] = other = tar_gz({"something/else.txt": b"hello"})
    with pytest.raises(DownloadError, match="archive holds no speechocean762/train/wav.scp"):
        download_speechocean762(tmp_path, server.url, checksum=hashlib.md5(other).hexdigest(), progress=False)
    assert not (tmp_path / "speechocean762.done").exists()


def test_cli_downloads_then_prepares(server, tmp_path):
    argv = ["prepare", "speechocean762", "--download-dir", str(tmp_path / "dl"), "--mirror", server.url,
            "--md5", MD5, "--dev-speakers", "2", "--out", str(tmp_path / "data")]
    assert main(argv) == 0
    entries = [json.loads(line) for line in (tmp_path / "data" / "dev.jsonl").read_text().splitlines()]
    assert {e["age_group"] for e in entries} == {"child", "adult"}
    assert main(["prepare", "speechocean762", "--md5", MD5, "--out", str(tmp_path / "x")]) == 2  # needs --download-dir
