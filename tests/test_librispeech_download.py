"""Download, verify, extract and prepare against a local HTTP server (never the internet)."""

import hashlib
import io

import numpy as np
import pytest
import soundfile as sf

from asr.data.librispeech import (
    LM_FILES,
    ChecksumError,
    DownloadError,
    UnverifiedDownloadWarning,
    download_file,
    download_librispeech,
    prepare_librispeech,
    read_md5sums,
)
from asr.data.manifest import read_manifest
from httpserver import serve, tar_gz

TRANSCRIPTS = {
    "19-198-0000": "NORTHANGER ABBEY",
    "19-198-0001": "THIS LITTLE WORK WAS FINISHED IN THE YEAR",
    "19-198-0002": "IT'S TRUE",
}


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _fake_dev_clean() -> bytes:
    """A LibriSpeech-layout dev-clean archive: 3 short FLACs of noise and their transcript."""
    files = {"LibriSpeech/README.TXT": b"fake LibriSpeech for tests\n"}
    rng = np.random.default_rng(0)
    for i, utt_id in enumerate(TRANSCRIPTS):
        flac = io.BytesIO()
        noise = 0.1 * rng.standard_normal(8000 + 4000 * i)
        sf.write(flac, noise.astype("float32"), 16000, format="FLAC", subtype="PCM_16")
        files[f"LibriSpeech/dev-clean/19/198/{utt_id}.flac"] = flac.getvalue()
    trans = "".join(f"{u} {t}\n" for u, t in TRANSCRIPTS.items())
    files["LibriSpeech/dev-clean/19/198/19-198.trans.txt"] = trans.encode()
    return tar_gz(files)


ARCHIVE = _fake_dev_clean()
LM = {f"11/{name}": f"fake {name}\n".encode() * 50 for name in LM_FILES}
CHECKSUMS = {"12/dev-clean.tar.gz": _md5(ARCHIVE), **{k: _md5(v) for k, v in LM.items()}}


@pytest.fixture
def server():
    with serve({"12/dev-clean.tar.gz": ARCHIVE, **LM}) as httpd:
        yield httpd


def test_download_extract_prepare(server, tmp_path):
    corpus = download_librispeech(tmp_path / "data", ["dev-clean"], mirror=server.url, include_lm=True,
                                  checksums=CHECKSUMS, progress=False)
    assert corpus == tmp_path / "data" / "LibriSpeech"
    assert (tmp_path / "data" / "dev-clean.done").exists()
    assert not list((tmp_path / "data").glob("*.tar.gz*"))  # archive removed once extracted
    for name in LM_FILES:
        assert (tmp_path / "data" / "lm" / name).read_bytes() == LM[f"11/{name}"]

    manifests = prepare_librispeech(tmp_path / "data", tmp_path / "manifests", ["dev-clean"], progress=False)
    entries = read_manifest(manifests["dev-clean"])
    assert [e["id"] for e in entries] == list(TRANSCRIPTS)
    assert [e["text"] for e in entries] == list(TRANSCRIPTS.values())
    assert [e["duration"] for e in entries] == [0.5, 0.75, 1.0]
    assert {e["speaker"] for e in entries} == {"19"}
    assert entries[0]["audio"] == str(corpus / "dev-clean/19/198/19-198-0000.flac")


def test_second_run_is_a_no_op(server, tmp_path, capsys):
    download_librispeech(tmp_path, ["dev-clean"], mirror=server.url, checksums=CHECKSUMS, progress=False)
    prepare_librispeech(tmp_path, tmp_path / "manifests", ["dev-clean"], progress=False)
    manifest = tmp_path / "manifests" / "dev-clean.jsonl"
    before = (len(server.requests), manifest.stat().st_mtime_ns)
    capsys.readouterr()
    download_librispeech(tmp_path, ["dev-clean"], mirror=server.url, checksums=CHECKSUMS, progress=False)
    prepare_librispeech(tmp_path, tmp_path / "manifests", ["dev-clean"], progress=False)
    assert (len(server.requests), manifest.stat().st_mtime_ns) == before
    out = capsys.readouterr().out
    assert "dev-clean: already extracted" in out and "exists, skipping" in out


def test_interrupted_download_resumes_from_partial_file(server, tmp_path):
    server.mode, server.drops = "drop", 1
    url, dest = server.url + "12/dev-clean.tar.gz", tmp_path / "dev-clean.tar.gz"
    with pytest.raises(DownloadError, match="run again to resume"):
        download_file(url, dest, CHECKSUMS["12/dev-clean.tar.gz"], "md5", progress=False, retries=0)
    partial = (tmp_path / "dev-clean.tar.gz.part").stat().st_size
    assert 0 < partial < len(ARCHIVE) and not dest.exists()

    download_file(url, dest, CHECKSUMS["12/dev-clean.tar.gz"], "md5", progress=False)
    assert server.requests == [("/12/dev-clean.tar.gz", None), ("/12/dev-clean.tar.gz", f"bytes={partial}-")]
    assert dest.read_bytes() == ARCHIVE
    assert not (tmp_path / "dev-clean.tar.gz.part").exists()


def test_dropped_connection_is_retried_within_one_call(server, tmp_path):
    server.mode, server.drops = "drop", 2
    dest = download_file(server.url + "12/dev-clean.tar.gz", tmp_path / "a.tgz", CHECKSUMS["12/dev-clean.tar.gz"],
                         "md5", progress=False, retries=2, retry_wait=0)
    assert dest.read_bytes() == ARCHIVE
    assert len(server.requests) == 3 and all(r[1] is not None for r in server.requests[1:])


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.mode = "ignore-range"
    (tmp_path / "a.tgz.part").write_bytes(b"stale bytes from an earlier attempt")
    dest = download_file(server.url + "12/dev-clean.tar.gz", tmp_path / "a.tgz", CHECKSUMS["12/dev-clean.tar.gz"],
                         "md5", progress=False)
    assert server.requests[0][1] == "bytes=35-"
    assert dest.read_bytes() == ARCHIVE


