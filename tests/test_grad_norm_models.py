"""GradientNormCallback on models this project did not write, each checked against plain torch.

Every reference here is computed in the test from the parameters' own ``.grad`` (recorded by
``GradProbe``, a callback that runs before the one under test) with ``torch.linalg``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BackboneFinetuning
from lightning.pytorch.demos.transformer import Transformer
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gradwatch.callbacks import ActivationStatsCallback, GradientNormCallback
from tests.memory_logger import MemoryLogger


class GradProbe(L.Callback):
    """Keeps every parameter's gradient (by name) at each optimizer step, before clipping."""

    def __init__(self) -> None:
        self.grads: list[tuple[int, int, dict[str, torch.Tensor]]] = []  # (step, opt, grads)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        index = next(i for i, o in enumerate(trainer.optimizers) if o is optimizer)
        named = {
            n: p.grad.detach().double().clone()
            for n, p in pl_module.named_parameters()
            if p.grad is not None
        }
        self.grads.append((trainer.global_step, index, named))


def norm(tensors) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


def layer_norm(grads: dict[str, torch.Tensor], layer: str) -> float:
    """Independent: the norm of the parameters directly owned by module path ``layer``."""
    mine = [g for n, g in grads.items() if n.rpartition(".")[0] == layer]
    assert mine, f"no gradient for {layer}: {sorted(grads)}"
    return norm(mine)


def rows(run_dir: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run_dir / "grad_norms.csv").open()))


def trainer(tmp_path: Path, callbacks, **kwargs) -> L.Trainer:
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": 3,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
        "default_root_dir": tmp_path,
        **kwargs,
    }
    return L.Trainer(callbacks=callbacks, **options)


def loader(n=64, features=8, classes=4, batch=16, seed=0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch)


class Classifier(L.LightningModule):
    """The smallest LightningModule around a network: cross-entropy, SGD or Adam."""

    def __init__(self, net: nn.Module, lr: float = 0.1, adam: bool = False, **adam_kwargs):
        super().__init__()
        self.net, self.lr, self.adam, self.adam_kwargs = net, lr, adam, adam_kwargs

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if self.adam:
            return torch.optim.Adam(params, lr=self.lr, **self.adam_kwargs)
        return torch.optim.SGD(params, lr=self.lr)


def mlp(depth=3, width=16, features=8, classes=4) -> nn.Sequential:
    layers, size = [], features
    for _ in range(depth):
        layers += [nn.Linear(size, width), nn.Tanh()]
        size = width
    return nn.Sequential(*layers, nn.Linear(size, classes))


# -- fp16 AMP: a step the gradient scaler skips is counted, not judged -----------------------
class WeightWatch(L.Callback):
    """Independent count of skipped steps: steps across which no weight changed."""

    def __init__(self):
        self.skipped = 0

    def on_train_batch_start(self, trainer, pl_module, *args):
        self.before = [p.detach().clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer, pl_module, *args):
        after = list(pl_module.parameters())
        self.skipped += all(torch.equal(a, b) for a, b in zip(self.before, after))


def fp16_on_cpu(init_scale: float, backoff: float = 0.5) -> MixedPrecision:
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, backoff_factor=backoff)
    return MixedPrecision("16-mixed", device="cpu", scaler=scaler)


@pytest.mark.parametrize("fused", [False, True])
def test_fp16_overflow_steps_are_counted_and_training_goes_on(tmp_path, fused):
    torch.manual_seed(0)
    probe, watch, log = GradProbe(), WeightWatch(), MemoryLogger()
    cb = GradientNormCallback(log_every_n_steps=1)
    # A scale of 2^24 overflows the first step's fp16 gradients; the scaler backs off to 2^14.
    t = trainer(
        tmp_path,
        [watch, probe, cb],
        plugins=[fp16_on_cpu(2.0**24, backoff=2.0**-10)],
        max_steps=6,
        logger=log,
    )
    t.fit(Classifier(mlp(), lr=1e-3, adam=True, fused=fused), loader())
    assert t.global_step == 6 and not t.should_stop and cb.nonfinite_layer is None
    assert watch.skipped == 1
    assert log.values("grad_norm/amp_skipped")[5] == 1
    assert cb.summary()["diagnosis"] != "non-finite"
    # A step the scaler did not skip logs the true (unscaled) gradient: the probe saw scaled
    # gradients where a fused optimizer unscales inside its step.
    step, _, grads = probe.grads[3]
    scale = 2.0**14 if fused else 1.0
    want = layer_norm(grads, "net.0") / scale
    assert log.values("grad_norm/net.0")[step] == pytest.approx(want, rel=1e-5)
    assert 0 not in log.values("grad_norm/net.0")  # the skipped step has no per-layer values


