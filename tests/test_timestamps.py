"""Word timestamps against the truth of a known silence between two utterances."""

import jiwer
import torch

from conftest import requires_espeak

SAMPLE_RATE = 16000
GAP_SECONDS = 1.0


@requires_espeak
def test_word_times_at_a_known_silence(tiny_checkpoint):
    from asr.transcribe import Transcriber

    first, second = tiny_checkpoint.audio[0], tiny_checkpoint.audio[1]
    second_start = len(first) + int(GAP_SECONDS * SAMPLE_RATE)
    joined = torch.cat([first, torch.zeros(second_start - len(first)), second])
    # the truth, from the concatenated audio: the last sample above -60 dBFS before the
    # silence and the first one after it
    loud = (joined.abs() > 1e-3).nonzero().flatten()
    speech_end = (int(loud[loud < second_start].max()) + 1) / SAMPLE_RATE
    speech_start = int(loud[loud >= second_start].min()) / SAMPLE_RATE

    # The tiny model memorised each clip whole (even 25 ms of added silence garbles its
    # first or last word), so the recording is cut at the edges of the known silence rather
    # than where split_on_silence would cut it; the second segment's words are offset by its start.
    transcript = Transcriber(tiny_checkpoint.path).transcribe_segments(
        [(0.0, joined[: len(first)]), (second_start / SAMPLE_RATE, joined[second_start:])]
    )
    reference = f"{tiny_checkpoint.sentences[0]} {tiny_checkpoint.sentences[1]}".upper()
    assert len(transcript.words) == len(reference.split()) and jiwer.cer(reference, transcript.text) < 0.1
    assert abs(transcript.duration - len(joined) / SAMPLE_RATE) < 1e-6

    words = transcript.words
    boundary = len(tiny_checkpoint.sentences[0].split())  # index of the first word after the silence
    before, after = words[boundary - 1], words[boundary]
    errors = {f"end of {before.word}": before.end - speech_end, f"start of {after.word}": after.start - speech_start}
    print("boundary word time errors: " + ", ".join(f"{name} {1000 * e:+.0f} ms" for name, e in errors.items()))
    assert all(abs(e) <= 0.1 for e in errors.values()), errors

    assert all(w.start < w.end for w in words)
    assert all(a.end <= b.start for a, b in zip(words, words[1:]))
    assert all(0.0 < w.confidence <= 1.0 for w in words)


@requires_espeak
def test_edge_silence_of_a_model_trained_with_padding(tiny_checkpoint, tmp_path):
    """A checkpoint trained with data.augment.pad_s hears each segment with half of it before
    and after (zeros, floored to its dither level by the frontend); word times stay on the
    segment's own clock."""
    import dataclasses

    from asr.checkpoint import load_checkpoint, write_checkpoint
    from asr.transcribe import Transcriber

    ckpt = load_checkpoint(tiny_checkpoint.path)
    config = {"dither": 1e-4, "data": {"augment": {"pad_s": 0.4}}}
    write_checkpoint(tmp_path / "padded.pt", dataclasses.replace(ckpt, metadata={"config": config}))
    plain, padded = Transcriber(tiny_checkpoint.path), Transcriber(tmp_path / "padded.pt")
    assert (plain.edge_samples, padded.edge_samples) == (0, 3200)

    audio = tiny_checkpoint.audio[0]
    log_probs, lengths = padded.log_probs([audio])
    by_hand = torch.cat([torch.zeros(3200), audio, torch.zeros(3200)])
    feats, feat_lengths = padded.frontend(by_hand[None], torch.tensor([len(by_hand)]))
    with torch.no_grad():
        expected, expected_lengths = plain.model(feats, feat_lengths)
    assert torch.equal(lengths, expected_lengths) and torch.allclose(log_probs, expected)
    assert int(lengths) == int(plain.log_probs([audio])[1]) + 2 * 3200 // 640  # 40 ms output frames

    other = tiny_checkpoint.audio[1]  # a segment's output does not depend on the batch it is in
    assert torch.allclose(padded.log_probs([other, audio])[0][1, : int(lengths)], log_probs[0], atol=1e-5)

    transcript = padded.transcribe_audio(audio)
    assert transcript.words
    assert all(0.0 <= w.start < w.end <= len(audio) / SAMPLE_RATE for w in transcript.words)
