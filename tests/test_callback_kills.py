"""Fast tests of GradientNormCallback and ActivationStatsCallback for mutation testing.

Most tests are a tiny Lightning fit (a few steps of a net of a few dozen weights, no
checkpointing, a logger that keeps what it gets) whose every logged and written value is
checked against plain torch computed here from what a probe callback saw: gradients before
the step, weights before and after it. Never against the callbacks' own helpers. The depth
order, the norms of sharded tensors (on a fake two-rank process group) and grad_norms.csv
are also driven directly. The gradient-flow figure (matplotlib, half a second a fit) is
replaced by a recorder: what the callback asks of it is checked, the drawing is tested in
tests/test_plots.py. The whole file runs in about 6 s; scripts/mutation.py runs it for every
mutant of callbacks/.
"""

from __future__ import annotations

import csv
import itertools
import math
import statistics
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gradwatch.callbacks.grad_norm as grad_norm_module
import gradwatch.plots
from gradwatch.callbacks import ActivationStatsCallback, GradientNormCallback
from gradwatch.verdict import diagnose
from tests.memory_logger import MemoryLogger

FEATURES, CLASSES = 4, 3
HEADER = ["step", "layer", "depth", "grad_norm", "weight_norm", "update_ratio", "optimizer"]


@pytest.fixture(autouse=True)
def seeded():
    """Every test builds its nets from the same random state, whatever ran before it."""
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def figures(monkeypatch):
    """(csv path, png path) of every gradient-flow figure asked for; nothing is drawn."""
    calls: list[tuple[Path, Path]] = []
    monkeypatch.setattr(
        gradwatch.plots, "gradient_flow_figure", lambda c, p: calls.append((Path(c), Path(p)))
    )
    return calls


def loader(n: int = 32, batch: int = 8, seed: int = 0, features: int = FEATURES) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch)


class OutOfOrder(nn.Module):
    """Three linear layers and two tanh, registered out of their forward order."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Linear(5, CLASSES)  # runs last
        self.a = nn.Linear(FEATURES, 5)
        self.b = nn.Linear(5, 5)
        self.act1, self.act2 = nn.Tanh(), nn.Tanh()

    def forward(self, x):
        return self.c(self.act2(self.b(self.act1(self.a(x)))))


class Net(L.LightningModule):
    """Cross-entropy around ``net``; keeps its own losses (an independent record)."""

    def __init__(self, net=None, lr: float = 0.1, num_classes=None, adam: dict | None = None):
        super().__init__()
        self.net = net if net is not None else OutOfOrder()
        self.lr, self.adam = lr, adam
        self.seen: list[float] = []
        if num_classes is not None:
            self.save_hyperparameters({"num_classes": num_classes})

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.seen.append(float(loss.detach()))
        return loss

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if self.adam is not None:
            return torch.optim.Adam(params, lr=self.lr, **self.adam)
        return torch.optim.SGD(params, lr=self.lr)


class Probe(L.Callback):
    """Per optimizer step: the gradients before clipping and the weights before the step;
    right after the step, the weights and the (clipped) gradients."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self._hooked: set[int] = set()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        index = next(i for i, o in enumerate(trainer.optimizers) if o is optimizer)
        named = dict(pl_module.named_parameters())
        self.steps.append(
            {
                "step": trainer.global_step,
                "opt": index,
                "grads": {
                    n: p.grad.double().clone() for n, p in named.items() if p.grad is not None
                },
                "before": {n: p.detach().double().clone() for n, p in named.items()},
            }
        )
        if id(optimizer) not in self._hooked:
            self._hooked.add(id(optimizer))

            def after(opt, args, kwargs):
                last = [r for r in self.steps if r["opt"] == index][-1]
                last["after"] = {n: p.detach().double().clone() for n, p in named.items()}
                last["clipped"] = {
                    n: p.grad.double().clone() for n, p in named.items() if p.grad is not None
                }

            optimizer.register_step_post_hook(after)


def pnorm(tensors, p: float = 2.0) -> float:
    flat = torch.cat([t.double().flatten() for t in tensors])
    if p == math.inf:
        return float(flat.abs().max())
    return float(flat.abs().pow(p).sum()) ** (1 / p)


def of_layer(tensors: dict[str, torch.Tensor], layer: str) -> list[torch.Tensor]:
    """The tensors of parameters owned directly by module path ``layer`` ("" = the model)."""
    return [t for n, t in tensors.items() if n.rpartition(".")[0] == layer]


def fit(
    callbacks, module=None, steps=3, data=None, logger=True, root=None, ckpt_path=None, **kwargs
):
    log = MemoryLogger() if logger else None
    torch.manual_seed(0)
    module = module if module is not None else Net()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=log if logger else False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=root,
        **kwargs,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*(smaller than the logging interval|num_workers).*")
        data = data if data is not None else loader()
        trainer.fit(
            module, data, ckpt_path=ckpt_path, **({"weights_only": True} if ckpt_path else {})
        )
    return trainer, log


def read_csv(path: Path) -> list[list[str]]:
    with path.open() as f:
        return list(csv.reader(f))


def logged(log: MemoryLogger, prefix: str = "grad_norm/total") -> dict[int, dict[str, float]]:
    """step -> the callback's metrics of that step (rows that have the key ``prefix``)."""
    return {s: m for s, m in log.rows if any(k.startswith(prefix) for k in m)}


# -- one optimizer: every key, every value, the file, the record, the verdict's inputs --------
LAYERS = ["net.a", "net.b", "net.c"]  # forward order


def expected_step(record: dict, layers=LAYERS, p: float = 2.0) -> dict[str, float]:
    grads, before, after = record["grads"], record["before"], record["after"]
    out = {}
    for layer in layers:
        g = of_layer(grads, layer)
        w = pnorm(of_layer(before, layer), p)
        change = [before[n] - after[n] for n in before if n.rpartition(".")[0] == layer]
        out[f"grad_norm/{layer}"] = pnorm(g, p)
        out[f"weight_norm/{layer}"] = w
        out[f"update_ratio/{layer}"] = pnorm(change, p) / w
    out["grad_norm/total"] = pnorm(grads.values(), p)
    first, last = pnorm(of_layer(grads, layers[0]), p), pnorm(of_layer(grads, layers[-1]), p)
    out["grad_norm/first_last_ratio"] = first / last
    return out


def test_one_optimizer_logs_writes_and_records_every_value(tmp_path, figures, monkeypatch):
    fed = []
    real = grad_norm_module.diagnose
    monkeypatch.setattr(
        grad_norm_module, "diagnose", lambda *a, **k: fed.append((a, k)) or real(*a, **k)
    )
    probe, cb = Probe(), GradientNormCallback(log_every_n_steps=2)
    module = Net(num_classes=CLASSES)
    trainer, log = fit([probe, cb], module, steps=11, root=tmp_path)
    steps = [0, 1, 3, 5, 7, 9]  # step 0, then Lightning's logging steps (step + 1) % 2 == 0
    metrics = logged(log)
    assert list(metrics) == steps
    records = {r["step"]: r for r in probe.steps}
    for step in steps:
        want = expected_step(records[step])
        assert metrics[step].keys() == want.keys()
        for key, value in want.items():
            assert metrics[step][key] == pytest.approx(value, rel=1e-5), (step, key)
    # grad_norms.csv: every layer of every logged step, input side first
    rows = read_csv(tmp_path / "grad_norms.csv")
    assert rows[0] == HEADER
    assert [(int(r[0]), r[1], int(r[2]), r[6]) for r in rows[1:]] == [
        (s, layer, d, "") for s in steps for d, layer in enumerate(LAYERS, 1)
    ]
    for r in rows[1:]:
        want = expected_step(records[int(r[0])])
        for column, kind in ((3, "grad_norm"), (4, "weight_norm"), (5, "update_ratio")):
            assert float(r[column]) == pytest.approx(want[f"{kind}/{r[1]}"], rel=1e-5)
    # what the run record and the report read
    ratios = [expected_step(records[s])["grad_norm/first_last_ratio"] for s in steps]
    assert cb.layer_names == LAYERS
    assert cb.ratios == pytest.approx(ratios, rel=1e-5)
    assert (cb.first_step, cb.last_step) == (0, 9)
    for norms, step in ((cb.first_norms, 0), (cb.last_norms, 9)):
        want = expected_step(records[step])
        assert norms == pytest.approx({n: want[f"grad_norm/{n}"] for n in LAYERS}, rel=1e-5)
    assert cb.losses == pytest.approx([module.seen[s] for s in steps])
    # the verdict is fed the ratios and the signals, and the summary says what it said
    summary = cb.summary()
    args, kwargs = fed[-1]
    assert args[0] == pytest.approx(ratios, rel=1e-5)
    assert args[1:] == (1e-2, 1e2, None, None)
    per_layer = {n: [expected_step(records[s])[f"update_ratio/{n}"] for s in steps] for n in LAYERS}
    assert kwargs.keys() == {
        "ours",
        "batchnorm",
        "chance_loss",
        "loss_start",
        "loss_end",
        "update_ratios",
    }
    assert kwargs["ours"] is False and kwargs["batchnorm"] is False
    assert kwargs["chance_loss"] == pytest.approx(math.log(CLASSES))
    assert kwargs["loss_start"] == pytest.approx(
        statistics.fmean(module.seen[s] for s in steps[:3])
    )
    assert kwargs["loss_end"] == pytest.approx(statistics.fmean(module.seen[s] for s in steps[-3:]))
    assert kwargs["update_ratios"] == pytest.approx(
        [statistics.median(per_layer[n]) for n in LAYERS], rel=1e-4
    )
    verdict = diagnose(
        ratios,
        chance_loss=math.log(CLASSES),
        loss_start=kwargs["loss_start"],
        loss_end=kwargs["loss_end"],
        update_ratios=kwargs["update_ratios"],
        ours=False,
    )
    assert summary == {
        "diagnosis": verdict.verdict,
        "advice": verdict.advice,
        "initial_first_last_ratio": cb.ratios[0],
        "final_first_last_ratio": cb.ratios[-1],
        "median_first_last_ratio": pytest.approx(verdict.ratio),
        "nonfinite_layer": None,
        "nonfinite_step": None,
        "stop_reason": None,
        "reasons": list(verdict.reasons),
        "stalled": verdict.stalled,
    }
    assert cb.diagnosis().verdict == verdict.verdict
    # the figure: once, at the end of fit, from the file beside it
    assert figures == [(tmp_path / "grad_norms.csv", tmp_path / "gradient_flow.png")]
    assert trainer.global_step == 11 and not trainer.should_stop
    # the checkpointed state
    state = cb.state_dict()
    assert state.keys() == {
        "nonfinite_layer",
        "nonfinite_step",
        "warned",
        "stop_reason",
        "amp_scale",
        "losses",
        "amp_skipped",
        "optimizers",
    }
    assert [state[k] for k in ("nonfinite_layer", "nonfinite_step", "warned", "stop_reason")] == [
        None
    ] * 4
    assert state["amp_scale"] is None and state["amp_skipped"] == 0
    assert state["losses"] == cb.losses
    (saved,) = state["optimizers"].values()
    assert list(state["optimizers"]) == [""]
    assert saved["steps"] == 11 and saved["ratios"] == cb.ratios
    assert (saved["first_step"], saved["last_step"]) == (0, 9)
    assert saved["first_norms"] == cb.first_norms and saved["last_norms"] == cb.last_norms
    assert len(saved["updates"]) == 6
    assert saved["updates"][-1] == pytest.approx(
        {n: expected_step(records[9])[f"update_ratio/{n}"] for n in LAYERS}, rel=1e-4
    )


