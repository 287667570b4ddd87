"""ActivationStatsCallback: is each activation healthy, saturated or dead?"""

from __future__ import annotations

import statistics
from typing import Any

import lightning as L
import torch
from torch import nn

from gradwatch.callbacks.eager_pass import EagerPass
from gradwatch.callbacks.layers import stable_name
from gradwatch.schedule import check_interval, logs_at

#: Activations whose flat ends kill the gradient: output range (low, high).
SATURATING: dict[type[nn.Module], tuple[float, float]] = {
    nn.Sigmoid: (0.0, 1.0),
    nn.Tanh: (-1.0, 1.0),
    nn.Hardsigmoid: (0.0, 1.0),
    nn.Hardtanh: (-1.0, 1.0),
}
#: Activations that output exactly zero for negative inputs (a unit can die).
RECTIFYING: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6)
OTHER: tuple[type[nn.Module], ...] = (
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SELU,
    nn.SiLU,
    nn.Mish,
    nn.Softplus,
    nn.CELU,
    nn.PReLU,
)
ACTIVATIONS = (*SATURATING, *RECTIFYING, *OTHER)
#: Outputs smaller than MEASURE_AT_ONCE elements are copied and measured together, once the
#: copies hold PENDING_NUMEL elements (16 MB of float32) and at the end of the step.
MEASURE_AT_ONCE = 1 << 18
PENDING_NUMEL = 1 << 22


