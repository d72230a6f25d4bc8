"""Frontend speed: LogMelFrontend against torchaudio's Kaldi fbank, in the same run.

    python tools/bench_frontend.py [--seconds 60] [--repeats 5] [--threads 1]

Prints times per call (best of N), the speed ratio (Kaldi time / ours) and real-time factors,
and the maximum absolute difference between the two on the same audio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_features import kaldi_reference  # noqa: E402  (one definition of the reference)

from asr.features import LogMelFrontend  # noqa: E402


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="audio length per call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    audio = 0.1 * torch.randn(int(args.seconds * 16000), generator=torch.Generator().manual_seed(0))
    frontend = LogMelFrontend().eval()
    with torch.inference_mode():
        ours = best_time(lambda: frontend(audio[None]), args.repeats)
        kaldi = best_time(lambda: kaldi_reference(audio), args.repeats)
        diff = (frontend(audio[None])[0][0] - kaldi_reference(audio)).abs().max().item()
    print(f"audio {args.seconds:.0f} s, {args.threads} thread(s), best of {args.repeats}")
    print(f"LogMelFrontend    {ours * 1e3:8.1f} ms  {args.seconds / ours:8.0f}x real time")
    print(f"kaldi.fbank       {kaldi * 1e3:8.1f} ms  {args.seconds / kaldi:8.0f}x real time")
    print(f"speed ratio (kaldi / ours): {kaldi / ours:.2f}x")
    print(f"max abs difference (log energy): {diff:.4f}")


if __name__ == "__main__":
    main()