def test_a_collapsed_gradient_scaler_is_non_finite(tmp_path):
    class NaNLoss(Classifier):
        def training_step(self, batch, batch_idx):
            return super().training_step(batch, batch_idx) * float("nan")

    cb = GradientNormCallback(log_every_n_steps=1, amp_min_scale=1.0)
    t = trainer(tmp_path, [cb], plugins=[fp16_on_cpu(4.0)], max_steps=20)
    t.fit(NaNLoss(mlp()), loader())
    # Scale 4 -> 2 -> 1 -> 0.5: the third skip falls below 1.
    assert cb.summary()["diagnosis"] == "non-finite" and t.global_step == 3
    assert "scaler" in cb.summary()["advice"]


# -- several optimizers: a GAN in manual optimization -----------------------------------------
class GAN(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
        self.discriminator = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        real, _ = batch
        opt_g, opt_d = self.optimizers()
        z = torch.randn(real.shape[0], 4)
        # Generator step; the discriminator's gradients from the previous step stay in place.
        fake = self.generator(z)
        g_loss = F.softplus(-self.discriminator(fake)).mean()
        self.manual_backward(g_loss)
        opt_g.step()
        opt_g.zero_grad()
        # Discriminator step (the generator's gradients are now zero, not None).
        d_loss = (
            F.softplus(-self.discriminator(real)).mean()
            + F.softplus(self.discriminator(fake.detach())).mean()
        )
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()

    def configure_optimizers(self):
        return (
            torch.optim.Adam(self.generator.parameters(), lr=1e-3),
            torch.optim.Adam(self.discriminator.parameters(), lr=1e-3),
        )


def test_gan_rows_and_totals_belong_to_the_optimizer_being_stepped(tmp_path):
    torch.manual_seed(0)
    probe, log = GradProbe(), MemoryLogger()
    cb = GradientNormCallback(log_every_n_steps=2)
    t = trainer(tmp_path, [probe, cb], max_steps=8, logger=log)
    t.fit(GAN(), loader(features=8))
    generator = [(s, g) for s, i, g in probe.grads if i == 0]
    discriminator = [(s, g) for s, i, g in probe.grads if i == 1]
    assert len(generator) == len(discriminator) == 4
    # Each optimizer's own steps 0, 1 and 3 are logged (an interval of the global step would
    # only ever see one of the two networks).
    for (step, grads), name, layers in (
        (generator[3], "generator", ["generator.0", "generator.2"]),
        (discriminator[3], "discriminator", ["discriminator.0", "discriminator.2"]),
    ):
        params = [g for n, g in grads.items() if n.startswith(name + ".")]
        assert log.values(f"grad_norm/total/{name}")[step] == pytest.approx(norm(params))
        first, last = (layer_norm(grads, layer) for layer in layers)
        ratio = log.values(f"grad_norm/first_last_ratio/{name}")[step]
        assert ratio == pytest.approx(first / last)
        logged = {k for s, m in log.rows if s == step for k in m}
        assert not any(k.startswith("update_ratio/") and name not in k for k in logged)
    assert {r["optimizer"] for r in rows(tmp_path)} == {"generator", "discriminator"}
    assert "grad_norm/total" not in {k for _, m in log.rows for k in m}


# -- depth order: transformers, parameters on the module itself, branches ---------------------
class DemoTransformer(L.LightningModule):
    """Lightning's demo Transformer (nn.Transformer inside) on random tokens."""

    def __init__(self):
        super().__init__()
        self.model = Transformer(vocab_size=50, ninp=16, nhead=2, nhid=16, nlayers=1, dropout=0)

    def training_step(self, batch, batch_idx):
        inputs, target = batch
        return F.nll_loss(self.model(inputs, target), target.view(-1))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class EncoderClassifier(Classifier):
    """Embedding -> nn.TransformerEncoder (2 post-norm layers) -> Linear."""

    def __init__(self):
        super().__init__(nn.Identity())
        self.embed = nn.Embedding(50, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 4)  # registered after the encoder, runs after it

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)).mean(dim=1))


