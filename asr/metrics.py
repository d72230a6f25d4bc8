"""Word and character error rates with an error breakdown, via jiwer.

Both sides are normalised with :func:`asr.text.normalize_text` first, so that case and
punctuation never count as errors. CER counts spaces as characters (jiwer's definition).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field

import jiwer

from asr.fileio import atomic_write
from asr.text import normalize_text


@dataclass
class ScoreReport:
    wer: float
    cer: float
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    ref_words: int  # N = S + D + hits
    ref_chars: int
    confused: Counter[tuple[str, str]]  # (reference word, hypothesis word) -> count
    inserted: Counter[str]
    deleted: Counter[str]
    alignments: dict[str, str]  # utterance id -> REF/HYP alignment text
    missing: list[str] = field(default_factory=list)  # ids without a hypothesis, scored as empty
    extra: list[str] = field(default_factory=list)  # ids without a reference, not scored
    # ids whose reference holds characters no model can output ("1990"): not scored, as
    # training leaves such transcripts out (asr.data.manifest.validate_entries)
    unspellable: list[str] = field(default_factory=list)

    def summary(self, top: int = 10) -> str:
        """The report as printed by ``asr score``."""
        lines = [
            f"WER {self.wer:.4f} (S={self.substitutions}, D={self.deletions}, I={self.insertions}, N={self.ref_words})",
            f"CER {self.cer:.4f}",
        ]
        if self.missing:
            lines.append(f"{len(self.missing)} utterance(s) have no hypothesis and count as deleted: {_ids(self.missing)}")
        if self.extra:
            lines.append(f"{len(self.extra)} hypothesis id(s) have no reference and are not scored: {_ids(self.extra)}")
        if self.unspellable:
            lines.append(f"{len(self.unspellable)} reference(s) hold characters outside the alphabet (e.g. digits) "
                         f"and are not scored, as training leaves them out: {_ids(self.unspellable)}")
        for title, counts in (
            ("substitutions (ref -> hyp)", Counter({f"{r} -> {h}": n for (r, h), n in self.confused.items()})),
            ("deletions", self.deleted),
            ("insertions", self.inserted),
        ):
            if counts and top > 0:
                lines.append(f"top {title}:")
                lines.extend(f"  {n:6d}  {item}" for item, n in counts.most_common(top))
        return "\n".join(lines)


def _ids(ids: list[str], limit: int = 5) -> str:
    return ", ".join(ids[:limit]) + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def score(refs: dict[str, str], hyps: dict[str, str]) -> ScoreReport:
    """Score hypotheses against references, utterance by utterance (matched by id).

    A reference without a hypothesis is scored against an empty one (all its words deleted) and
    listed in ``missing``; a hypothesis without a reference is listed in ``extra`` and ignored.
    """
    if not refs:
        raise ValueError("no references to score against")
    unspellable = [i for i in refs if normalize_text(refs[i])[1]]
    ids = [i for i in refs if not normalize_text(refs[i])[1]]
    if not ids:
        raise ValueError(f"every reference holds characters outside the alphabet (e.g. {refs[unspellable[0]]!r}); "
                         "spell numbers out as words")
    missing = [i for i in ids if i not in hyps]
    extra = [i for i in hyps if i not in refs]
    ref_texts = [normalize_text(refs[i])[0] for i in ids]
    hyp_texts = [normalize_text(hyps.get(i, ""))[0] for i in ids]

    words = jiwer.process_words(ref_texts, hyp_texts)
    chars = jiwer.process_characters(ref_texts, hyp_texts)
    ref_words = words.hits + words.substitutions + words.deletions
    ref_chars = chars.hits + chars.substitutions + chars.deletions
    if not ref_words:
        raise ValueError("the references hold no words")

    # Counted word by word from the alignments rather than with jiwer.collect_error_counts,
    # which counts a run of several deleted (inserted, substituted) words as one phrase, so
    # that its counts would not add up to D (I, S).
    confused: Counter[tuple[str, str]] = Counter()
    inserted: Counter[str] = Counter()
    deleted: Counter[str] = Counter()
    for ref, hyp, chunks in zip(words.references, words.hypotheses, words.alignments):
        for chunk in chunks:
            ref_span = ref[chunk.ref_start_idx : chunk.ref_end_idx]
            hyp_span = hyp[chunk.hyp_start_idx : chunk.hyp_end_idx]
            if chunk.type == "substitute":
                confused.update(zip(ref_span, hyp_span))
            elif chunk.type == "delete":
                deleted.update(ref_span)
            elif chunk.type == "insert":
                inserted.update(hyp_span)

    alignments = {}
    for i, ref, hyp in zip(ids, ref_texts, hyp_texts):
        text = jiwer.visualize_alignment(jiwer.process_words(ref, hyp), show_measures=False, skip_correct=False)
        # drop jiwer's "=== SENTENCE 1 ===" header: the id takes its place
        alignments[i] = text.strip().split("\n", 1)[1].strip("\n")

    return ScoreReport(
        wer=(words.substitutions + words.deletions + words.insertions) / ref_words,
        cer=(chars.substitutions + chars.deletions + chars.insertions) / ref_chars,
        substitutions=words.substitutions,
        deletions=words.deletions,
        insertions=words.insertions,
        hits=words.hits,
        ref_words=ref_words,
        ref_chars=ref_chars,
        confused=confused,
        inserted=inserted,
        deleted=deleted,
        alignments=alignments,
        missing=missing,
        extra=extra,
        unspellable=unspellable,
    )


def write_alignments(report: ScoreReport, path: str | os.PathLike) -> None:
    """Write each utterance's alignment under its id, in reference order."""
    with atomic_write(path) as f:
        for i, text in report.alignments.items():
            f.write(f"=== {i} ===\n{text}\n\n")


