"""Decode whole manifests with a checkpoint: the hypotheses ``asr score`` reads (a recipe's decode
stage), and the log-probs ``asr tune-lm`` searches over."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator

import torch
from tqdm import tqdm

from asr.audio import SAMPLE_RATE, AudioError, load_audio
from asr.data.manifest import read_manifest, sample_entries
from asr.decoding import BeamSearchOptions
from asr.fileio import atomic_write
from asr.streaming import Recognizer, stream_audio
from asr.text import normalize_text
from asr.transcribe import Transcriber, Transcript


def decode_manifest(
    checkpoint: str | os.PathLike,
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    device: str = "cpu",
    beam: BeamSearchOptions | None = None,
    batch_size: int = 1,
    chunk_ms: int | None = None,
    greedy: bool = False,
    on_error: Callable[[AudioError], None] | None = None,
) -> int:
    """Decode every utterance of a manifest into ``id<TAB>text`` lines; returns failures.

    Decoding is as :class:`~asr.transcribe.Transcriber`'s (``beam``, ``greedy``: the
    checkpoint's own by default).

    With ``chunk_ms``, each utterance is streamed through a :class:`~asr.streaming.Recognizer`
    (a streaming model) in chunks of that many milliseconds, endpointing included, exactly
    as ``asr stream`` would recognise it (with the same choice of decoding).

    A file that cannot be read is left out and reported to ``on_error(AudioError)`` (default:
    a line on stderr); the others are decoded.
    """
    entries = read_manifest(manifest, required=("id", "audio"))  # nothing else is used here
    paths = [entry["audio"] for entry in entries]
    if chunk_ms is None:
        results = Transcriber(checkpoint, device=device, beam=beam, greedy=greedy).transcribe_files(paths, batch_size)
    else:
        results = stream_files(Recognizer(checkpoint, device=device, beam=beam, greedy=greedy), paths, chunk_ms)
    failures = 0
    with atomic_write(out) as f:
        for entry, (_, result) in tqdm(
            zip(entries, results), total=len(entries), desc="decode", unit="utt", mininterval=2.0
        ):
            if isinstance(result, AudioError):
                if on_error is None:
                    tqdm.write(f"error: {result}", file=sys.stderr)
                else:
                    on_error(result)
                failures += 1
                continue
            f.write(f"{entry['id']}\t{result.text}\n")
    return failures


def stream_files(recognizer: Recognizer, paths: list[str], chunk_ms: int) -> Iterator[tuple[str, Transcript | AudioError]]:
    """Each file streamed through ``recognizer`` in chunks of ``chunk_ms``: its final texts joined."""
    for path in paths:
        try:
            audio = load_audio(path)
        except AudioError as err:
            yield path, err
            continue
        text = stream_audio(recognizer, audio, SAMPLE_RATE * chunk_ms // 1000)
        yield path, Transcript(text=text, duration=audio.shape[-1] / SAMPLE_RATE)


@torch.inference_mode()
def manifest_log_probs(
    checkpoint: str | os.PathLike, manifest: str | os.PathLike, device: str = "cpu", sample: int | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[str]]:
    """The model's log-probs for every utterance of a manifest (or a random ``sample`` of them,
    seeded), one ``(1, frames, vocab)`` tensor and ``(1,)`` length each, with the normalised
    references: the input of :func:`asr.decoding.tune_lm_weights`, computed once for the grid."""
    transcriber = Transcriber(checkpoint, device=device, greedy=True)  # its log-probs only
    log_probs, lengths, references = [], [], []
    entries = sample_entries(read_manifest(manifest), sample)
    for entry in tqdm(entries, desc="log-probs", unit="utt", mininterval=2.0):
        out, out_lengths = transcriber.log_probs([load_audio(entry["audio"])])
        log_probs.append(out.float().cpu())
        lengths.append(out_lengths.cpu())
        references.append(normalize_text(entry["text"])[0])
    return log_probs, lengths, references
