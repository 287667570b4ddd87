"""GradientNormCallback: per-layer gradient norms, to every logger and to grad_norms.csv."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from gradwatch.callbacks.diagnosis import Diagnosis, diagnose
from gradwatch.callbacks.layers import ForwardOrder, Layer, layer_grad_norms, parameter_layers
from gradwatch.summary import update_summary

CSV_FILE = "grad_norms.csv"
CSV_COLUMNS = ("step", "layer", "depth", "grad_norm")


class GradientNormCallback(L.Callback):
    """Logs the gradient norm of every layer (module owning parameters) of any LightningModule.

    Layers are named by module path (``net.network.0``) and numbered by forward order
    (depth 1 is nearest the input). Norms are taken in ``on_before_optimizer_step``: after
    the backward pass (and DDP's all-reduce and AMP unscaling), before clipping and the
    optimizer step, once per optimizer step under gradient accumulation.

    Logged keys: ``grad_norm/<layer>``, ``grad_norm/total`` and
    ``grad_norm/first_last_ratio`` (first layer's norm / last layer's norm: below 1 the
    input side gets less signal). Rows also go to ``<run dir>/grad_norms.csv`` and, at the
    end of fit, the verdict to ``<run dir>/summary.json``.

    Example::

        trainer = L.Trainer(callbacks=[GradientNormCallback(log_every_n_steps=10)])

    Args:
        norm_type: the p of the p-norm (``float("inf")`` for the max norm).
        log_every_n_steps: log every this many optimizer steps (step 0 always);
            ``None`` follows ``trainer.log_every_n_steps``.
        vanishing_ratio: a first/last ratio below this is judged vanishing.
        exploding_ratio: a first/last ratio above this is judged exploding.
        dirpath: where ``grad_norms.csv`` and ``summary.json`` go; ``None``: the trainer's
            ``default_root_dir``.
    """

    def __init__(
        self,
        norm_type: float = 2.0,
        log_every_n_steps: int | None = None,
        vanishing_ratio: float = 1e-2,
        exploding_ratio: float = 1e2,
        dirpath: str | os.PathLike | None = None,
    ) -> None:
        norm_type = float(norm_type)
        if not norm_type > 0:
            raise ValueError(f"norm_type must be a positive number or inf, got {norm_type!r}.")
        if log_every_n_steps is not None and (
            isinstance(log_every_n_steps, bool)
            or int(log_every_n_steps) != log_every_n_steps
            or log_every_n_steps < 1
        ):
            raise ValueError(
                f"log_every_n_steps must be a positive integer, got {log_every_n_steps!r}."
            )
        if not 0 < vanishing_ratio < exploding_ratio:
            raise ValueError(
                f"need 0 < vanishing_ratio < exploding_ratio, got {vanishing_ratio!r} and "
                f"{exploding_ratio!r}."
            )
        self.norm_type = norm_type
        self.log_every_n_steps = log_every_n_steps
        self.vanishing_ratio = vanishing_ratio
        self.exploding_ratio = exploding_ratio
        self.dirpath = dirpath
        self.layers: list[Layer] = []
        self._order: ForwardOrder | None = None
        self._params: list[torch.nn.Parameter] = []
        self._layer_of_param: torch.Tensor | None = None
        # What the report and the verdict need: kept small, saved in checkpoints.
        self.first_norms: dict[str, float] = {}
        self.last_norms: dict[str, float] = {}
        self.first_step: int | None = None
        self.last_step: int | None = None
        self.ratios: list[float] = []
        self.nonfinite_layer: str | None = None
        self.nonfinite_step: int | None = None

    # -- setup -------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.layers = parameter_layers(pl_module)
        self._order = ForwardOrder(self.layers)

    def _finalize_order(self, pl_module: L.LightningModule) -> None:
        assert self._order is not None
        self.layers = self._order.sort(self.layers)
        self._order.remove()
        self._order = None
        self._params = [p for layer in self.layers for p in layer.params]
        index = [i for i, layer in enumerate(self.layers) for _ in layer.params]
        self._layer_of_param = torch.tensor(index, device=pl_module.device)

    def _run_dir(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath or trainer.default_root_dir)

    # -- per step ----------------------------------------------------------------------
    def _should_log(self, trainer: L.Trainer, step: int) -> bool:
        every = self.log_every_n_steps or trainer.log_every_n_steps or 1
        return step == 0 or step % every == 0

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._order is not None:
            self._finalize_order(pl_module)
        step = trainer.global_step
        if not self.layers or not self._should_log(trainer, step):
            return
        norms, has_grad = layer_grad_norms(
            self._params, self._layer_of_param, len(self.layers), self.norm_type
        )
        p = self.norm_type
        total = norms.max() if p == math.inf else norms.pow(p).sum().pow(1 / p)
        values = torch.cat([norms, total.view(1), has_grad.float()]).tolist()  # one transfer
        n = len(self.layers)
        self._record(trainer, step, values[:n], values[n], [bool(v) for v in values[n + 1 :]])

    def _record(
        self, trainer: L.Trainer, step: int, norms: list[float], total: float, has_grad: list[bool]
    ) -> None:
        names = [layer.name for layer in self.layers]
        # Layers without a gradient this step are absent, not zero.
        by_layer = {n: v for n, v, g in zip(names, norms, has_grad) if g}
        first, last = norms[0] if has_grad[0] else math.nan, norms[-1] if has_grad[-1] else math.nan
        ratio = first / last if last else math.inf
        if self.first_step is None:
            self.first_norms, self.first_step = by_layer, step
        self.last_norms, self.last_step = by_layer, step
        self.ratios.append(ratio)
        bad = next((name for name, v in by_layer.items() if not math.isfinite(v)), None)
        if bad is not None and self.nonfinite_layer is None:
            self.nonfinite_layer, self.nonfinite_step = bad, step
            rank_zero_warn(f"Non-finite gradient norm in layer {bad!r} at step {step}.")
        if not trainer.is_global_zero:
            return
        metrics = {f"grad_norm/{name}": v for name, v in by_layer.items()}
        metrics["grad_norm/total"] = total
        metrics["grad_norm/first_last_ratio"] = ratio
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        self._append_csv(trainer, step, names, [v if g else "" for v, g in zip(norms, has_grad)])

    def _append_csv(self, trainer: L.Trainer, step: int, names: list[str], norms: list) -> None:
        path = self._run_dir(trainer) / CSV_FILE
        new = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(CSV_COLUMNS)
            writer.writerows(
                (step, name, depth, norm) for depth, (name, norm) in enumerate(zip(names, norms), 1)
            )

    # -- end of fit --------------------------------------------------------------------
    def diagnosis(self) -> Diagnosis:
        return diagnose(
            self.ratios,
            self.vanishing_ratio,
            self.exploding_ratio,
            self.nonfinite_layer,
            self.nonfinite_step,
        )

    def summary(self) -> dict[str, Any]:
        result = self.diagnosis()
        return {
            "diagnosis": result.verdict,
            "advice": result.advice,
            "initial_first_last_ratio": self.ratios[0] if self.ratios else None,
            "final_first_last_ratio": self.ratios[-1] if self.ratios else None,
            "median_first_last_ratio": result.ratio,
            "nonfinite_layer": self.nonfinite_layer,
        }

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._order is not None:
            self._order.remove()
            self._order = None
        if trainer.is_global_zero:
            update_summary(self._run_dir(trainer), steps=trainer.global_step, **self.summary())

    # -- checkpointing -----------------------------------------------------------------
    _STATE = (
        "first_norms",
        "last_norms",
        "first_step",
        "last_step",
        "ratios",
        "nonfinite_layer",
        "nonfinite_step",
    )

    def state_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self._STATE}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key in self._STATE:
            if key in state_dict:
                setattr(self, key, state_dict[key])
