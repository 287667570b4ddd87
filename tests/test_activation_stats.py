"""ActivationStatsCallback: saturation, dead units, hooks only on logging steps."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from gradwatch.callbacks import ActivationStatsCallback
from gradwatch.callbacks.activation_stats import MEASURE_AT_ONCE
from gradwatch.data import DigitsDataModule
from gradwatch.module import ClassifierModule
from tests.memory_logger import MemoryLogger


class Probe(nn.Module):
    """A saturated sigmoid layer, a ReLU layer that is dead, a healthy tanh, and the output."""

    def __init__(self) -> None:
        super().__init__()
        self.saturated = nn.Linear(64, 32)
        with torch.no_grad():
            self.saturated.weight.mul_(1000.0)  # pre-activations far out on both flat ends
        self.sigmoid = nn.Sigmoid()
        self.dead = nn.Linear(32, 32)
        with torch.no_grad():
            self.dead.bias.fill_(-1e3)  # every unit negative for every input
        self.relu = nn.ReLU()
        self.tanh = nn.Tanh()
        self.out = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.sigmoid(self.saturated(x.flatten(1)))
        return self.out(self.tanh(h) + self.relu(self.dead(h)))


def fit(
    tmp_path, callback: ActivationStatsCallback, steps: int, net: nn.Module | None = None
) -> tuple[nn.Module, MemoryLogger]:
    """``net`` (default: :class:`Probe`) trained ``steps`` steps on digits with ``callback``."""
    torch.manual_seed(0)
    net, log = net or Probe(), MemoryLogger()
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=log,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(ClassifierModule(net, num_classes=10), datamodule=DigitsDataModule(seed=0))
    return net, log


def test_saturated_sigmoid_and_dead_relu_are_reported(tmp_path):
    _, log = fit(tmp_path, ActivationStatsCallback(log_every_n_steps=1), steps=1)
    assert log.values("activation/net.sigmoid/saturation")[0] > 0.95
    assert log.values("activation/net.relu/dead")[0] == 1.0
    assert log.values("activation/net.relu/mean")[0] == 0.0
    # tanh of values in (0, 1) stays below 0.77: not saturated.
    assert log.values("activation/net.tanh/saturation")[0] == 0.0
    assert log.values("activation/net.tanh/std")[0] > 0.0
    # Saturation is for bounded activations, dead for rectifiers.
    assert not log.values("activation/net.relu/saturation")
    assert not log.values("activation/net.sigmoid/dead")


def test_hooks_run_only_on_logging_steps_and_are_removed(tmp_path):
    calls = []

    class Counting(ActivationStatsCallback):
        def _hook(self, name, module):  # made once a fit: count what each call records
            record = super()._hook(name, module)

            def counted(*args):
                calls.append(name)
                record(*args)

            return counted

    net, log = fit(tmp_path, Counting(log_every_n_steps=2), steps=5)
    assert sorted(log.values("activation/net.relu/dead")) == [0, 1, 3]  # Lightning's 2nd steps
    assert len(calls) == 3 * 3  # three logging steps x three activation modules
    assert all(not m._forward_hooks for m in net.modules())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"log_every_n_steps": 0}, "log_every_n_steps must be a positive integer or null, got 0"),
        ({"saturation_margin": 0.7}, r"saturation_margin must be in \(0, 0.5\), got 0.7"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ActivationStatsCallback(**kwargs)


def test_tanh_saturation_margin_scales_with_its_range(tmp_path):
    """tanh spans (-1, 1): a margin of 0.02 of the range is 0.04 from either end."""

    class Fixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tanh = nn.Tanh()
            self.out = nn.Linear(6, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # Outputs 0.97 and -0.97 (saturated), 0.95, -0.95, 0.5 and 0 (not): 2 of 6.
            targets = torch.tensor([0.97, -0.97, 0.95, -0.95, 0.5, 0.0])
            pre = torch.atanh(targets).expand(x.shape[0], 6) + 0 * x.flatten(1)[:, :6]
            return self.out(self.tanh(pre))

    callback = ActivationStatsCallback(log_every_n_steps=1, saturation_margin=0.02)
    _, log = fit(tmp_path, callback, steps=1, net=Fixed())
    assert log.values("activation/net.tanh/saturation")[0] == pytest.approx(2 / 6)


class Mixed(nn.Module):
    """Activations of one shape (measured together), a ReLU called twice, a GELU output changed
    in place after it ran, and a ReLU too large to be batched; keeps its step-0 outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(64, 32)
        self.sigmoid, self.relu, self.tanh = nn.Sigmoid(), nn.ReLU(), nn.Tanh()
        self.gelu = nn.GELU()
        self.wide = nn.Linear(32, 4096)  # batch x 4096 >= MEASURE_AT_ONCE for batches >= 64
        self.big = nn.ReLU()
        self.out = nn.Linear(5 * 32 + 4096, 10)
        self.kept: dict[str, list[torch.Tensor]] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x.flatten(1))
        a, b, c, d = self.sigmoid(h * 4), self.relu(h), self.tanh(h * 3), self.gelu(h)
        b2 = self.relu(h - 0.5)
        w = self.big(self.wide(a))
        kept = {"sigmoid": [a], "relu": [b, b2], "tanh": [c], "gelu": [d], "big": [w]}
        if self.kept is None:
            self.kept = {k: [t.detach().clone() for t in v] for k, v in kept.items()}
        d.mul_(3.0)  # in place, after the callback saw it: the stats keep the value it had
        return self.out(torch.cat([a, b, c, d, b2, w], 1))


