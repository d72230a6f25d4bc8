"""Accuracy of a model when its test audio is played louder, quieter, in noise, in a room,
through a narrower band or with silence around it.

    python tools/bench_robustness.py --model CKPT --manifest test.jsonl \
        [--sample 300] [--gains-db -20 -10 10] [--snrs-db 20 10 5] [--rt60s-s 0.5] \
        [--sample-rates 8000] [--silences-s 0.5] [--seed 0]

Each condition decodes the same utterances greedily with ``asr.transcribe.Transcriber``:

- ``gain G dB``: the waveform times 10^(G/20), clipped at full scale as a recorder would;
- ``SNR S dB``: white Gaussian noise added at S dB below the utterance's mean power (the
  power of the whole utterance, pauses included; seeded per utterance, so every model hears
  the same noise);
- ``room, RT60 T s``: heard in a room whose reverberation falls 60 dB in T seconds, its direct
  sound 3 dB above the reverberant energy (``asr.audio.room_impulse_response``, the room model
  training uses; seeded per utterance);
- ``recorded at R Hz``: resampled to R Hz and back, so nothing above R / 2 is left, as in a
  telephone call or an 8 kHz recording (the spoken digits of recipes/fsdd);
- ``silence S s``: S seconds of digital silence before and after, as a recorder leaves them
  (and as tightly trimmed clips lack).

Prints a Markdown table of WER and CER per condition, the first row being the audio as it
is. Recordings differ in level by 20 dB and more, and microphones hiss: a model that only
knows the level and cleanliness of its training corpus fails on them, and this shows by how much.
Progress bars show on a terminal only, so that a log file holds just the table.
"""

from __future__ import annotations

import argparse

import jiwer
import numpy as np
import torch
import torchaudio.functional as AF
from tqdm import tqdm

from asr.audio import SAMPLE_RATE, band_limit, load_audio, reverberate, room_impulse_response
from asr.data.manifest import read_manifest, sample_entries
from asr.text import normalize_text
from asr.transcribe import Transcriber


def apply_gain(audio: torch.Tensor, gain_db: float) -> torch.Tensor:
    """``(samples,)`` -> the same, ``gain_db`` louder (negative: quieter), clipped to [-1, 1]."""
    return (audio * 10 ** (gain_db / 20)).clamp(-1.0, 1.0)


def add_white_noise(audio: torch.Tensor, snr_db: float, generator: torch.Generator) -> torch.Tensor:
    """``(samples,)`` -> the same plus white noise ``snr_db`` below its mean power."""
    noise = torch.randn(audio.shape, generator=generator)
    return AF.add_noise(audio[None], noise[None], torch.tensor([snr_db]))[0]


def in_room(audio: torch.Tensor, rt60_s: float, seed: int) -> torch.Tensor:
    """``(samples,)`` heard in a room of reverberation time ``rt60_s``, direct sound 3 dB above
    the reverberant energy; the same length and energy."""
    return reverberate(audio, room_impulse_response(rt60_s, 3.0, np.random.default_rng(seed)))


def add_silence(audio: torch.Tensor, seconds: float) -> torch.Tensor:
    """``(samples,)`` -> the same with ``seconds`` of digital silence before and after."""
    return torch.nn.functional.pad(audio, (round(seconds * SAMPLE_RATE),) * 2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint (e.g. recipes/synthetic/exp/final.pt)")
    parser.add_argument("--manifest", required=True, help="JSONL manifest with audio and text")
    parser.add_argument("--sample", type=int, default=300, help="random utterances to decode (0: all)")
    parser.add_argument("--gains-db", type=float, nargs="*", default=[-20.0, -10.0, 10.0])
    parser.add_argument("--snrs-db", type=float, nargs="*", default=[20.0, 10.0, 5.0])
    parser.add_argument("--rt60s-s", type=float, nargs="*", default=[0.5],
                        help="rooms by reverberation time, seconds (default: 0.5)")
    parser.add_argument("--sample-rates", type=int, nargs="*", default=[8000],
                        help="band-limit to these recording rates (Hz)")
    parser.add_argument("--silences-s", type=float, nargs="*", default=[0.5],
                        help="seconds of silence to add before and after")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)

    entries = sample_entries(read_manifest(args.manifest), args.sample or None, args.seed)
    audios = [load_audio(entry["audio"]) for entry in tqdm(entries, desc="load", unit="utt", mininterval=2.0, disable=None)]
    references = [normalize_text(entry["text"])[0] for entry in entries]
    transcriber = Transcriber(args.model, greedy=True)

    conditions = [("as recorded", "none", 0.0)]
    conditions += [(f"gain {g:+g} dB", "gain", g) for g in args.gains_db]
    conditions += [(f"white noise, SNR {s:g} dB", "noise", s) for s in args.snrs_db]
    conditions += [(f"room, RT60 {t:g} s", "room", t) for t in args.rt60s_s]
    conditions += [(f"recorded at {r / 1000:g} kHz", "rate", r) for r in args.sample_rates]
    conditions += [(f"silence {s:g} s before and after", "silence", s) for s in args.silences_s]

    def changed(audio: torch.Tensor, index: int, kind: str, value: float) -> torch.Tensor:
        if kind == "gain":
            return apply_gain(audio, value)
        if kind == "noise":
            return add_white_noise(audio, value, torch.Generator().manual_seed(args.seed * 100_003 + index))
        if kind == "room":
            return in_room(audio, value, args.seed * 100_003 + index)
        if kind == "rate":
            return band_limit(audio, int(value))
        if kind == "silence":
            return add_silence(audio, value)
        return audio

    print(f"{args.model} on {len(entries)} utterances of {args.manifest}, greedy\n")
    print("| condition | WER | CER |\n|---|---|---|")
    for name, kind, value in conditions:
        heard = [changed(audio, i, kind, value) for i, audio in enumerate(audios)]
        hypotheses = []
        for start in tqdm(range(0, len(heard), args.batch_size), desc=name, leave=False, mininterval=2.0, disable=None):
            hypotheses += [t.text for t in transcriber.transcribe_batch(heard[start : start + args.batch_size])]
        print(f"| {name} | {jiwer.wer(references, hypotheses):.3f} | {jiwer.cer(references, hypotheses):.3f} |", flush=True)


if __name__ == "__main__":
    main()
