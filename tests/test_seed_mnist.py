"""The article's exact MNIST experiment reproduces its figure in the run directory."""

from __future__ import annotations

import csv
from pathlib import Path

from gradwatch.recipe import train
from tests.conftest import run_cli
from tests.fake_vision import write_mnist


def test_seed_mnist_is_the_articles_setup(make_cfg):
    cfg = make_cfg("experiment=seed_mnist")
    net = cfg.model.net
    assert (net.depth, net.width, net.activation, net.init) == (10, 128, "sigmoid", "default")
    assert net._target_ == "gradwatch.nets.MLP" and not net.residual and net.norm == "none"
    assert cfg.model.optimizer._target_ == "torch.optim.Adam" and cfg.model.optimizer.lr == 1e-3
    assert cfg.data._target_ == "gradwatch.data.MNISTDataModule"
    assert cfg.data.batch_size == 128 and cfg.data.normalize == "unit"  # ToTensor's [0, 1]
    assert cfg.trainer.limit_train_batches == 100 and cfg.trainer.max_epochs == 1
    assert cfg.callbacks.grad_norm.log_every_n_steps == 1


def test_seed_mnist_writes_the_articles_figure(make_cfg, tmp_path):
    write_mnist(tmp_path / "data")
    cfg = make_cfg(
        "experiment=seed_mnist",
        f"data.data_dir={tmp_path / 'data'}",
        "data.batch_size=32",
        "debug=fast",
        "logger=none",
    )
    summary = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert summary["status"] == "completed" and summary["diagnosis"] == "vanishing"
    rows = list(csv.DictReader((run_dir / "grad_norms.csv").open()))
    assert {r["step"] for r in rows} == {"0", "1", "2"}  # every step
    assert len({r["layer"] for r in rows}) == 11
    figure = run_dir / "gradient_norms_training.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mnist_without_files_exits_nonzero_naming_the_files(tmp_path):
    result = run_cli(
        "data=mnist",
        f"data.data_dir={tmp_path / 'nowhere'}",
        "data.download=false",
        "debug=fast",
        f"paths.log_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert f"MNIST is not in {tmp_path / 'nowhere' / 'MNIST' / 'raw'}" in result.stderr
    assert "train-images-idx3-ubyte" in result.stderr and "data=digits" in result.stderr