def test_stats_match_each_output_as_it_was_when_the_module_ran(tmp_path):
    net, log = fit(tmp_path, ActivationStatsCallback(log_every_n_steps=1), steps=1, net=Mixed())
    assert net.kept["big"][0].numel() >= MEASURE_AT_ONCE
    spans = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}
    for name, outputs in net.kept.items():
        expected = {
            "mean": [o.mean().item() for o in outputs],
            "std": [o.std().item() for o in outputs],
        }
        if name in spans:
            low, high = spans[name]
            margin = 0.02 * (high - low)
            expected["saturation"] = [
                ((o < low + margin) | (o > high - margin)).float().mean().item() for o in outputs
            ]
        if name in ("relu", "big"):
            expected["dead"] = [(o == 0).all(dim=0).float().mean().item() for o in outputs]
        for stat, values in expected.items():
            logged = log.values(f"activation/net.{name}/{stat}")
            mean_of_calls = sum(values) / len(values)  # a module called twice: their mean
            assert logged == {0: pytest.approx(mean_of_calls, rel=1e-5, abs=1e-7)}, (name, stat)
    assert 0 < log.values("activation/net.relu/dead")[0] < 1


class TorchvisionResNet(nn.Module):
    """torchvision's ResNet-18 on digits (as 3 x 8 x 8): in-place ReLUs, one ReLU module
    called twice in every block, 4-D outputs of several shapes, some measured at once;
    keeps every ReLU call's output at step 0, as it was when the ReLU returned."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet18

        self.resnet = resnet18(num_classes=10)
        self.kept: dict[str, list[torch.Tensor]] = {}
        self.first = True
        for name, module in self.resnet.named_modules():
            if isinstance(module, nn.ReLU):
                module.register_forward_hook(self._keep(f"resnet.{name}"))

    def _keep(self, name: str):
        def hook(module, args, output):
            if self.first:
                self.kept.setdefault(name, []).append(output.detach().clone())

        return hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = x.reshape(-1, 1, 8, 8).expand(-1, 3, 8, 8).repeat_interleave(8, 2)
        out = self.resnet(big.repeat_interleave(8, 3))  # 64 x 64: the stem's ReLU is large
        self.first = False
        return out


def test_stats_of_a_torchvision_resnet_match_its_relu_outputs(tmp_path):
    net, log = fit(tmp_path, ActivationStatsCallback(log_every_n_steps=1), steps=1,
                   net=TorchvisionResNet())  # fmt: skip
    assert max(o.numel() for outs in net.kept.values() for o in outs) >= MEASURE_AT_ONCE
    assert any(len(outs) == 2 for outs in net.kept.values())  # a block's relu, called twice
    for name, outputs in net.kept.items():
        units = [o.reshape(o.shape[0], -1) for o in outputs]
        expected = {
            "mean": sum(o.mean().item() for o in outputs) / len(outputs),
            "std": sum(o.std().item() for o in outputs) / len(outputs),
            "dead": sum((u == 0).all(dim=0).float().mean().item() for u in units) / len(units),
        }
        for stat, value in expected.items():
            logged = log.values(f"activation/net.{name}/{stat}")
            assert logged == {0: pytest.approx(value, rel=1e-4, abs=1e-6)}, (name, stat)


class RunOrder(nn.Module):
    """ReLU, tanh, ReLU in that order: the two ReLUs share a (kind, shape) group, so they are
    measured together, before the tanh. Every other forward halves the width (new shapes)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(64, 48)
        self.first, self.tanh, self.second = nn.ReLU(), nn.Tanh(), nn.ReLU()
        self.out = nn.Linear(48, 10)
        self.kept: list[dict[str, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = 48 if len(self.kept) % 2 == 0 else 24
        h = self.inp(x.flatten(1))[:, :width]
        outs = {"first": self.first(h), "tanh": self.tanh(h[:, :16]), "second": self.second(-h)}
        self.kept.append({k: v.detach().clone() for k, v in outs.items()})
        extra = sum(v.sum(1, keepdim=True) for v in outs.values())
        return self.out(nn.functional.pad(h, (0, 48 - width))) + extra


def test_modules_are_reported_in_the_order_they_ran_whatever_the_shapes(tmp_path):
    callback = ActivationStatsCallback(log_every_n_steps=1)
    net, log = fit(tmp_path, callback, steps=3, net=RunOrder())
    names = ["first", "tanh", "second"]
    for step in range(3):  # widths 48, 24, 48: buffers of a new shape, then the old again
        for name in names:
            out = net.kept[step][name]
            assert log.values(f"activation/net.{name}/mean")[step] == pytest.approx(
                out.mean().item(), rel=1e-5, abs=1e-7
            )
            assert log.values(f"activation/net.{name}/std")[step] == pytest.approx(
                out.std().item(), rel=1e-5, abs=1e-7
            )
    # The verdict's signals list the modules input side first: the order they ran.
    first_std = [net.kept[0][name].std().item() for name in names]
    assert callback.signals()["activation_std"] == pytest.approx(first_std, rel=1e-5)
