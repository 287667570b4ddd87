"""GradientNormCallback: norms equal an independent computation; the article's phenomenon."""

from __future__ import annotations

import csv
import math

import lightning as L
import pytest
import torch
from torch import nn

from gradwatch.callbacks import GradientNormCallback, diagnose
from gradwatch.data import DigitsDataModule
from gradwatch.module import ClassifierModule
from gradwatch.nets import MLP


class Recorder(GradientNormCallback):
    """Also keeps every parameter's gradient at the logged step, for an independent check."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        super().on_before_optimizer_step(trainer, pl_module, optimizer)
        if trainer.global_step == 0:
            self.grads = {
                n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None
            }


def fit_steps(net: nn.Module, tmp_path, steps: int = 1, **trainer_kwargs) -> L.Trainer:
    dm = DigitsDataModule(batch_size=128, seed=0)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        **trainer_kwargs,
    )
    trainer.fit(ClassifierModule(net, num_classes=10), datamodule=dm)
    return trainer


def fit_one_step(net, tmp_path):
    torch.manual_seed(0)
    callback = Recorder(log_every_n_steps=1)
    fit_steps(net, tmp_path, callbacks=[callback])
    return callback


def test_logged_norms_equal_an_independent_computation(tmp_path):
    torch.manual_seed(0)
    net = MLP(64, 10, depth=3, width=16, activation="relu", norm="batch")
    cb = fit_one_step(net, tmp_path)
    # Independent: group parameters by module path (the name before the last dot).
    expected: dict[str, float] = {}
    for name, grad in cb.grads.items():
        layer = name.rsplit(".", 1)[0]
        expected[layer] = expected.get(layer, 0.0) + grad.pow(2).sum().item()
    expected = {k: math.sqrt(v) for k, v in expected.items()}
    assert cb.first_norms.keys() == expected.keys()
    for layer, value in expected.items():
        assert cb.first_norms[layer] == pytest.approx(value, rel=1e-5)
    # Forward order, input side first; BatchNorm layers are layers too.
    assert [layer.name for layer in cb.layers] == [
        "net.network.0",
        "net.network.1",
        "net.network.3",
        "net.network.4",
        "net.network.6",
        "net.network.7",
        "net.network.9",
    ]
    rows = list(csv.DictReader((tmp_path / "grad_norms.csv").open()))
    assert [r["layer"] for r in rows] == [layer.name for layer in cb.layers]
    assert [int(r["depth"]) for r in rows] == list(range(1, 8))
    assert float(rows[0]["grad_norm"]) == pytest.approx(expected["net.network.0"], rel=1e-5)
    total = math.sqrt(sum(v * v for v in expected.values()))
    assert cb.ratios[0] == pytest.approx(expected["net.network.0"] / expected["net.network.9"])
    assert total > 0


def test_forward_order_is_not_registration_order(tmp_path):
    class Reversed(nn.Module):
        def __init__(self):
            super().__init__()
            self.late = nn.Linear(16, 10)  # registered first, runs last
            self.early = nn.Linear(64, 16)

        def forward(self, x):
            return self.late(torch.relu(self.early(x.flatten(1))))

    cb = fit_one_step(Reversed(), tmp_path)
    assert [layer.name for layer in cb.layers] == ["net.early", "net.late"]


def test_layer_without_gradient_is_absent_not_zero(tmp_path):
    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(64, 10)
            self.unused = nn.Linear(3, 3)

        def forward(self, x):
            return self.used(x.flatten(1))

    cb = fit_one_step(WithUnused(), tmp_path)
    assert "net.unused" not in cb.first_norms
    rows = {r["layer"]: r for r in csv.DictReader((tmp_path / "grad_norms.csv").open())}
    assert rows["net.unused"]["grad_norm"] == ""


def test_sigmoid_gradients_vanish_and_relu_he_gradients_do_not(tmp_path):
    """The article's claim, at step 0 on the same batch."""
    torch.manual_seed(0)
    sigmoid = fit_one_step(MLP(64, 10, depth=10, width=128, activation="sigmoid"), tmp_path / "s")
    torch.manual_seed(0)
    relu = fit_one_step(
        MLP(64, 10, depth=10, width=128, activation="relu", init="kaiming_normal"), tmp_path / "r"
    )
    assert sigmoid.ratios[0] < 1e-5
    assert diagnose(sigmoid.ratios).verdict == "vanishing"
    assert 1e-2 <= relu.ratios[0] <= 1e2
    assert diagnose(relu.ratios).verdict == "healthy"


def test_diagnosis_verdicts():
    assert diagnose([1e-8, 1e-7]).verdict == "vanishing"
    assert diagnose([1e4, 1e5]).verdict == "exploding"
    assert diagnose([0.5, 2.0]).verdict == "healthy"
    result = diagnose([1.0], nonfinite_layer="net.network.0", nonfinite_step=7)
    assert result.verdict == "non-finite" and "net.network.0" in result.advice
    assert "step 7" in result.advice


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"norm_type": 0}, "norm_type must be a positive number"),
        ({"log_every_n_steps": 0}, "log_every_n_steps must be a positive integer, got 0"),
        ({"vanishing_ratio": 10, "exploding_ratio": 1}, "need 0 < vanishing_ratio"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GradientNormCallback(**kwargs)
