"""`asr average`: the element-wise mean of the last N epoch checkpoints of one model."""

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from asr.checkpoint import load_checkpoint, save_checkpoint
from asr.cli import main
from asr.models import MODELS, build_model
from asr.text import Tokenizer

TINY = {"hidden_size": 16, "num_layers": 2, "conv_channels": 4}


def save_epochs(exp_dir, models):
    """epoch-1.pt, epoch-2.pt, ...: one randomly initialised model per (name, config)."""
    for epoch, (name, config) in enumerate(models, 1):
        torch.manual_seed(epoch)
        model = build_model(name, config, verbose=False)
        save_checkpoint(exp_dir / f"epoch-{epoch}.pt", model, name, Tokenizer(), {"epoch": epoch})


def test_average_is_the_elementwise_mean_of_the_last_n(tmp_path, capsys):
    save_epochs(tmp_path, [("blstm_ctc", TINY)] * 4)
    assert main(["average", "--exp-dir", str(tmp_path), "--last", "3", "--out", str(tmp_path / "final.pt")]) == 0
    assert "epoch-2.pt, epoch-3.pt, epoch-4.pt" in capsys.readouterr().out  # epoch-1 is not among the last 3

    averaged = load_checkpoint(tmp_path / "final.pt")
    inputs = [load_checkpoint(tmp_path / f"epoch-{e}.pt").state_dict for e in (2, 3, 4)]
    assert averaged.state_dict.keys() == inputs[0].keys()
    for key, value in averaged.state_dict.items():
        if not value.is_floating_point():  # batch-norm counters: taken from the last epoch
            assert torch.equal(value, inputs[2][key]), key
            continue
        # the mean in float64, rounded once to float32: exact, whatever the summation order
        expected = ((inputs[0][key].double() + inputs[1][key].double() + inputs[2][key].double()) / 3).float()
        assert value.dtype == torch.float32 and torch.equal(value, expected), key
    key = "encoder.rnn.weight_hh_l0"
    assert not torch.equal(averaged.state_dict[key], inputs[2][key])
    assert averaged.model_config == load_checkpoint(tmp_path / "epoch-4.pt").model_config
    assert averaged.trainer_state is None
    averaged.build_model()  # loads into the model it describes


@dataclass
class NormConfig:
    vocab_size: int = 29
    width: int = 8


class NormModel(nn.Module):
    """A layer with BatchNorm, whose num_batches_tracked is an integer buffer."""

    def __init__(self, config: NormConfig) -> None:
        super().__init__()
        self.config = config
        self.linear = nn.Linear(config.width, config.vocab_size)
        self.norm = nn.BatchNorm1d(config.vocab_size)


def test_integer_buffers_are_kept_from_the_last_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setitem(MODELS, "norm_test", (NormModel, NormConfig))
    for epoch in (1, 2, 3):
        torch.manual_seed(epoch)
        model = build_model("norm_test", verbose=False)
        model.norm.num_batches_tracked.fill_(100 * epoch)
        model.norm.running_mean.uniform_()
        save_checkpoint(tmp_path / f"epoch-{epoch}.pt", model, "norm_test", Tokenizer())
    assert main(["average", "--exp-dir", str(tmp_path), "--last", "3", "--out", str(tmp_path / "final.pt")]) == 0

    averaged = load_checkpoint(tmp_path / "final.pt").state_dict
    inputs = [load_checkpoint(tmp_path / f"epoch-{e}.pt").state_dict for e in (1, 2, 3)]
    assert averaged["norm.num_batches_tracked"].dtype == torch.int64
    assert averaged["norm.num_batches_tracked"].item() == 300
    for key in ("linear.weight", "norm.running_mean"):
        expected = (sum(s[key].double() for s in inputs) / 3).float()
        assert torch.equal(averaged[key], expected), key


@pytest.mark.parametrize("other", [("blstm_ctc", {**TINY, "hidden_size": 8}), ("streaming_gru", TINY)])
def test_checkpoints_of_different_models_are_refused(tmp_path, capsys, other):
    save_epochs(tmp_path, [("blstm_ctc", TINY), other, ("blstm_ctc", TINY)])
    assert main(["average", "--exp-dir", str(tmp_path), "--last", "3", "--out", str(tmp_path / "final.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err == f"asr average: error: {tmp_path / 'epoch-2.pt'}: a different model from {tmp_path / 'epoch-3.pt'}; cannot average\n"
    assert not (tmp_path / "final.pt").exists()
