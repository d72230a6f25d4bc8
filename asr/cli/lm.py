"""The word LM's verbs: ``asr lm``, ``lexicon``, ``tune-lm`` and ``attach-lm``."""

from __future__ import annotations

import argparse
import dataclasses
import gzip

from asr.checkpoint import CheckpointError, load_checkpoint, write_checkpoint
from asr.cli.common import add_beam_options, add_verb, beam_options, error, fail, positive_int
from asr.data.manifest import read_manifest
from asr.decoding import read_language_model, read_word_list, tune_lm_weights, write_lexicon
from asr.evaluate import manifest_log_probs
from asr.fileio import atomic_write
from asr.ngram import build_arpa
from asr.text import normalize_text


def register(verbs: argparse._SubParsersAction) -> None:
    p = add_verb(verbs, "lm", language_model,
                 help="word n-gram LM (modified Kneser-Ney, ARPA) from manifests' transcripts and text files")
    p.add_argument("--manifest", nargs="+", default=[],
                   help="training manifests (JSONL): only their text is read, each sentence as often as it occurs")
    p.add_argument("--text", nargs="+", default=[], metavar="FILE",
                   help="text files, one sentence per line (.gz read as gzip), normalised as transcripts are")
    p.add_argument("--order", type=positive_int, default=3, help="longest n-gram (default: 3)")
    p.add_argument("--prune", type=int, nargs="+", default=[], metavar="N",
                   help="count cutoffs per order, unigrams first, as lmplz's: n-grams seen at most N times are "
                   "left out, the last cutoff holding for higher orders (e.g. 0 1 2 for a book-sized text; "
                   "default: none)")
    p.add_argument("--out", required=True, help="ARPA file to write")

    p = add_verb(verbs, "lexicon", lexicon, help="lexicon of the words in manifests' transcripts (and word lists), "
                 "for a closed-vocabulary beam search (`--lexicon`)")
    p.add_argument("--manifest", required=True, nargs="+", help="manifests (JSONL): only their text is read")
    p.add_argument("--words", nargs="+", default=[], metavar="FILE",
                   help="word lists, one word per line (e.g. /usr/share/dict/words from Debian's wamerican): "
                   "their words join the lexicon, so that words unseen in the transcripts can be recognised; "
                   "entries the tokenizer cannot spell are skipped and counted")
    p.add_argument("--out", required=True, help="lexicon file to write")

    p = add_verb(verbs, "tune-lm", tune_lm,
                 help="grid search of --lm-weight and --word-score for the lowest WER on a dev set")
    p.add_argument("--model", required=True, help="checkpoint file")
    p.add_argument("--manifest", required=True, help="dev manifest (JSONL)")
    p.add_argument("--lm-weights", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0], metavar="W")
    p.add_argument("--word-scores", type=float, nargs="+", default=[-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0], metavar="S")
    p.add_argument("--sample", type=positive_int, metavar="N",
                   help="tune on a random sample of N utterances (seeded): beam search with the LM costs "
                   "a fraction of a second per utterance and grid point")
    p.add_argument("--out", metavar="FILE",
                   help="write the best weights as decoding options, e.g. `--lm-weight 1.5 --word-score 3.0`, "
                   "for `asr decode ... $(cat FILE)`")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    add_beam_options(p, choose_decoding=False)

    p = add_verb(verbs, "attach-lm", attach_lm, help="put a word LM and/or a lexicon, with their tuned weights, "
                 "into a checkpoint: asr transcribe and asr decode then search with them by default")
    p.add_argument("--model", required=True, help="checkpoint file")
    p.add_argument("--lm", metavar="ARPA", help="word n-gram LM (ARPA text)")
    p.add_argument("--lexicon", help="lexicon (asr lexicon); without it the search is lexicon-free")
    p.add_argument("--lm-weight", type=float, default=1.0, help="tuned weight, from asr tune-lm (default: 1.0)")
    p.add_argument("--word-score", type=float, default=0.0, help="tuned score per word, from asr tune-lm (default: 0.0)")
    p.add_argument("--out", help="checkpoint to write (default: --model, replaced atomically)")


def _transcripts(manifests: list[str]) -> list[str]:
    """The normalised transcripts of several manifests, in order."""
    return [normalize_text(entry["text"])[0] for path in manifests for entry in read_manifest(path)]


def _text_lines(paths: list[str]) -> list[str]:
    """The normalised non-empty lines of text files (gzip when named .gz)."""
    lines = []
    for path in paths:
        with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
            lines += [normalize_text(line)[0] for line in f if line.strip()]
    return lines


def language_model(args: argparse.Namespace) -> int:
    if not (args.manifest or args.text):
        return error(args, "nothing to learn from; give --manifest, --text or both")
    try:
        sentences = _transcripts(args.manifest) + _text_lines(args.text)
        counts = build_arpa(sentences, args.out, args.order, args.prune)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return fail(args, err)
    print(f"wrote {args.out}: " + ", ".join(f"{n} {k + 1}-grams" for k, n in enumerate(counts)))
    return 0


def lexicon(args: argparse.Namespace) -> int:
    try:
        words = {w for text in _transcripts(args.manifest) for w in text.split()}
        from_transcripts, skipped = len(words), 0
        for path in args.words:
            listed, unusable = read_word_list(path)
            words |= listed
            skipped += unusable
        count = write_lexicon(sorted(words), args.out)
    except (OSError, ValueError) as err:
        return fail(args, err)
    lists = f" ({from_transcripts} from the transcripts, {count - from_transcripts} more from the word lists; " \
            f"{skipped} list entries skipped: not one word in the tokenizer's characters)" if args.words else ""
    print(f"wrote {args.out}: {count} words{lists}")
    return 0


def tune_lm(args: argparse.Namespace) -> int:
    options = beam_options(args)
    if options is None or options.lm is None:
        return fail(args, ValueError("tune-lm needs --lm ARPA"))
    try:
        log_probs, lengths, references = manifest_log_probs(args.model, args.manifest, args.device, args.sample)
        tokenizer = load_checkpoint(args.model).tokenizer
        lm_weight, word_score, table = tune_lm_weights(
            log_probs, lengths, references, tokenizer, options, args.lm_weights, args.word_scores
        )
    except (RuntimeError, OSError, ImportError, ValueError) as err:
        return fail(args, err)
    print("lm_weight word_score WER")
    for row in table:
        print(f"{row[0]:9.2f} {row[1]:10.2f} {row[2]:.4f}")
    best = f"--lm-weight {lm_weight} --word-score {word_score}"
    print(f"best: {best} (dev WER {min(row[2] for row in table):.4f})")
    if args.out:
        with atomic_write(args.out) as f:
            f.write(best + "\n")
    return 0


def attach_lm(args: argparse.Namespace) -> int:
    try:
        ckpt = load_checkpoint(args.model)
        lm = read_language_model(args.lm, args.lexicon, args.lm_weight, args.word_score)
        write_checkpoint(args.out or args.model, dataclasses.replace(ckpt, language_model=lm))
    except (CheckpointError, OSError, ValueError) as err:
        return fail(args, err)
    search = " ".join(f"--{name} {getattr(args, name)}" for name in ("lm", "lexicon") if getattr(args, name))
    print(f"{args.out or args.model}: beam search with {search} --lm-weight {args.lm_weight} "
          f"--word-score {args.word_score} unless told otherwise")
    return 0
