import pytest
import torch

from asr.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from asr.models import build_model
from asr.text import Tokenizer


def test_round_trip_is_self_contained(tmp_path):
    model = build_model("blstm_ctc", {"hidden_size": 16, "num_layers": 1}, verbose=False).eval()
    model.cmvn.mean.fill_(3.0)
    path = tmp_path / "exp" / "model.pt"
    save_checkpoint(path, model, "blstm_ctc", Tokenizer(), metadata={"epoch": 2})
    ckpt = load_checkpoint(path)
    restored = ckpt.build_model()
    assert ckpt.metadata == {"epoch": 2}
    assert torch.equal(restored.cmvn.mean, torch.full((80,), 3.0))
    feats, lengths = torch.randn(1, 40, 80), torch.tensor([40])
    assert torch.equal(model(feats, lengths)[0], restored(feats, lengths)[0])
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary left behind


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    model = build_model("blstm_ctc", {"hidden_size": 16, "num_layers": 1}, verbose=False)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, "blstm_ctc", Tokenizer(), metadata={"v": 1})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, "blstm_ctc", Tokenizer(), metadata={"v": 2})
    monkeypatch.undo()
    assert load_checkpoint(path).metadata == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


@pytest.mark.parametrize("content", [b"", b"garbage" * 10])
def test_bad_checkpoint_one_line_error(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_foreign_torch_file_rejected(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an asr checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_saved_on_gpu_loads_on_cpu(tmp_path):
    model = build_model("blstm_ctc", {"hidden_size": 16, "num_layers": 1}, verbose=False).cuda()
    save_checkpoint(tmp_path / "gpu.pt", model, "blstm_ctc", Tokenizer())
    restored = load_checkpoint(tmp_path / "gpu.pt").build_model("cpu")
    assert all(p.device.type == "cpu" for p in restored.parameters())


@pytest.mark.parametrize("name", ["blstm_ctc", "streaming_gru"])
def test_a_checkpoint_with_the_former_parameter_names_loads_and_decodes_the_same(tmp_path, name):
    """Checkpoints that name the modules subsampling.conv1/conv2, gru and norms (the embedded
    defaults among them) load into the shared modules."""
    import dataclasses

    from asr.checkpoint import write_checkpoint
    from asr.models import RENAMED_PREFIXES
    from asr.pretrained import default_model

    torch.manual_seed(0)
    model = build_model(name, {"hidden_size": 16, "num_layers": 2, "conv_channels": 4, "layer_norm": True},
                        verbose=False).eval()
    save_checkpoint(tmp_path / "new.pt", model, name, Tokenizer())
    new = load_checkpoint(tmp_path / "new.pt")
    former = {new_prefix: old for old, new_prefix in RENAMED_PREFIXES.items()}
    old_state = {}
    for key, value in new.state_dict.items():
        prefix = next((p for p in former if key.startswith(p)), None)
        old_state[former[prefix] + key[len(prefix):] if prefix else key] = value
    assert set(old_state) != set(new.state_dict)  # the test does rename
    write_checkpoint(tmp_path / "old.pt", dataclasses.replace(new, state_dict=old_state))
    restored = load_checkpoint(tmp_path / "old.pt").build_model()
    feats, lengths = torch.randn(2, 40, 80), torch.tensor([40, 31])
    assert torch.equal(model(feats, lengths)[0], restored(feats, lengths)[0])
    # the embedded defaults load strictly too: every name matches
    load_checkpoint(default_model("offline" if name == "blstm_ctc" else "streaming")).build_model(verbose=False)
