"""Every recipe config loads as a TrainConfig and builds its model; a fine-tuning config fits
the model it starts from."""

from pathlib import Path

import pytest

from asr.checkpoint import load_checkpoint
from asr.config import load_config
from asr.models import MODELS, build_model
from asr.train_setup import TrainConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
PRETRAINED = RECIPES.parent / "asr" / "pretrained"  # the shipped defaults (recipes/english/conf/gpu_*.yaml)
CONFIGS = sorted(RECIPES.glob("*/conf/*.yaml"))
# the config whose training leaves each checkpoint a fine-tuning starts from (run.sh's contract)
MADE_BY = {"final.pt": "blstm_ctc.yaml", "streaming.pt": "gru_streaming.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parts[-3]}/{p.name}")
def test_recipe_config_builds_its_model(path):
    config = load_config(TrainConfig, path)
    if config.init_from is None:
        build_model(config.model, config.model_config, verbose=False)
        return
    # what the Trainer does: the starting checkpoint's architecture, updated by model_config
    # init_from is relative to the recipe folder, where run.sh runs: ../synthetic/exp/final.pt
    init_path = path.parents[1] / config.init_from
    if init_path.resolve().parent == PRETRAINED:
        init = load_checkpoint(init_path)
        model_name, model_config = init.model_name, init.model_config
    else:
        init_config = load_config(TrainConfig, init_path.parents[1] / "conf" / MADE_BY[init_path.name])
        model_name, model_config = init_config.model, init_config.model_config
    assert MODELS[model_name] == MODELS[config.model]  # blstm_ctc is an alias of rnn_ctc
    start = build_model(model_name, model_config, verbose=False)
    tuned = build_model(config.model, {**model_config, **config.model_config}, verbose=False)
    tuned.load_state_dict(start.state_dict())


def test_there_are_configs_to_check():
    assert len(CONFIGS) >= 10
    assert any(load_config(TrainConfig, p).init_from for p in CONFIGS)
