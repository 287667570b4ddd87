"""GradientNormCallback: per-layer gradient norms, weight norms and update ratios, to every
logger and to grad_norms.csv, with a running verdict (vanishing / exploding / healthy /
non-finite)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from gradwatch.callbacks.layers import (
    ForwardOrder,
    Layer,
    group_norms,
    parameter_layers,
    tensor_norms,
)
from gradwatch.callbacks.schedule import check_interval, logs_at
from gradwatch.callbacks.sinks import log_figure, log_histograms
from gradwatch.run_files import GRAD_NORMS_FILE, GRADIENT_FLOW_FILE
from gradwatch.summary import update_summary
from gradwatch.verdict import EXPLODING_RATIO, VANISHING_RATIO, Diagnosis, diagnose

CSV_COLUMNS = ("step", "layer", "depth", "grad_norm", "weight_norm", "update_ratio")
#: grad_norms.csv reaches the disk at least this often (and at the end of fit, or on error).
CSV_FLUSH_SECONDS = 2.0
#: The running verdict (and its one-time warning) looks at this many recent logged steps.
VERDICT_WINDOW = 20


def _combine(layer_norms: list[float], p: float) -> float:
    """The norm of all layers together from their norms (on the host: a few floats)."""
    if not layer_norms:
        return math.nan
    if p == math.inf:
        return max(layer_norms)
    return math.fsum(v**p for v in layer_norms) ** (1 / p)


class GradientNormCallback(L.Callback):
    """Logs the gradient norm, weight norm and update ratio of every layer of any LightningModule.

    A layer is a module that owns parameters, named by module path (``net.network.0``) and
    numbered by forward order (depth 1 is nearest the input). Gradient norms are taken in
    ``on_before_optimizer_step``: after the backward pass, DDP's all-reduce and AMP
    unscaling, before clipping; once per optimizer step under gradient accumulation. The
    rest (update ratio, clipped norm) is measured after ``optimizer.step`` and everything a
    logging step needs crosses to the host in one transfer. Steps that do not log cost
    nothing and never synchronize.

    Logged keys: ``grad_norm/<layer>``, ``weight_norm/<layer>``, ``update_ratio/<layer>``
    (norm of the step's parameter change / weight norm before the step), ``grad_norm/total``,
    ``grad_norm/first_last_ratio`` (first layer's norm / last layer's norm: below 1 the input
    side gets less signal) and, when ``trainer.gradient_clip_val`` is set,
    ``grad_norm/clipped_total`` (the total after clipping). Rows also go to
    ``<run dir>/grad_norms.csv``; the verdict goes to ``<run dir>/summary.json`` at the end
    of fit, and the gradient-flow figure to ``<run dir>/gradient_flow.png`` and the loggers.
    Only rank zero writes anything.

    Example::

        trainer = L.Trainer(callbacks=[GradientNormCallback(log_every_n_steps=10)])

    Args:
        norm_type: the p of the p-norm (``float("inf")`` for the max norm).
        log_every_n_steps: log every this many optimizer steps (step 0 always);
            ``None`` follows ``trainer.log_every_n_steps``.
        vanishing_ratio: a first/last ratio below this is judged vanishing.
        exploding_ratio: a first/last ratio above this is judged exploding.
        dirpath: where ``grad_norms.csv``, ``summary.json`` and the figure go; ``None``: the
            trainer's ``default_root_dir``.
        weight_stats: also log weight norms and update ratios (the weight change across
            ``optimizer.step``: keeps one copy of the weights and reads them three more
            times on logging steps; ``False`` logs gradient norms only).
        stop_on_nonfinite: stop training (``trainer.should_stop``) at the first logging step
            with a NaN/inf gradient; the run then ends normally with the verdict
            ``non-finite``. Gradients are checked on logging steps only (no host sync on
            the others).
        warn: warn once, with advice, when the running verdict is vanishing or exploding.
        histogram_every_n_steps: per-layer gradient histograms this often (``None``: never).
        figure_every_n_steps: log the gradient-flow figure this often (``None``: only at
            the end of fit, which always happens).
    """

    def __init__(
        self,
        norm_type: float = 2.0,
        log_every_n_steps: int | None = None,
        vanishing_ratio: float = VANISHING_RATIO,
        exploding_ratio: float = EXPLODING_RATIO,
        dirpath: str | os.PathLike | None = None,
        weight_stats: bool = True,
        stop_on_nonfinite: bool = True,
        warn: bool = True,
        histogram_every_n_steps: int | None = None,
        figure_every_n_steps: int | None = None,
    ) -> None:
        norm_type = float(norm_type)
        if not norm_type > 0:
            raise ValueError(f"norm_type must be a positive number or inf, got {norm_type!r}.")
        check_interval("log_every_n_steps", log_every_n_steps)
        if not 0 < vanishing_ratio < exploding_ratio:
            raise ValueError(
                f"need 0 < vanishing_ratio < exploding_ratio, got {vanishing_ratio!r} and "
                f"{exploding_ratio!r}."
            )
        check_interval("histogram_every_n_steps", histogram_every_n_steps)
        check_interval("figure_every_n_steps", figure_every_n_steps)
        self.norm_type = norm_type
        self.log_every_n_steps = log_every_n_steps
        self.vanishing_ratio = vanishing_ratio
        self.exploding_ratio = exploding_ratio
        self.dirpath = dirpath
        self.weight_stats = weight_stats
        self.stop_on_nonfinite = stop_on_nonfinite
        self.warn = warn
        self.histogram_every_n_steps = histogram_every_n_steps
        self.figure_every_n_steps = figure_every_n_steps
        self.layers: list[Layer] = []
        self._order: ForwardOrder | None = None
        self._params: list[torch.nn.Parameter] = []
        self._layer_of_param: list[int] = []
        self._weights_before: list[torch.Tensor] = []
        self._pending: int | None = None  # the step measured before optimizer.step
        self._csv = None
        self._flushed = 0.0
        # What the report and the verdict need: kept small, saved in checkpoints.
        self.first_norms: dict[str, float] = {}
        self.last_norms: dict[str, float] = {}
        self.first_step: int | None = None
        self.last_step: int | None = None
        self.ratios: list[float] = []
        self.nonfinite_layer: str | None = None
        self.nonfinite_step: int | None = None
        self.warned: str | None = None
        self.stop_reason: str | None = None

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
        self._layer_of_param = [i for i, layer in enumerate(self.layers) for _ in layer.params]
        self._device = pl_module.device
        self._index_cache = {}
        names = [layer.name for layer in self.layers]
        self._keys = {
            kind: [f"{kind}/{name}" for name in names]
            for kind in ("grad_norm", "weight_norm", "update_ratio")
        }

    def _with_grad(self) -> list[int]:
        return [i for i, p in enumerate(self._params) if p.grad is not None]

    def _slot_index(self, before: list[int], after: list[int] | None) -> torch.Tensor:
        """Where each per-tensor norm goes, in 4 slots of one value per layer: gradient
        before clipping, weight, update, gradient after clipping."""
        full = len(before) == len(self._params) and (after is None or len(after) == len(before))
        key = (after is not None, self.weight_stats)
        if full and key in self._index_cache:
            return self._index_cache[key]
        layer, n = self._layer_of_param, len(self.layers)
        index = [layer[i] for i in before]
        if self.weight_stats:
            index += [n + i for i in layer] + [2 * n + i for i in layer]
        if after is not None:
            index += [3 * n + layer[i] for i in after]
        tensor = torch.tensor(index, dtype=torch.long, device=self._device)
        if full:
            self._index_cache[key] = tensor
        return tensor

    def _run_dir(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath or trainer.default_root_dir)

    def _should_log(self, trainer: L.Trainer, step: int) -> bool:
        return logs_at(step, self.log_every_n_steps, trainer)

    # -- per step: gradients before clipping ----------------------------------------------
    @torch.no_grad()
    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._order is not None:
            self._finalize_order(pl_module)
        if self._pending is not None:  # several optimizers: the previous one has stepped
            self._finish(trainer)
        step = trainer.global_step
        if not self.layers or not self._should_log(trainer, step):
            return
        # Gradients and weights before the step: one fused norm over all of them.
        self._before = self._with_grad()
        grads = [self._params[i].grad for i in self._before]
        if self.weight_stats:
            grads += self._params
        self._norms_before = tensor_norms(grads, self.norm_type, self._device)
        if self.weight_stats:
            if not self._weights_before:
                self._weights_before = [torch.empty_like(p) for p in self._params]
            torch._foreach_copy_(self._weights_before, self._params)
        self._pending = step
        every = self.histogram_every_n_steps
        if every and step % every == 0 and trainer.is_global_zero:
            self._log_histograms(trainer, step)

    def _log_histograms(self, trainer: L.Trainer, step: int) -> None:
        values = {}
        for layer in self.layers:
            grads = [p.grad.flatten() for p in layer.params if p.grad is not None]
            if grads:
                values[f"grad_hist/{layer.name}"] = torch.cat(grads)
        log_histograms(trainer.loggers, values, step)

    # -- after optimizer.step: update ratios, clipped norm, one transfer -----------------
    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self._pending is not None:
            self._finish(trainer)

    @torch.no_grad()
    def _finish(self, trainer: L.Trainer) -> None:
        step, self._pending = self._pending, None
        n, p = len(self.layers), self.norm_type
        tensors = []
        if self.weight_stats:  # the buffer becomes (before - after): the step's change
            torch._foreach_sub_(self._weights_before, self._params)
            tensors += self._weights_before
        after = None
        if trainer.gradient_clip_val:  # the gradients are the clipped ones until zero_grad
            after = self._with_grad()
            tensors += [self._params[i].grad for i in after]
        norms = self._norms_before
        if tensors:
            norms = torch.cat([norms, tensor_norms(tensors, p, self._device)])
        index = self._slot_index(self._before, after)
        sums = group_norms(norms, index, 4 * n, p, root=False).tolist()  # the one transfer
        used = 4 * n if after is not None else (3 * n if self.weight_stats else n)
        values = sums[:used] if p == math.inf else [v ** (1 / p) for v in sums[:used]]
        has_grad = [False] * n
        for i in self._before:
            has_grad[self._layer_of_param[i]] = True
        row = {
            "grad_norm": values[:n],
            "has_grad": has_grad,
            "total": _combine([v for v, g in zip(values[:n], has_grad) if g], p),
        }
        if self.weight_stats:
            row["weight_norm"] = values[n : 2 * n]
            row["update"] = values[2 * n : 3 * n]
        if after is not None:
            row["clipped_total"] = _combine(values[3 * n :], p)
        self._record(trainer, step, row)

    def _record(self, trainer: L.Trainer, step: int, row: dict[str, Any]) -> None:
        names = [layer.name for layer in self.layers]
        norms, has_grad = row["grad_norm"], row["has_grad"]
        # Layers without a gradient this step are absent, not zero.
        by_layer = {name: v for name, v, g in zip(names, norms, has_grad) if g}
        # First and last among the layers that have a gradient this step (a layer that
        # never runs must not turn every ratio into NaN).
        present = [v for v, g in zip(norms, has_grad) if g]
        first, last = (present[0], present[-1]) if present else (math.nan, math.nan)
        ratio = first / last if last else (math.nan if first == 0 else math.inf)
        if self.first_step is None:
            self.first_norms, self.first_step = by_layer, step
        self.last_norms, self.last_step = by_layer, step
        self.ratios.append(ratio)
        self._check(trainer, step, by_layer)
        if not trainer.is_global_zero:
            return
        blank = [""] * len(names)
        weights = row.get("weight_norm", [])
        ratios = [u / w if w else math.nan for u, w in zip(row.get("update", []), weights)]
        keys = self._keys
        metrics = {k: v for k, v, g in zip(keys["grad_norm"], norms, has_grad) if g}
        metrics.update(zip(keys["weight_norm"], weights))
        metrics.update(zip(keys["update_ratio"], ratios))
        metrics["grad_norm/total"] = row["total"]
        metrics["grad_norm/first_last_ratio"] = ratio
        if "clipped_total" in row:
            metrics["grad_norm/clipped_total"] = row["clipped_total"]
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        grads = [v if g else "" for v, g in zip(norms, has_grad)]
        self._append_csv(trainer, step, names, grads, weights or blank, ratios or blank)
        every = self.figure_every_n_steps
        if every and step % every == 0 and step > 0:
            self._draw_figure(trainer, step)

    def _check(self, trainer: L.Trainer, step: int, by_layer: dict[str, float]) -> None:
        """Non-finite gradients (and, once, a vanishing or exploding running verdict)."""
        bad = next((name for name, v in by_layer.items() if not math.isfinite(v)), None)
        if bad is not None and self.nonfinite_layer is None:
            self.nonfinite_layer, self.nonfinite_step = bad, step
            message = self.diagnosis().advice  # names the layer and the step
            if self.stop_on_nonfinite:
                self.stop_reason = message
                trainer.should_stop = True
                message = "Stopping training (stop_on_nonfinite): " + message
            rank_zero_warn(message)
        if not self.warn or self.warned or self.nonfinite_layer is not None:
            return
        verdict = diagnose(
            self.ratios[-VERDICT_WINDOW:], self.vanishing_ratio, self.exploding_ratio
        )
        if verdict.verdict in ("vanishing", "exploding"):
            self.warned = verdict.verdict
            rank_zero_warn(f"Gradients look {verdict.verdict} at step {step}. {verdict.advice}")

    def _append_csv(self, trainer: L.Trainer, step: int, *columns: list) -> None:
        if self._csv is None:
            path = self._run_dir(trainer) / GRAD_NORMS_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            new = not path.exists() or path.stat().st_size == 0
            self._csv = path.open("a", newline="")
            if new:
                self._csv.write(",".join(CSV_COLUMNS) + "\n")
            self._csv_prefixes = [f"{name},{depth}" for depth, name in enumerate(columns[0], 1)]
        # Layer names are plain module paths (no commas or quotes): no CSV quoting needed.
        self._csv.write(
            "".join(
                f"{step},{prefix},{g},{w},{u}\n"
                for prefix, g, w, u in zip(self._csv_prefixes, *columns[1:])
            )
        )
        now = time.monotonic()
        if now - self._flushed > CSV_FLUSH_SECONDS:  # a flush per step would cost a syscall
            self._csv.flush()
            self._flushed = now

    def _close_csv(self) -> None:
        if self._csv is not None:
            self._csv.close()
            self._csv = None

    def _draw_figure(self, trainer: L.Trainer, step: int) -> None:
        from gradwatch.plots import gradient_flow_figure

        path = self._run_dir(trainer) / GRAD_NORMS_FILE
        if self._csv is not None:
            self._csv.flush()
        if not path.exists():
            return
        png = self._run_dir(trainer) / GRADIENT_FLOW_FILE
        gradient_flow_figure(path, png)
        log_figure(trainer.loggers, "gradient_flow", png, step)

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
            "nonfinite_step": self.nonfinite_step,
            "stop_reason": self.stop_reason,
        }

    def _cleanup(self) -> None:
        if self._order is not None:
            self._order.remove()
            self._order = None
        self._pending = None
        self._weights_before = []
        self._close_csv()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:
            self._finish(trainer)
        if trainer.is_global_zero:
            self._draw_figure(trainer, trainer.global_step)
        self._cleanup()
        if trainer.is_global_zero:
            update_summary(self._run_dir(trainer), steps=trainer.global_step, **self.summary())

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._cleanup()
        if trainer.is_global_zero and self.ratios:
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
        "warned",
        "stop_reason",
    )

    def state_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self._STATE}

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # The rows a checkpoint covers must be on disk: a run resumed from it (after a kill)
        # writes only the steps that follow.
        if self._csv is not None:
            self._csv.flush()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key in self._STATE:
            if key in state_dict:
                setattr(self, key, state_dict[key])
