"""Command line: ``asr VERB ...``. Each verb is a small module over library functions:

=============  ======================================================
transcribe     files -> text, JSON, subtitles (torch or ONNX runtime)
stream         microphone or file -> live partial and final text
serve          WebSocket / HTTP server
prepare        corpora -> manifests
train          cache-audio, compute-cmvn, train, average, compact
decode         decode (a manifest -> hypotheses), score
lm             lm, lexicon, tune-lm, attach-lm
export         checkpoint -> ONNX / TorchScript
adapt          record, adapt: a personal model for one voice
=============  ======================================================
"""

from __future__ import annotations

import argparse
import os
import sys

from asr.cli import adapt, decode, export, lm, prepare, serve, stream, train, transcribe
from asr.cli.common import fail

VERB_MODULES = (transcribe, stream, serve, prepare, train, decode, lm, export, adapt)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description="Speech recognition toolkit.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for module in VERB_MODULES:
        module.register(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would say "asr: error:"; the verb's own parser names it
        verbs = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
        verbs.choices[args.verb].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C: files written so far are whole (written atomically)
        if "asr.audio" in sys.modules:  # Ctrl-C may land while a native library's chatter is muted
            sys.modules["asr.audio"].restore_native_stderr()
        if "tqdm" in sys.modules:  # end the progress bars' lines, so that the message has its own
            for bar in list(getattr(sys.modules["tqdm"].tqdm, "_instances", ())):
                bar.close()
        print(f"{args.prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # whoever read our output has gone (`asr score ... | head`): stop quietly, as Unix tools do;
        # stdout goes to devnull so that the interpreter's final flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as err:  # one no verb handles: above all a full disk while writing
        return fail(args, err, 1)
