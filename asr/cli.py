"""Command line: ``asr transcribe | ...``; each verb is a thin layer over library functions."""

from __future__ import annotations

import argparse
import errno
import os
import sys

from asr.fileio import atomic_write


OUTPUT_EXTENSIONS = {"text": "txt", "json": "json", "srt": "srt", "vtt": "vtt"}


def _transcribe(args: argparse.Namespace) -> int:
    from collections import Counter
    from pathlib import Path

    from tqdm import tqdm

    from asr.audio import AudioError
    from asr.data.manifest import read_manifest
    from asr.pretrained import resolve_model
    from asr.transcribe import AUDIO_EXTENSIONS, Transcriber, audio_files, to_json, to_srt, to_vtt

    if args.runtime == "onnx":
        return _runtime_transcribe(args)
    # one dict per recording: {"audio": path} or, from a manifest, {"id": ..., "audio": ...};
    # the id (else the path as given) labels its output
    inputs, failures = [], []
    for name in args.inputs:
        if Path(name).is_dir():
            found = audio_files(name)
            if not found:
                failures.append(f"{name}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this directory")
                _error(failures[-1])
            inputs += [{"audio": str(path)} for path in found]
        else:
            inputs.append({"audio": name})
    if args.manifest:
        try:
            entries = read_manifest(args.manifest, required=("id", "audio"))  # nothing else is used here
            inputs += [{"id": str(entry["id"]), "audio": entry["audio"]} for entry in entries]
        except (OSError, ValueError) as err:
            return _fail(err)
    if not inputs and not failures:
        return _error("nothing to transcribe; give audio files, directories or --manifest")

    extension = OUTPUT_EXTENSIONS[args.format]
    stems = [entry.get("id") or Path(entry["audio"]).stem for entry in inputs]
    if args.output_dir:
        clashes = sorted(stem for stem, n in Counter(stems).items() if n > 1)
        if clashes:
            return _error(f"several inputs would write {Path(args.output_dir) / clashes[0]}.{extension}; "
                          "give them distinct names")
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    elif args.format in ("srt", "vtt") and len(inputs) > 1:
        return _error(f"--format {args.format} makes one document per input; give --output-dir for {len(inputs)} inputs")

    try:
        model = resolve_model(args.model, "offline")
        transcriber = Transcriber(model, device=args.device, beam=_beam_options(args), greedy=args.greedy)
    except (RuntimeError, OSError, ImportError, ValueError) as err:
        return _fail(err)
    render = {"json": lambda result, entry: to_json(result, **entry) + "\n",
              "srt": lambda result, _: to_srt(result),
              "vtt": lambda result, _: to_vtt(result),
              "text": lambda result, _: result.text + "\n"}[args.format]
    total = len(inputs) + len(failures)  # the failures so far are directories without audio
    results = transcriber.transcribe_files([entry["audio"] for entry in inputs], batch_size=args.batch_size)
    progress = tqdm(total=len(inputs), unit="file", file=sys.stderr, disable=len(inputs) < 2)
    for entry, stem, (_, result) in zip(inputs, stems, results):
        progress.update()
        if isinstance(result, AudioError):
            failures.append(str(result))
            progress.write(f"{_prog}: error: {result}", file=sys.stderr)
            continue
        if result.note:
            progress.write(f"{_prog}: warning: {entry['audio']}: {result.note}", file=sys.stderr)
        if args.output_dir:
            with atomic_write(Path(args.output_dir) / f"{stem}.{extension}") as f:
                f.write(render(result, entry))
        elif args.format == "text":
            print(f"{entry.get('id') or entry['audio']}\t{result.text}", flush=True)
        else:
            print(render(result, entry), end="", flush=True)
    progress.close()
    if failures:  # each was reported on its own line as it happened; with several inputs, listed again here
        if total > 1:
            print(f"{_prog}: {len(failures)} of {total} file(s) failed:", file=sys.stderr)
            print("\n".join(f"  {failure}" for failure in failures), file=sys.stderr)
        return 1
    return 0


# Exit statuses (README: "Exit codes and errors"): 0 done; 1 some input file could not be used
# (each named on its own error line) or an output could not be written (disk full, file-size
# limit); 2 usage: bad options, a missing or unusable model, config or manifest; 130 Ctrl-C.
# Output errors: the disk or a quota, not the command line, is at fault.
OUTPUT_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO, errno.EROFS}
_prog = "asr"  # "asr VERB" once main() has parsed the command line: argparse's own error prefix


def _error(message: str, code: int = 2) -> int:
    """Print ``asr VERB: error: MESSAGE`` (one line, as argparse prints usage errors) and return ``code``."""
    print(f"{_prog}: error: {message}", file=sys.stderr)
    return code


def _message(err: BaseException) -> str:
    """One line for an exception: an OSError without its errno noise, the first line of others."""
    if isinstance(err, OSError) and err.filename and err.strerror:
        return f"{err.filename}: {err.strerror}"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    if isinstance(err, UnicodeDecodeError):
        return f"not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})"
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _fail(err: BaseException, code: int = 2) -> int:
    """Print a one-line error and return exit status ``code`` (1 for a failed output write)."""
    if isinstance(err, OSError) and err.errno in OUTPUT_ERRNOS:
        code = 1
    return _error(_message(err), code)


def _add_runtime_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="onnx: --model is a directory from `asr export --format onnx`, run with onnxruntime "
                   "(greedy decoding; docs/export.md) (default: torch)")


