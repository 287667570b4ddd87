"""GradientNormCallback: norms equal an independent computation; the article's phenomenon."""

from __future__ import annotations

import copy
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
from tests.memory_logger import MemoryLogger


class Recorder(GradientNormCallback):
    """Also keeps every parameter's gradient at the logged step, for an independent check."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        super().on_before_optimizer_step(trainer, pl_module, optimizer)
        if trainer.global_step == 0:
            self.grads = {
                n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None
            }


def fit_steps(
    net: nn.Module, tmp_path, steps: int = 1, batch_size: int = 128, ckpt_path=None, **kwargs
) -> L.Trainer:
    dm = DigitsDataModule(batch_size=batch_size, seed=0)
    options = {
        "max_steps": steps,
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
        "default_root_dir": tmp_path,
        **kwargs,
    }
    trainer = L.Trainer(**options)
    trainer.fit(ClassifierModule(net, num_classes=10), datamodule=dm, ckpt_path=ckpt_path)
    return trainer


def first_batches(n: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` training batches, as the trainer sees them in epoch 0."""
    dm = DigitsDataModule(batch_size=batch_size, seed=0)
    dm.setup("fit")
    batches = iter(dm.train_dataloader())
    return [(dm.prepare_batch(x, train=True), y) for x, y in (next(batches) for _ in range(n))]


def norms_by_layer(tensors: dict[str, torch.Tensor]) -> dict[str, float]:
    """Independent per-layer L2 norms: parameters grouped by module path, in plain Python."""
    squares: dict[str, float] = {}
    for name, tensor in tensors.items():
        layer = "net." + name.rsplit(".", 1)[0]
        squares[layer] = squares.get(layer, 0.0) + tensor.double().pow(2).sum().item()
    return {layer: math.sqrt(v) for layer, v in squares.items()}


def csv_rows(run_dir) -> list[dict[str, str]]:
    return list(csv.DictReader((run_dir / "grad_norms.csv").open()))


def fit_one_step(net, tmp_path, logger=False):
    torch.manual_seed(0)
    callback = Recorder(log_every_n_steps=1)
    fit_steps(net, tmp_path, callbacks=[callback], **({"logger": logger} if logger else {}))
    return callback


def test_logged_norms_equal_an_independent_computation(tmp_path):
    torch.manual_seed(0)
    net = MLP(64, 10, depth=3, width=16, activation="relu", norm="batch")
    log = MemoryLogger()
    cb = fit_one_step(net, tmp_path, logger=log)
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
    assert cb.layer_names == [
        "net.network.0",
        "net.network.1",
        "net.network.3",
        "net.network.4",
        "net.network.6",
        "net.network.7",
        "net.network.9",
    ]
    rows = list(csv.DictReader((tmp_path / "grad_norms.csv").open()))
    assert [r["layer"] for r in rows] == cb.layer_names
    assert [int(r["depth"]) for r in rows] == list(range(1, 8))
    assert float(rows[0]["grad_norm"]) == pytest.approx(expected["net.network.0"], rel=1e-5)
    total = math.sqrt(sum(v * v for v in expected.values()))
    assert cb.ratios[0] == pytest.approx(expected["net.network.0"] / expected["net.network.9"])
    assert log.values("grad_norm/total")[0] == pytest.approx(total, rel=1e-5)
    assert log.values("grad_norm/net.network.4")[0] == pytest.approx(expected["net.network.4"])


def test_forward_order_is_not_registration_order(tmp_path):
    class Reversed(nn.Module):
        def __init__(self):
            super().__init__()
            self.late = nn.Linear(16, 10)  # registered first, runs last
            self.early = nn.Linear(64, 16)

        def forward(self, x):
            return self.late(torch.relu(self.early(x.flatten(1))))

    cb = fit_one_step(Reversed(), tmp_path)
    assert cb.layer_names == ["net.early", "net.late"]


