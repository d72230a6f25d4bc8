import pytest

from asr.text import ALPHABET, Tokenizer, UnknownCharactersError, normalize_text


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Hello, world!", "HELLO WORLD"),
        ("  rock-and-roll\tnever dies ", "ROCK AND ROLL NEVER DIES"),
        ("She said: ‘don’t’.", "SHE SAID DON'T"),
        ("café naïve", "CAFE NAIVE"),
        ("'quoted' words", "QUOTED WORDS"),
    ],
)
def test_normalize_text(raw, expected):
    text, unknown = normalize_text(raw)
    assert text == expected
    assert not unknown


def test_unknown_characters_are_counted_not_dropped():
    text, unknown = normalize_text("Call 911 & ask")
    assert unknown == {"9": 1, "1": 2, "&": 1}
    assert "911" in text


def test_tokenizer_round_trip_and_blank():
    tok = Tokenizer()
    assert len(tok) == len(ALPHABET) + 1
    assert tok.blank_id == 0 and tok.tokens[0] == "<blank>"
    ids = tok.encode("It's a test")
    assert 0 not in ids
    assert tok.decode(ids) == "IT'S A TEST"
    assert tok.decode([0, *ids, 0]) == "IT'S A TEST"


def test_tokenizer_rejects_unmappable_with_counts():
    with pytest.raises(UnknownCharactersError, match=r"'7' x2"):
        Tokenizer().encode("route 77")


def test_tokenizer_state_round_trip():
    tok = Tokenizer.from_state_dict(Tokenizer().state_dict())
    assert tok.tokens == Tokenizer().tokens