def _runtime_transcribe(args: argparse.Namespace) -> int:
    """`asr transcribe --runtime onnx`: PATH<TAB>TEXT lines, segments cut as with torch."""
    from pathlib import Path

    from asr.audio import AudioError, iter_audio_blocks, split_on_silence
    from asr.data.manifest import read_manifest
    from asr.runtime import ExportDirError, Transcriber
    from asr.transcribe import audio_files

    if args.format != "text" or args.output_dir or _beam_options(args) is not None or args.device != "cpu":
        return _fail(ValueError("--runtime onnx prints text, greedy, on the CPU: drop --format, --output-dir, "
                                "--device and the beam search options"))
    if args.model is None:
        return _error("--runtime onnx needs --model DIR, a directory made by `asr export`")
    try:
        transcriber = Transcriber(args.model)
        inputs = [(str(p), str(p)) for name in args.inputs
                  for p in (audio_files(name) if Path(name).is_dir() else [name])]
        if args.manifest:
            inputs += [(str(entry["id"]), entry["audio"]) for entry in read_manifest(args.manifest)]
    except (ExportDirError, OSError, ValueError) as err:
        return _fail(err)
    failures = 0
    for label, path in inputs:
        try:
            segments = split_on_silence(iter_audio_blocks(path, seconds=30.0), 30.0, 15.0)
            text = " ".join(t for _, segment in segments if (t := transcriber.transcribe(segment.numpy())))
        except AudioError as err:
            _error(str(err), 1)
            failures += 1
            continue
        print(f"{label}\t{text}", flush=True)
    return 1 if failures else 0


def _runtime_recognizer(args: argparse.Namespace):
    """`asr stream --runtime onnx`: the torch-free recognizer, with the same events."""
    from asr.runtime import StreamingRecognizer

    if _beam_options(args) is not None:
        raise ValueError("--runtime onnx decodes greedily: drop the beam search options")
    if args.model is None:
        raise ValueError("--runtime onnx needs --model DIR, a directory made by `asr export`")
    return StreamingRecognizer(args.model)


