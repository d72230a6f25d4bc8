"""Peak memory and speed of ``asr transcribe`` on a long recording.

    python tools/bench_transcribe.py --model CKPT [--audio FILE | --minutes 60] [-- ASR_OPTIONS...]

Without ``--audio``, a recording of ``--minutes`` is built by repeating espeak-ng sentences
(several voices) with pauses of 0.3 to 2 s, written block by block to a FLAC file at
espeak-ng's own rate (the transcriber resamples). The transcription runs as
``python -m asr transcribe --format srt`` in a subprocess, so that its peak resident memory
(``getrusage(RUSAGE_CHILDREN)``) and wall time include start-up and model loading, as a user
sees them.

This script imports neither torch nor asr: Linux counts a child's memory at ``exec`` from the
parent's address space it was spawned from (Python spawns with vfork), so a parent holding
torch would add its own few hundred MB to every child's peak. Options after ``--`` go to ``asr transcribe`` (e.g.
``-- --batch-size 4 --beam-size 16``). Prints the peak RSS in MB, the real-time factor (wall
time / audio duration) and the first subtitle cues.
"""

from __future__ import annotations

import argparse
import io
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SENTENCES = [
    ("open the door please", "en-us"),
    ("speech recognition is fun", "en-gb"),
    ("the cat sat on the mat", "en-us+f2"),
    ("bring me seven green apples", "en-gb+m3"),
    ("the meeting starts at nine tomorrow morning", "en-us"),
    ("please write down the numbers you hear", "en-gb"),
]


def espeak(text: str, voice: str) -> tuple[np.ndarray, int]:
    wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], check=True, capture_output=True).stdout
    return sf.read(io.BytesIO(wav), dtype="float32")


def build_recording(path: Path, minutes: float, seed: int = 0) -> float:
    """Write ``minutes`` of repeated sentences and pauses as FLAC; returns the seconds written."""
    rng = random.Random(seed)
    clips = [espeak(text, voice) for text, voice in SENTENCES]
    rate = clips[0][1]
    total, target = 0, int(minutes * 60 * rate)
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        while total < target:
            pause = np.zeros(int(rng.uniform(0.3, 2.0) * rate), dtype=np.float32)
            block = np.concatenate([rng.choice(clips)[0], pause])[: target - total]
            f.write(block)
            total += len(block)
    return total / rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint file")
    parser.add_argument("--audio", help="recording to transcribe (default: build one with espeak-ng)")
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the built recording (default: 60)")
    parser.add_argument("--cues", type=int, default=8, help="subtitle cues to print (default: 8)")
    parser.add_argument("asr_options", nargs="*", help="after --: options for asr transcribe")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.audio:
            audio, seconds = Path(args.audio), sf.info(args.audio).duration
        else:
            audio = Path(tmp) / "long.flac"
            start = time.perf_counter()
            seconds = build_recording(audio, args.minutes)
            print(f"built {audio.name}: {seconds / 60:.1f} min in {time.perf_counter() - start:.0f} s")
        # the espeak-ng processes above count in RUSAGE_CHILDREN too, at a few tens of MB
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        command = [sys.executable, "-m", "asr", "transcribe", "--model", args.model, "--format", "srt",
                   "--output-dir", tmp, str(audio), *args.asr_options]
        print(" ".join(command))
        start = time.perf_counter()
        result = subprocess.run(command, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            sys.exit(f"asr transcribe failed ({result.returncode}): {result.stderr.strip()}")
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: kB
        cues = (Path(tmp) / f"{audio.stem}.srt").read_text().split("\n\n")
    print(f"audio {seconds / 60:.1f} min, wall {wall:.1f} s, RTF {wall / seconds:.4f}, "
          f"peak RSS {peak_mb:.0f} MB (children before it: {before / 1024:.0f} MB)")
    print(f"{len(cues) - 1} cues; the first {min(args.cues, len(cues) - 1)}:\n")
    print("\n\n".join(cues[: args.cues]))


if __name__ == "__main__":
    main()
