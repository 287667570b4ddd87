"""GradientNormCallback: per-layer gradient norms, weight norms and update ratios of any
LightningModule, to every logger and to grad_norms.csv, with a running verdict."""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from gradwatch.callbacks.activation_stats import ActivationStatsCallback
from gradwatch.callbacks.depth import DepthOrder
from gradwatch.callbacks.grad_norms_file import GradNormsFile
from gradwatch.callbacks.layers import Layer, find_layers, select_layers
from gradwatch.callbacks.norms import elements_finite, group, local_tensors, tensor_norms, to_host
from gradwatch.callbacks.sinks import log_figure, log_histograms
from gradwatch.run.files import GRAD_NORMS_FILE, GRADIENT_FLOW_FILE
from gradwatch.schedule import check_interval, lightning_logs_at, logs_at
from gradwatch.verdict import EXPLODING_RATIO, VANISHING_RATIO, Diagnosis, diagnose

#: Aggregate keys under ``grad_norm/``; a layer of the same name is logged as ``<name>[layer]``.
AGGREGATES = ("total", "first_last_ratio", "clipped_total", "amp_skipped", "amp_scale")
#: The running verdict (and its one-time warning) looks at this many recent logged steps, and
#: the final one at the update ratios of this many last logged steps.
VERDICT_WINDOW = 20
#: The loss at the start and at the end of training: the mean of this many logged values,
#: judged once there are twice as many.
LOSS_WINDOW = 3
SEVERITY = {"non-finite": 3, "exploding": 2, "vanishing": 2, "healthy": 0}


def _combine(values: list[float], p: float) -> float:
    """The norm of several tensors together from their norms."""
    if not values or any(math.isnan(v) for v in values):
        return math.nan
    top = max(values)
    if p == math.inf or top == 0 or math.isinf(top):
        return top
    return top * math.fsum((v / top) ** p for v in values) ** (1 / p)  # no overflow


def _scaled_norm(t: torch.Tensor, p: float) -> float:
    """``|t|_p`` as ``m * |t / m|_p`` with ``m = max |t|``: the p-th powers cannot overflow
    (1e35 ** 10 does even in float64)."""
    top = float(t.abs().max()) if t.numel() else 0.0
    return top * float(torch.linalg.vector_norm(t / top, p)) if top else top


def _common_prefix(names: list[str]) -> str:
    """The module path all ``names`` start with (``generator`` for generator.0, generator.2)."""
    prefix = []
    for parts in zip(*(name.split(".") for name in names)):
        if len(set(parts)) > 1:
            break
        prefix.append(parts[0])
    return ".".join(prefix)


def _ratio(first: float, last: float) -> float:
    return first / last if last else (math.nan if first == 0 else math.inf)


@dataclass
class _Optimizer:
    """What the callback knows of one optimizer: its layers in depth order and its history."""

    name: str | None  # None when it is the only one; else names its keys and CSV rows
    params: list[int] = field(default_factory=list)  # indices into the callback's parameters
    signature: tuple = ()
    version: int = -1  # of the depth order its layer lists were built from
    layers: list[int] = field(default_factory=list)  # layer indices, input side first
    slot: dict[int, int] = field(default_factory=dict)  # parameter index -> position in layers
    keys: dict[str, list[str]] = field(default_factory=dict)
    logged: list[int] = field(default_factory=list)  # positions whose keys go to the loggers
    weights_before: list[torch.Tensor] = field(default_factory=list)
    updates: list[dict[str, float]] = field(default_factory=list)  # last logged update ratios
    steps: int = 0
    ratios: list[float] = field(default_factory=list)
    first_norms: dict[str, float] = field(default_factory=dict)
    last_norms: dict[str, float] = field(default_factory=dict)
    first_step: int | None = None
    last_step: int | None = None

    def key(self, aggregate: str) -> str:
        return f"grad_norm/{aggregate}" + (f"/{self.name}" if self.name else "")


@dataclass
class _Pending:
    """A logging step measured before ``optimizer.step``, recorded after it."""

    opt: _Optimizer
    step: int
    with_grad: list[int]
    norms: list[torch.Tensor]
    weights: list[float] | None
    clipped: list[int] | None = None
    stepped: bool = False  # optimizer.step ran (a skipped step leaves no update to measure)