def score_by_group(refs: dict[str, str], hyps: dict[str, str], groups: dict[str, str]) -> dict[str, ScoreReport]:
    """One :func:`score` per group (e.g. ``age_group`` of a manifest: "adult", "child"), sorted by name.

    ``groups`` maps utterance id -> group; references without one are not scored here.
    """
    ids_by_group: dict[str, list[str]] = {}
    for i in refs:
        if i in groups:
            ids_by_group.setdefault(groups[i], []).append(i)
    return {
        group: score({i: refs[i] for i in ids}, {i: hyps[i] for i in ids if i in hyps})
        for group, ids in sorted(ids_by_group.items())
    }


def group_summary(field: str, reports: dict[str, ScoreReport]) -> str:
    """Lines printed by ``asr score --by FIELD``; indented, so that a line starting with
    ``WER`` is still only the overall one."""
    width = max(len(group) for group in reports)
    lines = [f"by {field}:"]
    for group, report in reports.items():
        lines.append(f"  {group:<{width}}  WER {report.wer:.4f}  CER {report.cer:.4f}  "
                     f"({len(report.alignments)} utterances, {report.ref_words} words)")
    return "\n".join(lines)


def read_transcripts(path: str | os.PathLike, field: str = "text") -> dict[str, str]:
    """Read ``id<TAB>text`` lines or a JSONL manifest (``{"id": ..., "text": ...}`` per line).

    The format is taken from the first non-blank line: JSON if it starts with ``{``. A line
    without a tab is split at its first space (Kaldi ``text`` files). A line with an id and no
    text is an empty transcript; blank lines are skipped. ``field`` reads another key of a
    manifest instead of ``text`` (e.g. ``age_group``), as a string.
    """
    transcripts: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = [(number, line.rstrip("\r\n")) for number, line in enumerate(f, start=1) if line.strip()]
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})") from None
    is_json = bool(lines) and lines[0][1].lstrip().startswith("{")
    for number, line in lines:
        if is_json:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            if not isinstance(entry, dict) or "id" not in entry or field not in entry:
                raise ValueError(f"{path}:{number}: expected a JSON object with \"id\" and \"{field}\"")
            key, text = str(entry["id"]), entry[field] if field == "text" else str(entry[field])
        elif field != "text":
            raise ValueError(f"{path}: id<TAB>text lines have no field {field!r}; give a JSONL manifest")
        else:
            key, _, text = line.partition("\t" if "\t" in line else " ")
            key = key.strip()
        if key in transcripts:
            raise ValueError(f"{path}:{number}: duplicate id {key!r}")
        transcripts[key] = text
    return transcripts