class _Kept:
    """Small outputs of one kind, shape, dtype and device, copied as their modules run into
    rows of one buffer that later logging steps reuse: measured a few operations per group
    instead of several per module, and (float32 outputs) with no memory allocated and freed
    on every logging step. Not for hooks run from several threads (``nn.DataParallel``)."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None
        self.scratch: torch.Tensor | None = None  # float32, for _measure's intermediate values
        self.names: list[str] = []
        self.used = False

    def append(self, name: str, output: torch.Tensor) -> None:
        rows = len(self.names)
        if self.buffer is None or rows == len(self.buffer):  # first use, or full: double it
            # ...up to the rows measured at once (PENDING_NUMEL), plus one.
            most = max(rows + 1, PENDING_NUMEL // output.numel() + 1)
            grown = output.new_empty((min(max(2 * rows, 1), most), *output.shape))
            if rows:
                grown[:rows].copy_(self.buffer)
            self.buffer = grown
        # A copy: the output may be changed in place later in the step (x.mul_(...)).
        self.buffer[rows].copy_(output.detach())
        self.names.append(name)
        self.used = True

    def take(self) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """The names and outputs kept since the last take, and a scratch of their size."""
        names, self.names = self.names, []
        outputs = self.buffer[: len(names)]
        if self.scratch is None or self.scratch.shape[0] < len(self.buffer):
            shape, device = self.buffer.shape, self.buffer.device
            self.scratch = torch.empty(shape, dtype=torch.float32, device=device)
        return names, outputs, self.scratch[: len(names)]


class ActivationStatsCallback(L.Callback):
    """Per activation module: mean, std, saturation (sigmoid/tanh) and dead fraction (ReLU).

    Forward hooks are attached only for the first micro-batch of a logging step and removed
    right after it, so other steps run untouched; they are all gone at the end of fit. That
    micro-batch runs with ``torch.compile`` disabled (compiled code ignores hooks added after
    it was compiled); names drop the ``_orig_mod.`` of compiled modules.
    Statistics are reduced on the device and cross to the host in one transfer per logging
    step. Keys: ``activation/<module path>/mean|std`` for every activation,
    ``.../saturation`` (share of outputs within ``saturation_margin`` of either end of the
    range: the sigmoid's or tanh's flat ends, where the derivative is near zero) for
    saturating ones, ``.../dead`` (share of units that are zero for every example of the
    batch) for ReLU. A unit is one position of the output without the batch dimension (a
    feature of an MLP, a channel-pixel of a CNN). Logged from rank zero only.

    Example::

        trainer = L.Trainer(callbacks=[ActivationStatsCallback(log_every_n_steps=50)])

    Args:
        log_every_n_steps: measure on step 0 and every this many optimizer steps, on the
            steps Lightning writes its own step metrics (``n-1, 2n-1, ...``);
            ``None`` follows ``trainer.log_every_n_steps``.
        saturation_margin: distance from an end of the output range that counts as saturated.
    """

    def __init__(
        self, log_every_n_steps: int | None = None, saturation_margin: float = 0.02
    ) -> None:
        check_interval("log_every_n_steps", log_every_n_steps)
        if not 0 < saturation_margin < 0.5:
            raise ValueError(f"saturation_margin must be in (0, 0.5), got {saturation_margin!r}.")
        self.log_every_n_steps = log_every_n_steps
        self.saturation_margin = saturation_margin
        self._modules: list[tuple[str, nn.Module]] = []
        self._hooks: list[tuple[nn.Module, Any]] = []  # made once a fit, attached per step
        self._pass = EagerPass()  # the hooks of one logging step
        self._kept: dict[tuple, _Kept] = {}  # (kind, shape, dtype, device) -> its outputs
        self._kept_numel = 0  # elements copied and not measured yet
        self._ran: dict[str, None] = {}  # modules in the order they first ran this step
        self._rows: list[tuple[list[str], torch.Tensor]] = []  # names, their [mean, std, ...]
        self._hooked_step: int | None = None
        self.last_metrics: dict[str, float] = {}
        # For the verdict: per module (in the order they first ran) the std at the first
        # logged step and the sums of dead / saturated shares over logged steps.
        self._first_std: dict[str, float] = {}
        self._sums: dict[str, list[float]] = {}  # name -> [dead, saturation, count]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # a checkpoint's state is restored after this
            self._first_std, self._sums = {}, {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._modules = [
            (stable_name(name), module)
            for name, module in pl_module.named_modules()
            if isinstance(module, ACTIVATIONS)
        ]
        self._hooks = [(module, self._hook(name, module)) for name, module in self._modules]
        self._kept = {}

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if not logs_at(step, self.log_every_n_steps, trainer):
            return
        if step == self._hooked_step or not self._hooks:
            return
        self._hooked_step = step
        self._ran, self._rows, self._kept_numel = {}, [], 0
        for kept in self._kept.values():
            kept.names, kept.used = [], False
        self._pass.start(module.register_forward_hook(hook) for module, hook in self._hooks)

    def _hook(self, name: str, module: nn.Module):
        kind = self._kind(module)

        def record(module: nn.Module, args: tuple, output: Any) -> None:
            if not (isinstance(output, torch.Tensor) and output.dim() >= 1 and output.numel()):
                return
            self._ran[name] = None
            if output.numel() >= MEASURE_AT_ONCE:  # the arithmetic dominates: measure now
                with torch.no_grad():
                    self._rows.append(([name], self._measure(kind, output.detach()[None])))
                return
            key = (kind, output.shape, output.dtype, output.device)
            self._kept.setdefault(key, _Kept()).append(name, output)
            self._kept_numel += output.numel()
            if self._kept_numel >= PENDING_NUMEL:
                self._measure_kept()

        return record

    @staticmethod
    def _kind(module: nn.Module) -> tuple[float, float] | str | None:
        """What a module's output is measured for besides mean and std: its saturating
        range, ``"dead"`` for rectifiers, or nothing."""
        span = SATURATING.get(type(module))
        return span if span is not None else "dead" if isinstance(module, RECTIFYING) else None

    @torch.no_grad()
    def _measure_kept(self) -> None:
        """The kept small outputs, a few operations per (kind, shape) instead of several per
        module: on small layers the per-operation overhead, not the arithmetic, is the cost."""
        for (kind, *_), kept in self._kept.items():
            if kept.names:
                names, outputs, scratch = kept.take()
                self._rows.append((names, self._measure(kind, outputs, scratch)))
        self._kept_numel = 0

    def _measure(
        self, kind: Any, outputs: torch.Tensor, scratch: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[mean, std, saturation, dead] (NaN where it does not apply) of each of ``outputs``
        (stacked on the first dimension), on their device; ``scratch``: float32 room for
        one intermediate value of each element."""
        k = len(outputs)
        flat = outputs.reshape(k, -1).float()
        n = flat.shape[1]
        work = torch.empty_like(flat) if scratch is None else scratch.view(k, -1)
        nan = torch.full((k,), float("nan"), device=flat.device)
        mean = flat.mean(dim=1)
        # The sample std from the centred values: on CPU, 12x faster than std(dim=1) along
        # rows, and as accurate (pairwise summation).
        if n > 1:
            squares = torch.sub(flat, mean[:, None], out=work).square_()
            std = squares.sum(dim=1).div_(n - 1).sqrt_()
        else:
            std = nan
        saturation = dead = nan
        if isinstance(kind, tuple):
            low, high = kind  # within the margin of either end: |x - mid| > half - margin
            margin = self.saturation_margin * (high - low)
            ends = torch.sub(flat, (low + high) / 2, out=work).abs_()
            saturation = ends.gt_((high - low) / 2 - margin).sum(dim=1).div_(n)  # 1.0 / 0.0
        elif kind == "dead":  # a unit: one position of the output without the batch dimension
            batch = outputs.shape[1] if outputs.dim() > 2 else 1
            # Rectifier outputs are >= 0: dead (zero for every example) when the max is 0.
            dead = (flat.reshape(k, batch, -1).amax(dim=1) == 0).float().mean(dim=1)
        return torch.stack([mean, std, saturation, dead], dim=1)

    def on_before_backward(self, trainer: L.Trainer, *args: Any) -> None:
        if self._pass.active:  # the outputs copied in the forward pass are still in cache
            self._measure_kept()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if not self._pass.active:
            return
        self._pass.stop()
        self._measure_kept()
        self._kept = {key: kept for key, kept in self._kept.items() if kept.used}
        if not self._rows:
            return
        measured = [name for names, _ in self._rows for name in names]
        rows = torch.cat([r for _, r in self._rows]).tolist()  # one device-to-host transfer
        self._rows = []
        # In the order the modules first ran; a module called several times per forward
        # gets the mean of its calls (in float64, on the host).
        calls: dict[str, list[list[float]]] = {name: [] for name in self._ran}
        for name, row in zip(measured, rows):
            calls[name].append(row)
        names = list(calls)
        values = [
            each[0] if len(each) == 1 else [statistics.fmean(column) for column in zip(*each)]
            for each in calls.values()
        ]
        self._remember(names, values)
        if not trainer.is_global_zero:
            return
        metrics = {}
        for name, (mean, std, saturation, dead) in zip(names, values):
            metrics[f"activation/{name}/mean"] = mean
            metrics[f"activation/{name}/std"] = std
            if saturation == saturation:  # not NaN
                metrics[f"activation/{name}/saturation"] = saturation
            if dead == dead:
                metrics[f"activation/{name}/dead"] = dead
        self.last_metrics = metrics
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=self._hooked_step)

    def _remember(self, names: list[str], values: list[list[float]]) -> None:
        for name, (_, std, saturation, dead) in zip(names, values):
            self._first_std.setdefault(name, std)
            sums = self._sums.setdefault(name, [0.0, 0.0, 0])
            sums[0] += dead if dead == dead else 0.0
            sums[1] += saturation if saturation == saturation else 0.0
            sums[2] += 1

    def signals(self) -> dict[str, list[float]]:
        """What :func:`gradwatch.verdict.diagnose` reads, per module in the order they ran:
        ``dead`` (ReLU) and ``saturation`` (sigmoid/tanh) averaged over the logged steps, and
        ``activation_std`` at the first logged step."""
        kinds = {name: module for name, module in self._modules}
        dead = [s[0] / s[2] for n, s in self._sums.items() if isinstance(kinds[n], RECTIFYING)]
        saturated = [s[1] / s[2] for n, s in self._sums.items() if type(kinds[n]) in SATURATING]
        return {
            "dead": dead,
            "saturation": saturated,
            "activation_std": list(self._first_std.values()),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"first_std": self._first_std, "sums": self._sums}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._first_std = dict(state_dict.get("first_std", {}))
        self._sums = {k: list(v) for k, v in state_dict.get("sums", {}).items()}

    def _stop(self) -> None:
        self._pass.stop()
        self._kept, self._rows = {}, []

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop()

    def on_exception(self, trainer: L.Trainer, *args: Any) -> None:
        self._stop()
