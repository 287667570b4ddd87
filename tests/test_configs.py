"""Every config composes and builds: each experiment, each group option and their sensible
pairs, data and model built (no training, no data files read), a batch through the model."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from gradwatch.recipe import build_model
from tests.conftest import CONFIG_DIR

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
GROUP_NAMES = ("data", "model", "logger", "callbacks", "trainer", "sweep", "hparams_search")
GROUPS = {g: sorted(p.stem for p in (CONFIG_DIR / g).glob("*.yaml")) for g in GROUP_NAMES}
#: Experiments deeper than a quick forward pass needs: built at a small depth.
SHALLOW = ("model.net.depth=3",)


def compose_cfg(tmp_path, *overrides: str):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"paths.log_dir={tmp_path}",
                f"++paths.output_dir={tmp_path}/run",
                *overrides,
            ],
        )


def forward_a_batch(cfg) -> tuple[torch.Tensor, int]:
    datamodule, model = build_model(cfg)
    x = torch.zeros(2, *datamodule.input_shape)
    model.eval()
    with torch.no_grad():
        return model(x), datamodule.num_classes


def test_every_group_option_exists_as_the_readme_names_it():
    assert {"digits", "mnist", "fashion_mnist", "cifar10"} <= set(GROUPS["data"])
    assert {"mlp", "cnn"} <= set(GROUPS["model"])
    assert {"tensorboard", "wandb", "csv", "many"} <= set(GROUPS["logger"])
    assert {"default", "cpu", "gpu", "ddp", "ddp_cpu"} <= set(GROUPS["trainer"])
    assert {"sigmoid", "tanh", "relu", "batchnorm", "residual", "resnet_cnn", "seed_mnist"} <= set(
        EXPERIMENTS
    )


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_builds_and_classifies_a_batch(tmp_path, experiment):
    cfg = compose_cfg(tmp_path, f"experiment={experiment}", *SHALLOW)
    assert cfg.task_name == experiment
    logits, classes = forward_a_batch(cfg)
    assert logits.shape == (2, classes)


@pytest.mark.parametrize("data", GROUPS["data"])
@pytest.mark.parametrize("model", GROUPS["model"])
def test_every_data_and_model_pair_builds(tmp_path, data, model):
    cfg = compose_cfg(tmp_path, f"data={data}", f"model={model}", *SHALLOW)
    logits, classes = forward_a_batch(cfg)
    assert logits.shape == (2, classes)


def test_without_an_experiment_the_model_group_alone_decides(tmp_path):
    cnn = compose_cfg(tmp_path, "model=cnn")
    assert cnn.task_name == "train"
    # model=cnn is the residual CNN of its own config, not the sigmoid MLP's settings.
    assert (cnn.model.net.activation, cnn.model.net.init, cnn.model.net.norm) == (
        "relu",
        "kaiming_normal",
        "batch",
    )
    mlp = compose_cfg(tmp_path)
    assert mlp.model.net.activation == "sigmoid" and mlp.model.net.depth == 10  # the article's


@pytest.mark.parametrize("logger", GROUPS["logger"])
def test_every_logger_instantiates(tmp_path, logger, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_cfg(tmp_path, f"logger={logger}")
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    assert (logger == "none") == (not loggers)


@pytest.mark.parametrize("callbacks", GROUPS["callbacks"])
def test_every_callback_set_instantiates(tmp_path, callbacks):
    cfg = compose_cfg(tmp_path, f"callbacks={callbacks}")
    made = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    assert (callbacks == "none") == (not made)


@pytest.mark.parametrize("trainer", GROUPS["trainer"])
def test_every_trainer_preset_composes(tmp_path, trainer):
    cfg = compose_cfg(tmp_path, f"trainer={trainer}")
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    if trainer in ("cpu", "ddp_cpu", "default"):  # the ones this machine can build
        options = {"logger": False, "enable_checkpointing": False}
        instantiate(cfg.trainer, **options)


@pytest.mark.parametrize("sweep", GROUPS["sweep"])
def test_every_sweep_preset_composes_a_grid_of_known_experiments(tmp_path, sweep):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"sweep={sweep}"], return_hydra_config=True)
    grid = cfg.hydra.sweeper.params
    for experiment in str(grid.get("experiment", "")).split(","):
        assert not experiment or experiment in EXPERIMENTS, experiment


def test_the_optuna_search_composes(tmp_path):
    cfg = compose_cfg(tmp_path, "hparams_search=optuna")
    assert cfg.task_name == "sigmoid"


def test_the_run_dir_resolvers_come_with_the_entry_point_and_with_the_recipe():
    """hydra.run.dir resolves through gradwatch.run_dir: whoever trains has it registered."""
    for module in ("gradwatch.train", "gradwatch.recipe"):
        code = (
            f"import {module}; from omegaconf import OmegaConf; "
            "print(OmegaConf.has_resolver('gradwatch.run_dir'), "
            "OmegaConf.has_resolver('gradwatch.hydra_subdir'))"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.stdout.split() == ["True", "True"], (module, result.stderr[-1000:])
