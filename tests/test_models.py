import pytest
import torch

from asr.config import config_from_dict
from asr.models import build_model, count_parameters
from asr.models.recurrent import RecurrentStack
from asr.models.rnn_ctc import RNNCTCConfig


def small(**overrides):
    return build_model("blstm_ctc", {"hidden_size": 32, "num_layers": 2, "conv_channels": 8, **overrides}, verbose=False)


@pytest.mark.parametrize("stride", [2, 3, 4])
def test_output_shapes_and_exact_lengths(stride):
    model = small(time_stride=stride).eval()
    lengths = torch.tensor([101, 57, 9, 1])
    log_probs, out_lengths = model(torch.randn(4, 101, 80), lengths)
    expected = [-(-n // stride) for n in lengths.tolist()]  # ceil
    assert out_lengths.tolist() == expected
    assert model.output_lengths(lengths).tolist() == expected
    assert log_probs.shape == (4, max(expected), 29)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(4, max(expected)), atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_padded_recurrence_equals_packed_reference(cell, bidirectional):
    """The padded batch with per-length reversal against torch's packed sequences, on the
    valid frames, forward and gradients."""
    torch.manual_seed(0)
    stack = RecurrentStack(cell, 12, 16, num_layers=3, bidirectional=bidirectional, dropout=0.0)
    x = torch.randn(4, 30, 12, requires_grad=True)
    lengths = torch.tensor([30, 17, 5, 1])
    mask = (torch.arange(30)[None, :] < lengths[:, None])[:, :, None]
    ours = stack(x, lengths) * mask
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    reference = torch.nn.utils.rnn.pad_packed_sequence(stack.rnn(packed)[0], batch_first=True, total_length=30)[0]
    assert torch.equal(stack.forward_packed(x, lengths), reference)
    assert ours.shape == (4, 30, stack.output_size)
    assert torch.allclose(ours, reference, atol=1e-5)
    grad_ours = torch.autograd.grad(ours.square().sum(), [x, stack.rnn.weight_hh_l0])
    grad_reference = torch.autograd.grad(reference.square().sum(), [x, stack.rnn.weight_hh_l0])
    for a, b in zip(grad_ours, grad_reference):
        assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_batched_equals_alone(layer_norm):
    """Padding must not leak into valid frames (per-length reversal + masked convolutions)."""
    model = small(layer_norm=layer_norm).eval()
    feats = torch.randn(3, 120, 80)
    lengths = torch.tensor([120, 64, 33])
    batched, out_lengths = model(feats, lengths)
    for i in range(3):
        alone, _ = model(feats[i : i + 1, : lengths[i]], lengths[i : i + 1])
        assert torch.allclose(alone[0], batched[i, : out_lengths[i]], atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_unidirectional_stack_chunk_by_chunk_equals_whole(cell, layer_norm):
    torch.manual_seed(0)
    stack = RecurrentStack(cell, 12, 16, 3, bidirectional=False, dropout=0.0, layer_norm=layer_norm).eval()
    x = torch.randn(2, 23, 12)
    whole = stack(x, torch.tensor([23, 23]))
    pieces, states = [], None
    for start in range(0, 23, 5):  # uneven last chunk
        y, states = stack.step(x[:, start:start + 5], states)
        pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, rtol=1e-5, atol=1e-6)
    # the state is carried: chunks started afresh differ
    fresh = torch.cat([stack.step(x[:, s:s + 5], None)[0] for s in range(0, 23, 5)], dim=1)
    assert not torch.allclose(fresh, whole, atol=1e-3)


def test_bidirectional_stack_refuses_chunks():
    stack = RecurrentStack("lstm", 12, 16, 1, bidirectional=True, dropout=0.0)
    with pytest.raises(ValueError, match="whole sequence"):
        stack.step(torch.randn(1, 5, 12), None)


def test_parameter_count_printed(capsys):
    model = build_model("blstm_ctc", {"hidden_size": 64, "num_layers": 1})
    assert f"{count_parameters(model) / 1e6:.2f}M parameters" in capsys.readouterr().out


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match="hiden_size"):
        config_from_dict(RNNCTCConfig, {"hiden_size": 3})
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        build_model("nope")


def test_nested_specaugment_config():
    cfg = config_from_dict(RNNCTCConfig, {"specaugment": {"freq_masks": 0}})
    assert cfg.specaugment.freq_masks == 0 and cfg.specaugment.time_masks == 2


def test_gradients_flow_through_ctc():
    model = small().train()
    feats, lengths = torch.randn(2, 80, 80), torch.tensor([80, 60])
    log_probs, out_lengths = model(feats, lengths)
    targets = torch.randint(1, 29, (2, 5))
    loss = torch.nn.functional.ctc_loss(
        log_probs.transpose(0, 1), targets, out_lengths, torch.tensor([5, 5]), zero_infinity=True
    )
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu(monkeypatch):
    """cuDNN's recurrences give the CPU model's outputs (float32, no TF32)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    model = small().eval()
    feats, lengths = torch.randn(3, 120, 80), torch.tensor([120, 64, 33])
    on_cpu, out_lengths = model(feats, lengths)
    on_cuda, _ = model.cuda()(feats.cuda(), lengths.cuda())
    for i, n in enumerate(out_lengths.tolist()):
        assert torch.allclose(on_cpu[i, :n], on_cuda[i, :n].cpu(), atol=1e-4)
