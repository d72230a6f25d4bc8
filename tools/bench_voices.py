"""Every voice of tools/tts.py: synthesis speed, and how human PocketSphinx finds it.

    python tools/bench_voices.py [--sentences 20] [--voices rhvoice,hibari:heart,...] [--warp 1.0]

Each voice (natural voices that are installed, and espeak-ng en-us for reference) says the same
fortune sentences of 10-17 words at its own pitch and rate, as tools/synthesize_corpus.py makes
it: trimmed, at 16 kHz. Speed is seconds of audio per CPU second on one thread (this process and
the synthesiser processes it starts; the engine loaded once, before timing). PocketSphinx 5.1.1
(its bundled en-us model, trained on real speech; ``pip install -e '.[compare]'``) transcribes
the audio: its WER is a proxy for how close a voice is to real speech, lower is closer. Prints a
markdown table.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tts  # noqa: E402
from compare_pocketsphinx import pocketsphinx_transcribe  # noqa: E402
from synthesize_corpus import load_sentences  # noqa: E402

from asr.metrics import score  # noqa: E402

ESPEAK = "espeak-ng:en-us"


def cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def synthesise(voice_id: str, text: str, warp: float) -> np.ndarray:
    if voice_id == ESPEAK:  # espeak-ng's defaults: 175 words per minute, pitch 50
        return tts.espeak(text, "en-us", 175, 50, 100, 100, 0)
    return tts.speak(voice_id, text, warp_factor=warp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=20, help="fortune sentences of 10-17 words")
    parser.add_argument("--voices", default=",".join(tts.NATURAL_VOICES),
                        help="engines or voice ids of tools/tts.py (espeak-ng en-us is always measured)")
    parser.add_argument("--seed", type=int, default=0, help="which sentences")
    parser.add_argument("--warp", type=float, default=1.0,
                        help="vocal-tract warp of the natural voices (the corpus draws 0.88-1.15)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    candidates = [s for s in load_sentences() if 10 <= len(s.transcript.split()) <= 17]
    order = np.random.default_rng(args.seed).permutation(len(candidates))[: args.sentences]
    sentences = [candidates[i] for i in order]
    refs = {str(i): s.transcript for i, s in enumerate(sentences)}
    words = sum(len(s.transcript.split()) for s in sentences)
    print(f"{len(sentences)} sentences, {words} words; speed: audio s per CPU s, one thread\n")
    print("| voice | licence | speed | PocketSphinx WER |")
    print("|---|---|---|---|")
    for voice_id in [*tts.select_voices(args.voices), ESPEAK]:
        reason = tts.missing_reason(voice_id) if voice_id != ESPEAK else None
        if reason:
            print(f"| {voice_id} | not installed: {reason} | | |")
            continue
        synthesise(voice_id, "Warm up.", args.warp)  # loads a neural voice's model
        start = cpu_seconds()
        audios = [synthesise(voice_id, s.text, args.warp) for s in sentences]
        seconds = cpu_seconds() - start
        audio_s = sum(len(a) for a in audios) / tts.SAMPLE_RATE
        texts, _ = pocketsphinx_transcribe([torch.from_numpy(a) for a in audios])
        report = score(refs, {str(i): text.upper() for i, text in enumerate(texts)})
        licence = tts.NATURAL_VOICES[voice_id].licence if voice_id != ESPEAK else "GPL-3.0"
        print(f"| {voice_id} | {licence} | {audio_s / seconds:.0f} | {report.wer:.1%} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
