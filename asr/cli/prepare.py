"""``asr prepare CORPUS``: validated JSONL manifests for LibriSpeech, FSDD, speechocean762, the shared
folder's corpora (keywords, AN4, LibriSpeech clips) or any LibriSpeech-layout tree."""

from __future__ import annotations

import argparse

from asr.cli.common import error, fail, positive_int
from asr.data.fsdd import prepare_fsdd
from asr.data.librispeech import (
    CHECKSUMS, SUBSETS, ChecksumError, DownloadError, download_librispeech, prepare_librispeech, read_md5sums,
)
from asr.data.manifest import librispeech_tree_to_entries, validate_entries, write_manifest
from asr.data.shared_corpus import CORPORA, prepare_shared_corpus, shared_copy
from asr.data.speechocean762 import SHARED_COPY as SPEECHOCEAN762_COPY
from asr.data.speechocean762 import download_speechocean762, prepare_speechocean762


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("prepare", help="build validated JSONL manifests for a corpus")
    p.set_defaults(prog="asr prepare")
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
    q.set_defaults(func=_librispeech)

    q = corpora.add_parser("fsdd", help="Free Spoken Digit Dataset, split by speaker")
    q.add_argument("--data-root", required=True, help="FSDD folder with transcripts.tsv and recordings/")
    q.add_argument("--test-speakers", nargs="+", default=["theo", "yweweler"], metavar="NAME",
                   help="speakers held out for test (default: theo yweweler)")
    q.add_argument("--out", required=True, help="directory for train/dev/test.jsonl")
    q.set_defaults(func=_fsdd)

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
    q.add_argument("--max-utterances", type=positive_int, metavar="N",
                   help="at most N utterances per split, spread over its speakers (a quick subset)")
    q.add_argument("--out", required=True, help="directory for train.jsonl, test.jsonl (and dev.jsonl)")
    q.set_defaults(func=_speechocean762)

    helps = {"keywords": "wake words and command words (picovoice, mycroft, speechcommands)",
             "an4": "CMU AN4: census answers, spelled words and numbers by 84 US speakers",
             "librispeech-clips": "2.3 h of LibriSpeech read speech by about 265 speakers, with an adapt part "
                                  "(three speakers' chapters)"}
    for name, corpus in CORPORA.items():
        parts = "/".join(corpus.parts)
        q = corpora.add_parser(name, help=f"{helps[name]}; the corpus's own {parts} split")
        q.add_argument("--data-root", help="corpus folder with utterances.tsv and split.tsv (default: the shared "
                       f"copy ../shared/data/{corpus.folder} beside the repository, when it exists)")
        q.add_argument("--dev-speakers", type=int, default=0, metavar="N",
                       help="move N training speakers, whole, to dev.jsonl for validation (default: 0)")
        q.add_argument("--out", required=True, help=f"directory for {', '.join(f'{p}.jsonl' for p in corpus.parts)}")
        q.set_defaults(func=_shared_corpus)

    q = corpora.add_parser("librispeech-tree", help="any LibriSpeech-layout tree (e.g. synthetic) to one manifest")
    q.add_argument("--root", required=True, help="directory with SPEAKER/CHAPTER/*.flac and *.trans.txt")
    q.add_argument("--out", required=True, help="manifest file, e.g. data/train.jsonl")
    q.set_defaults(func=_librispeech_tree)


def _librispeech(args: argparse.Namespace) -> int:
    if (args.mirror or args.with_lm or args.checksums) and not args.download:
        return error(args, "--mirror, --checksums and --with-lm need --download")
    if not (args.download or args.out):
        return error(args, "nothing to do; give --download, --out or both")
    subsets = args.subsets or list(SUBSETS)
    try:
        if args.download:
            checksums = {**CHECKSUMS, **read_md5sums(args.checksums)} if args.checksums else CHECKSUMS
            download_librispeech(args.data_root, subsets, mirror=args.mirror, include_lm=args.with_lm,
                                 checksums=checksums)
        if args.out:
            prepare_librispeech(args.data_root, args.out, subsets)
    except (ChecksumError, DownloadError, FileNotFoundError, ValueError) as err:
        return fail(args, err, 1)
    return 0


def _fsdd(args: argparse.Namespace) -> int:
    try:
        prepare_fsdd(args.data_root, args.out, args.test_speakers)
    except (FileNotFoundError, ValueError) as err:
        return fail(args, err, 1)
    return 0


def _speechocean762(args: argparse.Namespace) -> int:
    if (args.mirror or args.md5) and not args.download_dir:
        return error(args, "--mirror and --md5 need --download-dir")
    if args.data_root and args.download_dir:
        return error(args, "give --data-root (an existing copy) or --download-dir, not both")
    try:
        if args.download_dir:
            corpus = download_speechocean762(args.download_dir, args.mirror, checksum=args.md5)
        elif args.data_root or SPEECHOCEAN762_COPY.is_dir():
            corpus = args.data_root or SPEECHOCEAN762_COPY
        else:
            return error(args, f"no speechocean762 at {SPEECHOCEAN762_COPY}; give --data-root or --download-dir")
        prepare_speechocean762(corpus, args.out, dev_speakers=args.dev_speakers, max_utterances=args.max_utterances)
    except (ChecksumError, DownloadError, FileNotFoundError) as err:
        return fail(args, err, 1)
    return 0


def _shared_corpus(args: argparse.Namespace) -> int:
    try:
        prepare_shared_corpus(args.corpus, args.data_root or shared_copy(args.corpus), args.out, args.dev_speakers)
    except (FileNotFoundError, ValueError) as err:
        return fail(args, err, 1)
    return 0


def _librispeech_tree(args: argparse.Namespace) -> int:
    try:
        entries = librispeech_tree_to_entries(args.root)
    except (FileNotFoundError, ValueError) as err:
        return fail(args, err, 1)
    kept, report = validate_entries(entries)
    print(report.summary())
    write_manifest(args.out, kept)
    print(f"wrote {len(kept)} entries to {args.out}")
    return 0