def test_norm_types_three_and_inf_and_the_trainers_interval(tmp_path):
    for p in (1, 0.5, 3.0, math.inf):
        probe, cb = Probe(), GradientNormCallback(norm_type=p)
        _, log = fit([probe, cb], steps=4, root=tmp_path / str(p), log_every_n_steps=3)
        metrics = logged(log)
        assert list(metrics) == [0, 2]  # the trainer's interval: step 0, then (step + 1) % 3
        records = {r["step"]: r for r in probe.steps}
        for step in (0, 2):
            want = expected_step(records[step], p=p)
            for key, value in want.items():
                assert metrics[step][key] == pytest.approx(value, rel=1e-5), (p, step, key)


def test_gradient_norms_only_and_a_fit_without_logger(tmp_path, figures):
    probe, cb = Probe(), GradientNormCallback(log_every_n_steps=1, weight_stats=False)
    _, log = fit([probe, cb], steps=2, root=tmp_path)
    for step, record in enumerate(probe.steps):
        want = expected_step(record)
        keys = {k for k in want if k.startswith("grad_norm/")}
        assert logged(log)[step].keys() == keys
    rows = read_csv(tmp_path / "grad_norms.csv")
    assert [r[4:] for r in rows[1:]] == [["", "", ""]] * 6
    assert float(rows[1][3]) == pytest.approx(expected_step(probe.steps[0])["grad_norm/net.a"])
    assert cb.state_dict()["optimizers"][""]["updates"] == []
    # no logger: the file and the record all the same
    cb = GradientNormCallback(log_every_n_steps=1, dirpath=tmp_path / "elsewhere")
    fit([cb], steps=2, logger=False, root=tmp_path / "root")
    assert len(read_csv(tmp_path / "elsewhere" / "grad_norms.csv")) == 7
    assert not (tmp_path / "root" / "grad_norms.csv").exists()
    assert figures[-1] == (
        tmp_path / "elsewhere" / "grad_norms.csv",
        tmp_path / "elsewhere" / "gradient_flow.png",
    )


def test_figures_every_n_steps_and_histograms(tmp_path, figures, monkeypatch):
    seen, sent, images = [], [], []
    monkeypatch.setattr(
        grad_norm_module,
        "log_histograms",
        lambda loggers, values, step: seen.append((step, values)) or sent.append(loggers),
    )
    monkeypatch.setattr(
        grad_norm_module,
        "log_figure",
        lambda loggers, tag, png, step: images.append((list(loggers), tag, png, step)),
    )
    probe = Probe()
    cb = GradientNormCallback(
        log_every_n_steps=1, histogram_every_n_steps=2, figure_every_n_steps=3
    )
    trainer, _ = fit([probe, cb], steps=7, root=tmp_path)
    pair = (tmp_path / "grad_norms.csv", tmp_path / "gradient_flow.png")
    assert figures == [pair] * 3  # after steps 2 and 5, and at the end
    assert images == [(trainer.loggers, "gradient_flow", pair[1], s) for s in (2, 5, 7)]
    assert all(loggers is trainer.loggers for loggers in sent)
    assert [s for s, _ in seen] == [0, 1, 3, 5]
    for step, values in seen:
        grads = probe.steps[step]["grads"]
        assert sorted(values) == [f"grad_hist/{n}" for n in LAYERS]
        for layer in LAYERS:
            want = torch.cat([g.flatten() for g in of_layer(grads, layer)])
            assert torch.allclose(values[f"grad_hist/{layer}"].double(), want)
    # histograms go only to the logged layers
    seen.clear()
    cb = GradientNormCallback(log_every_n_steps=1, histogram_every_n_steps=1, exclude=["net.b"])
    fit([cb], steps=1, root=tmp_path / "x")
    assert [sorted(v) for _, v in seen] == [["grad_hist/net.a", "grad_hist/net.c"]]


@pytest.mark.parametrize(
    ("kwargs", "want"),
    [
        ({"include": ["net.[ab]"]}, ["net.a", "net.b"]),
        ({"exclude": ["net.a"]}, ["net.b", "net.c"]),
        ({"include": ["net.*"], "exclude": ["*.b"]}, ["net.a", "net.c"]),
        ({"max_logged_layers": 2}, ["net.a", "net.c"]),
    ],
)
def test_include_exclude_and_the_cap_choose_the_logged_layers(tmp_path, kwargs, want):
    cb = GradientNormCallback(log_every_n_steps=1, **kwargs)
    _, log = fit([cb], steps=1, root=tmp_path)
    keys = logged(log)[0].keys()
    layer_keys = {k for k in keys if k.count("/") == 1 and "." in k}
    kinds = ("grad_norm", "weight_norm", "update_ratio")
    assert layer_keys == {f"{kind}/{n}" for kind in kinds for n in want}
    assert {"grad_norm/total", "grad_norm/first_last_ratio"} <= keys
    assert [r[1] for r in read_csv(tmp_path / "grad_norms.csv")[1:]] == LAYERS


# -- layers without a gradient, clipping -------------------------------------------------------
class Detached(nn.Module):
    """``b`` runs, but its output is detached: no gradient, between two layers that have one.
    ``unused`` never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(FEATURES, 5)
        self.unused = nn.Linear(5, 5)
        self.b = nn.Linear(5, 5)
        self.c = nn.Linear(5, CLASSES)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        return self.c(h + self.b(h).detach())


@pytest.mark.parametrize("clip", [0.05, 1e6])
def test_a_layer_without_gradient_is_absent_and_clipping_is_measured(tmp_path, clip):
    probe = Probe()
    cb = GradientNormCallback(log_every_n_steps=1)
    _, log = fit([probe, cb], Net(Detached()), steps=3, root=tmp_path, gradient_clip_val=clip)
    order = ["net.a", "net.unused", "net.b", "net.c"]  # never-run: right after its neighbour
    assert cb.layer_names == order
    for record in probe.steps:
        step, grads = record["step"], record["grads"]
        metrics = logged(log)[step]
        with_grad = ["net.a", "net.c"]
        want = {f"grad_norm/{n}": pnorm(of_layer(grads, n)) for n in with_grad}
        want |= {
            f"update_ratio/{n}": pnorm(
                [
                    record["before"][k] - record["after"][k]
                    for k in record["before"]
                    if k.startswith(n + ".")
                ]
            )
            / pnorm(of_layer(record["before"], n))
            for n in with_grad
        }
        want |= {f"weight_norm/{n}": pnorm(of_layer(record["before"], n)) for n in order}
        total = pnorm(grads.values())
        want["grad_norm/total"] = total
        want["grad_norm/first_last_ratio"] = want["grad_norm/net.a"] / want["grad_norm/net.c"]
        want["grad_norm/clipped_total"] = pnorm(record["clipped"].values())
        assert want["grad_norm/clipped_total"] == pytest.approx(
            min(total, clip), rel=1e-4
        )  # independent of the probe: what clip_grad_norm_ does
        assert metrics.keys() == want.keys()
        for key, value in want.items():
            assert metrics[key] == pytest.approx(value, rel=1e-5), key
        rows = [r for r in read_csv(tmp_path / "grad_norms.csv")[1:] if int(r[0]) == step]
        assert [(r[1], r[2]) for r in rows] == [(n, str(d)) for d, n in enumerate(order, 1)]
        assert [r[3] == "" for r in rows] == [False, True, True, False]
        assert [r[5] == "" for r in rows] == [False, True, True, False]
        assert all(r[4] for r in rows)
    assert set(cb.first_norms) == {"net.a", "net.c"}


class Top(Net):
    """A parameter of the LightningModule itself and a layer named like an aggregate."""

    def __init__(self) -> None:
        super().__init__(nn.Identity())
        self.scale = nn.Parameter(torch.ones(FEATURES))
        self.total = nn.Linear(FEATURES, CLASSES)

    def forward(self, x):
        return self.total(x * self.scale)


def test_own_parameters_and_a_layer_named_total(tmp_path):
    probe = Probe()
    _, log = fit([probe, GradientNormCallback(log_every_n_steps=1)], Top(), steps=1, root=tmp_path)
    grads = probe.steps[0]["grads"]
    metrics = logged(log)[0]
    # the module's own parameter is a layer named after its class; "total" keeps the total
    assert metrics["grad_norm/Top"] == pytest.approx(pnorm(of_layer(grads, "")))
    assert metrics["grad_norm/total[layer]"] == pytest.approx(pnorm(of_layer(grads, "total")))
    assert metrics["weight_norm/total[layer]"] == pytest.approx(
        pnorm(of_layer(probe.steps[0]["before"], "total"))
    )
    assert metrics["grad_norm/total"] == pytest.approx(pnorm(grads.values()))
    rows = read_csv(tmp_path / "grad_norms.csv")[1:]
    assert [(r[1], r[2]) for r in rows] == [("Top", "1"), ("total", "2")]


# -- non-finite gradients, the running verdict's warning ----------------------------------
class Poisoned(Net):
    """At step 1, one element of ``b``'s gradient becomes ``value``."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def on_after_backward(self):
        if self.trainer.global_step == 1:
            self.net.b.weight.grad[0, 0] = self.value


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_a_non_finite_gradient_stops_training_and_names_the_layer(tmp_path, value):
    cb = GradientNormCallback(log_every_n_steps=1)
    with pytest.warns(UserWarning) as record:
        trainer, log = fit([cb], Poisoned(value), steps=5, root=tmp_path)
    advice = diagnose([1.0], nonfinite_layer="net.b", nonfinite_step=1, ours=False).advice
    messages = [str(w.message) for w in record if "Stopping" in str(w.message)]
    assert messages == ["Stopping training (stop_on_nonfinite): " + advice]
    assert (cb.nonfinite_layer, cb.nonfinite_step, cb.stop_reason) == ("net.b", 1, advice)
    assert trainer.global_step == 2 and trainer.should_stop
    summary = cb.summary()
    assert (summary["diagnosis"], summary["advice"]) == ("non-finite", advice)
    assert (summary["nonfinite_layer"], summary["nonfinite_step"]) == ("net.b", 1)
    assert summary["stop_reason"] == advice
    b = logged(log)[1]["grad_norm/net.b"]
    assert math.isnan(b) if value != value else b == math.inf
    assert math.isfinite(logged(log)[1]["grad_norm/net.a"])