def _add_export(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("export", help="export a checkpoint to ONNX (for `--runtime onnx`, no torch needed) "
                         "or TorchScript, optionally with int8 weights (docs/export.md)")
    p.add_argument("--model", help="checkpoint file (default: the embedded default model of its kind)")
    p.add_argument("--kind", choices=["offline", "streaming"], default="offline",
                   help="without --model: which embedded default to export (default: offline)")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the model, model.json and the LM files")
    p.add_argument("--quantize", choices=["int8"], help="dynamic int8 weights (onnxruntime; onnx only)")
    p.add_argument("--chunk-ms", type=_positive_int, default=80, metavar="MS",
                   help="streaming models: audio per step of the exported graph (a multiple of 10 ms x the "
                   "model's time stride; default: 80)")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from asr.checkpoint import CheckpointError
    from asr.export import ExportConfig, describe, export_checkpoint

    try:
        from asr.pretrained import resolve_model

        model = resolve_model(args.model, args.kind)  # FileNotFoundError, one line, if none is embedded
        if args.chunk_ms % 10:
            raise ValueError(f"--chunk-ms {args.chunk_ms}: must be a multiple of 10 ms")
        path = export_checkpoint(model, args.out, ExportConfig(args.format, args.quantize, args.chunk_ms))
    except (CheckpointError, OSError, ImportError, ValueError) as err:
        return _fail(err)
    print(f"wrote {describe(path)}")
    return 0


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


BEAM_OPTIONS = ("beam_size", "lm", "lexicon", "lm_weight", "word_score")


def _add_beam_options(p: argparse.ArgumentParser, choose_decoding: bool = True) -> None:
    if choose_decoding:
        g = p.add_argument_group(
            "decoding (default: the model's own: beam search with the word LM it carries, see `asr attach-lm`, "
            "else greedy)")
        g.add_argument("--greedy", action="store_true", help="greedy decoding, whatever the model carries")
        g.add_argument("--no-lm", action="store_true",
                       help="beam search without the LM and lexicon the model carries")
    else:
        g = p.add_argument_group("beam search")
    g.add_argument("--beam-size", type=_positive_int, help="hypotheses kept after each frame (default: 500 with a lexicon, 32 without)")
    g.add_argument("--lm", metavar="ARPA", help="word n-gram LM (ARPA; a KenLM binary needs --lexicon), "
                   "instead of the model's")
    g.add_argument("--lexicon", help="lexicon from asr.decoding.write_lexicon: only its words are produced")
    g.add_argument("--lm-weight", type=float,
                   help="weight of the LM's log10 probabilities (default: the model LM's tuned weight, else 1.0)")
    g.add_argument("--word-score", type=float,
                   help="score added per word (default: the model LM's tuned score, else 0.0)")


def _beam_options(args: argparse.Namespace):
    """BeamSearchOptions from the beam options given, or None when none is (the model's own
    decoding, or greedy with --greedy)."""
    given = {name: getattr(args, name) for name in BEAM_OPTIONS if getattr(args, name) is not None}
    if getattr(args, "greedy", False) and (given or args.no_lm):
        raise ValueError("--greedy takes no beam search options")
    if getattr(args, "no_lm", False):
        given["model_lm"] = False
    if not given:
        return None
    from asr.decoding import BeamSearchOptions

    return BeamSearchOptions(**given)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description="Speech recognition toolkit.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("transcribe", help="transcribe audio files with a trained model")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="audio files (WAV, FLAC, OGG, Opus, MP3; any rate, any channels) or directories (searched recursively)")
    p.add_argument("--manifest", help="JSONL manifest: transcribe its entries' audio, labelled by their ids")
    p.add_argument("--model", help="checkpoint file (default: the embedded English model, asr/pretrained/MODEL_CARD.md)")
    p.add_argument("--format", choices=list(OUTPUT_EXTENSIONS), default="text",
                   help="text: PATH<TAB>TEXT lines; json: text, duration and words with start, end and confidence "
                        "(one line per input); srt, vtt: subtitles (default: text)")
    p.add_argument("--output-dir", metavar="DIR", help="write DIR/<stem>.<txt|json|srt|vtt> per input instead of printing")
    p.add_argument("--batch-size", type=_positive_int, default=1, metavar="N",
                   help="segments or short files run through the model together (default: 1)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run the model (default: cpu)")
    _add_runtime_option(p)
    _add_beam_options(p)
    p.set_defaults(func=_transcribe)
    _add_prepare(verbs)
    _add_training(verbs)
    _add_score(verbs)
    _add_language_model(verbs)
    _add_stream(verbs)
    _add_serve(verbs)
    _add_export(verbs)
    _add_adapt(verbs)
    return parser


def _add_language_model(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("lm", help="word n-gram LM (modified Kneser-Ney, ARPA) from a manifest's transcripts")
    p.add_argument("--manifest", required=True, nargs="+",
                   help="training manifests (JSONL): only their text is read, each sentence as often as it occurs")
    p.add_argument("--order", type=_positive_int, default=3, help="longest n-gram (default: 3)")
    p.add_argument("--out", required=True, help="ARPA file to write")
    p.set_defaults(func=_language_model)

    p = verbs.add_parser("lexicon", help="lexicon of the words in manifests' transcripts (and word lists), for a "
                         "closed-vocabulary beam search (`--lexicon`)")
    p.add_argument("--manifest", required=True, nargs="+", help="manifests (JSONL): only their text is read")
    p.add_argument("--words", nargs="+", default=[], metavar="FILE",
                   help="word lists, one word per line (e.g. /usr/share/dict/words from Debian's wamerican): "
                   "their words join the lexicon, so that words unseen in the transcripts can be recognised; "
                   "entries the tokenizer cannot spell are skipped and counted")
    p.add_argument("--out", required=True, help="lexicon file to write")
    p.set_defaults(func=_lexicon)

    p = verbs.add_parser("tune-lm", help="grid search of --lm-weight and --word-score for the lowest WER on a dev set")
    p.add_argument("--model", required=True, help="checkpoint file")
    p.add_argument("--manifest", required=True, help="dev manifest (JSONL)")
    p.add_argument("--lm-weights", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0], metavar="W")
    p.add_argument("--word-scores", type=float, nargs="+", default=[-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0], metavar="S")
    p.add_argument("--sample", type=_positive_int, metavar="N",
                   help="tune on a random sample of N utterances (seeded): beam search with the LM costs "
                   "a fraction of a second per utterance and grid point")
    p.add_argument("--out", metavar="FILE",
                   help="write the best weights as decoding options, e.g. `--lm-weight 1.5 --word-score 3.0`, "
                   "for `asr decode ... $(cat FILE)`")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    _add_beam_options(p, choose_decoding=False)
    p.set_defaults(func=_tune_lm)

    p = verbs.add_parser("attach-lm", help="put a word LM and/or a lexicon, with their tuned weights, into a "
                         "checkpoint: asr transcribe and asr decode then search with them by default")
    p.add_argument("--model", required=True, help="checkpoint file")
    p.add_argument("--lm", metavar="ARPA", help="word n-gram LM (ARPA text)")
    p.add_argument("--lexicon", help="lexicon (asr lexicon); without it the search is lexicon-free")
    p.add_argument("--lm-weight", type=float, default=1.0, help="tuned weight, from asr tune-lm (default: 1.0)")
    p.add_argument("--word-score", type=float, default=0.0, help="tuned score per word, from asr tune-lm (default: 0.0)")
    p.add_argument("--out", help="checkpoint to write (default: --model, replaced atomically)")
    p.set_defaults(func=_attach_lm)


def _transcripts(manifests: list[str]) -> list[str]:
    """The normalised transcripts of several manifests, in order."""
    from asr.data.manifest import read_manifest
    from asr.text import normalize_text

    return [normalize_text(entry["text"])[0] for path in manifests for entry in read_manifest(path)]


def _language_model(args: argparse.Namespace) -> int:
    from asr.ngram import build_arpa

    try:
        counts = build_arpa(_transcripts(args.manifest), args.out, args.order)
    except (OSError, ValueError) as err:
        return _fail(err)
    print(f"wrote {args.out}: " + ", ".join(f"{n} {k + 1}-grams" for k, n in enumerate(counts)))
    return 0


def _lexicon(args: argparse.Namespace) -> int:
    from asr.decoding import read_word_list, write_lexicon

    try:
        words = {w for text in _transcripts(args.manifest) for w in text.split()}
        from_transcripts, skipped = len(words), 0
        for path in args.words:
            listed, unusable = read_word_list(path)
            words |= listed
            skipped += unusable
        count = write_lexicon(sorted(words), args.out)
    except (OSError, ValueError) as err:
        return _fail(err)
    lists = f" ({from_transcripts} from the transcripts, {count - from_transcripts} more from the word lists; " \
            f"{skipped} list entries skipped: not one word in the tokenizer's characters)" if args.words else ""
    print(f"wrote {args.out}: {count} words{lists}")
    return 0


def _tune_lm(args: argparse.Namespace) -> int:
    from asr.checkpoint import load_checkpoint
    from asr.decoding import tune_lm_weights
    from asr.transcribe import manifest_log_probs

    options = _beam_options(args)
    if options is None or options.lm is None:
        return _fail(ValueError("tune-lm needs --lm ARPA"))
    try:
        log_probs, lengths, references = manifest_log_probs(args.model, args.manifest, args.device, args.sample)
        tokenizer = load_checkpoint(args.model).tokenizer
        lm_weight, word_score, table = tune_lm_weights(
            log_probs, lengths, references, tokenizer, options, args.lm_weights, args.word_scores
        )
    except (RuntimeError, OSError, ImportError, ValueError) as err:
        return _fail(err)
    print("lm_weight word_score WER")
    for row in table:
        print(f"{row[0]:9.2f} {row[1]:10.2f} {row[2]:.4f}")
    best = f"--lm-weight {lm_weight} --word-score {word_score}"
    print(f"best: {best} (dev WER {min(row[2] for row in table):.4f})")
    if args.out:
        with atomic_write(args.out) as f:
            f.write(best + "\n")
    return 0


def _attach_lm(args: argparse.Namespace) -> int:
    import dataclasses

    from asr.checkpoint import CheckpointError, load_checkpoint, write_checkpoint
    from asr.decoding import read_language_model

    try:
        ckpt = load_checkpoint(args.model)
        lm = read_language_model(args.lm, args.lexicon, args.lm_weight, args.word_score)
        write_checkpoint(args.out or args.model, dataclasses.replace(ckpt, language_model=lm))
    except (CheckpointError, OSError, ValueError) as err:
        return _fail(err)
    search = " ".join(f"--{name} {getattr(args, name)}" for name in ("lm", "lexicon") if getattr(args, name))
    print(f"{args.out or args.model}: beam search with {search} --lm-weight {args.lm_weight} "
          f"--word-score {args.word_score} unless told otherwise")
    return 0


def _add_training(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("cache-audio", help="decode a manifest's audio once to 16 kHz FLAC (optionally speed-perturbed copies)")
    p.add_argument("--manifest", required=True, help="input manifest (JSONL)")
    p.add_argument("--out-dir", required=True, help="folder for the FLAC copies")
    p.add_argument("--out", required=True, help="manifest of the copies (JSONL)")
    p.add_argument("--speeds", type=float, nargs="+", default=[1.0],
                   help="one copy per speed, e.g. 0.9 1.0 1.1 (Kaldi-style speed perturbation; default: 1.0)")
    p.add_argument("--jobs", type=int, help="parallel processes (default: one per CPU)")
    p.set_defaults(func=_cache_audio)

    p = verbs.add_parser("compute-cmvn", help="global mean/variance statistics of a training manifest")
    p.add_argument("--manifest", required=True, help="training manifest (JSONL)")
    p.add_argument("--out", required=True, help="statistics file, e.g. exp/cmvn.pt")
    p.add_argument("--n-mels", type=int, default=80)
    p.add_argument("--max-utterances", type=int, default=2000, help="random sample size (default: 2000)")
    p.add_argument("--dither", type=float, default=1e-4,
                   help="the training config's dither, which floors the features (default: 1e-4, as training)")
    p.set_defaults(func=_compute_cmvn)

    p = verbs.add_parser("train", help="train a model; run under torchrun for several processes")
    p.add_argument("--config", help="YAML training configuration (see asr/training.py: TrainConfig)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optim.lr=1e-3 model_config.hidden_size=512")
    p.set_defaults(func=_train)

    p = verbs.add_parser("average", help="average the weights of the last N epoch checkpoints")
    p.add_argument("--exp-dir", required=True, help="training directory with epoch-K.pt files")
    p.add_argument("--last", type=int, default=3, metavar="N", help="how many of the latest epochs (default: 3)")
    p.add_argument("--out", required=True, help="averaged checkpoint, e.g. exp/final.pt")
    p.set_defaults(func=_average)

    p = verbs.add_parser("compact", help="a checkpoint for shipping: float16 weights, no trainer state, provenance")
    p.add_argument("--model", required=True, help="checkpoint file")
    p.add_argument("--out", required=True, help="compact checkpoint to write")
    p.add_argument("--note", nargs="*", default=[], metavar="KEY=VALUE",
                   help="provenance to record beside the git commit and source, e.g. recipe=... data=...")
    p.set_defaults(func=_compact)

    p = verbs.add_parser("decode", help="transcribe every utterance of a manifest to id<TAB>text")
    p.add_argument("--model", required=True, help="checkpoint file")
    p.add_argument("--manifest", required=True, help="JSONL manifest to decode")
    p.add_argument("--out", required=True, help="hypotheses file (id<TAB>text), for asr score")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch-size", type=_positive_int, default=1, metavar="N",
                   help="segments or short files run through the model together (default: 1)")
    p.add_argument("--chunk-ms", type=_positive_int, metavar="MS",
                   help="streaming models: stream each utterance through the recognizer in chunks of MS, "
                   "endpointing included, as `asr stream` would")
    _add_beam_options(p)
    p.set_defaults(func=_decode)


def _cache_audio(args: argparse.Namespace) -> int:
    from asr.audio import AudioError
    from asr.data.manifest import cache_audio, read_manifest, write_manifest

    try:
        copies = cache_audio(read_manifest(args.manifest), args.out_dir, args.speeds, args.jobs)
    except (AudioError, FileNotFoundError, ValueError) as err:
        return _fail(err, 1)
    write_manifest(args.out, copies)
    hours = sum(entry["duration"] for entry in copies) / 3600
    print(f"wrote {len(copies)} entries ({hours:.2f} h) to {args.out}")
    return 0


def _compute_cmvn(args: argparse.Namespace) -> int:
    from asr.audio import AudioError
    from asr.training import compute_cmvn_stats, save_cmvn_stats

    try:
        save_cmvn_stats(compute_cmvn_stats(args.manifest, args.n_mels, args.max_utterances, args.dither), args.out)
    except AudioError as err:
        return _fail(err, 1)
    except (OSError, ValueError) as err:
        return _fail(err)
    print(f"wrote {args.out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from asr.audio import AudioError
    from asr.checkpoint import CheckpointError
    from asr.config import load_config
    from asr.training import TrainConfig, Trainer

    import torch.distributed as dist

    code = 0
    config = None
    try:
        config = load_config(TrainConfig, args.config, args.overrides)
        metrics = Trainer(config).fit()
        print(" ".join(f"{k}={v}" for k, v in metrics.items()))
    except KeyboardInterrupt:
        last = os.path.join(config.exp_dir, "last.pt") if config else "last.pt"
        hint = f"; {last} holds the last step: run the same command to resume" if os.path.exists(last) else ""
        print(f"{_prog}: interrupted{hint}", file=sys.stderr)
        code = 130
    except AudioError as err:  # a training file the manifest check let through, e.g. deleted since
        code = _fail(err, 1)
    except (ValueError, OSError, CheckpointError) as err:
        code = _fail(err)
    if dist.is_initialized():
        # Under torchrun, gloo can leave a joinable C++ thread behind even after
        # destroy_process_group; its destructor then calls std::terminate during interpreter
        # teardown (SIGABRT in about 1 run in 10 on a loaded 2-core machine, pytorch#190489).
        # Every checkpoint is already written atomically, so skip the teardown altogether.
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _average(args: argparse.Namespace) -> int:
    import re
    from pathlib import Path

    from asr.checkpoint import CheckpointError, average_checkpoints, write_checkpoint

    epochs = sorted(
        (int(m.group(1)), p) for p in Path(args.exp_dir).glob("epoch-*.pt") if (m := re.fullmatch(r"epoch-(\d+)\.pt", p.name))
    )
    paths = [p for _, p in epochs[-args.last :]]
    if not paths:
        return _error(f"{args.exp_dir}: no epoch-K.pt checkpoints to average")
    try:
        write_checkpoint(args.out, average_checkpoints(paths))
    except CheckpointError as err:
        return _fail(err)
    print(f"averaged {', '.join(p.name for p in paths)} -> {args.out}")
    return 0


def _compact(args: argparse.Namespace) -> int:
    import datetime
    import subprocess
    from pathlib import Path

    from asr.checkpoint import CheckpointError, compact_checkpoint, load_checkpoint, write_checkpoint

    notes = dict(note.split("=", 1) for note in args.note if "=" in note)
    if len(notes) != len(args.note):
        return _error("--note takes KEY=VALUE")
    source = Path(__file__).resolve().parent  # the code that trained and packs the model
    git = subprocess.run(["git", "-C", str(source), "describe", "--always", "--dirty", "--abbrev=40"],
                         capture_output=True, text=True)
    provenance = {"source": str(Path(args.model).resolve()), "git_commit": git.stdout.strip() or None,
                  "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **notes}
    try:
        ckpt = load_checkpoint(args.model)
        if ckpt.metadata.get("provenance"):  # compacted before, where it was trained (a GPU machine)
            provenance["trained"] = ckpt.metadata["provenance"]
        write_checkpoint(args.out, compact_checkpoint(ckpt, provenance))
    except CheckpointError as err:
        return _fail(err)
    before, after = Path(args.model).stat().st_size, Path(args.out).stat().st_size
    print(f"{args.model} ({before / 1e6:.1f} MB) -> {args.out} ({after / 1e6:.1f} MB, float16 weights)")
    return 0


def _decode(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from asr.transcribe import decode_manifest

    try:
        beam = _beam_options(args)
        failures = decode_manifest(
            args.model, args.manifest, args.out, device=args.device, beam=beam,
            batch_size=args.batch_size, chunk_ms=args.chunk_ms, greedy=args.greedy,
            on_error=lambda err: tqdm.write(f"{_prog}: error: {err}", file=sys.stderr),
        )
    except (RuntimeError, OSError, ImportError, ValueError) as err:
        return _fail(err)
    return 1 if failures else 0


def _add_score(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("score", help="WER and CER of hypotheses against references, with the top errors")
    p.add_argument("ref", metavar="REF", help="references: id<TAB>text lines or a JSONL manifest")
    p.add_argument("hyp", metavar="HYP", help="hypotheses, same formats (e.g. the output of asr transcribe)")
    p.add_argument("--alignments", metavar="FILE", help="write each utterance's REF/HYP alignment here")
    p.add_argument("--top", type=int, default=10, metavar="N", help="most frequent errors to list (default: 10)")
    p.add_argument("--by", metavar="FIELD",
                   help="also WER/CER for each value of this field of the REF manifest (e.g. age_group)")
    p.set_defaults(func=_score)


def _score(args: argparse.Namespace) -> int:
    from asr.metrics import group_summary, read_transcripts, score, score_by_group, write_alignments

    try:
        refs, hyps = read_transcripts(args.ref), read_transcripts(args.hyp)
        report = score(refs, hyps)
        groups = score_by_group(refs, hyps, read_transcripts(args.ref, field=args.by)) if args.by else None
    except (OSError, ValueError) as err:
        return _fail(err)
    print(report.summary(top=args.top))
    if groups:
        print(group_summary(args.by, groups))
    if args.alignments:
        try:
            write_alignments(report, args.alignments)
        except OSError as err:
            return _fail(err, 1)
    return 0


def _add_prepare(verbs: argparse._SubParsersAction) -> None:
    """`asr prepare librispeech` (optionally download) and `asr prepare librispeech-tree` (any tree)."""
    p = verbs.add_parser("prepare", help="build validated JSONL manifests for a corpus")
    corpora = p.add_subparsers(dest="corpus", required=True, metavar="CORPUS")

    q = corpora.add_parser("librispeech", help="LibriSpeech subsets, downloaded and checksummed if asked")
    q.add_argument("--data-root", required=True, help="holds LibriSpeech/<subset>/ (downloads go here)")
    q.add_argument("--download", action="store_true", help="download, verify and extract missing subsets first")
    q.add_argument("--mirror", help="base URL instead of https://www.openslr.org/resources/ (needs --download)")
    q.add_argument("--checksums", metavar="FILE",
                   help="md5sum-format list (e.g. a mirror's md5sum.txt) replacing the built-in MD5 sums of the "
                        "files it names (needs --download)")
    q.add_argument("--subsets", nargs="+", metavar="SUBSET", help="default: all seven standard subsets")
    q.add_argument("--with-lm", action="store_true", help="also fetch the LM files to DATA_ROOT/lm (with --download)")
    q.add_argument("--out", help="directory for <subset>.jsonl (without it, --download only downloads)")
    q.set_defaults(func=_prepare_librispeech)

    q = corpora.add_parser("fsdd", help="Free Spoken Digit Dataset, split by speaker")
    q.add_argument("--data-root", required=True, help="FSDD folder with transcripts.tsv and recordings/")
    q.add_argument("--test-speakers", nargs="+", default=["theo", "yweweler"], metavar="NAME",
                   help="speakers held out for test (default: theo yweweler)")
    q.add_argument("--out", required=True, help="directory for train/dev/test.jsonl")
    q.set_defaults(func=_prepare_fsdd)

    q = corpora.add_parser("speechocean762", help="speechocean762 (non-native English, children and adults), "
                           "official train/test split, with speaker ages")
    q.add_argument("--data-root", help="corpus folder with train/, test/ and WAVE/ (default: the shared copy "
                   "../shared/data/speechocean762 beside the repository, when it exists)")
    q.add_argument("--download-dir", metavar="DIR",
                   help="download the OpenSLR tarball (resource 101) here, extract it and use it as --data-root")
    q.add_argument("--mirror", help="base URL instead of https://www.openslr.org/resources/ (needs --download-dir)")
    q.add_argument("--md5", help="MD5 the tarball must have (OpenSLR publishes none; needs --download-dir)")
    q.add_argument("--dev-speakers", type=int, default=0, metavar="N",
                   help="move N training speakers (half children) to dev.jsonl for validation (default: 0)")
    q.add_argument("--max-utterances", type=_positive_int, metavar="N",
                   help="at most N utterances per split, spread over its speakers (a quick subset)")
    q.add_argument("--out", required=True, help="directory for train.jsonl, test.jsonl (and dev.jsonl)")
    q.set_defaults(func=_prepare_speechocean762)

    q = corpora.add_parser("keywords", help="wake words and command words (picovoice, mycroft, speechcommands), "
                           "the corpus's own train/test split")
    q.add_argument("--data-root", help="corpus folder with utterances.tsv and split.tsv (default: the shared copy "
                   "../shared/data/keywords beside the repository, when it exists)")
    q.add_argument("--out", required=True, help="directory for train.jsonl and test.jsonl")
    q.set_defaults(func=_prepare_keywords)

    q = corpora.add_parser("librispeech-tree", help="any LibriSpeech-layout tree (e.g. synthetic) to one manifest")
    q.add_argument("--root", required=True, help="directory with SPEAKER/CHAPTER/*.flac and *.trans.txt")
    q.add_argument("--out", required=True, help="manifest file, e.g. data/train.jsonl")
    q.set_defaults(func=_prepare_librispeech_tree)


def _prepare_librispeech(args: argparse.Namespace) -> int:
    from asr.data.librispeech import (
        CHECKSUMS, SUBSETS, ChecksumError, DownloadError, download_librispeech, prepare_librispeech, read_md5sums,
    )

    if (args.mirror or args.with_lm or args.checksums) and not args.download:
        return _error("--mirror, --checksums and --with-lm need --download")
    if not (args.download or args.out):
        return _error("nothing to do; give --download, --out or both")
    subsets = args.subsets or list(SUBSETS)
    try:
        if args.download:
            checksums = {**CHECKSUMS, **read_md5sums(args.checksums)} if args.checksums else CHECKSUMS
            download_librispeech(args.data_root, subsets, mirror=args.mirror, include_lm=args.with_lm,
                                 checksums=checksums)
        if args.out:
            prepare_librispeech(args.data_root, args.out, subsets)
    except (ChecksumError, DownloadError, FileNotFoundError, ValueError) as err:
        return _fail(err, 1)
    return 0


def _prepare_fsdd(args: argparse.Namespace) -> int:
    from asr.data.fsdd import prepare_fsdd

    try:
        prepare_fsdd(args.data_root, args.out, args.test_speakers)
    except (FileNotFoundError, ValueError) as err:
        return _fail(err, 1)
    return 0


def _prepare_speechocean762(args: argparse.Namespace) -> int:
    from asr.data.librispeech import ChecksumError, DownloadError
    from asr.data.speechocean762 import SHARED_COPY, download_speechocean762, prepare_speechocean762

    if (args.mirror or args.md5) and not args.download_dir:
        return _error("--mirror and --md5 need --download-dir")
    if args.data_root and args.download_dir:
        return _error("give --data-root (an existing copy) or --download-dir, not both")
    try:
        if args.download_dir:
            corpus = download_speechocean762(args.download_dir, args.mirror, checksum=args.md5)
        elif args.data_root or SHARED_COPY.is_dir():
            corpus = args.data_root or SHARED_COPY
        else:
            return _error(f"no speechocean762 at {SHARED_COPY}; give --data-root or --download-dir")
        prepare_speechocean762(corpus, args.out, dev_speakers=args.dev_speakers, max_utterances=args.max_utterances)
    except (ChecksumError, DownloadError, FileNotFoundError) as err:
        return _fail(err, 1)
    return 0


def _prepare_keywords(args: argparse.Namespace) -> int:
    from asr.data.keywords import SHARED_COPY, prepare_keywords

    root = args.data_root or SHARED_COPY
    try:
        prepare_keywords(root, args.out)
    except (FileNotFoundError, ValueError) as err:
        return _fail(err, 1)
    return 0


def _prepare_librispeech_tree(args: argparse.Namespace) -> int:
    from asr.data.manifest import librispeech_tree_to_entries, validate_entries, write_manifest

    try:
        entries = librispeech_tree_to_entries(args.root)
    except (FileNotFoundError, ValueError) as err:
        return _fail(err, 1)
    kept, report = validate_entries(entries)
    print(report.summary())
    write_manifest(args.out, kept)
    print(f"wrote {len(kept)} entries to {args.out}")
    return 0


def _add_stream(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("stream", help="live recognition from a microphone (or a file streamed like one)")
    p.add_argument("--model", help="streaming checkpoint, trained with model=streaming_gru (default: the embedded "
                   "English streaming model, asr/pretrained/MODEL_CARD.md)")
    p.add_argument("--device", metavar="NAME|INDEX", help="input device (default: the system's default input)")
    p.add_argument("--list-devices", action="store_true", help="list the input devices and exit")
    p.add_argument("--chunk-ms", type=_positive_int, default=80, metavar="MS",
                   help="audio fed to the model per step (default: 80; larger chunks cost less and wait longer: "
                   "tools/bench_streaming.py, README)")
    p.add_argument("--file", help="stream this audio file through the recognizer instead of a microphone")
    p.add_argument("--realtime", action="store_true", help="with --file: feed it at the pace of real time")
    p.add_argument("--max-seconds", type=float, metavar="S",
                   help="stop after S seconds of audio (default: at Ctrl-C or the end of --file)")
    _add_runtime_option(p)
    _add_beam_options(p)
    p.set_defaults(func=_stream)


def _stream(args: argparse.Namespace) -> int:
    """Partials rewrite one terminal line, finals get their own; not a terminal: finals only."""
    import shutil
    import statistics
    import time

    from asr.audio import AudioError, Microphone, MicrophoneError, check_audio, iter_audio_blocks, list_input_devices
    from asr.checkpoint import CheckpointError
    from asr.pretrained import resolve_model
    from asr.streaming import Recognizer

    mic = None
    try:
        if args.list_devices:
            devices = list_input_devices()
            if not devices:
                raise MicrophoneError("no audio input device found")
            for d in devices:
                print(f"{'*' if d.is_default else ' '} {d.index}: {d.name} ({d.channels} ch, {d.default_rate} Hz)")
            return 0
        if args.realtime and not args.file:
            return _error("--realtime needs --file")
        if args.runtime == "onnx":
            recognizer = _runtime_recognizer(args)
        else:
            recognizer = Recognizer(resolve_model(args.model, "streaming"), beam=_beam_options(args),
                                    greedy=args.greedy)
        if args.file:
            # the whole file checked now, as every reader checks it: a bad one is refused before
            # anything of it is recognised (a truncated MP3 shows only at its end)
            check_audio(args.file)
            source = iter_audio_blocks(args.file, seconds=args.chunk_ms / 1000)
        else:
            device = int(args.device) if args.device and args.device.isdigit() else args.device
            mic = Microphone(device, chunk_seconds=args.chunk_ms / 1000)
            rate = f" at {mic.capture_rate} Hz, resampled to 16000 Hz" if mic.capture_rate != 16000 else ""
            print(f"listening on {mic.name!r}{rate}; Ctrl-C to stop", file=sys.stderr)
            source = iter(mic)
    except AudioError as err:
        return _fail(err, 1)
    except (CheckpointError, MicrophoneError, ImportError, ValueError, OSError) as err:
        return _fail(err)

    tty = sys.stdout.isatty()
    live = args.realtime or not args.file  # latencies mean something only when audio comes in real time
    finals, latencies = [], []

    def show(event) -> None:
        if event.kind == "partial":
            latencies.append(event.latency)
            if tty:
                width = shutil.get_terminal_size().columns - 1
                sys.stdout.write("\r\033[K" + event.text[-width:])
                sys.stdout.flush()
            return
        if not event.text:  # the utterance held no words after all: clear its partial
            if tty:
                sys.stdout.write("\r\033[K")
            return
        finals.append(event.text)
        suffix = f"  ({event.latency * 1000:.0f} ms after its last word)" if tty and live else ""
        print(("\r\033[K" if tty else "") + event.text + suffix, flush=True)

    seconds, start, status = 0.0, time.perf_counter(), 0
    try:
        for chunk in source:
            if args.realtime:  # a chunk is complete only once its last sample has been "spoken"
                time.sleep(max(0.0, start + seconds + len(chunk) / 16000 - time.perf_counter()))
            seconds += len(chunk) / 16000
            for event in recognizer.accept_audio(chunk):
                show(event)
            if args.max_seconds is not None and seconds >= args.max_seconds:
                break
    except KeyboardInterrupt:
        pass
    except AudioError as err:
        status = _fail(err, 1)
    finally:
        if mic is not None:
            mic.close()
    for event in recognizer.finish():
        show(event)
    if tty:
        sys.stdout.write("\r\033[K")
    summary = f"{len(finals)} utterance(s) finalised from {seconds:.1f} s of audio"
    if live and len(latencies) >= 2:
        cuts = statistics.quantiles(latencies, n=20)
        summary += f"; partial latency p50 {statistics.median(latencies) * 1000:.0f} ms, p95 {cuts[-1] * 1000:.0f} ms"
    print(summary, file=sys.stderr)
    return status


def _add_serve(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("serve", help="streaming recognition over WebSocket, files over HTTP, and a page at / "
                         "that listens in the browser (protocol: docs/serve.md)")
    p.add_argument("--model", help="streaming checkpoint (default: the embedded streaming model)")
    p.add_argument("--offline-model", metavar="CKPT",
                   help="offline checkpoint for POST /transcribe (default: the embedded offline model; "
                   "without one, that route answers 503)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: any free one, printed)")
    p.add_argument("--max-streams", type=_positive_int, default=32, metavar="N",
                   help="streams open at once; more are refused with close code 1013 (default: 32)")
    p.add_argument("--max-frame-bytes", type=_positive_int, default=1 << 20, metavar="B",
                   help="largest WebSocket message; a larger one closes its stream with 1009 (default: 1 MiB)")
    p.add_argument("--idle-timeout", type=float, default=30.0, metavar="S",
                   help="seconds without a message before a stream is finalised and closed with 1008 (default: 30)")
    p.add_argument("--workers", type=_positive_int, default=os.cpu_count() or 1, metavar="N",
                   help="recognition threads (default: the number of cores)")
    _add_beam_options(p)
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from asr.checkpoint import CheckpointError
    from asr.pretrained import resolve_model
    from asr.serve import ServeConfig, serve

    try:
        model = resolve_model(args.model, "streaming")
        try:
            offline = resolve_model(args.offline_model, "offline")
        except FileNotFoundError as err:
            if args.offline_model:
                raise
            print(f"{_prog}: warning: {err}; POST /transcribe is off", file=sys.stderr)
            offline = None
        config = ServeConfig(model=str(model), offline_model=str(offline) if offline else None, host=args.host,
                             port=args.port, max_streams=args.max_streams, max_frame_bytes=args.max_frame_bytes,
                             idle_timeout=args.idle_timeout, workers=args.workers, beam=_beam_options(args),
                             greedy=args.greedy)
        serve(config)
    except (CheckpointError, ImportError, ValueError, OSError) as err:
        return _fail(err)
    return 0


# ---------------------------------------------------------------------------------------------
# asr record / asr adapt: a personal model from a few minutes of one voice (asr/record.py, asr/adapt.py)


def _add_adapt(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("record", help="read prompts aloud into the microphone: NAME.wav + NAME.txt pairs for asr adapt")
    p.add_argument("out_dir", metavar="DIR", help="folder for the recordings (prompts already recorded there are passed over)")
    p.add_argument("--prompts", metavar="FILE", help="your own prompts, one per line (default: the shipped list of "
                   "200 English sentences)")
    p.add_argument("--count", type=_positive_int, metavar="N", help="stop after N prompts (default: all)")
    p.add_argument("--device", metavar="NAME|INDEX", help="input device (default: the system's default input; "
                   "asr stream --list-devices lists them)")
    p.set_defaults(func=_record)

    p = verbs.add_parser("adapt", help="fine-tune a model to one voice from a folder of transcribed recordings "
                         "(docs/adapt.md)")
    p.add_argument("source", metavar="DIR|MANIFEST", help="audio files with same-stem .txt transcripts (what asr record "
                   "writes), or a JSONL manifest")
    p.add_argument("--out", required=True, help="the adapted checkpoint to write")
    p.add_argument("--model", help="checkpoint to adapt (default: the embedded offline model)")
    p.add_argument("--streaming", action="store_true", help="adapt the embedded streaming model (for asr stream, serve)")
    p.add_argument("--max-updates", type=_positive_int, metavar="N", help="most updates (default: 200; docs/adapt.md)")
    p.set_defaults(func=_adapt)


def _record(args: argparse.Namespace) -> int:
    from asr.audio import Microphone, MicrophoneError
    from asr.record import PromptError, read_prompts, run_session

    try:
        prompts = read_prompts(args.prompts)
        device = int(args.device) if args.device and args.device.isdigit() else args.device
        mic = Microphone(device, chunk_seconds=0.05)
    except (PromptError, MicrophoneError, ValueError, OSError) as err:
        return _fail(err)
    print(f"recording from {mic.name!r} into {args.out_dir}; each take stops after a pause", file=sys.stderr)
    try:
        run_session(prompts, args.out_dir, iter(mic), limit=args.count, live_meter=sys.stderr.isatty())
    except EOFError:  # input closed: what was kept is written
        print(file=sys.stderr)
    finally:
        mic.close()
    return 0


def _adapt(args: argparse.Namespace) -> int:
    from asr.adapt import AdaptConfig, AdaptError, adapt_to_file
    from asr.audio import AudioError
    from asr.checkpoint import CheckpointError
    from asr.pretrained import resolve_model

    if args.model and args.streaming:
        return _error("give --model or --streaming, not both")
    config = AdaptConfig() if args.max_updates is None else AdaptConfig(max_updates=args.max_updates)
    try:
        base = resolve_model(args.model, "streaming" if args.streaming else "offline")
        result = adapt_to_file(base, args.source, args.out, config)
    except (AudioError, AdaptError) as err:  # the recordings, not the command line, are at fault
        return _fail(err, 1)
    except (CheckpointError, ValueError, OSError) as err:
        return _fail(err)
    before, after = result.held_out["before"], result.held_out["after"]
    print(f"wrote {args.out}: {result.steps} updates in {result.seconds / 60:.1f} min; held-out greedy WER "
          f"{before['wer']:.3f} -> {after['wer']:.3f}, CER {before['cer']:.3f} -> {after['cer']:.3f}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    global _prog
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    _prog = f"asr {args.verb}"
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
        print(f"{_prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # whoever read our output has gone (`asr score ... | head`): stop quietly, as Unix tools do;
        # stdout goes to devnull so that the interpreter's final flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as err:  # one no verb handles: above all a full disk while writing
        return _fail(err, 1)

if __name__ == "__main__":
    sys.exit(main())
