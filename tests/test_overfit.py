"""A small model memorises a handful of utterances: CTC loss, lengths, masking and greedy
decoding fit together (the training itself lives in conftest's ``tiny_checkpoint``)."""

from asr.checkpoint import load_checkpoint
from conftest import requires_espeak


@requires_espeak
def test_overfit_handful_of_utterances(tiny_checkpoint):
    print(
        f"overfit: CER {tiny_checkpoint.cer:.4f} after {tiny_checkpoint.steps} steps, "
        f"{tiny_checkpoint.seconds:.1f} s"
    )
    assert tiny_checkpoint.cer < 0.02
    assert load_checkpoint(tiny_checkpoint.path).metadata["cer"] == tiny_checkpoint.cer