def test_without_stop_on_nonfinite_training_goes_on_and_the_first_layer_is_kept(tmp_path):
    class Twice(Net):
        def on_after_backward(self):
            step = self.trainer.global_step
            if step in (1, 2):
                layer = self.net.b if step == 1 else self.net.a
                layer.weight.grad[0, 0] = math.inf

    cb = GradientNormCallback(log_every_n_steps=1, stop_on_nonfinite=False)
    with pytest.warns(UserWarning, match="Gradients became NaN or infinite") as record:
        trainer, _ = fit([cb], Twice(), steps=4, root=tmp_path)
    advice = diagnose([1.0], nonfinite_layer="net.b", nonfinite_step=1, ours=False).advice
    assert [str(w.message) for w in record if "NaN" in str(w.message)] == [advice]
    assert (cb.nonfinite_layer, cb.nonfinite_step, cb.stop_reason) == ("net.b", 1, None)
    assert trainer.global_step == 4 and not trainer.should_stop


def test_a_norm_that_overflows_float32_is_exact(tmp_path):
    for p in (2.0, 3.0):
        probe = Probe()
        cb = GradientNormCallback(log_every_n_steps=1, norm_type=p)
        _, log = fit([probe, cb], Poisoned(1e30), steps=2, root=tmp_path / str(p))
        grads = probe.steps[1]["grads"]
        assert cb.nonfinite_layer is None
        metrics = logged(log)[1]
        for layer in LAYERS:
            want = pnorm(of_layer(grads, layer), p)
            assert metrics[f"grad_norm/{layer}"] == pytest.approx(want, rel=1e-6), (p, layer)
        assert metrics["grad_norm/total"] == pytest.approx(pnorm(grads.values(), p), rel=1e-6)


@pytest.mark.parametrize(
    ("band", "word"), [((10.0, 100.0), "vanishing"), ((1e-6, 1e-5), "exploding")]
)
def test_the_running_verdict_warns_once_with_its_advice(tmp_path, band, word):
    probe = Probe()
    cb = GradientNormCallback(log_every_n_steps=1, vanishing_ratio=band[0], exploding_ratio=band[1])
    with pytest.warns(UserWarning, match="Gradients look") as record:
        fit([probe, cb], steps=3, root=tmp_path)
    ratio = expected_step(probe.steps[0])["grad_norm/first_last_ratio"]
    want = diagnose([ratio], *band, ours=False)
    assert want.verdict == word
    messages = [str(w.message) for w in record if "Gradients look" in str(w.message)]
    assert len(messages) == 1
    assert messages[0].startswith(f"Gradients look {word} at step 0. ")
    assert messages[0] == f"Gradients look {word} at step 0. {want.advice}"
    assert cb.warned == word
    assert cb.summary()["diagnosis"] == word
    # warn=False: the same verdict, no warning
    quiet = GradientNormCallback(
        log_every_n_steps=1, vanishing_ratio=band[0], exploding_ratio=band[1], warn=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        fit([quiet], steps=3, root=tmp_path / "quiet")
    assert quiet.warned is None and quiet.summary()["diagnosis"] == word


def test_the_running_verdict_reads_the_last_twenty_logged_ratios(tmp_path, monkeypatch):
    fed = []
    real = grad_norm_module.diagnose
    monkeypatch.setattr(
        grad_norm_module, "diagnose", lambda *a, **k: fed.append(list(a[0])) or real(*a, **k)
    )
    probe, cb = Probe(), GradientNormCallback(log_every_n_steps=1)
    module = Net()
    fit([probe, cb], module, steps=23, root=tmp_path, data=loader(n=96))
    ratios = [expected_step(r)["grad_norm/first_last_ratio"] for r in probe.steps]
    running = fed[:23]  # one per logged step, then the summary's
    for k, seen in enumerate(running):
        assert seen == pytest.approx(ratios[max(0, k - 19) : k + 1], rel=1e-5)
    fed.clear()
    summary = cb.summary()
    assert fed[-1] == pytest.approx(ratios, rel=1e-5)  # the final verdict: every ratio
    # update ratios: the median of the last twenty logged steps, per layer
    updates = cb.state_dict()["optimizers"][""]["updates"]
    assert len(updates) == 20
    for got, record in zip(updates, probe.steps[3:]):
        want = expected_step(record)
        assert got == pytest.approx({n: want[f"update_ratio/{n}"] for n in LAYERS}, rel=1e-4)
    assert summary["initial_first_last_ratio"] == pytest.approx(ratios[0], rel=1e-5)
    assert summary["final_first_last_ratio"] == pytest.approx(ratios[-1], rel=1e-5)
    assert cb.losses == pytest.approx(module.seen)


# -- arguments -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"norm_type": 0}, "norm_type must be a positive number or inf, got 0.0."),
        ({"norm_type": -1}, "norm_type must be a positive number or inf, got -1.0."),
        ({"norm_type": math.nan}, "norm_type must be a positive number or inf, got nan."),
        ({"log_every_n_steps": 0}, "log_every_n_steps must be a positive integer or null, got 0."),
        (
            {"vanishing_ratio": 1.0, "exploding_ratio": 1.0},
            "need 0 < vanishing_ratio < exploding_ratio, got 1.0 and 1.0.",
        ),
        (
            {"vanishing_ratio": 0.0, "exploding_ratio": 1.0},
            "need 0 < vanishing_ratio < exploding_ratio, got 0.0 and 1.0.",
        ),
        (
            {"histogram_every_n_steps": 0},
            "histogram_every_n_steps must be a positive integer or null, got 0.",
        ),
        (
            {"figure_every_n_steps": -1},
            "figure_every_n_steps must be a positive integer or null, got -1.",
        ),
        ({"max_logged_layers": 0}, "max_logged_layers must be a positive integer or null, got 0."),
        ({"include": "net.*"}, "include must be a list of name patterns, got 'net.*'."),
        ({"exclude": ["a", 1]}, "exclude must be a list of name patterns, got ['a', 1]."),
        ({"amp_min_scale": 0.0}, "amp_min_scale must be positive, got 0.0."),
        ({"amp_min_scale": -1.0}, "amp_min_scale must be positive, got -1.0."),
    ],
)
def test_bad_arguments_are_refused_with_their_message(kwargs, message):
    with pytest.raises(ValueError) as error:
        GradientNormCallback(**kwargs)
    assert str(error.value) == message


def test_arguments_are_kept():
    include, exclude = ("a*",), ["b"]
    cb = GradientNormCallback(
        norm_type=3,
        log_every_n_steps=4,
        vanishing_ratio=0.5,
        exploding_ratio=5.0,
        dirpath="d",
        weight_stats=False,
        stop_on_nonfinite=False,
        warn=False,
        histogram_every_n_steps=6,
        figure_every_n_steps=7,
        include=include,
        exclude=exclude,
        max_logged_layers=8,
        config_hints=True,
        amp_min_scale=0.25,
    )
    assert cb.norm_type == 3.0 and isinstance(cb.norm_type, float)
    assert (cb.log_every_n_steps, cb.vanishing_ratio, cb.exploding_ratio) == (4, 0.5, 5.0)
    assert (cb.dirpath, cb.weight_stats, cb.stop_on_nonfinite, cb.warn) == (
        "d",
        False,
        False,
        False,
    )
    assert (cb.histogram_every_n_steps, cb.figure_every_n_steps) == (6, 7)
    assert cb.include == ["a*"] and cb.exclude == ["b"] and cb.exclude is not exclude
    assert (cb.max_logged_layers, cb.config_hints, cb.amp_min_scale) == (8, True, 0.25)
    default = GradientNormCallback()
    assert (default.norm_type, default.log_every_n_steps, default.dirpath) == (2.0, None, None)
    assert (default.vanishing_ratio, default.exploding_ratio) == (1e-2, 1e2)
    assert default.weight_stats and default.stop_on_nonfinite and default.warn
    assert default.histogram_every_n_steps is None and default.figure_every_n_steps is None
    assert default.include is None and default.exclude is None
    assert default.max_logged_layers is None and not default.config_hints
    assert default.amp_min_scale == 1.0
    assert GradientNormCallback(norm_type=math.inf).norm_type == math.inf
    # before any fit: an empty record
    assert default.summary()["diagnosis"] == diagnose([]).verdict
    assert (default.ratios, default.first_norms, default.last_norms) == ([], {}, {})
    assert (default.first_step, default.last_step, default.layer_names) == (None, None, [])
    assert default.summary()["initial_first_last_ratio"] is None
    assert default.summary()["final_first_last_ratio"] is None


# -- several optimizers: each counts its own steps and is named by its layers' path --------------
class TwoNets(L.LightningModule):
    """Manual optimization of two small nets; ``boost`` scales ``disc.0``'s gradient (its
    first/last ratio then is far above the band: exploding)."""

    def __init__(self, boost: float = 1.0, disc_lr: float = 0.05) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.disc_lr = disc_lr
        self.gen = nn.Sequential(nn.Linear(FEATURES, 5), nn.Tanh(), nn.Linear(5, FEATURES))
        self.disc = nn.Sequential(nn.Linear(FEATURES, 5), nn.Tanh(), nn.Linear(5, 1))
        self.boost = boost

    def training_step(self, batch, batch_idx):
        x, _ = batch
        opt_g, opt_d = self.optimizers()
        opt_g.zero_grad()
        self.manual_backward(self.disc(self.gen(x)).pow(2).mean())
        opt_g.step()
        opt_d.zero_grad()
        self.manual_backward(self.disc(x).sigmoid().mean())
        self.disc[0].weight.grad.mul_(self.boost)
        opt_d.step()

    def configure_optimizers(self):
        return (
            torch.optim.SGD(self.gen.parameters(), lr=0.05),
            torch.optim.SGD(self.disc.parameters(), lr=self.disc_lr),
        )


