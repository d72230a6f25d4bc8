"""LibriSpeech: download (resumable, checksummed), extract, and write manifests.

Layout under ``target_dir`` after :func:`download_librispeech`::

    LibriSpeech/<subset>/SPEAKER/CHAPTER/...   extracted audio and transcripts
    <subset>.done                              marker: that subset is fully extracted
    lm/<file>                                  language-model resources (``include_lm``)

Archives are deleted once extracted (``keep_archives`` keeps them). A file only ever takes
its final name after its checksum matched, so a final name means a verified file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

from tqdm import tqdm

from asr.data.manifest import librispeech_tree_to_entries, validate_entries, write_manifest

BASE_URL = "https://www.openslr.org/resources/"

SUBSETS = (
    "train-clean-100", "train-clean-360", "train-other-500",
    "dev-clean", "dev-other", "test-clean", "test-other",
)
LM_FILES = (
    "3-gram.pruned.1e-7.arpa.gz", "3-gram.pruned.3e-7.arpa.gz", "4-gram.arpa.gz",
    "librispeech-lexicon.txt", "librispeech-vocab.txt",
)

CHECKSUM_ALGORITHM = "md5"
# MD5 sums published by OpenSLR in https://www.openslr.org/resources/12/md5sum.txt (and the
# same list for resource 11), keyed by path relative to BASE_URL. Values taken from
# sdrobert/pytorch-database-prep, librispeech.py (FILE2MD5, all 12 files); the seven subset sums
# agree with PaddlePaddle/DeepSpeech, data/librispeech/librispeech.py (MD5_*). torchaudio's
# datasets/librispeech.py (_CHECKSUMS) has SHA-256 sums of the subsets for cross-checking.
CHECKSUMS: dict[str, str | None] = {
    "12/train-clean-100.tar.gz": "2a93770f6d5c6c964bc36631d331a522",
    "12/train-clean-360.tar.gz": "c0e676e450a7ff2f54aeade5171606fa",
    "12/train-other-500.tar.gz": "d1a0fd59409feb2c614ce4d30c387708",
    "12/dev-clean.tar.gz": "42e2234ba48799c1f50f24a7926300a1",
    "12/dev-other.tar.gz": "c8d0bcc9cca99d4f8b62fcc847357931",
    "12/test-clean.tar.gz": "32fa31d27d2e1cad72775fee3f4849a9",
    "12/test-other.tar.gz": "fb5a50374b501bb3bac4815ee91d3135",
    "11/3-gram.pruned.1e-7.arpa.gz": "9a0f1325bcaf3a0f7b7be4be10823c2a",
    "11/3-gram.pruned.3e-7.arpa.gz": "8f67ec741827742eee05799ab7605b50",
    "11/4-gram.arpa.gz": "6abdcd5b055bd482e4f9defe91d40408",
    "11/librispeech-lexicon.txt": "28f72663f6bfed7cd346283c064c315b",
    "11/librispeech-vocab.txt": "bf3cc7a50112831ed8b0afa40cae96a5",
}

_CHUNK = 1 << 20


class ChecksumError(RuntimeError):
    """A downloaded file does not match its published checksum (it has been deleted)."""


class DownloadError(RuntimeError):
    """A download failed after all retries, or the server refused it."""


class UnverifiedDownloadWarning(UserWarning):
    """A file was accepted without a checksum to compare against."""


def file_checksum(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks (bounded memory for multi-GB archives)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(
    url: str,
    dest: str | os.PathLike,
    checksum: str | None = None,
    algorithm: str = "sha256",
    progress: bool = True,
    *,
    timeout: float = 60.0,
    retries: int = 5,
    retry_wait: float = 2.0,
) -> Path:
    """Download ``url`` to ``dest``, resuming a previous partial download.

    Bytes go to ``dest + ".part"``; a re-run or a retry after a connection error asks for the
    rest with ``Range: bytes=N-`` (a server that ignores it and answers 200 makes the download
    restart from zero). Only after the checksum matched is the file renamed to ``dest``, so an
    existing ``dest`` is returned as is. Without a checksum an :class:`UnverifiedDownloadWarning`
    is issued.

    Raises:
        ChecksumError: the digest differs; the partial file is deleted.
        DownloadError: HTTP error, or connection errors beyond ``retries`` (the partial file
            is kept so that the next call resumes).
    """
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, timeout, progress)
            break
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as err:
            if isinstance(err, urllib.error.HTTPError) and err.code < 500 and err.code != 429:
                raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
            if attempt == retries:
                raise DownloadError(
                    f"{url}: {_describe(err)} (gave up after {retries + 1} attempts; "
                    f"run again to resume from {part.stat().st_size if part.exists() else 0} bytes)"
                ) from None
            time.sleep(retry_wait * 2**attempt)
    if checksum is None:
        warnings.warn(f"{dest.name}: no published checksum, file NOT verified", UnverifiedDownloadWarning,
                      stacklevel=2)
    else:
        actual = file_checksum(part, algorithm)
        if actual != checksum.lower():
            part.unlink()
            raise ChecksumError(
                f"{dest.name}: {algorithm} checksum mismatch (expected {checksum}, got {actual}); "
                f"download deleted"
            )
    os.replace(part, dest)
    return dest


def _describe(err: BaseException) -> str:
    reason = getattr(err, "reason", None) or err
    return f"{type(err).__name__}: {reason}"


class _ShortRead(ConnectionError):
    """The connection closed before the announced number of bytes arrived."""


def _fetch(url: str, part: Path, timeout: float, progress: bool) -> None:
    """One HTTP request appending to (or restarting) ``part``; raises on a short read."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            if err.headers.get("Content-Range", "") == f"bytes */{offset}":
                return  # nothing left after ``offset``: the checksum decides
            part.unlink()  # longer than the file on the server: start again
            return _fetch(url, part, timeout, progress)
        raise
    with response:
        if response.status == 206:
            start = response.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
            if start != str(offset):
                raise DownloadError(f"{url}: server resumed at byte {start}, expected {offset}")
            mode = "ab"
        else:  # 200: the server ignored Range and sends everything again
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        received = 0
        with open(part, mode) as f, tqdm(
            total=None if expected is None else offset + expected, initial=offset, unit="B",
            unit_scale=True, unit_divisor=1024, desc=part.name.removesuffix(".part"), disable=not progress,
        ) as bar:
            while chunk := response.read(_CHUNK):
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    # http.client returns b"" rather than raising when a connection closes early.
    if expected is not None and received < expected:
        raise _ShortRead(f"connection closed after {offset + received} of {offset + expected} bytes")