def test_transformer_encoder_layers_in_the_order_the_data_flows(tmp_path):
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randint(0, 50, (32, 10)), torch.randint(0, 4, (32,))), 16)
    probe = GradProbe()
    cb = GradientNormCallback(log_every_n_steps=1)
    trainer(tmp_path, [probe, cb], max_steps=1).fit(EncoderClassifier(), data)
    # out_proj is called functionally (no forward hook of its own): it still comes right
    # after its attention's input projection, not after the output layer.
    block = ["self_attn", "self_attn.out_proj", "norm1", "linear1", "linear2", "norm2"]
    want = ["embed"] + [f"encoder.layers.{i}.{n}" for i in range(2) for n in block] + ["head"]
    assert cb.layer_names == want
    _, _, grads = probe.grads[0]
    assert cb.ratios[0] == pytest.approx(layer_norm(grads, "embed") / layer_norm(grads, "head"))


def test_lightning_demo_transformer_ratio_is_embedding_over_decoder(tmp_path):
    torch.manual_seed(0)
    tokens = torch.randint(0, 50, (8, 2, 12))
    data = DataLoader(list(zip(tokens[:, 0], tokens[:, 1])), batch_size=4)
    probe, log = GradProbe(), MemoryLogger()
    cb = GradientNormCallback(log_every_n_steps=1)
    trainer(tmp_path, [probe, cb], max_steps=1, logger=log).fit(DemoTransformer(), data)
    assert cb.layer_names[0] == "model.embedding" and cb.layer_names[-1] == "model.decoder"
    _, _, grads = probe.grads[0]
    want = layer_norm(grads, "model.embedding") / layer_norm(grads, "model.decoder")
    assert log.values("grad_norm/first_last_ratio")[0] == pytest.approx(want, rel=1e-5)


class OwnParameters(Classifier):
    """Parameters owned by the LightningModule itself, used first and last."""

    def __init__(self):
        super().__init__(mlp())
        self.input_scale = nn.Parameter(torch.ones(8))
        self.output_bias = nn.Parameter(torch.zeros(4))

    def forward(self, x):
        return self.net(x * self.input_scale) + self.output_bias


def test_parameters_of_the_module_itself_are_placed_by_their_use(tmp_path):
    cb = GradientNormCallback(log_every_n_steps=1)
    trainer(tmp_path, [cb], max_steps=1).fit(OwnParameters(), loader())
    # Both belong to the one layer named after the class; it is used at the input.
    assert cb.layer_names == ["OwnParameters", "net.0", "net.2", "net.4", "net.6"]


class LateBranch(Classifier):
    """A branch that only runs from step 2 on, between the input and the output layer."""

    def __init__(self):
        super().__init__(nn.Identity())
        self.head = nn.Linear(16, 4)  # registered first, runs last
        self.inp = nn.Linear(8, 16)
        self.branch = nn.Linear(16, 16)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        if self.trainer.global_step >= 2:
            h = torch.tanh(self.branch(h))
        return self.head(h)