def test_two_optimizers_log_their_own_steps_under_their_own_names(tmp_path):
    probe = Probe()
    cb = GradientNormCallback(log_every_n_steps=2)
    with pytest.warns(UserWarning) as record:
        trainer, log = fit([probe, cb], TwoNets(boost=1e5, disc_lr=0.0), steps=10, root=tmp_path)
    assert trainer.global_step == 10  # 5 batches, two optimizer steps each
    parts = {0: ("gen", ["gen.0", "gen.2"]), 1: ("disc", ["disc.0", "disc.2"])}
    rows = read_csv(tmp_path / "grad_norms.csv")[1:]
    ratios = {}
    for index, (name, layers) in parts.items():
        mine = [r for r in probe.steps if r["opt"] == index]
        assert len(mine) == 5
        # each optimizer's own steps 0, 1 and 3 are logged, at the trainer's global step
        chosen = [mine[k] for k in (0, 1, 3)]
        got = {s: m for s, m in log.rows if f"grad_norm/total/{name}" in m}
        assert list(got) == [r["step"] for r in chosen]
        for r in chosen:
            grads, before, after = r["grads"], r["before"], r["after"]
            mine_grads = {n: g for n, g in grads.items() if n.startswith(name + ".")}
            want = {f"grad_norm/total/{name}": pnorm(mine_grads.values())}
            first, last = (pnorm(of_layer(grads, layer)) for layer in layers)
            want[f"grad_norm/first_last_ratio/{name}"] = first / last
            for layer in layers:
                w = pnorm(of_layer(before, layer))
                change = [before[n] - after[n] for n in before if n.rpartition(".")[0] == layer]
                want[f"grad_norm/{layer}"] = pnorm(of_layer(grads, layer))
                want[f"weight_norm/{layer}"] = w
                want[f"update_ratio/{layer}"] = pnorm(change) / w
            assert got[r["step"]].keys() == want.keys()
            for key, value in want.items():
                assert got[r["step"]][key] == pytest.approx(value, rel=1e-5), key
        ratios[name] = [
            pnorm(of_layer(r["grads"], layers[0])) / pnorm(of_layer(r["grads"], layers[1]))
            for r in chosen
        ]
        written = [(int(r[0]), r[1], r[2]) for r in rows if r[6] == name]
        want_rows = [
            (c["step"], layer, str(d)) for c in chosen for d, layer in enumerate(layers, 1)
        ]
        assert written == want_rows
    assert {r[6] for r in rows} == {"gen", "disc"}
    # the running verdict warned about the exploding one, naming it
    ratio = ratios["disc"][0]
    advice = diagnose([ratio], ours=False).advice
    step = probe.steps[1]["step"]
    messages = [str(w.message) for w in record if "Gradients look" in str(w.message)]
    assert messages == [f"Gradients look exploding (disc) at step {step}. {advice}"]
    # the run's verdict is the most severe optimizer's
    summary = cb.summary()
    assert summary["optimizers"]["disc"] == "exploding"
    assert summary["optimizers"].keys() == {"gen", "disc"}
    assert summary["diagnosis"] == "exploding"
    assert cb.ratios == pytest.approx(ratios["disc"], rel=1e-5)
    assert cb.layer_names == ["disc.0", "disc.2"]
    assert cb.first_step == probe.steps[1]["step"] and cb.last_step == probe.steps[7]["step"]
    assert set(cb.first_norms) == {"disc.0", "disc.2"} == set(cb.last_norms)
    state = cb.state_dict()["optimizers"]
    assert state.keys() == {"gen", "disc"}
    assert state["gen"]["steps"] == state["disc"]["steps"] == 5
    assert state["gen"]["ratios"] == pytest.approx(ratios["gen"], rel=1e-5)


def test_healthy_optimizers_the_first_decides_and_names_fall_back_to_the_index(tmp_path):
    class Five(L.LightningModule):
        """Five optimizers: two over layers with no common path, one over a single
        parameter, one whose path the previous one took, one over a layer named like an
        aggregate."""

        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.a = nn.Linear(FEATURES, FEATURES)
            self.b = nn.Linear(FEATURES, FEATURES)
            self.c = nn.Linear(FEATURES, FEATURES)
            self.total = nn.Linear(FEATURES, 1)

        def training_step(self, batch, batch_idx):
            x, _ = batch
            opts = self.optimizers()
            for opt in opts:
                opt.zero_grad()
            h = torch.tanh(self.b(torch.tanh(self.a(x))))
            self.manual_backward(self.total(torch.tanh(self.c(h))).mean())
            for opt in opts:
                opt.step()

        def configure_optimizers(self):
            return (
                torch.optim.SGD([self.a.weight, self.b.weight], lr=0.01),
                torch.optim.SGD([self.a.bias, self.b.bias], lr=0.01),
                torch.optim.SGD([self.c.weight], lr=0.01),
                torch.optim.SGD([self.c.bias], lr=0.01),
                torch.optim.SGD(self.total.parameters(), lr=0.01),
            )

    cb = GradientNormCallback(log_every_n_steps=1)
    _, log = fit([cb], Five(), steps=10, root=tmp_path)
    names = ["optimizer0", "optimizer1", "c", "optimizer3", "optimizer4"]
    keys = {k for _, m in log.rows for k in m}
    assert {f"grad_norm/total/{n}" for n in names} <= keys
    assert {r[6] for r in read_csv(tmp_path / "grad_norms.csv")[1:]} == set(names)
    summary = cb.summary()
    assert summary["optimizers"] == dict.fromkeys(names, "healthy")
    assert cb.layer_names == ["a", "b"]  # the first one decides among equals


# -- ActivationStatsCallback -------------------------------------------------------------------
PATTERN = torch.tensor(  # 8 examples x 3 units: unit 0 off for all, unit 1 for half, unit 2 never
    [[-1.0, -2.0, 1.0], [-2.0, 3.0, 2.0], [-3.0, -1.0, 3.0], [-1.0, 4.0, 4.0]] * 2
)
EDGES = torch.tensor([-0.96, 0.96, -0.97, 0.97, 0.0, 0.5])  # hardtanh: +-0.96 is the margin