def read_md5sums(path: str | os.PathLike) -> dict[str, str]:
    """Checksum table from an ``md5sum``-format file (e.g. a local mirror's own ``md5sum.txt``).

    Lines are ``<md5>  <path>`` (``<md5> *<path>`` in md5sum's binary mode). A path names a
    LibriSpeech file by its last component, with or without a directory (``dev-clean.tar.gz``,
    ``12/dev-clean.tar.gz``, ``./resources/11/4-gram.arpa.gz``), and is keyed as in
    :data:`CHECKSUMS`; other files (a mirror's README, raw-metadata.tar.gz, ...) are ignored.
    Merge the result over :data:`CHECKSUMS` so that it replaces the sums of the files it names.

    Raises:
        ValueError: a malformed line, or no LibriSpeech file named at all (one-line message).
    """
    resource = {f"{s}.tar.gz": "12" for s in SUBSETS} | {name: "11" for name in LM_FILES}
    table = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.strip().partition(" ")
        name = name.strip().removeprefix("*")
        if len(digest) != 32 or not all(c in "0123456789abcdefABCDEF" for c in digest) or not name:
            raise ValueError(f"{path}:{number}: not an md5sum line '<32 hex digits>  <file>': {line.strip()!r}")
        base = name.rsplit("/", 1)[-1]
        if base in resource:
            table[f"{resource[base]}/{base}"] = digest.lower()
    if not table:
        raise ValueError(f"{path}: names none of the LibriSpeech files ({SUBSETS[0]}.tar.gz, ...)")
    return table