def test_a_branch_first_taken_later_joins_at_its_depth(tmp_path):
    probe = GradProbe()
    cb = GradientNormCallback(log_every_n_steps=1)
    trainer(tmp_path, [probe, cb], max_steps=4).fit(LateBranch(), loader())
    by_step: dict[int, list[dict[str, str]]] = {}
    for row in rows(tmp_path):
        by_step.setdefault(int(row["step"]), []).append(row)
    depth = {r["layer"]: int(r["depth"]) for r in by_step[3]}
    assert depth == {"inp": 1, "branch": 2, "head": 3}
    assert by_step[0][[r["layer"] for r in by_step[0]].index("branch")]["grad_norm"] == ""
    _, _, grads = probe.grads[3]
    assert cb.ratios[3] == pytest.approx(layer_norm(grads, "inp") / layer_norm(grads, "head"))


# -- fine-tuning: layers frozen when fit starts ---------------------------------------------
class Finetune(Classifier):
    def __init__(self):
        super().__init__(nn.Identity(), lr=0.05)
        self.backbone = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.backbone(x))


def finetuned(tmp_path, every: int) -> tuple[GradProbe, MemoryLogger, GradientNormCallback]:
    """Two epochs of 2 steps, the backbone unfrozen by BackboneFinetuning at epoch 1 (step 2)."""
    probe, log = GradProbe(), MemoryLogger()
    cb = GradientNormCallback(log_every_n_steps=every)
    finetune = BackboneFinetuning(unfreeze_backbone_at_epoch=1, verbose=False)
    t = trainer(tmp_path, [finetune, probe, cb], max_steps=-1, max_epochs=2, logger=log)
    t.fit(Finetune(), loader(batch=32))
    return probe, log, cb


def test_backbone_unfrozen_by_backbone_finetuning_is_logged_from_then_on(tmp_path):
    probe, log, cb = finetuned(tmp_path, every=1)
    assert "grad_norm/backbone.0" not in log.rows[0][1]
    step, _, grads = probe.grads[-1]
    assert step == 3
    assert log.values("grad_norm/backbone.0")[3] == pytest.approx(layer_norm(grads, "backbone.0"))
    assert cb.layer_names == ["backbone.0", "backbone.2", "head"]
    want = layer_norm(grads, "backbone.0") / layer_norm(grads, "head")
    assert log.values("grad_norm/first_last_ratio")[3] == pytest.approx(want)


def test_backbone_unfrozen_between_logging_steps_is_logged_at_the_next(tmp_path):
    # Every 4 steps: logged at steps 0 and 3; unfrozen at step 2 (epoch 1), a step that logs
    # nothing, so the new parameter group is found at step 3.
    probe, log, _ = finetuned(tmp_path, every=4)
    assert sorted(log.values("grad_norm/head")) == [0, 3]
    assert list(log.values("grad_norm/backbone.0")) == [3]
    step, _, grads = probe.grads[-1]
    assert step == 3
    for layer in ("backbone.0", "backbone.2", "head"):
        assert log.values(f"grad_norm/{layer}")[3] == pytest.approx(layer_norm(grads, layer))
    assert log.values("update_ratio/backbone.0")[3] > 0


# -- tied weights ---------------------------------------------------------------------------
class TiedLM(Classifier):
    def __init__(self):
        super().__init__(nn.Identity())
        self.embed = nn.Embedding(20, 8)
        self.hidden = nn.Linear(8, 8)
        self.out = nn.Linear(8, 20, bias=False)
        self.out.weight = self.embed.weight

    def training_step(self, batch, batch_idx):
        tokens = batch[0]
        logits = self.out(torch.tanh(self.hidden(self.embed(tokens[:, :-1]))))
        return F.cross_entropy(logits.reshape(-1, 20), tokens[:, 1:].reshape(-1))


def test_tied_weights_count_once_in_the_totals(tmp_path):
    torch.manual_seed(0)
    tokens = torch.randint(0, 20, (32, 6))
    data = DataLoader(TensorDataset(tokens), batch_size=16)
    probe, log = GradProbe(), MemoryLogger()
    cb = GradientNormCallback(log_every_n_steps=1)
    trainer(tmp_path, [probe, cb], max_steps=2, logger=log, gradient_clip_val=0.05).fit(
        TiedLM(), data
    )
    _, _, grads = probe.grads[0]
    assert len(grads) == 3  # embed.weight (= out.weight), hidden.weight, hidden.bias
    total = norm(grads.values())
    assert total > 0.05
    assert log.values("grad_norm/total")[0] == pytest.approx(total, rel=1e-6)
    assert log.values("grad_norm/clipped_total")[0] == pytest.approx(0.05, rel=1e-4)
    assert cb.layer_names == ["embed", "hidden"]


