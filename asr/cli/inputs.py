"""What ``asr transcribe`` reads, for either runtime: files, directories (searched) and manifests."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from asr.audio import AUDIO_EXTENSIONS, audio_files
from asr.data.manifest import read_manifest



@dataclass
class Input:
    audio: str
    id: str | None = None  # a manifest entry's id, which labels its output instead of the path

    @property
    def label(self) -> str:
        return self.id or self.audio

    @property
    def stem(self) -> str:
        return self.id or Path(self.audio).stem


def collect_inputs(names: list[str], manifest: str | None) -> tuple[list[Input], list[str]]:
    """The recordings to transcribe, in order, and a message per directory that holds none.

    Raises:
        OSError, ValueError: the manifest cannot be read.
    """
    inputs, failures = [], []
    for name in names:
        if Path(name).is_dir():
            found = audio_files(name)
            if not found:
                failures.append(f"{name}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this directory")
            inputs += [Input(str(path)) for path in found]
        else:
            inputs.append(Input(name))
    if manifest:
        entries = read_manifest(manifest, required=("id", "audio"))  # nothing else is used here
        inputs += [Input(entry["audio"], str(entry["id"])) for entry in entries]
    return inputs, failures


def clashing_stem(inputs: list[Input]) -> str | None:
    """A stem that several inputs share (their output files would overwrite each other), or None."""
    clashes = sorted(stem for stem, n in Counter(item.stem for item in inputs).items() if n > 1)
    return clashes[0] if clashes else None