class Activations(nn.Module):
    """Activations fed fixed inputs (so their statistics are known) beside a trainable layer."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(FEATURES, CLASSES)
        self.relu, self.vec, self.one = nn.ReLU(), nn.ReLU(), nn.ReLU6()
        self.hardtanh, self.pair, self.gelu = nn.Hardtanh(), nn.Tanh(), nn.GELU()
        self.register_buffer("pattern", PATTERN.clone())
        self.register_buffer("edges", EDGES.clone())

    def forward(self, x):
        extra = (
            self.relu(self.pattern).sum()
            + self.vec(torch.tensor([-1.0, 2.0, -3.0, 0.5])).sum()  # 1-d: every element a unit
            + self.one(torch.tensor([0.3])).sum()  # one element: no std
            + self.hardtanh(self.edges.expand(x.shape[0], -1)).sum()
            + self.pair(torch.tensor([0.1, 0.7])).sum()
            + self.gelu(x).sum()
        )
        return self.linear(x) + 0 * extra


def stats(out: torch.Tensor) -> dict[str, float]:
    out = out.double()
    return {"mean": float(out.mean()), "std": float(out.std()) if out.numel() > 1 else math.nan}


def test_activation_statistics_of_every_kind(tmp_path):
    cb = ActivationStatsCallback(log_every_n_steps=2)
    data = loader()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no std of one element is attempted
        _, log = fit([cb], Net(Activations()), steps=4, root=tmp_path, data=data)
    x0 = next(iter(data))[0]
    relu = PATTERN.clamp(min=0)
    edges = EDGES.expand(8, -1)
    want = {
        "net.relu": {**stats(relu), "dead": 1 / 3},
        "net.vec": {**stats(torch.tensor([0.0, 2.0, 0.0, 0.5])), "dead": 0.5},
        "net.one": {"mean": 0.3, "std": math.nan, "dead": 0.0},
        "net.hardtanh": {**stats(edges), "saturation": 2 / 6},  # +-0.96 itself is not
        "net.pair": {**stats(torch.tanh(torch.tensor([0.1, 0.7]))), "saturation": 0.0},
        "net.gelu": stats(F.gelu(x0)),
    }
    steps = sorted({s for s, m in log.rows if any(k.startswith("activation/") for k in m)})
    assert steps == [0, 1, 3]
    first = {k: v for s, m in log.rows if s == 0 for k, v in m.items()}
    expected = {
        f"activation/{name}/{stat}": value
        for name, values in want.items()
        for stat, value in values.items()
    }
    assert first.keys() == expected.keys()
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(first[key]), key
        else:
            assert first[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    last = {k: v for s, m in log.rows if s == 3 for k, v in m.items()}
    assert cb.last_metrics.keys() == last.keys()
    assert cb.last_metrics["activation/net.relu/dead"] == last["activation/net.relu/dead"]
    # what the verdict reads: per module in the order they ran, over the 3 logged steps
    signals = cb.signals()
    assert signals["dead"] == pytest.approx([1 / 3, 0.5, 0.0])
    assert signals["saturation"] == pytest.approx([2 / 6, 0.0])
    stds = signals["activation_std"]
    assert stds[:2] == pytest.approx([want["net.relu"]["std"], want["net.vec"]["std"]])
    assert math.isnan(stds[2]) and stds[3:] == pytest.approx(
        [want[n]["std"] for n in ("net.hardtanh", "net.pair", "net.gelu")], rel=1e-5
    )
    # the checkpointed sums: dead, saturation (0 where a module has none) and the count
    sums = cb.state_dict()["sums"]
    assert list(sums) == list(want)
    assert sums["net.relu"] == pytest.approx([1.0, 0.0, 3])
    assert sums["net.hardtanh"] == pytest.approx([0.0, 1.0, 3])
    assert sums["net.gelu"] == pytest.approx([0.0, 0.0, 3])
    again = ActivationStatsCallback()
    again.load_state_dict(cb.state_dict())
    again._modules = cb._modules
    assert again.signals()["dead"] == signals["dead"]
    empty = ActivationStatsCallback()
    assert empty.signals() == {"dead": [], "saturation": [], "activation_std": []}
    empty.load_state_dict({})
    assert empty.state_dict() == {"first_std": {}, "sums": {}}


def test_statistics_stay_on_the_outputs_device():
    cb = ActivationStatsCallback()
    for module in (nn.Sigmoid(), nn.ReLU(), nn.GELU()):
        (row,) = cb._measure(cb._kind(module), torch.zeros(1, 4, 3, device="meta"))
        assert row.device.type == "meta" and row.shape == (4,)


def test_activations_of_the_first_micro_batch_once_per_step_and_each_fit_anew(tmp_path):
    class OnInput(nn.Module):
        def __init__(self, bias: float) -> None:
            super().__init__()
            self.linear = nn.Linear(FEATURES, CLASSES)
            self.relu = nn.ReLU()
            self.register_buffer("bias", torch.tensor(bias))

        def forward(self, x):
            return self.linear(self.relu(x + self.bias).mean(dim=1, keepdim=True) + x)

    cb = ActivationStatsCallback(log_every_n_steps=1)
    data = loader(batch=4)
    _, log = fit(
        [cb], Net(OnInput(0.0)), steps=2, root=tmp_path, data=data, accumulate_grad_batches=2
    )
    batches = [x for x, _ in data]
    rows = [(s, m) for s, m in log.rows if "activation/net.relu/mean" in m]
    assert [s for s, _ in rows] == [0, 1]
    for (_, metrics), x in zip(rows, (batches[0], batches[2])):  # each step's first micro-batch
        out = x.clamp(min=0).double()
        assert metrics["activation/net.relu/mean"] == pytest.approx(float(out.mean()), rel=1e-5)
        dead = float((out == 0).all(dim=0).double().mean())
        assert metrics["activation/net.relu/dead"] == pytest.approx(dead)
    # the same callback in a second fit, where every unit is dead: its signals are that fit's
    fit([cb], Net(OnInput(-100.0)), steps=2, root=tmp_path, data=data)
    assert cb.signals()["dead"] == [1.0]
    assert cb.signals()["activation_std"] == [0.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"saturation_margin": 0.0}, "saturation_margin must be in (0, 0.5), got 0.0."),
        ({"saturation_margin": 0.5}, "saturation_margin must be in (0, 0.5), got 0.5."),
        ({"log_every_n_steps": 0}, "log_every_n_steps must be a positive integer or null, got 0."),
    ],
)
def test_activation_arguments_are_refused_with_their_message(kwargs, message):
    with pytest.raises(ValueError) as error:
        ActivationStatsCallback(**kwargs)
    assert str(error.value) == message
    cb = ActivationStatsCallback(log_every_n_steps=3, saturation_margin=0.1)
    assert (cb.log_every_n_steps, cb.saturation_margin) == (3, 0.1)
    assert ActivationStatsCallback().saturation_margin == 0.02
    assert ActivationStatsCallback().last_metrics == {}


def test_activation_stats_follow_the_trainers_interval(tmp_path):
    cb = ActivationStatsCallback()
    _, log = fit([cb], Net(Activations()), steps=6, root=tmp_path, log_every_n_steps=3)
    assert sorted(log.values("activation/net.relu/dead")) == [0, 2, 5]


def test_grad_norms_file_makes_its_folders(tmp_path):
    from gradwatch.callbacks.grad_norms_file import GradNormsFile

    f = GradNormsFile(tmp_path / "a" / "b" / "grad_norms.csv")
    f.open(None)
    f.write("0,x,1,1.0,,,\n")
    f.close()
    assert read_csv(tmp_path / "a" / "b" / "grad_norms.csv") == [
        HEADER,
        ["0", "x", "1", "1.0", "", "", ""],
    ]


class LateLayers(Net):
    """``b1`` and ``b2`` (registered first, in reverse) first run at step 2, where they are the
    only layers with a gradient; from step 3 on they run between ``inp`` and ``head``."""

    def __init__(self) -> None:
        super().__init__(nn.Identity())
        self.b2, self.b1 = nn.Linear(5, 5), nn.Linear(5, 5)
        self.inp, self.head = nn.Linear(FEATURES, 5), nn.Linear(5, CLASSES)

    def forward(self, x):
        step = self.trainer.global_step
        h = torch.tanh(self.inp(x))
        if step < 2:
            return self.head(h)
        if step == 2:
            return self.b2(torch.tanh(self.b1(h.detach())))[:, :CLASSES]
        return self.head(torch.tanh(self.b2(torch.tanh(self.b1(h)))))


def test_layers_first_trained_alone_are_placed_at_the_next_logging_step(tmp_path):
    probe, cb = Probe(), GradientNormCallback(log_every_n_steps=1)
    _, log = fit([probe, cb], LateLayers(), steps=4, root=tmp_path)
    rows = read_csv(tmp_path / "grad_norms.csv")[1:]
    at = {s: [(r[1], r[2], r[3] != "") for r in rows if r[0] == str(s)] for s in range(4)}
    assert at[2] == [
        ("b2", "1", True),
        ("b1", "2", True),
        ("inp", "3", False),
        ("head", "4", False),
    ]
    order = ["inp", "b1", "b2", "head"]
    assert at[3] == [(n, str(d), True) for d, n in enumerate(order, 1)]
    assert cb.layer_names == order
    grads = probe.steps[3]["grads"]
    ratio = pnorm(of_layer(grads, "inp")) / pnorm(of_layer(grads, "head"))
    assert logged(log)[3]["grad_norm/first_last_ratio"] == pytest.approx(ratio, rel=1e-5)
    # step 2: the ratio is over the layers that had a gradient, in the order known then
    grads = probe.steps[2]["grads"]
    ratio = pnorm(of_layer(grads, "b2")) / pnorm(of_layer(grads, "b1"))
    assert logged(log)[2]["grad_norm/first_last_ratio"] == pytest.approx(ratio, rel=1e-5)


# -- fp16 on the CPU: steps the gradient scaler skips are counted, not judged ------------------
def fp16(init_scale: float, backoff: float = 0.5) -> MixedPrecision:
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, backoff_factor=backoff)
    return MixedPrecision("16-mixed", device="cpu", scaler=scaler)


@pytest.mark.parametrize("fused", [False, True])
def test_a_skipped_fp16_step_is_counted_and_the_others_are_unscaled(tmp_path, fused):
    probe = Probe()
    cb = GradientNormCallback(log_every_n_steps=1)
    module = Net(lr=1e-3, adam={"fused": fused})
    # 2^24 overflows step 0's fp16 gradients: the step is skipped, the scale backs off to 2^14
    _, log = fit([probe, cb], module, steps=3, root=tmp_path, plugins=[fp16(2.0**24, 2.0**-10)])
    before = [r["before"] for r in probe.steps]  # independent: no weight moved in step 0 only
    assert [all(torch.equal(a[n], b[n]) for n in a) for a, b in itertools.pairwise(before)] == [
        True,
        False,
    ]
    assert log.rows[0] == (0, {"grad_norm/amp_skipped": 1.0, "grad_norm/amp_scale": 2.0**14})
    metrics = logged(log)
    assert list(metrics) == [1, 2]
    scale = 2.0**14 if fused else 1.0  # a fused optimizer unscales inside its step
    for step in (1, 2):
        record = probe.steps[step]
        grads = {n: g / scale for n, g in record["grads"].items()}
        want = expected_step({**record, "grads": grads})
        assert metrics[step].keys() == want.keys() | {
            "grad_norm/amp_skipped",
            "grad_norm/amp_scale",
        }
        for key, value in want.items():
            assert metrics[step][key] == pytest.approx(value, rel=1e-3), key
        assert metrics[step]["grad_norm/amp_skipped"] == 1.0
        assert metrics[step]["grad_norm/amp_scale"] == 2.0**14
    assert [int(r[0]) for r in read_csv(tmp_path / "grad_norms.csv")[1:]] == [1] * 3 + [2] * 3
    summary = cb.summary()
    assert summary["amp_skipped_steps"] == 1 and type(summary["amp_skipped_steps"]) is int
    assert summary["diagnosis"] != "non-finite" and cb.nonfinite_layer is None
    assert cb.amp_scale == 2.0**14
    state = cb.state_dict()
    assert (state["amp_skipped"], state["amp_scale"]) == (1, 2.0**14)
    assert type(state["amp_skipped"]) is int
    assert cb.first_step == 1 and len(cb.ratios) == 2


def test_a_scale_below_amp_min_scale_is_non_finite(tmp_path):
    class NaNLoss(Net):
        def training_step(self, batch, batch_idx):
            return super().training_step(batch, batch_idx) * math.nan

    for min_scale, stop_step in ((1.0, 2), (0.25, 4)):
        cb = GradientNormCallback(log_every_n_steps=1, amp_min_scale=min_scale)
        with pytest.warns(UserWarning, match="AMP gradient scaler"):
            trainer, log = fit([cb], NaNLoss(), steps=20, root=tmp_path, plugins=[fp16(4.0)])
        # scale 4 -> 2 (step 0) -> 1 -> 0.5 -> 0.25 -> 0.125: below min_scale at stop_step
        assert (cb.nonfinite_layer, cb.nonfinite_step) == ("the AMP gradient scaler", stop_step)
        assert trainer.global_step == stop_step + 1
        scales = {s: m["grad_norm/amp_scale"] for s, m in log.rows}
        assert scales == {s: 4.0 * 0.5 ** (s + 1) for s in range(stop_step + 1)}
        assert {s: m["grad_norm/amp_skipped"] for s, m in log.rows} == {
            s: float(s + 1) for s in range(stop_step + 1)
        }
        advice = diagnose(
            [], nonfinite_layer="the AMP gradient scaler", nonfinite_step=stop_step, ours=False
        ).advice
        assert cb.summary()["advice"] == advice == cb.stop_reason


# -- checkpoints: the record and the file continue where the checkpoint was taken -------------
class SaveAt(L.Callback):
    """Saves a checkpoint after ``step`` and notes what grad_norms.csv held on disk then."""

    def __init__(self, path: Path, step: int) -> None:
        self.path, self.step, self.on_disk = path, step, None

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step + 1:
            trainer.save_checkpoint(self.path)
            path = Path(trainer.default_root_dir) / "grad_norms.csv"
            self.on_disk = read_csv(path) if path.exists() else None


def test_a_resumed_fit_continues_the_record_and_the_file(tmp_path):
    first = GradientNormCallback(log_every_n_steps=1)
    saver = SaveAt(tmp_path / "step2.ckpt", 1)
    module = Net(num_classes=CLASSES)
    fit([first, saver], module, steps=4, root=tmp_path)
    # the rows of the checkpoint's steps were on disk when it was written
    assert [r[0] for r in saver.on_disk[1:]] == ["0"] * 3 + ["1"] * 3
    before = read_csv(tmp_path / "grad_norms.csv")
    assert [r[0] for r in before[1:]] == [str(s) for s in range(4) for _ in range(3)]
    resumed = GradientNormCallback(log_every_n_steps=1)
    probe = Probe()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*resuming from a checkpoint that ended before.*")
        fit([probe, resumed], Net(), steps=5, root=tmp_path, ckpt_path=tmp_path / "step2.ckpt")
    after = read_csv(tmp_path / "grad_norms.csv")
    assert after[: 1 + 6] == before[: 1 + 6]  # steps 0 and 1 kept as they were
    assert [r[0] for r in after[1:]] == [str(s) for s in range(5) for _ in range(3)]
    assert [r["step"] for r in probe.steps] == [2, 3, 4]
    for row in after[7:]:
        want = expected_step(probe.steps[int(row[0]) - 2])
        assert float(row[3]) == pytest.approx(want[f"grad_norm/{row[1]}"], rel=1e-5)
    # the record: the checkpoint's steps, then the resumed ones
    state = first.state_dict()
    assert resumed.first_step == 0 and resumed.first_norms == pytest.approx(first.first_norms)
    assert resumed.ratios[:2] == pytest.approx(first.ratios[:2])
    assert len(resumed.ratios) == 5 and resumed.last_step == 4
    assert resumed.losses[:2] == pytest.approx(module.seen[:2]) and len(resumed.losses) == 5
    saved = resumed.state_dict()["optimizers"][""]
    assert saved["steps"] == 5 and len(saved["updates"]) == 5
    assert state["optimizers"][""]["steps"] == 4
    # a fresh fit over the same directory starts the file anew, and says so
    with pytest.warns(UserWarning, match="holds an earlier fit's rows: starting it anew"):
        fit([GradientNormCallback(log_every_n_steps=1)], steps=1, root=tmp_path)
    assert [r[0] for r in read_csv(tmp_path / "grad_norms.csv")[1:]] == ["0"] * 3


def test_a_restored_state_waits_for_its_optimizer(tmp_path):
    first = GradientNormCallback(log_every_n_steps=1)
    fit([first], steps=2, root=tmp_path)
    state = first.state_dict()
    fresh = GradientNormCallback()
    fresh.load_state_dict(state)
    assert fresh.state_dict() == {**state, "optimizers": {}}
    assert fresh.losses == state["losses"] and fresh.losses is not state["losses"]
    fresh.load_state_dict({**state, "amp_skipped": 3})
    assert fresh.state_dict()["amp_skipped"] == 3
    empty = GradientNormCallback()
    empty.load_state_dict({})
    assert empty.state_dict() == GradientNormCallback().state_dict()
    assert empty.losses == [] and empty.state_dict()["amp_skipped"] == 0


# -- callbacks/depth.py: the order the backward pass sees ----------------------------------------
from gradwatch.callbacks.depth import DepthOrder  # noqa: E402
from gradwatch.callbacks.layers import find_layers  # noqa: E402


class Chain(nn.Module):
    """Single-weight layers (so gradients complete one a step), registered out of order:
    ``n*`` never run, ``d*`` run with their output detached (no gradient), ``lead`` runs
    first, detached; the data flows lead, a, d1, d2, b, c."""

    def __init__(self) -> None:
        super().__init__()
        names = ["n1", "d2", "a", "d1", "b", "n2", "n3", "lead", "c"]
        for name in names:
            self.add_module(name, nn.Linear(3, 3, bias=False))

    def forward(self, x):
        h = x + self.lead(x).detach()
        h = torch.tanh(self.a(h))
        h = h + self.d2(self.d1(h).detach()).detach()
        return self.c(torch.tanh(self.b(h)))


def ordered(model: nn.Module, passes) -> list[str]:
    layers = find_layers(model)
    depth = DepthOrder(layers)
    for run in passes:
        depth.start()
        run()
        depth.merge()
        depth.stop()
    return [layers[i].name for i in depth.order()]


def test_depth_order_places_detached_and_never_run_layers():
    torch.manual_seed(0)
    model = Chain()
    x = torch.randn(2, 3)
    got = ordered(model, [lambda: model(x).sum().backward()])
    # graph layers by completion; detached ones right after the last graph layer before them
    # (in forward order; before the first when none precedes them); never-run ones right
    # after the placed layer registered before them
    assert got == ["n1", "lead", "a", "d1", "d2", "b", "n2", "n3", "c"]
    # a pass the graph does not reach (no backward): the layers that ran in forward order
    model = Chain()
    got = ordered(model, [lambda: model(x)])
    assert got[0] == "n1"
    assert [n for n in got if not n.startswith("n")] == ["lead", "a", "d1", "d2", "b", "c"]
    # two backward passes in one ordering pass (gradient accumulation): the same order
    model = Chain()

    def twice():
        model(x).sum().backward()
        model(x).sum().backward()

    assert ordered(model, [twice])[2:6] == ["a", "d1", "d2", "b"]
    # nothing ever ran: registration order
    assert ordered(Chain(), []) == ["n1", "d2", "a", "d1", "b", "n2", "n3", "lead", "c"]


def test_a_later_pass_places_what_the_first_did_not_see():
    torch.manual_seed(0)
    model = Chain()
    layers = find_layers(model)
    index = {layer.name: i for i, layer in enumerate(layers)}
    depth = DepthOrder(layers)
    assert depth.wanted()  # trainable layers not looked for yet
    x = torch.randn(2, 3)
    depth.start()
    assert depth.active
    torch.tanh(model.b(torch.tanh(model.a(x)))).sum().backward()  # only a and b
    depth.merge()
    depth.stop()
    assert not depth.active and not depth.wanted()  # looked for, in vain: no more passes
    assert depth.place({index["a"], index["b"]}) and not depth.place({index["a"], index["c"]})
    assert depth.place(set())
    depth.note_gradient({index["a"], index["c"]})
    assert depth.wanted()  # c got a gradient without a place
    depth.start()
    model.c(torch.tanh(model.b(torch.tanh(model.a(x))))).sum().backward()
    depth.merge()
    depth.stop()
    assert not depth.wanted()
    # c joins at its depth; d1, d2 (never run) stay beside the layers registered before them
    names = [layers[i].name for i in depth.order()]
    assert names == ["n1", "d2", "a", "d1", "b", "n2", "n3", "lead", "c"]
    # a frozen layer is not wanted; unfrozen, it is
    frozen = Chain()
    for name in ("n1", "d2", "d1", "n2", "n3", "lead"):
        getattr(frozen, name).requires_grad_(False)
    depth = DepthOrder(find_layers(frozen))
    depth.start()
    frozen(x).sum().backward()
    depth.merge()
    depth.stop()
    assert not depth.wanted()
    frozen.n1.requires_grad_(True)
    assert depth.wanted()


class Starts(L.Callback):
    """Counts the ordering passes of the GradientNormCallback that follows it."""

    def __init__(self, monkeypatch) -> None:
        self.steps: list[int] = []
        real = DepthOrder.start
        step = self

        def start(depth):
            step.steps.append(step.now)
            real(depth)

        monkeypatch.setattr(DepthOrder, "start", start)

    def on_train_batch_start(self, trainer, *args):
        self.now = trainer.global_step


def test_ordering_passes_run_only_where_a_layer_has_no_place(tmp_path, monkeypatch):
    counter = Starts(monkeypatch)
    cb = GradientNormCallback(log_every_n_steps=1)
    fit([counter, cb], Net(Detached()), steps=4, root=tmp_path)
    assert counter.steps == [0]  # unused (never runs) and b (no gradient) are not looked for again
    counter.steps.clear()
    fit(
        [counter, GradientNormCallback(log_every_n_steps=1)],
        LateLayers(),
        steps=5,
        root=tmp_path / "late",
    )
    assert counter.steps == [0, 3]
    counter.steps.clear()
    fit(
        [counter, GradientNormCallback(log_every_n_steps=2)],
        LateLayers(),
        steps=6,
        root=tmp_path / "every2",
    )
    # step 2 does not log: b1 and b2 are first seen without a place at step 3, placed at 5
    assert counter.steps == [0, 5]


class Reordered(nn.Module):
    """``b`` (registered first) runs after ``a`` with its output detached."""

    def __init__(self) -> None:
        super().__init__()
        self.b, self.a, self.c = nn.Linear(5, 5), nn.Linear(FEATURES, 5), nn.Linear(5, CLASSES)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        return self.c(h + self.b(h).detach())


def test_a_detached_layer_goes_where_it_ran(tmp_path):
    cb = GradientNormCallback(log_every_n_steps=1)
    fit([cb], Net(Reordered()), steps=1, root=tmp_path)
    assert cb.layer_names == ["net.a", "net.b", "net.c"]
    assert [r[1] for r in read_csv(tmp_path / "grad_norms.csv")[1:]] == cb.layer_names


# -- grad_norms.csv: flushing by the clock, a resumed file with an older header ------------------
def test_grad_norms_file_flushes_every_two_seconds_and_renews_an_old_header(tmp_path, monkeypatch):
    from gradwatch.callbacks import grad_norms_file as gnf

    now = [2.5]
    monkeypatch.setattr(gnf.time, "monotonic", lambda: now[0])
    path = tmp_path / "grad_norms.csv"
    f = gnf.GradNormsFile(path)
    f.open(None)
    f.write("0,x,1,1.0,,,\n")  # the first write reaches the disk at once
    assert len(read_csv(path)) == 2
    now[0] = 4.5
    f.write("1,x,1,1.0,,,\n")  # exactly 2 s later: still buffered
    assert len(read_csv(path)) == 2
    now[0] = 4.51
    f.write("2,x,1,1.0,,,\n")
    assert len(read_csv(path)) == 4
    f.close()
    path.write_text(
        "step,layer,depth,grad_norm,weight_norm,update_ratio\n0,x,1,1.0,2.0,0.1\n5,x,1,3,4,5\n"
    )
    g = gnf.GradNormsFile(path)
    g.open(3)
    g.write("3,x,1,9.0,,,\n")
    g.close()
    assert read_csv(path) == [
        HEADER,
        ["0", "x", "1", "1.0", "2.0", "0.1", ""],
        ["3", "x", "1", "9.0", "", "", ""],
    ]


# -- callbacks/norms.py: sharded tensors (FSDP2's DTensors) on a fake two-rank group -------------
import contextlib  # noqa: E402

import torch.distributed as dist  # noqa: E402

from gradwatch.callbacks import norms as N  # noqa: E402


@contextlib.contextmanager
def fake_group(rank: int):
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=2)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("rank", [0, 1])
def test_local_tensors_count_shards_once_and_replicas_on_the_first_rank_only(rank):
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor, Replicate, Shard

    with fake_group(rank):
        flat, grid = DeviceMesh("cpu", [0, 1]), DeviceMesh("cpu", [[0, 1]])
        parts = [torch.tensor([3.0, 4.0]), torch.tensor([1.0]), torch.tensor([2.0, 2.0])]
        tensors = [
            DTensor.from_local(parts[0], flat, [Shard(0)], run_check=False),
            DTensor.from_local(parts[1], flat, [Replicate()], run_check=False),
            torch.tensor([5.0]),  # a plain tensor beside sharded ones: the same on every rank
            DTensor.from_local(parts[2], grid, [Shard(0), Replicate()], run_check=False),
            DTensor.from_local(parts[2], grid, [Replicate(), Shard(0)], run_check=False),
        ]
        local, weights = N.local_tensors(tensors)
        assert [t.tolist() for t in local] == [[3.0, 4.0], [1.0], [5.0], [2.0, 2.0], [2.0, 2.0]]
        assert all(type(t) is torch.Tensor for t in local)
        # rank 1 is a replica of what rank 0 counts: its replicated parts weigh nothing
        assert weights == ([1.0] * 5 if rank == 0 else [1.0, 0.0, 0.0, 0.0, 1.0])
        assert N.elements_finite(tensors)
        plain = [torch.ones(2)]
        assert N.local_tensors(plain) == (plain, None)


@pytest.mark.parametrize("p", [2.0, 3.0, math.inf])
def test_to_host_reduces_weighted_powers_over_the_ranks(monkeypatch, p):
    other = torch.tensor([1.0, 7.0, 2.0], dtype=torch.float64)  # what the other rank holds
    ops = []

    def all_reduce(tensor, op):
        ops.append(op)
        if op == dist.ReduceOp.SUM:
            tensor.add_(other)
        else:
            torch.maximum(tensor, other, out=tensor)

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    norms = torch.tensor([2.0, 3.0, 4.0])
    got = N.to_host(norms, p, [1.0, 0.0, 0.5])
    assert all(type(v) is float for v in got)
    if p == math.inf:
        assert ops == [dist.ReduceOp.MAX]
        assert got == [2.0, 7.0, 2.0]
    else:
        assert ops == [dist.ReduceOp.SUM]
        assert got == pytest.approx([2.0**p + 1.0, 7.0, 0.5 * 4.0**p + 2.0])


def test_tensor_norms_in_float32_on_the_asked_device():
    half = [torch.full((4,), 6e4, dtype=torch.float16), torch.ones(3, dtype=torch.bfloat16)]
    got = N.tensor_norms(half, 2.0, torch.device("cpu"))
    assert got.dtype == torch.float32  # accumulated in float32: no fp16 overflow
    assert got.tolist() == pytest.approx([1.2e5, math.sqrt(3)], rel=1e-3)
    assert N.tensor_norms(half, 2.0, torch.device("meta")).device.type == "meta"
    assert N.tensor_norms([], 2.0, torch.device("meta")).device.type == "meta"
    mixed = [torch.ones(4), torch.ones(9, device="meta")]
    assert N.tensor_norms(mixed, 2.0, torch.device("meta")).shape == (2,)


# -- zero and missing gradients, zero weights, the loss windows, a callback added on resume ------
class Manual(L.LightningModule):
    """Manual optimization of ``OutOfOrder``; what each step's gradients are is chosen:
    step 1 all zero, step 2 the last layer's zero, step 3 no backward at all (no gradient),
    step 4 ``a``'s weights are zero."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = OutOfOrder()
        self.returned: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.optimizers()
        opt.zero_grad()
        step = self.trainer.global_step
        if step == 4:
            with torch.no_grad():
                self.net.a.weight.zero_()
                self.net.a.bias.zero_()
        loss = None
        if step != 3:
            loss = F.cross_entropy(self.net(x), y)
            self.manual_backward(loss * (0.0 if step == 1 else 1.0))
            self.returned.append(float(loss.detach()))
        if step == 2:
            self.net.c.weight.grad.zero_()
            self.net.c.bias.grad.zero_()
        opt.step()
        return None if loss is None else loss.detach()  # a bare tensor, not a dict

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_zero_and_missing_gradients_and_zero_weights(tmp_path, monkeypatch):
    fed = []
    real = grad_norm_module.diagnose
    monkeypatch.setattr(
        grad_norm_module, "diagnose", lambda *a, **k: fed.append((a, k)) or real(*a, **k)
    )
    probe, cb = Probe(), GradientNormCallback(log_every_n_steps=1, warn=False)
    module = Manual()
    _, log = fit([probe, cb], module, steps=5, root=tmp_path)
    metrics = logged(log)
    assert list(metrics) == [0, 1, 2, 3, 4]
    # all gradients zero: norms and total 0, the ratio undefined
    assert [metrics[1][f"grad_norm/{n}"] for n in LAYERS] == [0.0, 0.0, 0.0]
    assert metrics[1]["grad_norm/total"] == 0.0
    assert math.isnan(metrics[1]["grad_norm/first_last_ratio"])
    # the last layer's gradient zero, the first's not: an infinite ratio
    assert metrics[2]["grad_norm/first_last_ratio"] == math.inf
    assert metrics[2]["grad_norm/total"] == pytest.approx(pnorm(probe.steps[2]["grads"].values()))
    # no gradient at all: weights only, and an undefined total and ratio
    assert {k for k in metrics[3] if "/net." in k} == {f"weight_norm/{n}" for n in LAYERS}
    assert math.isnan(metrics[3]["grad_norm/total"])
    assert math.isnan(metrics[3]["grad_norm/first_last_ratio"])
    rows = [r for r in read_csv(tmp_path / "grad_norms.csv")[1:] if r[0] == "3"]
    assert [(r[3], r[5]) for r in rows] == [("", "")] * 3 and all(r[4] for r in rows)
    # zero weights: no update ratio (it would divide by zero), in the log, the file and the
    # verdict's update ratios
    assert metrics[4]["weight_norm/net.a"] == 0.0
    assert math.isnan(metrics[4]["update_ratio/net.a"])
    row = next(r for r in read_csv(tmp_path / "grad_norms.csv")[1:] if r[0] == "4")
    assert (row[1], row[4], row[5]) == ("net.a", "0.0", "")
    updates = cb.state_dict()["optimizers"][""]["updates"]
    assert [sorted(u) for u in updates] == [LAYERS, LAYERS, LAYERS, [], ["net.b", "net.c"]]
    # the losses returned as bare tensors are the verdict's (step 3 returned none)
    assert cb.losses == pytest.approx(module.returned) and len(cb.losses) == 4
    cb.summary()
    assert "loss_start" not in fed[-1][1]