# -- grad_norms.csv belongs to the fit that writes it ----------------------------------------
def test_a_resumed_fit_continues_the_file_and_a_fresh_fit_starts_it_anew(tmp_path):
    torch.manual_seed(0)
    model = Classifier(mlp())
    first = trainer(tmp_path, [GradientNormCallback(log_every_n_steps=1)], max_steps=5)
    first.fit(model, loader())
    assert [int(r["step"]) for r in rows(tmp_path)][::4] == [0, 1, 2, 3, 4]
    # A checkpoint taken at step 3 (as after a kill): the rows past it are not repeated.
    t = trainer(tmp_path, [GradientNormCallback(log_every_n_steps=1)], max_steps=3)
    t.fit(Classifier(mlp()), loader())
    t.save_checkpoint(tmp_path / "step3.ckpt")
    for step in (3, 4):  # what the killed launch wrote after its checkpoint
        with (tmp_path / "grad_norms.csv").open("a") as f:
            f.write(f"{step},net.0,1,9,9,9,\n")
    resumed = trainer(tmp_path, [GradientNormCallback(log_every_n_steps=1)], max_steps=6)
    resumed.fit(Classifier(mlp()), loader(), ckpt_path=tmp_path / "step3.ckpt", weights_only=True)
    assert [int(r["step"]) for r in rows(tmp_path)][::4] == [0, 1, 2, 3, 4, 5]
    assert "9" not in {r["grad_norm"] for r in rows(tmp_path)}
    # A fresh fit in the same directory replaces the file.
    with pytest.warns(UserWarning, match="starting it anew"):
        trainer(tmp_path, [GradientNormCallback(log_every_n_steps=1)], max_steps=2).fit(
            Classifier(mlp()), loader()
        )
    assert [int(r["step"]) for r in rows(tmp_path)][::4] == [0, 1]


# -- torch.compile ----------------------------------------------------------------------------
def test_compiled_and_eager_runs_log_the_same_keys_and_activation_stats(tmp_path):
    logs = {}
    for mode in ("eager", "compiled"):
        torch.manual_seed(0)
        model = Classifier(mlp())
        if mode == "compiled":
            model.net = torch.compile(model.net, backend="aot_eager")
            model.net(torch.randn(2, 8))  # compiled and run before fit, without hooks
        log = MemoryLogger()
        callbacks = [
            GradientNormCallback(log_every_n_steps=2),
            ActivationStatsCallback(log_every_n_steps=2),
        ]
        trainer(tmp_path / mode, callbacks, max_steps=5, logger=log).fit(model, loader())
        logs[mode] = log
    eager, compiled = logs["eager"], logs["compiled"]
    keys = {k for _, m in eager.rows for k in m}
    assert keys == {k for _, m in compiled.rows for k in m}
    assert "grad_norm/net.0" in keys and not any("_orig_mod" in k for k in keys)
    for log in (eager, compiled):  # hooks run at every logging step, not only the first
        assert sorted(log.values("activation/net.1/mean")) == [0, 1, 3]
    for step in (0, 1, 3):
        assert compiled.values("grad_norm/net.0")[step] == pytest.approx(
            eager.values("grad_norm/net.0")[step], rel=1e-4
        )


