"""What the verbs share: one-line errors with their exit statuses, and option groups.

Exit statuses (README: "Exit codes and errors"): 0 done; 1 some input file could not be used
(each named on its own error line) or an output could not be written (disk full, file-size
limit); 2 usage: bad options, a missing or unusable model, config or manifest; 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import errno
import sys

from asr.decoding import BeamSearchOptions

# output errors: the disk or a quota, not the command line, is at fault
OUTPUT_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO, errno.EROFS}
BEAM_OPTIONS = ("beam_size", "lm", "lexicon", "lm_weight", "word_score")


def add_verb(verbs: argparse._SubParsersAction, name: str, func, **kwargs) -> argparse.ArgumentParser:
    """A verb's parser, whose ``args.prog`` ("asr VERB") prefixes its messages, as argparse's own."""
    p = verbs.add_parser(name, **kwargs)
    p.set_defaults(func=func, prog=f"asr {name}")
    return p


def error(args: argparse.Namespace, message: str, code: int = 2) -> int:
    """Print ``asr VERB: error: MESSAGE`` (one line, as argparse prints usage errors) and return ``code``."""
    print(f"{args.prog}: error: {message}", file=sys.stderr)
    return code


def warn(args: argparse.Namespace, message: str, write=None) -> None:
    (write or (lambda line: print(line, file=sys.stderr)))(f"{args.prog}: warning: {message}")


def message(err: BaseException) -> str:
    """One line for an exception: an OSError without its errno noise, the first line of others."""
    if isinstance(err, OSError) and err.filename and err.strerror:
        return f"{err.filename}: {err.strerror}"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    if isinstance(err, UnicodeDecodeError):
        return f"not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})"
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def fail(args: argparse.Namespace, err: BaseException, code: int = 2) -> int:
    """Print a one-line error and return exit status ``code`` (1 for a failed output write)."""
    if isinstance(err, OSError) and err.errno in OUTPUT_ERRNOS:
        code = 1
    return error(args, message(err), code)


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def add_runtime_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="onnx: --model is a directory from `asr export --format onnx`, run with onnxruntime "
                   "(greedy decoding; docs/export.md) (default: torch)")


def add_beam_options(p: argparse.ArgumentParser, choose_decoding: bool = True) -> None:
    if choose_decoding:
        g = p.add_argument_group(
            "decoding (default: the model's own: beam search with the word LM it carries, see `asr attach-lm`, "
            "else greedy)")
        g.add_argument("--greedy", action="store_true", help="greedy decoding, whatever the model carries")
        g.add_argument("--no-lm", action="store_true",
                       help="beam search without the LM and lexicon the model carries")
    else:
        g = p.add_argument_group("beam search")
    g.add_argument("--beam-size", type=positive_int, help="hypotheses kept after each frame (default: 500 with a lexicon, 32 without)")
    g.add_argument("--lm", metavar="ARPA", help="word n-gram LM (ARPA; a KenLM binary needs --lexicon), "
                   "instead of the model's")
    g.add_argument("--lexicon", help="lexicon from asr.decoding.write_lexicon: only its words are produced")
    g.add_argument("--lm-weight", type=float,
                   help="weight of the LM's log10 probabilities (default: the model LM's tuned weight, else 1.0)")
    g.add_argument("--word-score", type=float,
                   help="score added per word (default: the model LM's tuned score, else 0.0)")


def beam_options(args: argparse.Namespace) -> BeamSearchOptions | None:
    """BeamSearchOptions from the beam options given, or None when none is (the model's own
    decoding, or greedy with --greedy)."""
    given = {name: getattr(args, name) for name in BEAM_OPTIONS if getattr(args, name) is not None}
    if getattr(args, "greedy", False) and (given or args.no_lm):
        raise ValueError("--greedy takes no beam search options")
    if getattr(args, "no_lm", False):
        given["model_lm"] = False
    return BeamSearchOptions(**given) if given else None
