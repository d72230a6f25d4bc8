"""asr.fileio: a file is replaced whole or not at all, with the permissions open() would give it."""

import os
import stat

import pytest
import torch

from asr.data.manifest import write_manifest
from asr.fileio import atomic_write, save_torch


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_a_written_file_has_the_mode_of_a_plain_open(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    with atomic_write(tmp_path / "atomic.txt") as f:
        f.write("x")
    save_torch({"a": torch.zeros(2)}, tmp_path / "model.pt")
    write_manifest(tmp_path / "train.jsonl", [{"id": "a"}])
    expected = 0o666 & ~current_umask()
    assert stat.S_IMODE((tmp_path / "train.jsonl").stat().st_mode) == expected
    assert stat.S_IMODE(plain.stat().st_mode) == expected
    assert stat.S_IMODE((tmp_path / "atomic.txt").stat().st_mode) == expected
    assert stat.S_IMODE((tmp_path / "model.pt").stat().st_mode) == expected
    assert torch.equal(torch.load(tmp_path / "model.pt")["a"], torch.zeros(2))


def test_an_error_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "stats.txt"
    path.write_text("old\n")
    with pytest.raises(KeyboardInterrupt), atomic_write(path) as f:
        f.write("half of the new")
        raise KeyboardInterrupt
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.txt"]


def test_ctrl_c_just_as_the_temporary_appears_leaves_nothing(tmp_path, monkeypatch):
    """The window between the temporary file's creation and the code that cleans it up: a
    SIGINT there (raised as the creating call returns) must not leave a .tmp file behind."""
    real_open = os.open

    def open_then_interrupt(*args, **kwargs):
        real_open(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "open", open_then_interrupt)
    with pytest.raises(KeyboardInterrupt), atomic_write(tmp_path / "hyp.txt") as f:
        f.write("never")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