def test_wrong_checksum_is_rejected_and_not_extracted(server, tmp_path):
    wrong = {"12/dev-clean.tar.gz": "0" * 32}
    with pytest.raises(ChecksumError) as err:
        download_librispeech(tmp_path, ["dev-clean"], mirror=server.url, checksums=wrong, progress=False)
    message = str(err.value)
    assert "dev-clean.tar.gz" in message and "0" * 32 in message and _md5(ARCHIVE) in message
    assert "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no .part, no archive, no tree, no marker


def test_missing_checksum_warns_unverified(server, tmp_path):
    with pytest.warns(UnverifiedDownloadWarning, match="dev-clean.tar.gz: no published checksum"):
        download_librispeech(tmp_path, ["dev-clean"], mirror=server.url, checksums={}, progress=False)
    assert (tmp_path / "dev-clean.done").exists()


def test_unsafe_archive_is_refused(server, tmp_path):
    server.files["12/dev-clean.tar.gz"] = evil = tar_gz({"../escaped.txt": b"outside"})
    with pytest.raises(DownloadError, match="cannot extract"):
        download_librispeech(tmp_path / "data", ["dev-clean"], mirror=server.url,
                             checksums={"12/dev-clean.tar.gz": _md5(evil)}, progress=False)
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "data" / "dev-clean.done").exists()


def test_http_errors_and_unknown_subsets(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(server.url + "12/nothing.tar.gz", tmp_path / "x", progress=False)
    assert len(server.requests) == 1  # a 404 is not retried
    with pytest.raises(ValueError, match="unknown LibriSpeech subset"):
        download_librispeech(tmp_path, ["train-clean-99"])


def test_cli_rejects_a_mirror_file_that_fails_the_published_checksum(server, tmp_path, capsys):
    from asr.cli import main

    argv = ["prepare", "librispeech", "--data-root", str(tmp_path / "data"), "--download", "--mirror", server.url,
            "--subsets", "dev-clean", "--out", str(tmp_path / "manifests")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("asr prepare: error: dev-clean.tar.gz: md5 checksum mismatch (expected 42e2234b")
    assert not (tmp_path / "manifests").exists()


def test_complete_partial_file_is_verified_and_kept(server, tmp_path):
    (tmp_path / "a.tgz.part").write_bytes(ARCHIVE)  # finished earlier, but never renamed
    dest = download_file(server.url + "12/dev-clean.tar.gz", tmp_path / "a.tgz", CHECKSUMS["12/dev-clean.tar.gz"],
                         "md5", progress=False)
    assert server.requests == [("/12/dev-clean.tar.gz", f"bytes={len(ARCHIVE)}-")]  # answered 416
    assert dest.read_bytes() == ARCHIVE


def test_read_md5sums_keys_files_as_the_builtin_table(tmp_path):
    path = tmp_path / "md5sum.txt"
    path.write_text(
        f"{'A' * 32}  dev-clean.tar.gz\n"  # OpenSLR's own lists name files without the resource number
        f"{'b' * 32}  12/test-clean.tar.gz\n"
        f"{'c' * 32} *./resources/11/4-gram.arpa.gz\n"  # md5sum -b writes '*'
        "\n"
        f"{'d' * 32}  raw-metadata.tar.gz\n"  # not a LibriSpeech file we fetch: ignored
    )
    assert read_md5sums(path) == {
        "12/dev-clean.tar.gz": "a" * 32, "12/test-clean.tar.gz": "b" * 32, "11/4-gram.arpa.gz": "c" * 32,
    }
    path.write_text("42e2234ba48799c1f50f24a7926300a1 dev-clean.tar.gz\nnot a checksum line\n")
    with pytest.raises(ValueError, match=r"md5sum.txt:2: not an md5sum line"):
        read_md5sums(path)
    path.write_text(f"{'a' * 32}  README.TXT\n")
    with pytest.raises(ValueError, match="names none of the LibriSpeech files"):
        read_md5sums(path)


def test_cli_checksums_file_replaces_the_builtin_sums_of_the_files_it_names(server, tmp_path, capsys):
    from asr.cli import main

    sums = tmp_path / "md5sum.txt"
    sums.write_text(f"{CHECKSUMS['12/dev-clean.tar.gz']}  12/dev-clean.tar.gz\n")
    download = ["prepare", "librispeech", "--data-root", str(tmp_path / "data"), "--download", "--mirror", server.url,
                "--subsets", "dev-clean", "--checksums", str(sums)]
    assert main(download) == 0  # the built-in sum of the real dev-clean would have rejected it
    assert (tmp_path / "data" / "dev-clean.done").exists() and not (tmp_path / "manifests").exists()
    prepare = ["prepare", "librispeech", "--data-root", str(tmp_path / "data"), "--subsets", "dev-clean",
               "--out", str(tmp_path / "manifests")]
    assert main(prepare) == 0
    assert len(read_manifest(tmp_path / "manifests" / "dev-clean.jsonl")) == len(TRANSCRIPTS)

    sums.write_text(f"{'0' * 32}  dev-clean.tar.gz\n")
    assert main([*download[:3], str(tmp_path / "other"), *download[4:]]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"asr prepare: error: dev-clean.tar.gz: md5 checksum mismatch (expected {'0' * 32}")
    assert main(prepare[:-2] + ["--checksums", str(sums)]) == 2  # --checksums needs --download