class GradientNormCallback(L.Callback):
    """Logs the gradient norm, weight norm and update ratio of every layer of any LightningModule.

    A layer is a module that owns parameters, named by module path without wrapper segments
    (``net.blocks.0.conv1``; ``_orig_mod.`` of ``torch.compile`` is dropped), and numbered by
    depth: when the backward pass completes its gradient (the later, the nearer the input), so
    depth 1 is nearest the input whatever the registration order (``callbacks/depth.py``). A
    parameter shared by several modules (tied weights) counts once, for its first owner.

    Gradients are read in ``on_before_optimizer_step`` (after the backward pass, DDP's
    all-reduce and AMP unscaling, before clipping), for the parameters of the optimizer
    being stepped. The weight change and the clipped gradients are read right after
    ``optimizer.step``; a logging step crosses to the host once. Steps that do not log cost
    nothing and never synchronize. Norms are accumulated in float32 (bf16/fp16 parameters
    included) and combined per layer in float64.

    ==============================  ====================================================
    key                             value
    ==============================  ====================================================
    ``grad_norm/<layer>``           norm of the layer's gradient (before clipping)
    ``weight_norm/<layer>``         norm of its weights before the step
    ``update_ratio/<layer>``        norm of the step's weight change / weight norm
    ``grad_norm/total``             norm of all gradients (each parameter once)
    ``grad_norm/first_last_ratio``  first layer's norm / last layer's (below 1: the
                                    input side gets less signal)
    ``grad_norm/clipped_total``     the total after clipping (``gradient_clip_val`` set)
    ``grad_norm/amp_skipped``       steps the AMP gradient scaler skipped (fp16 only)
    ``grad_norm/amp_scale``         the gradient scaler's scale (fp16 only)
    ==============================  ====================================================

    With several optimizers (a GAN, manual optimization) each one's step counts its own
    logging interval, its layers are numbered among themselves, and the aggregate keys end
    in ``/<optimizer>``, named after the common prefix of its layers (``grad_norm/total/generator``)
    or ``optimizer<i>``; grad_norms.csv's ``optimizer`` column says the same. Layers with no
    gradient in a step are absent from it, not zero. A step that the AMP gradient scaler
    skips (fp16 overflow) is counted, not judged: only a scale that falls below
    ``amp_min_scale``, or a NaN/inf gradient without a scaler, is non-finite.

    All layers go to ``<dirpath>/grad_norms.csv`` (``step,layer,depth,grad_norm,weight_norm,
    update_ratio,optimizer``), a fresh file per fit; a fit resumed from a checkpoint keeps
    the rows before the checkpoint's step. ``include``, ``exclude`` and ``max_logged_layers``
    choose which layers' keys go to the loggers. Only rank zero writes anything.

    Example::

        trainer = L.Trainer(callbacks=[GradientNormCallback(log_every_n_steps=10)])

    Args:
        norm_type: the p of the p-norm (``float("inf")`` for the max norm).
        log_every_n_steps: log on step 0 and every this many optimizer steps, on the steps
            Lightning writes its own step metrics (``n-1, 2n-1, ...``, see ``gradwatch.schedule``);
            ``None`` follows ``trainer.log_every_n_steps``.
        vanishing_ratio: a first/last ratio below this is judged vanishing.
        exploding_ratio: a first/last ratio above this is judged exploding.
        dirpath: where ``grad_norms.csv`` and ``gradient_flow.png`` go; ``None``: the
            trainer's ``default_root_dir``.
        weight_stats: also log weight norms and update ratios (keeps one copy of the
            weights; ``False`` logs gradient norms only).
        stop_on_nonfinite: stop training (``trainer.should_stop``) at the first logging step
            with a non-finite gradient; the run ends normally with the verdict ``non-finite``.
        warn: warn once, with advice, when the running verdict is vanishing or exploding.
        histogram_every_n_steps: per-layer gradient histograms this often (``None``: never).
        figure_every_n_steps: log the gradient-flow figure this often (``None``: only at
            the end of fit, which always happens).
        include: shell patterns of layer names whose keys are logged (``None``: all).
        exclude: shell patterns of layer names whose keys are not logged.
        max_logged_layers: log at most this many layers' keys: the first, the last and
            evenly spaced ones by depth (``None``: all). grad_norms.csv keeps every layer.
        config_hints: advice names gradwatch's config overrides (its own runs); otherwise
            it is worded for any project.
        amp_min_scale: an AMP gradient scale below this means the scaler has given up:
            the gradients are non-finite at any scale.
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
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        max_logged_layers: int | None = None,
        config_hints: bool = False,
        amp_min_scale: float = 1.0,
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
        check_interval("max_logged_layers", max_logged_layers)
        for name, patterns in (("include", include), ("exclude", exclude)):
            if patterns is not None and (
                isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns)
            ):
                raise ValueError(f"{name} must be a list of name patterns, got {patterns!r}.")
        if not amp_min_scale > 0:
            raise ValueError(f"amp_min_scale must be positive, got {amp_min_scale!r}.")
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
        self.include = list(include) if include is not None else None
        self.exclude = list(exclude) if exclude is not None else None
        self.max_logged_layers = max_logged_layers
        self.config_hints = config_hints
        self.amp_min_scale = amp_min_scale
        self._reset()

    def _reset(self) -> None:
        self.layers: list[Layer] = []
        self._params: list[torch.nn.Parameter] = []
        self._layer_of_param: list[int] = []
        self._depth: DepthOrder | None = None
        self._version = 0
        self._ordered: list[int] = []
        self._opts: dict[int, _Optimizer] = {}  # id(optimizer) -> its record
        self._saved_opts: dict[str, dict[str, Any]] = {}  # restored from a checkpoint
        self._hooks: list[Any] = []
        self._pending: _Pending | None = None
        self._file: GradNormsFile | None = None
        self._resume_step: int | None = None
        self._amp_skipped: torch.Tensor | int = 0
        self._amp_before: torch.Tensor | None = None
        self.amp_scale: float | None = None
        self.losses: list[float] = []  # the training loss at each logging step
        self._chance_loss: float | None = None
        self._batchnorm = False
        self._activations: Any = None
        self.nonfinite_layer: str | None = None
        self.nonfinite_step: int | None = None
        self.warned: str | None = None
        self.stop_reason: str | None = None
        self._several = False  # several optimizers: each counts its own steps
        self._plugin_scaler: Any = None

    # -- setup -------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # a checkpoint's state is restored after this
            self._reset()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.layers = find_layers(pl_module)
        self._params = [p for layer in self.layers for p in layer.params]
        self._layer_of_param = [i for i, layer in enumerate(self.layers) for _ in layer.params]
        self._index_of_param = {id(p): i for i, p in enumerate(self._params)}
        self._depth = DepthOrder(self.layers)
        self._ordered = self._depth.order()
        self._device = pl_module.device
        self._clipping = bool(trainer.gradient_clip_val)
        # What the verdict reads besides the gradients (see gradwatch.verdict).
        self._batchnorm = any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in pl_module.modules()
        )
        classes = getattr(pl_module, "hparams", {}).get("num_classes")
        self._chance_loss = math.log(classes) if isinstance(classes, int) and classes > 1 else None
        self._activations = next(
            (c for c in trainer.callbacks if isinstance(c, ActivationStatsCallback)), None
        )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Looked up once a fit, after every on_fit_start: the trainer's properties take
        # microseconds, and the hooks below run on every step.
        self._several = len(trainer.optimizers) > 1
        self._plugin_scaler = getattr(trainer.precision_plugin, "scaler", None)
        # Loops are restored by now: a resumed fit continues the file after this step.
        self._resume_step = trainer.global_step if trainer.ckpt_path else None
        if trainer.is_global_zero:
            self._file = GradNormsFile(self._run_dir(trainer) / GRAD_NORMS_FILE)

    def _run_dir(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath or trainer.default_root_dir)

    def _logs_at(self, trainer: L.Trainer, step: int) -> bool:
        return logs_at(step, self.log_every_n_steps, trainer)

    def _own_step(self, trainer: L.Trainer, opt: _Optimizer) -> int:
        # One optimizer: the trainer's step (which a resume restores). Several: its own count.
        return opt.steps if self._several else trainer.global_step

    # -- depth order: measured on a logging step where some layer has no place yet ------
    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        depth = self._depth
        if depth is None or depth.active:
            return
        if not self._opts:  # the first step
            due = True
        elif self._several:
            due = any(self._logs_at(trainer, o.steps) for o in self._opts.values())
        else:
            due = self._logs_at(trainer, trainer.global_step)
        if due and depth.wanted():  # a logging step only: wanted() looks at every open layer
            depth.start()

    def _merge_depths(self) -> None:
        self._depth.merge()
        self._ordered = self._depth.order()
        self._version += 1

    # -- optimizers ----------------------------------------------------------------------
    def _optimizer(self, trainer: L.Trainer, optimizer: torch.optim.Optimizer) -> _Optimizer:
        opt = self._opts.get(id(optimizer))
        if opt is None:
            index = next((i for i, o in enumerate(trainer.optimizers) if o is optimizer), 0)
            opt = _Optimizer(name=f"optimizer{index}")
            self._opts[id(optimizer)] = opt
            self._hooks.append(optimizer.register_step_post_hook(self._after_step))
            self._refresh_params(optimizer)  # names it; a resumed fit's history is restored
        return opt

    def _refresh_params(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer's parameters, looked at again on each logging step."""
        opt = self._opts[id(optimizer)]
        signature = tuple(len(g["params"]) for g in optimizer.param_groups)
        if signature != opt.signature:  # new parameter groups (e.g. BackboneFinetuning)
            ids = [id(p) for g in optimizer.param_groups for p in g["params"]]
            opt.params = [self._index_of_param[i] for i in ids if i in self._index_of_param]
            first = not opt.signature
            opt.signature, opt.version = signature, -1
            if first:
                self._name_optimizers()

    def _name_optimizers(self) -> None:
        for opt in self._opts.values():
            if not self._several:
                opt.name = None
                continue
            prefix = _common_prefix([self.layers[self._layer_of_param[i]].name for i in opt.params])
            taken = {o.name for o in self._opts.values() if o is not opt}
            if prefix and prefix not in taken and prefix not in AGGREGATES:
                opt.name = prefix
        for name, state in self._saved_opts.items():  # a resumed fit's history
            opt = next((o for o in self._opts.values() if o.name == name), None)
            if opt is not None and opt.first_step is None:
                for key, value in state.items():
                    setattr(opt, key, value)

    def _layout(self, opt: _Optimizer) -> None:
        """The optimizer's layers in depth order, their keys, and the ones that are logged."""
        if opt.version == self._version:
            return
        mine = {self._layer_of_param[i] for i in opt.params}
        opt.layers = [i for i in self._ordered if i in mine]
        position = {layer: k for k, layer in enumerate(opt.layers)}
        opt.slot = {i: position[self._layer_of_param[i]] for i in opt.params}
        names = [self.layers[i].name for i in opt.layers]
        keyed = [f"{n}[layer]" if n in AGGREGATES else n for n in names]
        opt.keys = {
            kind: [f"{kind}/{n}" for n in keyed]
            for kind in ("grad_norm", "weight_norm", "update_ratio")
        }
        opt.keys["csv"] = [f"{n},{d}" for d, n in enumerate(names, 1)]
        opt.logged = select_layers(names, self.include, self.exclude, self.max_logged_layers)
        opt.weights_before = []
        opt.version = self._version

    # -- per step: gradients before clipping ----------------------------------------------
    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._depth is None:
            return
        self._settle(trainer)
        opt = self._optimizer(trainer, optimizer)
        scaler = self._scaler()
        if scaler is not None:
            self._amp_before = scaler._scale.clone()
        step = self._own_step(trainer, opt)
        opt.steps += 1
        if self._logs_at(trainer, step):
            self._refresh_params(optimizer)
            if opt.params:
                self._measure(trainer, optimizer, opt, scaler, step)

    @torch.no_grad()
    def _measure(
        self,
        trainer: L.Trainer,
        optimizer: torch.optim.Optimizer,
        opt: _Optimizer,
        scaler: Any,
        step: int,
    ) -> None:
        """A logging step's gradient and weight norms, and a copy of the weights."""
        if self._depth.active:
            self._merge_depths()
        with_grad = [i for i in opt.params if self._params[i].grad is not None]
        layers_with_grad = {self._layer_of_param[i] for i in with_grad}
        if not self._depth.place(layers_with_grad):
            self._depth.note_gradient(layers_with_grad)  # ordered on a later logging step
        self._layout(opt)
        grads = [self._params[i].grad for i in with_grad]
        if scaler is not None and not self._unscaled(scaler, optimizer):
            grads = list(torch._foreach_div(grads, scaler._scale))  # fused: unscaled in step
        tensors = grads + ([self._params[i] for i in opt.params] if self.weight_stats else [])
        local, weights = local_tensors(tensors)
        norms = [tensor_norms(local, self.norm_type, self._device)]
        if self.weight_stats:
            params = local[len(grads) :]
            if not opt.weights_before:
                opt.weights_before = [torch.empty_like(t) for t in params]
            torch._foreach_copy_(opt.weights_before, params)
        self._pending = _Pending(opt, trainer.global_step, with_grad, norms, weights)
        every = self.histogram_every_n_steps
        if every and logs_at(step, every, trainer) and trainer.is_global_zero:
            self._log_histograms(trainer, opt, with_grad)

    def _scaler(self) -> Any:
        scaler = self._plugin_scaler
        if scaler is None or not scaler.is_enabled() or getattr(scaler, "_scale", None) is None:
            return None
        return scaler

    @staticmethod
    def _unscaled(scaler: Any, optimizer: torch.optim.Optimizer) -> bool:
        from torch.amp.grad_scaler import OptState

        state = scaler._per_optimizer_states.get(id(optimizer), {})
        return state.get("stage") == OptState.UNSCALED

    def _log_histograms(self, trainer: L.Trainer, opt: _Optimizer, with_grad: list[int]) -> None:
        grads: dict[int, list[torch.Tensor]] = {}
        for i in with_grad:
            grads.setdefault(self._layer_of_param[i], []).append(self._params[i].grad)
        values = {}
        for k in opt.logged:
            layer = opt.layers[k]
            tensors = local_tensors(grads.get(layer, []))[0]
            if tensors:
                name = opt.keys["grad_norm"][k].removeprefix("grad_norm/")
                values[f"grad_hist/{name}"] = torch.cat([t.flatten() for t in tensors])
        log_histograms(trainer.loggers, values, trainer.global_step)

    # -- right after optimizer.step: the weight change and the clipped gradients ----------
    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        pending = self._pending
        if pending is not None and self._opts.get(id(optimizer)) is pending.opt:
            self._measure_update(pending)

    @torch.no_grad()
    def _measure_update(self, pending: _Pending) -> None:
        opt, p = pending.opt, self.norm_type
        tensors = []
        if self.weight_stats:  # the copy becomes (before - after): the step's change
            params = local_tensors([self._params[i] for i in opt.params])[0]
            torch._foreach_sub_(opt.weights_before, params)
            tensors += opt.weights_before
        if self._clipping:
            pending.clipped = [i for i in pending.with_grad if self._params[i].grad is not None]
            tensors += local_tensors([self._params[i].grad for i in pending.clipped])[0]
        if tensors:
            pending.norms.append(tensor_norms(tensors, p, self._device))
        pending.stepped = True

    # -- after the step: one transfer, then log -------------------------------------------
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any
    ) -> None:
        if self._pending is not None:  # a logging step: the verdict also reads its loss
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if isinstance(loss, torch.Tensor) and loss.numel() == 1:
                self.losses.append(float(loss))
        self._settle(trainer)
        if self._depth is not None and self._depth.active:
            self._merge_depths()
            self._depth.stop()

    def _count_amp_skip(self, trainer: L.Trainer) -> bool:
        """Whether the step just taken was skipped by the gradient scaler (its scale fell)."""
        scaler = self._scaler()
        before, self._amp_before = self._amp_before, None
        if scaler is None or before is None:
            return False
        skipped = scaler._scale < before
        self._amp_skipped = self._amp_skipped + skipped.long()
        return skipped

    def _settle(self, trainer: L.Trainer) -> None:
        skipped = self._count_amp_skip(trainer)
        pending, self._pending = self._pending, None
        if pending is not None:
            self._settle_pending(trainer, pending, skipped)

    @torch.no_grad()
    def _settle_pending(self, trainer: L.Trainer, pending: _Pending, skipped: Any) -> None:
        """The logging step's one transfer to the host, then its row."""
        opt, n, p = pending.opt, len(pending.opt.layers), self.norm_type
        weights = pending.weights
        if weights is not None:  # sharded: the later tensors count like the earlier ones
            k = len(pending.with_grad)
            of_grad = dict(zip(pending.with_grad, weights[:k]))
            updates = weights[k:] if pending.stepped else []
            weights = weights + updates + [of_grad[i] for i in pending.clipped or []]
        powers = to_host(torch.cat(pending.norms), p, weights)  # the one transfer
        index = [opt.slot[i] for i in pending.with_grad]
        if self.weight_stats:
            index += [n + opt.slot[i] for i in opt.params]
            if pending.stepped:
                index += [2 * n + opt.slot[i] for i in opt.params]
        index += [3 * n + opt.slot[i] for i in pending.clipped or []]
        values = group(powers, index, 4 * n, p)
        if isinstance(skipped, torch.Tensor):
            self.amp_scale = float(self._scaler()._scale)
            if bool(skipped):  # overflow: the scaler skipped the step and lowered its scale
                self._log_amp(trainer, opt, pending.step)
                return
        has_grad = [False] * n
        for i in pending.with_grad:
            has_grad[opt.slot[i]] = True
        grads = values[:n]
        if any(g and not math.isfinite(v) for v, g in zip(grads, has_grad)):
            grads = self._exact_overflowed(opt, grads, has_grad)
        row = {"grad": grads, "has_grad": has_grad}
        row["total"] = _combine([v for v, g in zip(grads, has_grad) if g], p)
        if self.weight_stats:
            row["weight"] = values[n : 2 * n]
            row["update"] = values[2 * n : 3 * n] if pending.stepped else [math.nan] * n
        if pending.clipped is not None:
            clipped = {opt.slot[i] for i in pending.clipped}
            row["clipped_total"] = _combine([values[3 * n + k] for k in sorted(clipped)], p)
        self._record(trainer, opt, pending.step, row)

    def _exact_overflowed(
        self, opt: _Optimizer, grads: list[float], has_grad: list[bool]
    ) -> list[float]:
        """Norms that overflowed float32 although every element is finite, in float64."""
        grads = list(grads)
        for k, layer in enumerate(opt.layers):
            if not has_grad[k] or math.isfinite(grads[k]):
                continue
            tensors = [p.grad for p in self.layers[layer].params if p.grad is not None]
            if elements_finite(tensors):
                local = local_tensors(tensors)[0]
                norms = [_scaled_norm(t.double(), self.norm_type) for t in local]
                grads[k] = _combine(norms, self.norm_type)
        return grads

    def _log_amp(self, trainer: L.Trainer, opt: _Optimizer, step: int) -> None:
        if self.amp_scale < self.amp_min_scale and self.nonfinite_layer is None:
            self._nonfinite(trainer, "the AMP gradient scaler", step)
        if trainer.is_global_zero:
            metrics = {
                opt.key("amp_skipped"): float(self._amp_skipped),
                opt.key("amp_scale"): self.amp_scale,
            }
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

    def _record(self, trainer: L.Trainer, opt: _Optimizer, step: int, row: dict) -> None:
        names = [self.layers[i].name for i in opt.layers]
        grads, has_grad = row["grad"], row["has_grad"]
        by_layer = {name: v for name, v, g in zip(names, grads, has_grad) if g}
        present = list(by_layer.values())
        ratio = _ratio(present[0], present[-1]) if present else math.nan
        if opt.first_step is None:
            opt.first_norms, opt.first_step = by_layer, step
        opt.last_norms, opt.last_step = by_layer, step
        opt.ratios.append(ratio)
        if "update" in row:
            updates = zip(names, row["update"], row["weight"], has_grad)
            opt.updates.append({n: u / w for n, u, w, g in updates if g and w})
            del opt.updates[:-VERDICT_WINDOW]
        self._check(trainer, opt, step, by_layer)
        if not trainer.is_global_zero:
            return
        weights = row.get("weight", [])
        updates = [
            u / w if g and w else math.nan
            for u, w, g in zip(row.get("update", []), weights, has_grad)
        ]
        keys = opt.keys
        metrics = {keys["grad_norm"][k]: grads[k] for k in opt.logged if has_grad[k]}
        if weights:
            metrics.update((keys["weight_norm"][k], weights[k]) for k in opt.logged)
            metrics.update((keys["update_ratio"][k], updates[k]) for k in opt.logged if has_grad[k])
        metrics[opt.key("total")] = row["total"]
        metrics[opt.key("first_last_ratio")] = ratio
        if "clipped_total" in row:
            metrics[opt.key("clipped_total")] = row["clipped_total"]
        if self.amp_scale is not None:
            metrics[opt.key("amp_skipped")] = float(self._amp_skipped)
            metrics[opt.key("amp_scale")] = self.amp_scale
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        self._write_rows(step, opt, grads, has_grad, weights, updates)
        every = self.figure_every_n_steps
        if every and lightning_logs_at(step, every):
            self._draw_figure(trainer, step)

    def _write_rows(self, step, opt, grads, has_grad, weights, updates) -> None:
        if self._file is None:
            return
        if not self._file.is_open:
            self._file.open(self._resume_step)
        blank = [""] * len(grads)
        grads = [v if g else "" for v, g in zip(grads, has_grad)]
        updates = ["" if u != u else u for u in updates] or blank
        suffix = opt.name or ""
        self._file.write(
            "".join(
                f"{step},{prefix},{g},{w},{u},{suffix}\n"
                for prefix, g, w, u in zip(opt.keys["csv"], grads, weights or blank, updates)
            )
        )

    # -- the verdict ---------------------------------------------------------------------
    def _nonfinite(self, trainer: L.Trainer, where: str, step: int) -> None:
        self.nonfinite_layer, self.nonfinite_step = where, step
        message = self.diagnosis().advice  # names the layer and the step
        if self.stop_on_nonfinite:
            self.stop_reason = message
            trainer.should_stop = True
            message = "Stopping training (stop_on_nonfinite): " + message
        rank_zero_warn(message)

    def _check(
        self, trainer: L.Trainer, opt: _Optimizer, step: int, by_layer: dict[str, float]
    ) -> None:
        """Non-finite gradients (and, once, a vanishing or exploding running verdict)."""
        bad = next((name for name, v in by_layer.items() if not math.isfinite(v)), None)
        if bad is not None and self.nonfinite_layer is None:
            self._nonfinite(trainer, bad, step)
        if not self.warn or self.warned or self.nonfinite_layer is not None:
            return
        verdict = self._diagnose(opt.ratios[-VERDICT_WINDOW:])
        if verdict.verdict in ("vanishing", "exploding"):
            self.warned = verdict.verdict
            where = f" ({opt.name})" if opt.name else ""
            rank_zero_warn(
                f"Gradients look {verdict.verdict}{where} at step {step}. {verdict.advice}"
            )

    def _diagnose(self, ratios: list[float], signals: dict[str, Any] | None = None) -> Diagnosis:
        return diagnose(
            ratios,
            self.vanishing_ratio,
            self.exploding_ratio,
            self.nonfinite_layer,
            self.nonfinite_step,
            ours=self.config_hints,
            batchnorm=self._batchnorm,
            **(signals or {}),
        )

    def _signals(self, opt: _Optimizer) -> dict[str, Any]:
        """What the final verdict reads besides the ratios: the loss's trend, the recent update
        ratios per layer (input side first) and the activation statistics."""
        signals: dict[str, Any] = {"chance_loss": self._chance_loss}
        if len(self.losses) >= 2 * LOSS_WINDOW:
            signals["loss_start"] = statistics.fmean(self.losses[:LOSS_WINDOW])
            signals["loss_end"] = statistics.fmean(self.losses[-LOSS_WINDOW:])
        if opt.updates:
            names = [self.layers[i].name for i in opt.layers]
            per_layer = [[u[n] for u in opt.updates if n in u] for n in names]
            signals["update_ratios"] = [statistics.median(v) for v in per_layer if v]
        if self._activations is not None:
            signals.update(self._activations.signals())
        return signals

    def _verdicts(self) -> dict[int, Diagnosis]:
        return {id(o): self._diagnose(o.ratios, self._signals(o)) for o in self._opts.values()}

    def _main(self) -> _Optimizer | None:
        """The optimizer whose verdict is the run's: the most severe one, else the first."""
        opts = list(self._opts.values())
        if len(opts) < 2:
            return opts[0] if opts else None
        verdicts = self._verdicts()
        return max(opts, key=lambda o: SEVERITY[verdicts[id(o)].verdict])

    def diagnosis(self) -> Diagnosis:
        """The run's verdict so far, from every signal the callbacks measured."""
        main = self._main()
        return self._diagnose(main.ratios if main else [], self._signals(main) if main else {})

    # What the console report and the run record read, for the optimizer that decides.
    @property
    def ratios(self) -> list[float]:
        main = self._main()
        return main.ratios if main else []

    @property
    def first_norms(self) -> dict[str, float]:
        main = self._main()
        return main.first_norms if main else {}

    @property
    def last_norms(self) -> dict[str, float]:
        main = self._main()
        return main.last_norms if main else {}

    @property
    def first_step(self) -> int | None:
        main = self._main()
        return main.first_step if main else None

    @property
    def last_step(self) -> int | None:
        main = self._main()
        return main.last_step if main else None

    @property
    def layer_names(self) -> list[str]:
        """The deciding optimizer's layers, input side first."""
        main = self._main()
        return [self.layers[i].name for i in main.layers] if main else []

    def summary(self) -> dict[str, Any]:
        """The verdict and its numbers; the run record (``gradwatch.run.record``) files them."""
        result = self.diagnosis()
        ratios = self.ratios
        summary = {
            "diagnosis": result.verdict,
            "advice": result.advice,
            "initial_first_last_ratio": ratios[0] if ratios else None,
            "final_first_last_ratio": ratios[-1] if ratios else None,
            "median_first_last_ratio": result.ratio,
            "nonfinite_layer": self.nonfinite_layer,
            "nonfinite_step": self.nonfinite_step,
            "stop_reason": self.stop_reason,
            "reasons": list(result.reasons),
            "stalled": result.stalled,
        }
        if self.amp_scale is not None:
            summary["amp_skipped_steps"] = int(self._amp_skipped)
        named = [o for o in self._opts.values() if o.name]
        if named:
            verdicts = self._verdicts()
            summary["optimizers"] = {o.name: verdicts[id(o)].verdict for o in named}
        return summary

    # -- end of fit --------------------------------------------------------------------
    def _draw_figure(self, trainer: L.Trainer, step: int) -> None:
        from gradwatch.plots import gradient_flow_figure

        if self._file is None or not self._file.is_open:
            return
        self._file.flush()
        png = self._run_dir(trainer) / GRADIENT_FLOW_FILE
        gradient_flow_figure(self._file.path, png)
        log_figure(trainer.loggers, "gradient_flow", png, step)

    def _cleanup(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self._depth is not None:
            self._depth.stop()
        self._pending = None
        for opt in self._opts.values():
            opt.weights_before = []
        if self._file is not None:
            self._file.close()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._settle(trainer)
        if trainer.is_global_zero:
            self._draw_figure(trainer, trainer.global_step)
        self._cleanup()

    def on_exception(self, trainer: L.Trainer, *args: Any) -> None:
        self._cleanup()

    # -- checkpointing -----------------------------------------------------------------
    _OPT_STATE = (
        "steps",
        "ratios",
        "updates",
        "first_norms",
        "last_norms",
        "first_step",
        "last_step",
    )
    _STATE = ("nonfinite_layer", "nonfinite_step", "warned", "stop_reason", "amp_scale", "losses")

    def state_dict(self) -> dict[str, Any]:
        state = {key: getattr(self, key) for key in self._STATE}
        state["amp_skipped"] = int(self._amp_skipped)
        state["optimizers"] = {
            o.name or "": {key: getattr(o, key) for key in self._OPT_STATE}
            for o in self._opts.values()
        }
        return state

    def on_save_checkpoint(self, trainer: L.Trainer, *args: Any) -> None:
        # The rows a checkpoint covers must be on disk: a fit resumed from it after a kill
        # writes only the steps that follow.
        if self._file is not None:
            self._file.flush()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key in self._STATE:
            setattr(self, key, state_dict.get(key))
        self.losses = list(self.losses or [])
        self._amp_skipped = state_dict.get("amp_skipped", 0)
        self._saved_opts = dict(state_dict.get("optimizers", {}))
        single = self._saved_opts.pop("", None)
        if single is not None:  # one optimizer: restored when it first steps
            self._saved_opts[None] = single