def download_librispeech(
    target_dir: str | os.PathLike,
    subsets: Iterable[str] = SUBSETS,
    mirror: str | None = None,
    include_lm: bool = False,
    *,
    checksums: Mapping[str, str | None] | None = None,
    keep_archives: bool = False,
    progress: bool = True,
) -> Path:
    """Download, verify and extract LibriSpeech subsets (and the LM files); return the corpus dir.

    A re-run skips subsets with a ``<subset>.done`` marker and LM files already in place.

    Args:
        target_dir: where ``LibriSpeech/``, the markers and ``lm/`` go.
        subsets: names from :data:`SUBSETS`.
        mirror: base URL replacing :data:`BASE_URL` (same relative paths ``12/<subset>.tar.gz``
            and ``11/<file>``), e.g. ``http://127.0.0.1:8000/``.
        include_lm: also fetch :data:`LM_FILES` into ``target_dir/lm``.
        checksums: MD5 table keyed by relative path (default :data:`CHECKSUMS`); a file without
            an entry is downloaded with a warning that it is unverified.
        keep_archives: keep ``<subset>.tar.gz`` after extraction.
    """
    target_dir = Path(target_dir)
    subsets = list(subsets)
    unknown = [s for s in subsets if s not in SUBSETS]
    if unknown:
        raise ValueError(f"unknown LibriSpeech subset(s) {', '.join(unknown)}; choose from {', '.join(SUBSETS)}")
    checksums = CHECKSUMS if checksums is None else checksums
    base = (mirror or BASE_URL).rstrip("/") + "/"
    target_dir.mkdir(parents=True, exist_ok=True)

    for subset in subsets:
        done = target_dir / f"{subset}.done"
        if done.exists():
            print(f"{subset}: already extracted ({done.name} exists), skipping")
            continue
        relative = f"12/{subset}.tar.gz"
        archive = download_file(base + relative, target_dir / f"{subset}.tar.gz", checksums.get(relative),
                                CHECKSUM_ALGORITHM, progress)
        extract_archive(archive, target_dir, checksums.get(relative) is not None, progress)
        if not (target_dir / "LibriSpeech" / subset).is_dir():
            raise DownloadError(f"{archive}: archive holds no LibriSpeech/{subset} directory")
        done.touch()
        if not keep_archives:
            archive.unlink()

    if include_lm:
        for name in LM_FILES:
            relative = f"11/{name}"
            download_file(base + relative, target_dir / "lm" / name, checksums.get(relative),
                          CHECKSUM_ALGORITHM, progress)
    return target_dir / "LibriSpeech"


def extract_archive(archive: Path, target_dir: Path, verified: bool, progress: bool = True) -> None:
    """Extract a ``.tar.gz`` into ``target_dir``, refusing members that would land outside it.

    Raises:
        DownloadError: a corrupt or unsafe archive; an unverified one (no checksum) is deleted
            so that the next run downloads it again.
    """
    # Streaming ("r|gz") reads the archive once, front to back; filter="data" refuses absolute
    # paths, "..", links out of the tree and device files.
    try:
        with tarfile.open(archive, "r|gz") as tar:
            for member in tqdm(tar, desc=f"extracting {archive.name}", unit=" files", disable=not progress):
                tar.extract(member, target_dir, filter="data")
    except (tarfile.TarError, EOFError, OSError) as err:
        if not verified:
            archive.unlink()  # so that the next run downloads it again
        raise DownloadError(f"{archive}: cannot extract ({err})") from None


def prepare_librispeech(
    corpus_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    subsets: Iterable[str] = SUBSETS,
    *,
    progress: bool = True,
) -> dict[str, Path]:
    """Write ``out_dir/<subset>.jsonl`` for each subset found under ``corpus_dir``.

    ``corpus_dir`` holds ``<subset>/`` directly or under ``LibriSpeech/`` (as extracted).
    Entries are validated (the report is printed) and bad ones left out. An existing manifest
    is kept: manifests are written atomically, so one that exists is complete.
    """
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    manifests = {}
    for subset in subsets:
        manifest = out_dir / f"{subset}.jsonl"
        manifests[subset] = manifest
        if manifest.exists():
            print(f"{subset}: {manifest} exists, skipping")
            continue
        candidates = [corpus_dir / subset, corpus_dir / "LibriSpeech" / subset]
        tree = next((c for c in candidates if c.is_dir()), None)
        if tree is None:
            raise FileNotFoundError(f"{corpus_dir}: no {subset}/ or LibriSpeech/{subset}/ (download it first)")
        entries, report = validate_entries(librispeech_tree_to_entries(tree), progress=progress)
        print(f"{subset}: {report.summary()}")
        write_manifest(manifest, entries)
    return manifests
