"""CTC decoding: greedy (best path)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asr.text import Tokenizer


@dataclass
class Hypothesis:
    text: str
    tokens: list[int]
    frames: list[int]  # output frame at which each token is emitted (for word timestamps)


def greedy_ctc_decode(log_probs: torch.Tensor, lengths: torch.Tensor, tokenizer: Tokenizer) -> list[Hypothesis]:
    """Best-path decoding: argmax per frame, collapse repeats, drop blanks.

    Shapes: log-probs ``(batch, frames, vocab)``, lengths ``(batch,)``.
    """
    best = log_probs.argmax(dim=-1)
    previous = torch.nn.functional.pad(best, (1, 0), value=tokenizer.blank_id)[:, :-1]
    valid = torch.arange(best.shape[1], device=best.device)[None, :] < lengths[:, None].to(best.device)
    emit = (best != previous) & (best != tokenizer.blank_id) & valid
    hyps = []
    for ids, mask in zip(best.cpu(), emit.cpu()):
        frames = mask.nonzero().flatten().tolist()
        tokens = ids[mask].tolist()
        hyps.append(Hypothesis(tokenizer.decode(tokens), tokens, frames))
    return hyps