def test_layer_without_gradient_is_absent_not_zero(tmp_path):
    class DetachedMiddle(nn.Module):
        """The middle layer runs, but its output is detached: no gradient reaches it."""

        def __init__(self):
            super().__init__()
            self.first = nn.Linear(64, 16)
            self.middle = nn.Linear(16, 16)
            self.last = nn.Linear(16, 10)

        def forward(self, x):
            h = torch.tanh(self.first(x.flatten(1)))
            return self.last(h + self.middle(h).detach())

    log = MemoryLogger()
    cb = fit_one_step(DetachedMiddle(), tmp_path, logger=log)
    assert "net.middle" not in cb.first_norms
    logged = log.rows[0][1]
    assert "grad_norm/net.middle" not in logged and "update_ratio/net.middle" not in logged
    assert "weight_norm/net.middle" in logged  # its weights exist; they just did not move
    rows = list(csv.DictReader((tmp_path / "grad_norms.csv").open()))
    assert [(r["layer"], r["depth"]) for r in rows] == [
        ("net.first", "1"),
        ("net.middle", "2"),
        ("net.last", "3"),
    ]
    assert rows[1]["grad_norm"] == "" and rows[1]["update_ratio"] == ""
    # The ratio is taken over the layers that have a gradient: first / last, not NaN.
    first, last = (
        math.sqrt(sum(float(g.pow(2).sum()) for n, g in cb.grads.items() if n.startswith(layer)))
        for layer in ("net.first.", "net.last.")
    )
    assert cb.ratios[0] == pytest.approx(first / last, rel=1e-6)


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
    # An input-side gradient that underflowed to exactly 0 is vanishing, not "no data".
    assert diagnose([0.0, 0.0, 1e-30]).verdict == "vanishing"
    assert diagnose([float("inf"), 1e3]).verdict == "exploding"
    assert math.isnan(diagnose([]).ratio)  # nothing recorded
    result = diagnose([1.0], nonfinite_layer="net.network.0", nonfinite_step=7)
    assert result.verdict == "non-finite" and "net.network.0" in result.advice
    assert "step 7" in result.advice


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"norm_type": 0}, "norm_type must be a positive number"),
        ({"log_every_n_steps": 0}, "log_every_n_steps must be a positive integer or null, got 0"),
        ({"vanishing_ratio": 10, "exploding_ratio": 1}, "need 0 < vanishing_ratio"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GradientNormCallback(**kwargs)


def test_weight_norm_and_update_ratio_equal_an_independent_optimizer_step(tmp_path):
    torch.manual_seed(0)
    net = MLP(64, 10, depth=3, width=16, activation="relu")
    reference = copy.deepcopy(net)
    log = MemoryLogger()
    fit_steps(net, tmp_path, callbacks=[GradientNormCallback(log_every_n_steps=1)], logger=log)
    # The same step by hand: the module's default optimizer is Adam(lr=1e-3).
    ((x, y),) = first_batches(1, 128)
    before = {n: p.detach().clone() for n, p in reference.named_parameters()}
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3)
    nn.functional.cross_entropy(reference(x), y).backward()
    optimizer.step()
    change = {n: p.detach() - before[n] for n, p in reference.named_parameters()}
    weights, updates = norms_by_layer(before), norms_by_layer(change)
    for layer, weight in weights.items():
        assert log.values(f"weight_norm/{layer}")[0] == pytest.approx(weight, rel=1e-5)
        ratio = updates[layer] / weight
        assert log.values(f"update_ratio/{layer}")[0] == pytest.approx(ratio, rel=1e-4)
    rows = {r["layer"]: r for r in csv_rows(tmp_path)}
    assert float(rows["net.network.0"]["update_ratio"]) == pytest.approx(
        updates["net.network.0"] / weights["net.network.0"], rel=1e-4
    )
    assert not log.values("grad_norm/clipped_total")  # no clipping configured


@pytest.mark.parametrize("clip", [1e-3, 1e6])
def test_clipped_total_is_the_smaller_of_total_and_clip_value(tmp_path, clip):
    torch.manual_seed(0)
    log = MemoryLogger()
    fit_steps(
        MLP(64, 10, depth=3, width=16, activation="relu"),
        tmp_path,
        steps=3,
        callbacks=[GradientNormCallback(log_every_n_steps=1)],
        logger=log,
        gradient_clip_val=clip,
    )
    totals, clipped = log.values("grad_norm/total"), log.values("grad_norm/clipped_total")
    assert totals.keys() == clipped.keys() == {0, 1, 2}
    for step, total in totals.items():
        assert 1e-3 < total < 1e6  # so both cases test something
        assert clipped[step] == pytest.approx(min(total, clip), rel=1e-4)


def test_accumulation_logs_once_per_optimizer_step_the_accumulated_gradient(tmp_path):
    torch.manual_seed(0)
    net = MLP(64, 10, depth=3, width=16, activation="tanh", init="xavier_normal")
    reference = copy.deepcopy(net)
    fit_steps(
        net,
        tmp_path,
        steps=2,
        batch_size=32,
        accumulate_grad_batches=4,
        callbacks=[GradientNormCallback(log_every_n_steps=1)],
    )
    rows = csv_rows(tmp_path)
    assert [int(r["step"]) for r in rows] == [0] * 4 + [1] * 4  # 4 layers, 2 optimizer steps
    for x, y in first_batches(4, 32):  # Lightning scales each micro-batch's loss by 1/4
        (nn.functional.cross_entropy(reference(x), y) / 4).backward()
    expected = norms_by_layer({n: p.grad for n, p in reference.named_parameters()})
    for row in rows[:4]:
        assert float(row["grad_norm"]) == pytest.approx(expected[row["layer"]], rel=1e-5)


