"""PocketSphinx 5 (its bundled US English model) next to an asr model, on the same utterances.

    python tools/compare_pocketsphinx.py --manifest recipes/speechocean762/data/test.jsonl \\
        --sample 300 --seed 0 --model recipes/speechocean762/exp/final.pt --out exp/compare

Writes ``OUT/hyp_pocketsphinx.txt`` (and ``OUT/hyp_asr.txt`` with ``--model``), ``id<TAB>text``
lines, and ``OUT/manifest.jsonl``, the utterances compared (``asr score OUT/manifest.jsonl
OUT/hyp_pocketsphinx.txt --by age_group`` breaks a result down), and prints a markdown table of
WER, CER and real-time factor. The real-time factor is the CPU time of recognition over the
audio's duration, on one thread for both (PocketSphinx uses one), with reading and resampling
the audio left out. CPU time rather than wall-clock time, so that other jobs on the machine do
not count (they still slow it somewhat, through shared caches). Needs ``pip install -e
'.[compare]'``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from asr.audio import SAMPLE_RATE, load_audio
from asr.data.manifest import read_manifest, sample_entries, write_manifest
from asr.metrics import score


def to_pcm16(audio: torch.Tensor) -> bytes:
    """Mono float ``(samples,)`` in [-1, 1] -> 16-bit little-endian PCM, what PocketSphinx reads."""
    return (audio.clamp(-1.0, 1.0) * 32767).round().to(torch.int16).numpy().astype("<i2").tobytes()


def pocketsphinx_transcribe(audios: list[torch.Tensor]) -> tuple[list[str], float]:
    """Transcribe 16 kHz waveforms with PocketSphinx's default model; returns (texts, seconds)."""
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")
    texts, seconds = [], 0.0
    for audio in audios:
        pcm = to_pcm16(audio)
        start = time.process_time()
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        hypothesis = decoder.hyp()
        seconds += time.process_time() - start
        texts.append(hypothesis.hypstr if hypothesis is not None else "")
    return texts, seconds


def asr_transcribe(model: str | os.PathLike, audios: list[torch.Tensor]) -> tuple[list[str], float]:
    """Transcribe 16 kHz waveforms with an asr checkpoint (greedy CTC); returns (texts, seconds)."""
    from asr.transcribe import Transcriber

    transcriber = Transcriber(model, greedy=True)
    texts, seconds = [], 0.0
    for audio in audios:
        start = time.process_time()
        (result,) = transcriber.transcribe_batch([audio])
        seconds += time.process_time() - start
        texts.append(result.text)
    return texts, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="JSONL manifest with the utterances and references")
    parser.add_argument("--sample", type=int, metavar="N", help="a random subset of N utterances (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random subset (default: 0)")
    parser.add_argument("--model", help="asr checkpoint to decode the same utterances with, e.g. exp/final.pt")
    parser.add_argument("--out", required=True, help="directory for the hypotheses files")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    entries = sample_entries(read_manifest(args.manifest), args.sample, args.seed)
    audios = [load_audio(entry["audio"]) for entry in entries]
    audio_seconds = sum(len(audio) for audio in audios) / SAMPLE_RATE
    refs = {str(entry["id"]): entry["text"] for entry in entries}
    systems = {"pocketsphinx": ("PocketSphinx 5.1.1, bundled en-us model", pocketsphinx_transcribe, ())}
    if args.model:
        systems["asr"] = (f"asr `{args.model}`, greedy", asr_transcribe, (args.model,))

    out = Path(args.out)
    write_manifest(out / "manifest.jsonl", entries)
    rows = []
    for name, (label, transcribe, extra) in systems.items():
        texts, seconds = transcribe(*extra, audios)
        hyps = dict(zip(refs, texts))
        (out / f"hyp_{name}.txt").write_text("".join(f"{i}\t{text}\n" for i, text in hyps.items()), encoding="utf-8")
        report = score(refs, hyps)
        rows.append(f"| {label} | {report.wer:.3f} | {report.cer:.3f} | {seconds / audio_seconds:.3f} |")
    print(f"{len(entries)} utterances ({audio_seconds / 60:.1f} min) of {args.manifest}"
          + (f", random sample (seed {args.seed})" if args.sample else "")
          + "; RTF: CPU seconds per audio second, one thread each")
    print()
    print("| system | WER | CER | RTF |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