class Stalled(TwoNets):
    def configure_optimizers(self):
        return (
            torch.optim.SGD(self.gen.parameters(), lr=0.0),  # its weights never move
            torch.optim.SGD(self.disc.parameters(), lr=0.05),
        )


def test_each_optimizers_verdict_reads_its_own_signals(tmp_path):
    cb = GradientNormCallback(log_every_n_steps=1, warn=False)
    fit([cb], Stalled(), steps=6, root=tmp_path)
    updates = cb.state_dict()["optimizers"]["gen"]["updates"]
    assert all(v == 0.0 for u in updates for v in u.values())  # independent of the verdict
    summary = cb.summary()
    assert summary["optimizers"]["gen"] == "vanishing"  # negligible updates: stalled
    assert summary["diagnosis"] == "vanishing" and summary["stalled"]
    assert cb.layer_names == ["gen.0", "gen.2"]


def test_the_verdict_reads_the_activation_statistics_and_the_chance_loss(tmp_path, monkeypatch):
    fed = []
    real = grad_norm_module.diagnose
    monkeypatch.setattr(
        grad_norm_module, "diagnose", lambda *a, **k: fed.append(k) or real(*a, **k)
    )
    acts = ActivationStatsCallback(log_every_n_steps=1)
    for classes, chance in ((2, math.log(2)), (1, None), ("3", None)):
        cb = GradientNormCallback(log_every_n_steps=1)
        module = Net(Activations(), num_classes=classes)
        fit([cb, acts], module, steps=7, root=tmp_path / str(classes))
        fed.clear()
        cb.summary()
        kwargs = fed[-1]
        assert kwargs["chance_loss"] == chance
        for key, value in acts.signals().items():
            assert kwargs[key] == value
        assert kwargs["dead"] == pytest.approx([1 / 3, 0.5, 0.0])
        seen = [module.seen[s] for s in range(7)]
        assert kwargs["loss_start"] == pytest.approx(statistics.fmean(seen[:3]))
        assert kwargs["loss_end"] == pytest.approx(statistics.fmean(seen[-3:]))
    # five logged losses are too few for a trend
    cb = GradientNormCallback(log_every_n_steps=1)
    fit([cb], steps=5, root=tmp_path / "five")
    fed.clear()
    cb.summary()
    assert "loss_start" not in fed[-1] and "loss_end" not in fed[-1]
    assert "dead" not in fed[-1] and fed[-1]["chance_loss"] is None


