"""File -> text with a trained checkpoint: audio in bounded-memory segments, log-mel frontend,
acoustic model, CTC decoding."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from asr.audio import iter_audio_blocks, split_on_silence
from asr.checkpoint import load_checkpoint
from asr.decoding import greedy_ctc_decode
from asr.features import LogMelFrontend


@dataclass
class Transcript:
    text: str
    duration: float  # seconds of audio


class Transcriber:
    """Holds a model in eval mode and transcribes files or waveforms.

    Long recordings are read block by block and cut at quiet points into segments of at most
    ``max_segment_seconds``, so memory does not grow with the length of the file.
    """

    def __init__(self, checkpoint: str | os.PathLike, device: str = "cpu", max_segment_seconds: float = 30.0) -> None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("--device cuda requested but CUDA is not available; use --device cpu")
        ckpt = load_checkpoint(checkpoint)
        self.device = torch.device(device)
        self.tokenizer = ckpt.tokenizer
        self.model = ckpt.build_model(self.device)
        self.frontend = LogMelFrontend(ckpt.model_config.get("n_mels", 80)).to(self.device).eval()
        self.max_segment_seconds = max_segment_seconds

    @torch.inference_mode()
    def transcribe_audio(self, audio: torch.Tensor) -> str:
        """Mono 16 kHz ``(samples,)`` -> text."""
        feats, lengths = self.frontend(audio.to(self.device)[None])
        if lengths.item() == 0:
            return ""
        log_probs, out_lengths = self.model(feats, lengths)
        return greedy_ctc_decode(log_probs, out_lengths, self.tokenizer)[0].text

    def transcribe_file(self, path: str | os.PathLike) -> Transcript:
        texts, samples = [], 0
        blocks = iter_audio_blocks(path, seconds=self.max_segment_seconds)
        for _, segment in split_on_silence(blocks, self.max_segment_seconds, self.max_segment_seconds / 2):
            samples += len(segment)
            texts.append(self.transcribe_audio(segment))
        return Transcript(" ".join(t for t in texts if t), samples / 16000)


def decode_manifest(checkpoint: str | os.PathLike, manifest: str | os.PathLike, out: str | os.PathLike, device: str = "cpu") -> int:
    """Greedy-decode every utterance of a manifest into ``id<TAB>text`` lines; returns failures."""
    from tqdm import tqdm

    from asr.audio import AudioError
    from asr.data.manifest import read_manifest

    transcriber = Transcriber(checkpoint, device=device)
    failures = 0
    with open(out, "w") as f:
        for entry in tqdm(read_manifest(manifest), desc="decode", unit="utt", mininterval=2.0):
            try:
                text = transcriber.transcribe_file(entry["audio"]).text
            except AudioError as err:
                print(f"error: {err}")
                failures += 1
                continue
            f.write(f"{entry['id']}\t{text}\n")
    return failures
