"""Loader and Trainer: bucketing, CTC filtering, non-finite guard, and exact resume after SIGKILL."""

import math
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.checkpoint import CheckpointError, load_checkpoint
from asr.data.loader import AugmentConfig, BucketBatchSampler, ctc_min_frames, filter_for_ctc
from asr.train_setup import DataConfig, OptimConfig, TrainConfig
from asr.training import Trainer
from conftest import run_while_progressing

WORDS = ["ALPHA", "BRAVO", "CHARLIE", "DELTA", "ECHO", "FOXTROT", "GOLF", "HOTEL"]


def make_manifest(tmp_path, count=24, seed=0):
    """Short noise-plus-tone utterances with random word transcripts (learning is not the point)."""
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(count):
        seconds = rng.uniform(0.8, 2.5)
        t = np.arange(int(seconds * 16000)) / 16000
        audio = 0.05 * rng.standard_normal(len(t)) + 0.2 * np.sin(2 * np.pi * rng.uniform(100, 900) * t)
        path = tmp_path / f"utt{i}.flac"
        sf.write(path, audio.astype("float32"), 16000)
        text = " ".join(rng.choice(WORDS, size=2))
        entries.append({"id": f"utt{i}", "audio": str(path), "duration": len(t) / 16000, "text": text, "speaker": "s"})
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return manifest, entries


def test_bucket_sampler_caps_padded_frames_and_covers_everything():
    durations = list(np.random.default_rng(0).uniform(0.5, 35.0, 500))
    sampler = BucketBatchSampler(durations, max_frames=8000, seed=3)
    batches = list(sampler)
    frames = sampler.frames
    assert sorted(i for b in batches for i, _ in b) == list(range(500))
    assert all(len(b) * max(frames[i] for i, _ in b) <= 8000 for b in batches)
    assert len(batches) == len(sampler)


def test_bucket_sampler_deterministic_per_epoch_and_resumable():
    durations = list(np.random.default_rng(1).uniform(0.5, 20.0, 300))
    a, b = BucketBatchSampler(durations, 6000, seed=7), BucketBatchSampler(durations, 6000, seed=7)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    full = list(b)
    b.set_epoch(1, start=4)
    assert list(b) == full[4:]


def test_bucket_sampler_splits_ranks_evenly():
    durations = list(np.random.default_rng(2).uniform(0.5, 10.0, 301))
    ranks = [BucketBatchSampler(durations, 3000, seed=0, rank=r, world_size=3) for r in range(3)]
    lists = [list(r) for r in ranks]
    assert len({len(x) for x in lists}) == 1
    seen = [i for x in lists for b in x for i, _ in b]
    assert len(seen) == len(set(seen))


def test_sampler_rejects_utterance_longer_than_batch_cap():
    with pytest.raises(ValueError, match="max_frames=100"):
        BucketBatchSampler([5.0], max_frames=100)


