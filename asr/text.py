"""Transcript normalisation and the character tokenizer.

One normalisation is used everywhere (manifests, training targets, scoring):

1. Unicode NFKD, then combining marks are dropped (``café`` -> ``CAFE``).
2. Upper case.
3. Typographic apostrophes (``’ ‘ ` ´``) become ``'``. An apostrophe is kept only between two
   letters (``DON'T``, ``O'CLOCK``); elsewhere it is a quotation mark and is removed.
4. Punctuation and hyphens (``. , ; : ! ? " ( ) [ ] { } - – — … /``) become spaces.
5. Whitespace runs collapse to one space; leading/trailing space is removed.

Digits are **rejected**, not spelled out: "1990" may be read "nineteen ninety" or
"one thousand nine hundred ninety", and guessing would put wrong words in the references.
Digits and every other character outside ``A-Z ' space`` are returned as *unknown*
characters with their counts, so that callers can report and skip the transcript.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter

BLANK = "<blank>"
ALPHABET = " '" + string.ascii_uppercase

_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "`": "'", "´": "'"})
_PUNCTUATION = re.compile(r"[.,;:!?\"()\[\]{}\-–—…/]")
_LONE_APOSTROPHE = re.compile(r"(?<![A-Z])'|'(?![A-Z])")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> tuple[str, Counter[str]]:
    """Normalise a transcript (see module docstring).

    Returns:
        ``(normalised, unknown)``: the text in the tokenizer's alphabet with unknown characters
        left in place, and a counter of those unknown characters (empty when the text is clean).
    """
    decomposed = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in decomposed if not unicodedata.combining(c))
    text = text.upper().translate(_APOSTROPHES)
    text = _PUNCTUATION.sub(" ", text)
    text = _LONE_APOSTROPHE.sub(" ", text)
    text = _SPACES.sub(" ", text).strip()
    unknown = Counter(c for c in text if c not in ALPHABET)
    return text, unknown


class UnknownCharactersError(ValueError):
    """A transcript holds characters the tokenizer cannot map."""


class Tokenizer:
    """Characters to ids. Id 0 is the CTC blank, then space, apostrophe and A-Z.

    >>> tok = Tokenizer()
    >>> tok.decode(tok.encode("it's ok"))
    "IT'S OK"
    """

    def __init__(self, alphabet: str = ALPHABET) -> None:
        if len(set(alphabet)) != len(alphabet):
            raise ValueError(f"alphabet has repeated characters: {alphabet!r}")
        self.alphabet = alphabet
        self.tokens = [BLANK, *alphabet]
        self._ids = {c: i for i, c in enumerate(self.tokens) if i > 0}

    blank_id = 0

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """Normalise ``text`` and map it to ids; raises UnknownCharactersError with the counts."""
        normalised, unknown = normalize_text(text)
        if unknown:
            counts = ", ".join(f"{c!r} x{n}" for c, n in unknown.most_common())
            raise UnknownCharactersError(f"unmappable characters in {text!r}: {counts}")
        return [self._ids[c] for c in normalised]

    def decode(self, ids: list[int]) -> str:
        """Ids (blanks already removed or not) to text; blanks are skipped."""
        return "".join(self.tokens[i] for i in ids if i != self.blank_id)

    def state_dict(self) -> dict:
        return {"alphabet": self.alphabet}

    @classmethod
    def from_state_dict(cls, state: dict) -> "Tokenizer":
        return cls(state["alphabet"])
