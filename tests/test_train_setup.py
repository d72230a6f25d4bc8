"""The training run's parts, each built alone from a config, without a manifest."""

import math

import pytest
import torch

from asr.checkpoint import save_checkpoint
from asr.features import accumulate_stats
from asr.models import build_model
from asr.text import Tokenizer
from asr.train_setup import (
    TrainConfig, cosine_schedule, get_device, get_model, get_optimizer, get_precision, get_scheduler,
)
from asr.fileio import save_torch

TINY = {"hidden_size": 8, "num_layers": 1, "conv_channels": 4, "n_mels": 16}


def cmvn_file(tmp_path, n_mels=16):
    feats = torch.randn(1, 50, n_mels) * 3 + 1
    total, total_sq, count = accumulate_stats(feats, torch.tensor([50]))
    save_torch({"sum": total, "sum_sq": total_sq, "count": count, "n_mels": n_mels}, tmp_path / "cmvn.pt")
    return str(tmp_path / "cmvn.pt"), feats


def test_get_model_builds_the_named_model_with_its_cmvn(tmp_path):
    path, feats = cmvn_file(tmp_path)
    model = get_model(TrainConfig(model="rnn_ctc", model_config=TINY, cmvn=path), Tokenizer(), log=lambda _: None)
    assert type(model).__name__ == "RNNCTC" and model.config.vocab_size == len(Tokenizer())
    normalised = model.cmvn(feats)
    torch.testing.assert_close(normalised.mean(dim=(0, 1)), torch.zeros(16), atol=1e-4, rtol=0)


def test_get_model_starts_from_a_checkpoint_of_an_aliased_name(tmp_path):
    """A checkpoint saved as blstm_ctc (an alias of rnn_ctc) starts an rnn_ctc run."""
    torch.manual_seed(0)
    old = build_model("blstm_ctc", {**TINY, "vocab_size": len(Tokenizer())}, verbose=False)
    save_checkpoint(tmp_path / "old.pt", old, "blstm_ctc", Tokenizer())
    config = TrainConfig(model="rnn_ctc", init_from=str(tmp_path / "old.pt"), model_config={"dropout": 0.0})
    model = get_model(config, Tokenizer(), log=lambda _: None)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), old.state_dict().values()))
    with pytest.raises(ValueError, match="holds a blstm_ctc model, not streaming_gru"):
        get_model(TrainConfig(model="streaming_gru", init_from=str(tmp_path / "old.pt")), Tokenizer())


def test_device_and_precision_on_cpu():
    config = TrainConfig(device="cpu")
    device = get_device(config)
    assert device == torch.device("cpu")
    assert get_precision(config, device) == (False, False)
    with pytest.raises(ValueError, match="precision must be"):
        get_precision(TrainConfig(precision="fp16"), device)


def test_schedule_warms_up_then_decays_to_its_floor():
    config = TrainConfig()
    config.optim.warmup_steps, config.optim.final_lr_ratio = 10, 0.1
    model = torch.nn.Linear(2, 2)
    optimizer = get_optimizer(config, model)
    scheduler = get_scheduler(config, optimizer, total_steps=110)
    rates = []
    for _ in range(110):
        rates.append(optimizer.param_groups[0]["lr"] / config.optim.lr)
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert rates[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cosine_schedule(10, 110, 0.1)(110) == pytest.approx(0.1)