def test_a_callback_added_to_a_resumed_fit_logs_on_the_trainers_steps(tmp_path):
    saver = SaveAt(tmp_path / "step3.ckpt", 2)
    fit([saver], steps=3, root=tmp_path / "first")
    cb = GradientNormCallback(log_every_n_steps=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*resuming from a checkpoint that ended before.*")
        _, log = fit([cb], steps=8, root=tmp_path, ckpt_path=tmp_path / "step3.ckpt")
    assert list(logged(log)) == [3, 5, 7]  # (step + 1) % 2 == 0 of the trainer's steps
    assert cb.first_step == 3 and cb.state_dict()["optimizers"][""]["steps"] == 5


def test_a_reused_callback_starts_each_fit_anew(tmp_path):
    cb = GradientNormCallback(log_every_n_steps=1)
    with pytest.warns(UserWarning, match="Stopping training"):
        fit([cb], Poisoned(math.inf), steps=3, root=tmp_path / "a")
    assert cb.nonfinite_layer == "net.b"
    fit([cb], steps=2, root=tmp_path / "b")
    assert (cb.nonfinite_layer, cb.stop_reason, cb.first_step, cb.last_step) == (None, None, 0, 1)
    assert len(cb.losses) == 2 and len(cb.ratios) == 2
    assert "optimizers" not in cb.summary() and cb.summary()["diagnosis"] != "non-finite"


def test_two_optimizers_resume_their_own_records(tmp_path):
    first = GradientNormCallback(log_every_n_steps=1, warn=False)
    saver = SaveAt(tmp_path / "ckpt", 3)  # after 2 batches: each optimizer's steps 0 and 1
    fit([first, saver], TwoNets(), steps=6, root=tmp_path / "a")
    saved = first.state_dict()["optimizers"]
    resumed = GradientNormCallback(log_every_n_steps=1, warn=False)
    batches = Probe()  # counts the batches the resumed fit starts
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*resuming from a checkpoint that ended before.*")
        fit(
            [batches, resumed], TwoNets(), steps=8, root=tmp_path / "b", ckpt_path=tmp_path / "ckpt"
        )
    # two batches, each with both optimizers' steps: none cut short
    assert [(r["step"], r["opt"]) for r in batches.steps] == [(4, 0), (5, 1), (6, 0), (7, 1)]
    state = resumed.state_dict()["optimizers"]
    assert state.keys() == {"gen", "disc"}
    for name in ("gen", "disc"):
        assert state[name]["first_step"] == saved[name]["first_step"]
        assert state[name]["first_norms"] == saved[name]["first_norms"]
        assert state[name]["ratios"][:2] == saved[name]["ratios"][:2]
        assert len(state[name]["ratios"]) == 4 and state[name]["steps"] == 4


def test_a_norm_that_overflows_in_every_layer_is_exact(tmp_path):
    class AllHuge(Net):
        def on_after_backward(self):
            if self.trainer.global_step == 1:
                for layer in (self.net.a, self.net.b, self.net.c):
                    layer.weight.grad[0, :2] = 1e30

    probe, cb = Probe(), GradientNormCallback(log_every_n_steps=1)
    _, log = fit([probe, cb], AllHuge(), steps=2, root=tmp_path)
    grads = probe.steps[1]["grads"]
    assert cb.nonfinite_layer is None
    for layer in LAYERS:
        want = pnorm(of_layer(grads, layer))
        assert logged(log)[1][f"grad_norm/{layer}"] == pytest.approx(want, rel=1e-6)


def test_a_high_order_norm_whose_power_overflows_is_exact(tmp_path):
    # p = 10: 1e35 is a finite float32 norm whose 10th power (1e350) overflows even float64;
    # the step must log the exact norm, not crash or report a non-finite gradient.
    class Large(Net):
        def on_after_backward(self):
            if self.trainer.global_step == 1:
                self.net.b.weight.grad[0, 0] = 1e35

    probe, cb = Probe(), GradientNormCallback(norm_type=10.0, log_every_n_steps=1)
    _, log = fit([probe, cb], Large(), steps=2, root=tmp_path)
    grads = probe.steps[1]["grads"]
    assert cb.nonfinite_layer is None
    for layer in LAYERS:
        flat = torch.cat([t.double().flatten().abs() for t in of_layer(grads, layer)])
        top = float(flat.max())  # the reference scales too: sum(x ** 10) overflows float64
        want = top * float((flat / top).pow(10).sum()) ** 0.1
        assert logged(log)[1][f"grad_norm/{layer}"] == pytest.approx(want, rel=1e-6)
    assert logged(log)[1]["grad_norm/net.b"] == pytest.approx(1e35, rel=1e-6)


def test_no_gradient_and_no_weight_statistics(tmp_path):
    cb = GradientNormCallback(log_every_n_steps=1, weight_stats=False, warn=False)
    _, log = fit([cb], Manual(), steps=4, root=tmp_path)
    metrics = logged(log)[3]  # no backward at step 3
    assert set(metrics) == {"grad_norm/total", "grad_norm/first_last_ratio"}
    assert math.isnan(metrics["grad_norm/total"])
    assert [r[3:6] for r in read_csv(tmp_path / "grad_norms.csv")[1:] if r[0] == "3"] == [
        ["", "", ""]
    ] * 3


class Boom(Net):
    """Raises in the training step of ``step`` (or in configure_optimizers: step -1)."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == self.step:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)

    def configure_optimizers(self):
        if self.step < 0:
            raise RuntimeError("boom")
        return super().configure_optimizers()


def test_a_failed_fit_leaves_no_hooks_and_its_rows_on_disk(tmp_path, figures):
    for step in (0, 2, -1):
        cb = GradientNormCallback(log_every_n_steps=1)
        module = Boom(step)
        with pytest.raises(RuntimeError, match="boom"):
            fit([cb], module, steps=5, root=tmp_path / str(step))
        for m in module.modules():
            assert not m._forward_pre_hooks and not m._forward_hooks
        for param in module.parameters():
            assert not getattr(param, "_post_accumulate_grad_hooks", None)
        path = tmp_path / str(step) / "grad_norms.csv"
        if step == 2:  # the rows of steps 0 and 1 reached the disk
            assert [r[0] for r in read_csv(path)[1:]] == ["0"] * 3 + ["1"] * 3
        else:
            assert not path.exists()
    assert figures == []


def test_a_fit_without_steps_writes_and_draws_nothing(tmp_path, figures):
    cb = GradientNormCallback(log_every_n_steps=1)
    fit([cb], steps=0, root=tmp_path)
    assert figures == [] and not (tmp_path / "grad_norms.csv").exists()
    assert cb.summary()["initial_first_last_ratio"] is None


def test_other_ranks_keep_the_record_and_write_nothing(tmp_path, figures, monkeypatch):
    monkeypatch.setattr(L.Trainer, "is_global_zero", property(lambda self: False))
    probe, cb = Probe(), GradientNormCallback(log_every_n_steps=1)
    acts = ActivationStatsCallback(log_every_n_steps=1)
    _, log = fit([probe, cb, acts], Net(Activations()), steps=2, root=tmp_path)
    assert log.rows == [] and figures == [] and not (tmp_path / "grad_norms.csv").exists()
    assert acts.last_metrics == {} and acts.signals()["dead"] == pytest.approx([1 / 3, 0.5, 0.0])
    grads = probe.steps[1]["grads"]
    ratio = pnorm(of_layer(grads, "net.linear")) / pnorm(of_layer(grads, "net.linear"))
    assert cb.ratios == pytest.approx([ratio, ratio]) and cb.last_step == 1


def test_depth_order_of_a_never_run_layer_after_a_detached_one_and_a_detached_input_layer():
    class Between(nn.Module):
        """g1 -> d (detached) -> g2; ``n`` never runs, registered right after ``d``."""

        def __init__(self, bias: bool) -> None:
            super().__init__()
            for name in ("g1", "d", "n", "g2"):
                self.add_module(name, nn.Linear(3, 3, bias=bias))

        def forward(self, x):
            h = torch.tanh(self.g1(x))
            return self.g2(h + self.d(h).detach())

    x = torch.randn(2, 3)
    model = Between(bias=False)
    assert ordered(model, [lambda: model(x).sum().backward()]) == ["g1", "d", "n", "g2"]

    class AfterADetachedOne(nn.Module):
        """Registered g2, g1, d, n; the data flows g1 -> d (detached) -> g2. ``n`` never
        runs and comes right after ``d``, whose place is a fraction above g2's."""

        def __init__(self) -> None:
            super().__init__()
            for name in ("g2", "g1", "d", "n"):
                self.add_module(name, nn.Linear(3, 3, bias=False))

        def forward(self, x):
            h = torch.tanh(self.g1(x))
            return self.g2(h + self.d(h).detach())

    model = AfterADetachedOne()
    assert ordered(model, [lambda: model(x).sum().backward()]) == ["g1", "d", "n", "g2"]

    class ForwardOnly(nn.Module):
        """No backward: the layers that ran in forward order, a, b, c; ``n`` (never run,
        registered after b) right after b, not after the output layer c; ``m`` and ``o``
        (never run, registered after c) after c, in registration order."""

        def __init__(self) -> None:
            super().__init__()
            for name in ("a", "b", "n", "c", "m", "o"):
                self.add_module(name, nn.Linear(3, 3))

        def forward(self, x):
            return self.c(self.b(self.a(x)))

    model = ForwardOnly()
    assert ordered(model, [lambda: model(x)]) == ["a", "b", "n", "c", "m", "o"]

    class DetachedFirst(nn.Module):
        """``lead`` runs first, detached, before two layers of two parameters each; ``n``
        (never run) is registered right after it."""

        def __init__(self) -> None:
            super().__init__()
            for name in ("lead", "n", "a", "b"):
                self.add_module(name, nn.Linear(3, 3))

        def forward(self, x):
            return self.b(torch.tanh(self.a(x + self.lead(x).detach())))

    model = DetachedFirst()
    assert ordered(model, [lambda: model(x).sum().backward()]) == ["lead", "n", "a", "b"]


def test_a_frozen_net_is_recorded_in_registration_order(tmp_path):
    class Frozen(L.LightningModule):
        """Manual optimization that steps an optimizer over frozen layers only."""

        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.net = OutOfOrder().requires_grad_(False)

        def training_step(self, batch, batch_idx):
            self.optimizers().step()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = Frozen()
    cb = GradientNormCallback(log_every_n_steps=1)
    fit([cb], module, steps=2, root=tmp_path)
    rows = read_csv(tmp_path / "grad_norms.csv")[1:]
    assert [r[1] for r in rows[:3]] == ["net.c", "net.a", "net.b"]  # nothing ran backward
    for r in rows:
        weight = pnorm([p for n, p in module.named_parameters() if n.startswith(r[1] + ".")])
        assert (r[3], float(r[4]), r[5]) == ("", pytest.approx(weight), "")


def test_small_outputs_are_kept_within_the_pending_bound_and_large_ones_measured_at_once(
    tmp_path, monkeypatch
):
    import gradwatch.callbacks.activation_stats as act

    monkeypatch.setattr(act, "PENDING_NUMEL", 10)
    monkeypatch.setattr(act, "MEASURE_AT_ONCE", 8)
    sizes = {"r5": 5, "s5": 5, "r4": 4, "big": 8, "r3": 3}  # the order they run in

    class Rectifiers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(FEATURES, CLASSES)
            for name in sizes:
                self.add_module(name, nn.ReLU())

        def forward(self, x):
            extra = sum(
                getattr(self, name)(torch.arange(n, dtype=torch.float32) - 1).sum()
                for name, n in sizes.items()
            )
            return self.linear(x) + 0 * extra

    seen = []

    class Checked(ActivationStatsCallback):
        def _hook(self, name, module):
            record = super()._hook(name, module)

            def check(module, args, output):
                record(module, args, output)
                kept = [(n, k.buffer[0].numel()) for k in self._kept.values() for n in k.names]
                seen.append((name, self._kept_numel, sum(n for _, n in kept), [n for n, _ in kept]))

            return check

    cb = Checked(log_every_n_steps=1)
    _, log = fit([cb], Net(Rectifiers()), steps=2, root=tmp_path)
    # 5, then 10 (= the bound: measured), 4, the large one measured at once, 7
    assert [(n, count) for n, count, _, _ in seen[:5]] == [
        ("net.r5", 5),
        ("net.s5", 0),
        ("net.r4", 4),
        ("net.big", 4),
        ("net.r3", 7),
    ]
    assert seen[5:] == seen[:5]  # the next logging step starts from nothing again
    assert all(count == kept for _, count, kept, _ in seen)
    assert all("net.big" not in names for _, _, _, names in seen)
    for name, n in sizes.items():  # the values do not depend on when they were measured
        out = (torch.arange(n, dtype=torch.float64) - 1).clamp(min=0)
        assert log.values(f"activation/net.{name}/mean")[1] == pytest.approx(float(out.mean()))
        assert log.values(f"activation/net.{name}/dead")[1] == pytest.approx(2 / n)


def test_a_layer_used_functionally_is_placed_by_its_gradient():
    """``w`` is registered last and only used through ``F.linear`` (as MultiheadAttention
    uses its ``out_proj``): no module hook sees it run, its gradient places it."""

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name in ("a", "b", "w"):
                self.add_module(name, nn.Linear(3, 3, bias=False))

        def forward(self, x):
            h = torch.tanh(self.a(x))
            h = torch.tanh(torch.nn.functional.linear(h, self.w.weight))
            return self.b(h)

    torch.manual_seed(0)
    model = Functional()
    assert ordered(model, [lambda: model(torch.randn(2, 3)).sum().backward()]) == ["a", "w", "b"]