def test_filter_for_ctc_counts_what_it_drops():
    entries = [
        {"duration": 1.0, "text": "HELLO"},  # 98 frames -> 25 output frames: fine
        {"duration": 0.3, "text": "A VERY LONG TRANSCRIPT FOR SO LITTLE AUDIO"},
        {"duration": 40.0, "text": "TOO LONG"},
    ]
    kept, dropped = filter_for_ctc(entries, lambda n: (n - 1) // 4 + 1, max_duration=35.0)
    assert kept == entries[:1]
    assert dropped == {"transcript longer than output frames": 1, "longer than max_duration": 1}
    assert ctc_min_frames("HELLO") == 6  # the double L needs a blank between


def tiny_config(tmp_path, manifest, **overrides):
    values = dict(
        exp_dir=str(tmp_path / "exp"),
        model_config={"hidden_size": 32, "num_layers": 1, "conv_channels": 4},
        data=DataConfig(train=str(manifest), valid=str(manifest), max_frames=600, num_workers=0),
        optim=OptimConfig(lr=1e-3, warmup_steps=2),
        epochs=2,
        threads=1,
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_nonfinite_loss_is_skipped_and_counted(tmp_path, monkeypatch):
    manifest, _ = make_manifest(tmp_path, count=8)
    trainer = Trainer(tiny_config(tmp_path, manifest, epochs=1))
    real_ctc = torch.nn.functional.ctc_loss
    calls = []

    def sometimes_nan(*args, **kwargs):
        calls.append(1)
        loss = real_ctc(*args, **kwargs)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(torch.nn.functional, "ctc_loss", sometimes_nan)
    trainer.fit()
    assert trainer.skipped_batches == 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


@pytest.mark.parametrize("augment", [AugmentConfig(speed_perturb=True, gain_db=6.0),
                                     AugmentConfig(speed_perturb=True, gain_db=6.0, pad_s=0.2)],
                         ids=["speed+gain", "speed+gain+pad"])
def test_augmenting_on_the_device_trains_the_same_weights_as_in_the_loader(tmp_path, augment):
    """data.augment_on moves the speed perturbation from the loader workers to the training
    device: with speed and gain, the same audio, so bit-identical weights (on the CPU: the
    trainer runs on one thread, tiny_config's, as a loader worker does, so both places run the
    same kernels on the same batches; a convolution's summation order can depend on the thread count)."""
    manifest, _ = make_manifest(tmp_path, count=8)
    weights = {}
    for place in ("loader", "device"):
        data = DataConfig(train=str(manifest), max_frames=600, num_workers=1, augment=augment, augment_on=place)
        trainer = Trainer(tiny_config(tmp_path / place, manifest, data=data, epochs=1, max_steps=3))
        assert trainer.augment_on_device == (place == "device")
        trainer.fit()
        weights[place] = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    assert torch.equal(weights["loader"], weights["device"])


def test_max_steps_ends_training_early_and_resumes_to_the_end(tmp_path):
    manifest, _ = make_manifest(tmp_path, count=8)
    trainer = Trainer(tiny_config(tmp_path, manifest, epochs=3, max_steps=2))
    assert trainer.steps_per_epoch > 2 and trainer.total_steps == 2
    trainer.fit()
    assert trainer.step == 2 and trainer.epoch == 1
    assert (tmp_path / "exp" / "epoch-1.pt").exists() and not (tmp_path / "exp" / "epoch-2.pt").exists()
    # resuming a finished run does nothing; a larger max_steps continues from step 2
    again = Trainer(tiny_config(tmp_path, manifest, epochs=3, max_steps=2))
    again.fit()
    assert again.step == 2
    longer = Trainer(tiny_config(tmp_path, manifest, epochs=3, max_steps=4))
    longer.fit()
    assert longer.step == 4


@pytest.mark.parametrize("patience", [1, 3])
def test_patience_stops_when_the_valid_cer_stops_falling(tmp_path, monkeypatch, patience):
    """A valid CER that never falls below epoch 1's: training stops after 1 + patience epochs,
    and a resumed run does not train on."""
    manifest, _ = make_manifest(tmp_path, count=8)
    monkeypatch.setattr("asr.training.evaluate", lambda *args, **kwargs: {"valid_cer": 0.5, "valid_wer": 1.0})
    config = tiny_config(tmp_path, manifest, epochs=10, patience=patience)
    trainer = Trainer(config)
    trainer.fit()
    assert trainer.stopped_early and trainer.epoch == 1 + patience
    rows = (tmp_path / "exp" / "log.csv").read_text().splitlines()
    assert len(rows) == 1 + 1 + patience
    again = Trainer(config)
    again.fit()
    assert again.stopped_early and again.epoch == 1 + patience


def test_patience_counts_only_gains_larger_than_min_delta(tmp_path, monkeypatch):
    manifest, _ = make_manifest(tmp_path, count=8)
    cers = iter([0.9, 0.8, 0.79, 0.7, 0.69, 0.68, 0.1])
    monkeypatch.setattr("asr.training.evaluate", lambda *args, **kwargs: {"valid_cer": next(cers), "valid_wer": 1.0})
    trainer = Trainer(tiny_config(tmp_path, manifest, epochs=10, patience=2, min_delta=0.05))
    trainer.fit()
    # 0.79 is no gain on 0.8 (one), 0.7 is (reset), 0.69 and 0.68 are not (two): stop after epoch 6
    assert trainer.epoch == 6 and trainer.best_cer == 0.7


def test_patience_needs_a_validation_set(tmp_path):
    manifest, _ = make_manifest(tmp_path, count=4)
    data = DataConfig(train=str(manifest), max_frames=600, num_workers=0)
    with pytest.raises(ValueError, match="data.valid"):
        Trainer(tiny_config(tmp_path, manifest, data=data, patience=2))


@pytest.mark.parametrize("grad_clip", [1e-3, None], ids=["clip", "no-clip"])
def test_steps_log_records_every_step_and_resume_drops_the_steps_trained_again(tmp_path, grad_clip):
    manifest, _ = make_manifest(tmp_path, count=8)
    config = tiny_config(tmp_path, manifest, epochs=2, log_steps=True, save_every_steps=2,
                         optim=OptimConfig(lr=1e-3, warmup_steps=2, grad_clip=grad_clip))
    trainer = Trainer(config)
    trainer.fit()
    path = tmp_path / "exp" / "steps.csv"
    rows = path.read_text().splitlines()
    assert rows[0] == "step,loss,grad_norm,lr"
    steps = [int(row.split(",")[0]) for row in rows[1:]]
    assert steps == list(range(1, trainer.step + 1))
    norms = [float(row.split(",")[2]) for row in rows[1:]]
    # the norm before clipping: a clip of 1e-3 does not show in it
    assert all(math.isfinite(n) and n > 1e-2 for n in norms), norms
    # a run resumed from step 2 drops the rows after it and logs those steps again
    last = load_checkpoint(tmp_path / "exp" / "last.pt")
    state = last.trainer_state
    state.update(step=2, epoch=0, batch_in_epoch=2, stopped_early=False)
    from asr.checkpoint import save_checkpoint
    model = last.build_model()
    save_checkpoint(tmp_path / "exp" / "last.pt", model, last.model_name, trainer.tokenizer, last.metadata, state)
    path.write_text("\n".join(rows + ["99,1.0,1.0,1e-3"]) + "\n")  # a row past the resumed step
    Trainer(config).fit()
    steps = [int(row.split(",")[0]) for row in path.read_text().splitlines()[1:]]
    assert steps == list(range(1, trainer.step + 1))


def test_init_from_keeps_the_checkpoints_architecture_and_weights(tmp_path):
    manifest, _ = make_manifest(tmp_path, count=8)
    first = Trainer(tiny_config(tmp_path / "a", manifest, epochs=1, max_steps=1,
                                model_config={"hidden_size": 24, "num_layers": 2, "conv_channels": 4, "layer_norm": True}))
    first.fit()
    init = str(tmp_path / "a" / "exp" / "last.pt")
    # the fine-tuning config names only a training setting; the shape comes from the checkpoint
    tuned = Trainer(tiny_config(tmp_path / "b", manifest, init_from=init, model_config={"dropout": 0.3}))
    config = tuned.model.config
    assert (config.hidden_size, config.num_layers, config.layer_norm, config.dropout) == (24, 2, True, 0.3)
    expected = load_checkpoint(init).state_dict
    assert all(torch.equal(value, expected[name]) for name, value in tuned.model.state_dict().items())
    with pytest.raises(ValueError, match="do not fit this model"):
        Trainer(tiny_config(tmp_path / "c", manifest, init_from=init, model_config={"hidden_size": 32}))
    with pytest.raises(ValueError, match="holds a rnn_ctc model"):
        Trainer(tiny_config(tmp_path / "d", manifest, init_from=init, model="streaming_gru", model_config={}))


def _train_cli(exp_dir, manifest, *extra):
    return [
        sys.executable, "-m", "asr", "train", f"exp_dir={exp_dir}", f"data.train={manifest}",
        f"data.valid={manifest}", "data.max_frames=400", "data.num_workers=1", "epochs=3",
        "threads=1", "save_every_steps=1", "model_config.hidden_size=48", "model_config.num_layers=2",
        "model_config.conv_channels=8", "optim.warmup_steps=3", "dither=0.001",
        "data.augment.speed_perturb=true", "data.augment.noise_prob=0.5", *extra,
    ]


@pytest.mark.slow
def test_exact_resume_after_sigkill(tmp_path):
    manifest, _ = make_manifest(tmp_path, count=30)
    straight = tmp_path / "straight"
    assert run_while_progressing(_train_cli(straight, manifest)).returncode == 0

    resumed = tmp_path / "resumed"
    process = subprocess.Popen(_train_cli(resumed, manifest), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill once last.pt (written every step) shows one of the first batches of the second epoch:
    # mid-epoch whatever the machine's speed (a fixed delay once landed on an epoch boundary).
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        try:
            position = load_checkpoint(resumed / "last.pt").trainer_state
        except CheckpointError:  # not written yet
            position = None
        if position is not None and position["epoch"] >= 1 and 0 < position["batch_in_epoch"] <= 3:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = load_checkpoint(resumed / "last.pt").trainer_state
    print(f"killed at epoch {state['epoch'] + 1}, batch {state['batch_in_epoch']}, step {state['step']}")
    assert state["batch_in_epoch"] > 0, "the kill should land mid-epoch"
    result = run_while_progressing(_train_cli(resumed, manifest))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from" in result.stderr + result.stdout

    a = load_checkpoint(straight / "last.pt")
    b = load_checkpoint(resumed / "last.pt")
    assert a.trainer_state["step"] == b.trainer_state["step"]
    for key, value in a.state_dict.items():
        assert torch.equal(value, b.state_dict[key]), key


def test_several_training_manifests_are_concatenated(tmp_path):
    from asr.config import load_config
    from asr.train_setup import compute_cmvn_stats, save_cmvn_stats

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, _ = make_manifest(tmp_path / "a", count=5, seed=1)
    second, _ = make_manifest(tmp_path / "b", count=3, seed=2)
    # the CMVN fallback reads one manifest; a mixed recipe passes its statistics
    save_cmvn_stats(compute_cmvn_stats(first), tmp_path / "cmvn.pt")
    conf = tmp_path / "mixed.yaml"
    conf.write_text(f"data:\n  train: [{first}, {second}]\n  num_workers: 0\n")
    common = [f"exp_dir={tmp_path / 'exp'}", f"cmvn={tmp_path / 'cmvn.pt'}", "threads=1",
              "model_config.hidden_size=32", "model_config.num_layers=1", "model_config.conv_channels=4"]
    from_yaml = Trainer(load_config(TrainConfig, conf, common))
    from_command_line = Trainer(load_config(TrainConfig, None, [*common, f"data.train={first},{second}"]))
    for trainer in from_yaml, from_command_line:
        assert [e["audio"] for e in trainer.train_set.entries] == [
            str(tmp_path / d / f"utt{i}.flac") for d, n in (("a", 5), ("b", 3)) for i in range(n)
        ]


def test_max_minutes_ends_training_on_time_and_decays_the_learning_rate_over_it(tmp_path, monkeypatch):
    manifest, _ = make_manifest(tmp_path, count=8)
    trainer = Trainer(tiny_config(tmp_path, manifest, epochs=50, max_minutes=1.0))
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    real_step = trainer._train_step

    def step_of_10_seconds(batch):
        clock[0] += 10.0
        return real_step(batch)

    monkeypatch.setattr(trainer, "_train_step", step_of_10_seconds)
    trainer.fit()
    assert trainer.step == 6  # 6 x 10 s = the minute, well before 50 epochs' steps
    assert (tmp_path / "exp" / f"epoch-{trainer.epoch}.pt").exists()
    # the cosine reached its end with the time: lr * final_lr_ratio
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(1e-3 * OptimConfig().final_lr_ratio)



@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_trainer_on_cuda(tmp_path):
    """The CUDA path end to end: frontend and model on the GPU, bf16 autocast, pinned memory,
    a loader worker, validation, checkpoints that load on the CPU."""
    manifest, _ = make_manifest(tmp_path, count=16)
    data = DataConfig(train=str(manifest), valid=str(manifest), max_frames=600, num_workers=1)
    trainer = Trainer(tiny_config(tmp_path, manifest, device="cuda", data=data))
    assert trainer.device.type == "cuda"
    metrics = trainer.fit()
    assert trainer.skipped_batches == 0 and math.isfinite(metrics["train_loss"])
    model = load_checkpoint(tmp_path / "exp" / "epoch-2.pt").build_model()
    assert next(model.parameters()).device.type == "cpu"


def test_cmvn_stats_over_several_manifests(tmp_path):
    from asr.train_setup import compute_cmvn_stats

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, _ = make_manifest(tmp_path / "a", count=3, seed=1)
    second, _ = make_manifest(tmp_path / "b", count=2, seed=2)
    both = compute_cmvn_stats(f"{first},{second}", max_utterances=None)
    one, other = compute_cmvn_stats(first), compute_cmvn_stats([str(second)])
    assert both["count"] == one["count"] + other["count"]
    assert torch.allclose(both["sum"], one["sum"] + other["sum"])