# -- precision: bf16 parameters are measured in float32 ---------------------------------------
def test_bf16_true_norms_are_not_rounded_to_bf16(tmp_path):
    torch.manual_seed(0)
    probe, log = GradProbe(), MemoryLogger()
    cb = GradientNormCallback(log_every_n_steps=1)
    t = trainer(tmp_path, [probe, cb], max_steps=1, logger=log, precision="bf16-true")
    t.fit(Classifier(mlp(width=64)), loader())
    _, _, grads = probe.grads[0]  # the bf16 gradients, summed in float64
    for layer in ("net.0", "net.2", "net.6"):
        assert log.values(f"grad_norm/{layer}")[0] == pytest.approx(
            layer_norm(grads, layer), rel=1e-6
        )


# -- non-finite values, overflow and reserved names -------------------------------------------
class Poisoned(Classifier):
    """The middle layer's gradient gets an inf (or a huge, finite value) at step 1."""

    def __init__(self, value: float):
        super().__init__(mlp())
        self.value = value

    def on_after_backward(self):
        if self.trainer.global_step == 1:
            self.net[2].weight.grad[0, 0] = self.value


def test_an_infinite_gradient_is_non_finite_and_names_the_layer(tmp_path):
    cb = GradientNormCallback(log_every_n_steps=1)
    t = trainer(tmp_path, [cb], max_steps=5)
    t.fit(Poisoned(float("inf")), loader())
    assert cb.nonfinite_layer == "net.2" and cb.nonfinite_step == 1 and t.global_step == 2
    assert cb.summary()["diagnosis"] == "non-finite"


def test_a_norm_that_overflows_float32_is_exact_not_non_finite(tmp_path):
    probe, log = GradProbe(), MemoryLogger()
    cb = GradientNormCallback(log_every_n_steps=1)
    trainer(tmp_path, [probe, cb], max_steps=2, logger=log).fit(Poisoned(1e30), loader())
    _, _, grads = probe.grads[1]
    assert cb.nonfinite_layer is None
    assert log.values("grad_norm/net.2")[1] == pytest.approx(layer_norm(grads, "net.2"))
    assert log.values("grad_norm/total")[1] == pytest.approx(norm(grads.values()))


def test_a_layer_named_like_an_aggregate_does_not_overwrite_it(tmp_path):
    class Named(Classifier):
        def __init__(self):
            super().__init__(nn.Identity())
            self.inp = nn.Linear(8, 16)
            self.total = nn.Linear(16, 4)

        def forward(self, x):
            return self.total(torch.tanh(self.inp(x)))

    probe, log = GradProbe(), MemoryLogger()
    trainer(
        tmp_path, [probe, GradientNormCallback(log_every_n_steps=1)], max_steps=1, logger=log
    ).fit(Named(), loader())
    _, _, grads = probe.grads[0]
    assert log.values("grad_norm/total")[0] == pytest.approx(norm(grads.values()))
    assert log.values("grad_norm/total[layer]")[0] == pytest.approx(layer_norm(grads, "total"))


def test_advice_outside_this_project_names_no_config_keys(tmp_path):
    class Sigmoid(Classifier):
        def __init__(self):
            layers = []
            for _ in range(12):
                layers += [nn.Linear(8, 8), nn.Sigmoid()]
            super().__init__(nn.Sequential(*layers, nn.Linear(8, 4)))

    cb = GradientNormCallback(log_every_n_steps=1, warn=False)
    trainer(tmp_path, [cb], max_steps=1).fit(Sigmoid(), loader())
    assert cb.summary()["diagnosis"] == "vanishing"
    assert "experiment=" not in cb.summary()["advice"]
    assert "model.net" not in cb.summary()["advice"]


# -- scale: 520 layers, a cap on what reaches the loggers -------------------------------------
def test_a_520_layer_model_logs_the_capped_layers_and_writes_every_layer(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Linear(4, 4) for _ in range(519)], nn.Linear(4, 4))
    probe, log = GradProbe(), MemoryLogger()
    cb = GradientNormCallback(log_every_n_steps=1, max_logged_layers=6)
    model = Classifier(net)
    model.forward = lambda x: net(x[:, :4])
    trainer(tmp_path, [probe, cb], max_steps=1, logger=log).fit(model, loader())
    logged = sorted(int(k.split(".")[-1]) for k in log.rows[0][1] if k.startswith("grad_norm/net."))
    assert logged == [0, 104, 208, 311, 415, 519]  # first, last, evenly spaced by depth
    csv_rows = rows(tmp_path)
    assert len(csv_rows) == 520 and [int(r["depth"]) for r in csv_rows] == list(range(1, 521))
    _, _, grads = probe.grads[0]
    for row in csv_rows[::97]:
        assert float(row["grad_norm"]) == pytest.approx(layer_norm(grads, row["layer"]), rel=1e-5)


class Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x):
        return x + 0.1 * torch.tanh(self.linear(x))


class ReversedBlocks(nn.Module):
    """10,000 residual blocks, run in the reverse of their registration order."""

    def __init__(self, blocks: int = 10_000) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 4)
        self.blocks = nn.ModuleList(Residual(4) for _ in range(blocks))
        self.out = nn.Linear(4, 4)

    def forward(self, x):
        h = self.inp(x)
        for block in reversed(self.blocks):
            h = block(h)
        return self.out(h)


@pytest.mark.slow
def test_ten_thousand_residual_layers_in_depth_order(tmp_path):
    torch.manual_seed(0)
    probe = GradProbe()
    cb = GradientNormCallback(log_every_n_steps=1, max_logged_layers=16, weight_stats=False)
    trainer(tmp_path, [probe, cb], max_steps=2).fit(Classifier(ReversedBlocks()), loader())
    blocks = [f"net.blocks.{i}.linear" for i in reversed(range(10_000))]
    assert cb.layer_names == ["net.inp", *blocks, "net.out"]
    _, _, grads = probe.grads[1]
    want = layer_norm(grads, "net.inp") / layer_norm(grads, "net.out")
    assert cb.ratios[1] == pytest.approx(want, rel=1e-5)


def test_max_norm_every_third_step(tmp_path):
    torch.manual_seed(0)
    probe, log = GradProbe(), MemoryLogger()
    cb = GradientNormCallback(norm_type=float("inf"), log_every_n_steps=3)
    trainer(tmp_path, [probe, cb], max_steps=7, logger=log).fit(Classifier(mlp()), loader(n=128))
    assert sorted(log.values("grad_norm/total")) == [0, 2, 5]  # step 0, then Lightning's
    for step, _, grads in probe.grads:
        if step not in (0, 2, 5):
            continue
        for layer in ("net.0", "net.2", "net.6"):
            want = max(float(g.abs().max()) for n, g in grads.items() if n.startswith(layer + "."))
            assert log.values(f"grad_norm/{layer}")[step] == pytest.approx(want, rel=1e-6)
        total = max(float(g.abs().max()) for g in grads.values())
        assert log.values("grad_norm/total")[step] == pytest.approx(total, rel=1e-6)
    assert cb.first_step == 0 and cb.summary()["initial_first_last_ratio"] == cb.ratios[0]


def test_torchvision_resnet18_norms_and_order(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    images = DataLoader(TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))), 4)
    probe, log = GradProbe(), MemoryLogger()
    cb = GradientNormCallback(log_every_n_steps=1)
    trainer(tmp_path, [probe, cb], max_steps=1, logger=log).fit(
        Classifier(resnet18(num_classes=10)), images
    )
    names = cb.layer_names
    assert names[:2] == ["net.conv1", "net.bn1"] and names[-1] == "net.fc"
    # Inside a block: conv1, bn1, conv2, bn2; the downsample branch before the block's output.
    block = [n for n in names if n.startswith("net.layer2.0.")]
    assert block.index("net.layer2.0.conv1") < block.index("net.layer2.0.conv2")
    _, _, grads = probe.grads[0]
    for layer in ("net.conv1", "net.layer3.1.bn2", "net.layer4.0.downsample.0", "net.fc"):
        assert log.values(f"grad_norm/{layer}")[0] == pytest.approx(
            layer_norm(grads, layer), rel=1e-5
        )
    assert log.values("grad_norm/total")[0] == pytest.approx(norm(grads.values()), rel=1e-5)