def test_bf16_mixed_precision_logs_finite_norms(tmp_path):
    torch.manual_seed(0)
    log = MemoryLogger()
    fit_steps(
        MLP(64, 10, depth=3, width=16, activation="relu"),
        tmp_path,
        steps=2,
        precision="bf16-mixed",
        callbacks=[GradientNormCallback(log_every_n_steps=1)],
        logger=log,
    )
    norms = [float(r["grad_norm"]) for r in csv_rows(tmp_path)]
    assert len(norms) == 8 and all(math.isfinite(v) and v > 0 for v in norms)
    assert all(math.isfinite(v) for v in log.values("grad_norm/total").values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 with a GradScaler needs CUDA")
def test_fp16_norms_are_unscaled(tmp_path):
    def total(precision: str, run_dir) -> float:
        torch.manual_seed(0)
        log = MemoryLogger()
        fit_steps(
            MLP(64, 10, depth=3, width=16, activation="relu"),
            run_dir,
            accelerator="cuda",
            devices=1,
            precision=precision,
            callbacks=[GradientNormCallback(log_every_n_steps=1)],
            logger=log,
        )
        return log.values("grad_norm/total")[0]

    # Before unscaling the norms would be the loss scale (65536) times larger.
    assert total("16-mixed", tmp_path / "a") == pytest.approx(total("32", tmp_path / "b"), rel=0.05)


def test_absurd_learning_rate_stops_training_naming_a_layer(make_cfg):
    from gradwatch.recipe import train

    cfg = make_cfg(
        "experiment=relu",
        "debug=fast",
        "trainer.limit_train_batches=10",
        "model.optimizer.lr=1e30",
        "logger=none",
    )
    with pytest.warns(
        UserWarning, match=r"Stopping training \(stop_on_nonfinite\): Gradients became NaN"
    ):
        summary = train(cfg)
    assert summary["diagnosis"] == "non-finite"
    assert summary["nonfinite_layer"].startswith("net.network.")
    assert summary["steps"] < 10
    assert repr(summary["nonfinite_layer"]) in summary["stop_reason"]
    assert repr(summary["nonfinite_layer"]) in summary["advice"]


def test_vanishing_verdict_is_warned_once_with_advice(tmp_path):
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="Gradients look vanishing") as record:
        fit_steps(
            MLP(64, 10, depth=10, width=32, activation="sigmoid"),
            tmp_path,
            steps=3,
            callbacks=[GradientNormCallback(log_every_n_steps=1)],
        )
    warned = [w for w in record if "Gradients look" in str(w.message)]
    assert len(warned) == 1 and "ReLU with He" in str(warned[0].message)


def test_state_survives_a_checkpoint_resume(tmp_path):
    torch.manual_seed(0)
    first = GradientNormCallback(log_every_n_steps=1)
    trainer = fit_steps(MLP(64, 10, depth=2, width=8), tmp_path / "a", steps=2, callbacks=[first])
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    resumed = GradientNormCallback(log_every_n_steps=1)
    fit_steps(
        MLP(64, 10, depth=2, width=8),
        tmp_path / "b",
        steps=4,
        ckpt_path=tmp_path / "a.ckpt",
        callbacks=[resumed],
    )
    assert resumed.first_step == 0 and resumed.first_norms == first.first_norms
    assert resumed.ratios[:2] == first.ratios and len(resumed.ratios) == 4
    assert resumed.last_step == 3


def test_gradient_flow_figure_and_histograms_are_written(tmp_path):
    import PIL.Image
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    callback = GradientNormCallback(
        log_every_n_steps=1, histogram_every_n_steps=2, figure_every_n_steps=2
    )
    logger = TensorBoardLogger(tmp_path, name="tb", version="")
    fit_steps(MLP(64, 10, depth=2, width=8), tmp_path, steps=3, callbacks=[callback], logger=logger)
    assert (tmp_path / "gradient_flow.png").stat().st_size > 0
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"histograms": 0, "images": 0})
    events.Reload()
    assert "grad_hist/net.network.0" in events.Tags()["histograms"]
    assert [e.step for e in events.Histograms("grad_hist/net.network.0")] == [0, 1]
    images = events.Images("gradient_flow")
    assert [e.step for e in images] == [1, 3]  # every 2nd; the end
    png = tmp_path / "gradient_flow.png"  # the end's figure: logged as the very same PNG
    assert images[-1].encoded_image_string == png.read_bytes()
    assert (images[-1].width, images[-1].height) == PIL.Image.open(png).size


def test_weight_stats_off_logs_gradient_norms_only(tmp_path):
    torch.manual_seed(0)
    log = MemoryLogger()
    callback = GradientNormCallback(log_every_n_steps=1, weight_stats=False)
    fit_steps(MLP(64, 10, depth=2, width=8), tmp_path, callbacks=[callback], logger=log)
    (metrics,) = [m for _, m in log.rows if "grad_norm/total" in m]
    assert "grad_norm/net.network.0" in metrics and "grad_norm/total" in metrics
    assert not any(k.startswith(("weight_norm/", "update_ratio/")) for k in metrics)
    rows = csv_rows(tmp_path)
    assert rows[0]["grad_norm"] and rows[0]["weight_norm"] == rows[0]["update_ratio"] == ""
