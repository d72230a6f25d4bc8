"""DDP on CPU: two gloo processes under torchrun train like one process with the same global batch."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.checkpoint import load_checkpoint
from asr.data.loader import BucketBatchSampler
from asr.train_setup import TrainConfig
from asr.training import Trainer
from conftest import run_while_progressing

WORDS = ["ALPHA", "BRAVO", "CHARLIE", "DELTA"]
COMMON = {
    "model_config.hidden_size": 32, "model_config.num_layers": 2, "model_config.conv_channels": 4,
    "model_config.dropout": 0.0, "model_config.specaugment.freq_masks": 0,
    "model_config.specaugment.time_masks": 0, "dither": 0.0, "epochs": 2, "threads": 1,
    "optim.warmup_steps": 2, "optim.lr": 0.003, "data.num_workers": 0, "save_every_steps": 1000,
}


def equal_length_manifest(tmp_path, count=32):
    """Utterances of one length, so every batch has the same size: then the mean of two
    per-rank mean losses equals the mean over the merged batch, and the comparison is exact."""
    import json

    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        t = np.arange(16000) / 16000
        audio = 0.05 * rng.standard_normal(len(t)) + 0.2 * np.sin(2 * np.pi * rng.uniform(100, 900) * t)
        sf.write(tmp_path / f"u{i}.flac", audio.astype("float32"), 16000)
        entry = {"id": f"u{i}", "audio": str(tmp_path / f"u{i}.flac"), "duration": 1.0,
                 "text": " ".join(rng.choice(WORDS, 2)), "speaker": "s"}
        lines.append(json.dumps(entry) + "\n")
    (tmp_path / "train.jsonl").write_text("".join(lines))
    return tmp_path / "train.jsonl"


class PerRankForward(torch.nn.Module):
    """Runs each rank's half of a merged batch separately: on CPU (gloo) each DDP rank keeps
    its own batch-norm statistics, so the single-process twin must too."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, feats, lengths):
        half = feats.shape[0] // 2
        first, second = self.model(feats[:half], lengths[:half]), self.model(feats[half:], lengths[half:])
        return torch.cat([first[0], second[0]]), torch.cat([first[1], second[1]])


class MergedPairs(BucketBatchSampler):
    """Single-process twin of two ranks: step k sees rank 0's and rank 1's batches together."""

    def _batches(self):
        batches = super()._batches()
        return [batches[i] + batches[i + 1] for i in range(0, len(batches) - 1, 2)]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(), reason="torchrun not found")
def test_two_gloo_ranks_match_single_process(tmp_path, monkeypatch):
    manifest = equal_length_manifest(tmp_path)
    cmvn = tmp_path / "cmvn.pt"
    subprocess.run([sys.executable, "-m", "asr", "compute-cmvn", "--manifest", str(manifest), "--out", str(cmvn)], check=True, capture_output=True)
    overrides = [f"{k}={v}" for k, v in COMMON.items()] + [f"data.train={manifest}", f"cmvn={cmvn}", "data.max_frames=400"]
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    ddp = run_while_progressing(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "asr", "train", f"exp_dir={tmp_path / 'ddp'}", *overrides],
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "2 ranks hold identical weights" in ddp.stdout + ddp.stderr

    monkeypatch.setattr("asr.train_setup.BucketBatchSampler", MergedPairs)
    from asr.config import apply_overrides, config_from_dict

    values = apply_overrides({}, overrides + [f"exp_dir={tmp_path / 'single'}"])
    single = Trainer(config_from_dict(TrainConfig, values))
    single.ddp_model = PerRankForward(single.model)
    assert single.steps_per_epoch == load_checkpoint(tmp_path / "ddp" / "last.pt").trainer_state["step"] // 2
    single.fit()

    ddp_weights = load_checkpoint(tmp_path / "ddp" / "last.pt").state_dict
    # parameters only: batch-norm running statistics follow rank 0's batches under DDP
    difference = max((ddp_weights[k] - v).abs().max().item() for k, v in single.model.named_parameters())
    print(f"max |DDP - single| weight difference: {difference:.2e}")
    assert difference < 1e-5