def test_the_verdict_reads_the_logged_loss_a_network_that_does_not_learn_is_not_healthy(tmp_path):
    torch.manual_seed(0)
    cb = GradientNormCallback(log_every_n_steps=1)
    # lr 0: the gradients are fine, the weights never move, so the loss cannot fall.
    trainer(tmp_path, [cb], max_steps=8).fit(Classifier(mlp(), lr=0.0), loader(n=128))
    assert len(cb.losses) == 8 and max(cb.losses) - min(cb.losses) < 0.5  # independent: flat
    summary = cb.summary()
    assert 1e-2 < summary["median_first_last_ratio"] < 1e2  # the ratio alone says healthy
    assert (summary["diagnosis"], summary["stalled"]) == ("vanishing", True)
    assert any("did not fall" in r or "negligible" in r for r in summary["reasons"])


# -- activation statistics on models we did not write -----------------------------------------
class OutputProbe(L.Callback):
    """Independent record of every output of each ``kinds`` module in the first batch."""

    def __init__(self, *kinds: type[nn.Module]) -> None:
        self.kinds, self.outputs, self.dtypes, self.recording = kinds, {}, {}, False

    def on_fit_start(self, trainer, pl_module):
        for name, module in pl_module.named_modules():
            if isinstance(module, self.kinds):
                module.register_forward_hook(self._keep(name))

    def _keep(self, name):
        def keep(module, args, output):
            if self.recording:
                self.outputs.setdefault(name, []).append(output.detach().double().clone())
                self.dtypes[name] = output.dtype

        return keep

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.recording = batch_idx == 0

    def expected(self, name: str, stat: str) -> float:
        """The mean over the module's calls of each call's statistic."""
        of_call = {
            "mean": lambda o: o.mean(),
            "std": lambda o: o.std(),
            "dead": lambda o: (o.reshape(o.shape[0], -1) == 0).all(dim=0).double().mean(),
        }[stat]
        per_call = [of_call(o).item() for o in self.outputs[name]]
        return sum(per_call) / len(per_call)


def test_activations_of_a_gan_measured_across_its_two_backward_passes(tmp_path):
    # The discriminator's ReLU runs three times a step: once before the generator's backward
    # pass (measured then) and twice before the discriminator's (measured at that one).
    torch.manual_seed(0)
    probe, log = OutputProbe(nn.ReLU), MemoryLogger()
    cb = ActivationStatsCallback(log_every_n_steps=1)
    trainer(tmp_path, [probe, cb], max_steps=2, logger=log).fit(GAN(), loader(features=8))
    assert [len(probe.outputs[n]) for n in ("generator.1", "discriminator.1")] == [1, 3]
    for name in ("generator.1", "discriminator.1"):
        for stat in ("mean", "std", "dead"):
            assert log.values(f"activation/{name}/{stat}")[0] == pytest.approx(
                probe.expected(name, stat), rel=1e-5, abs=1e-7
            ), (name, stat)


class GeluEncoder(EncoderClassifier):
    """nn.TransformerEncoder with GELU modules (the default ReLU is called functionally)."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            16, 2, 32, dropout=0, batch_first=True, activation=nn.GELU()
        )
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


def test_transformer_activations_under_bf16_autocast_are_measured_in_float32(tmp_path):
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randint(0, 50, (32, 10)), torch.randint(0, 4, (32,))), 16)
    probe, log = OutputProbe(nn.GELU), MemoryLogger()
    cb = ActivationStatsCallback(log_every_n_steps=1)
    t = trainer(tmp_path, [probe, cb], max_steps=1, logger=log, precision="bf16-mixed")
    t.fit(GeluEncoder(), data)
    names = ["encoder.layers.0.activation", "encoder.layers.1.activation"]
    assert sorted(probe.outputs) == names
    assert set(probe.dtypes.values()) == {torch.bfloat16}
    for name in names:
        for stat in ("mean", "std"):
            assert log.values(f"activation/{name}/{stat}")[0] == pytest.approx(
                probe.expected(name, stat), rel=1e-5, abs=1e-7
            ), (name, stat)
