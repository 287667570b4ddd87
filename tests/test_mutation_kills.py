"""Tests written to kill mutants that survived ``make mutation`` (scripts/mutation.py).

Each asserts against an independent computation: plain torch or math here, never the
module's own helpers.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from gradwatch.report import claims as C
from gradwatch.report.collect import Job

PASS, FAIL, NOT_MEASURED = "pass", "fail", "not measured"


# -- the report's claims: one condition at a time, boundaries, and the text ------------------
def job(experiment, depth, ratio=None, acc=None, residual=None, name=None, status="completed"):
    return Job(
        job=name or f"{experiment}-{depth}",
        experiment=experiment,
        depth=depth,
        width=None,
        activation=None,
        init=None,
        norm=None,
        residual=residual,
        steps=None,
        val_acc=acc,
        test_acc=None,
        initial_first_last_ratio=ratio,
        final_first_last_ratio=None,
        verdict=None,
        status=status,
        error=None,
        duration_s=None,
        overrides="",
        path=Path("."),
    )


def groups(*jobs):
    out: dict[str, list[Job]] = {}
    for j in jobs:
        out.setdefault(j.experiment, []).append(j)
    return out


@pytest.mark.parametrize(
    ("ratio", "result"),
    [(1e-6, PASS), (1e-7, PASS), (2e-6, FAIL)],  # "10^-6 or more": 1e-6 itself passes
)
def test_reduce_1e6_boundary(ratio, result):
    claim = C.sigmoid_10_layers_reduce_1e6(groups(job("sigmoid", 10, ratio)))
    assert claim.result == result
    assert claim.evidence == f"depth 10: {ratio:.2e}"


@pytest.mark.parametrize(
    ("orders", "result"),
    [(6, PASS), (6.5, PASS), (10, PASS), (5.5, FAIL), (10.5, FAIL)],
)
def test_six_to_ten_orders_boundaries(orders, result):
    claim = C.six_to_ten_orders(groups(job("sigmoid", 10, 10.0**-orders)))
    assert claim.result == result
    assert claim.evidence == f"depth 10: {orders:.1f}"


def test_exponential_shrink_fails_on_the_fit_alone():
    # 1e-4 * 0.5^depth: under 0.25^depth at 5 and 10, but the per-layer factor is 0.5.
    runs = [job("sigmoid", d, 1e-4 * 0.5**d) for d in (5, 10)]
    claim = C.sigmoid_shrinks_exponentially(groups(*runs))
    assert all(j.initial_first_last_ratio <= 0.25**j.depth for j in runs)
    assert claim.result == FAIL
    assert claim.evidence.startswith("per-layer factor 0.500 (fit over depths [5, 10]); ")
    assert "depth 5: 3.13e-06 vs 0.25^L = 9.8e-04" in claim.evidence
    assert "; depth 10: 9.77e-08 vs 0.25^L = 9.5e-07" in claim.evidence


def test_exponential_shrink_fails_on_the_bound_alone():
    # 100 * 0.1^depth: factor 0.1, but at depth 5 the ratio 1e-3 is above 0.25^5 = 9.8e-4.
    runs = [job("sigmoid", d, 100 * 0.1**d) for d in (5, 10)]
    claim = C.sigmoid_shrinks_exponentially(groups(*runs))
    assert claim.result == FAIL
    assert claim.evidence.startswith("per-layer factor 0.100 ")


def test_exponential_shrink_passes_at_the_bound_and_counts_an_underflow_as_below():
    # 0.2^depth: factor 0.2; a 0 ratio (underflow) is below any bound and left out of the fit.
    runs = [job("sigmoid", 5, 0.2**5), job("sigmoid", 10, 0.2**10), job("sigmoid", 40, 0.0)]
    claim = C.sigmoid_shrinks_exponentially(groups(*runs))
    assert claim.result == PASS
    assert claim.evidence.startswith("per-layer factor 0.200 (fit over depths [5, 10]); ")
    assert claim.evidence.endswith("; depth 40: 0 (underflow) vs 0.25^L = 8.3e-25")
    # exactly at the bound at depth 5 still passes
    at_bound = [job("sigmoid", 5, 0.25**5), job("sigmoid", 10, 0.2**5 * 0.25**5)]
    assert C.sigmoid_shrinks_exponentially(groups(*at_bound)).result == PASS


def test_exponential_shrink_needs_two_depths():
    claim = C.sigmoid_shrinks_exponentially(groups(job("sigmoid", 10, 1e-9)))
    assert claim.result == NOT_MEASURED
    assert claim.evidence == "needs completed sigmoid jobs at two or more depths"
    assert claim.check.startswith("sigmoid, every depth: ratio at step 0 <= 0.25^depth")


@pytest.mark.parametrize(("acc", "result"), [(0.2, PASS), (0.19, PASS), (0.21, FAIL)])
def test_untrainable_is_at_most_chance_plus_a_tenth(acc, result):
    claim = C.deep_sigmoid_untrainable(groups(job("sigmoid", 20, 1e-9, acc=acc)))
    assert claim.result == result
    assert claim.evidence == f"depth 20: {acc:.3f}"
    assert claim.check == "sigmoid, depth >= 20: validation accuracy <= chance + 0.1 (0.2)"
    assert C.deep_sigmoid_untrainable(groups(job("sigmoid", 19, 1e-9, acc=0.9))).evidence == (
        "no completed sigmoid job at depth >= 20"
    )


@pytest.mark.parametrize(
    ("ratio", "result"), [(1e-2, PASS), (1e2, PASS), (0.009, FAIL), (101, FAIL)]
)
def test_healthy_band_includes_its_ends(ratio, result):
    claim = C._healthy_everywhere(groups(job("relu", 10, ratio, acc=0.5)), "relu", "q")
    assert claim.result == result
    assert claim.evidence == f"depth 10: {ratio:.2e} (val acc 0.500)"
    assert claim.check == "relu, every depth: ratio at step 0 within [0.01, 100]"


def test_not_measured_claims_say_why_and_are_from_the_sweep():
    claims = C.check_claims([])
    sweep = [c for c in claims if c.source == "sweep"]
    assert len(sweep) == 10 and all(c.result == NOT_MEASURED for c in sweep)
    assert [c.evidence for c in sweep] == [
        "no completed sigmoid job at depth 10",
        "no completed sigmoid job at depth 10 with a ratio",
        "needs completed sigmoid jobs at two or more depths",
        "no completed sigmoid job at depth >= 20",
        "no completed relu job",
        "no completed tanh job",
        "no completed batchnorm job",
        "no completed residual job at depth >= 20 (try SWEEP=full or SWEEP=deep)",
        "no completed residual job at depth >= 100 (try SWEEP=full or SWEEP=deep)",
        "needs completed plain and residual jobs",
    ]
    assert [c.quote for c in sweep] == [
        "A 10-layer sigmoid network can reduce gradients by a factor of 10^-6 or more.",
        "Layers near the input receive gradients that are 6-10 orders of magnitude smaller "
        "[than the output layer].",
        "Sigmoid's max derivative is 0.25 ... the chain rule multiplies these small values "
        "across layers: the product shrinks exponentially with depth (0.25^10 = 9.5e-7).",
        "A 20-layer [sigmoid] network becomes essentially untrainable.",
        "ReLU has a derivative of 1 for positive inputs, preventing gradient decay; He "
        "initialization maintains gradient variance across layers.",
        "Xavier/Glorot initialization [for tanh] maintains gradient variance.",
        "Batch normalization ... helps maintain gradient flow.",
        "Use residual connections for very deep networks (>20 layers).",
        "Residual connections ... enabling networks with hundreds of layers to train effectively.",
        "Skip connections in ResNets provide direct gradient pathways, allowing gradients to "
        "flow unchanged through shortcut connections.",
    ]
    assert [c.check for c in sweep] == [
        "sigmoid, depth 10: first/last gradient-norm ratio at step 0 <= 1e-6",
        "sigmoid, depth 10: -log10(first/last ratio at step 0) between 6 and 10",
        "sigmoid, every depth: ratio at step 0 <= 0.25^depth, and a fit of log10(ratio) vs "
        "depth gives a per-layer factor <= 0.25 (a ratio of 0 is an underflow: counts as "
        "below the bound, left out of the fit)",
        "sigmoid, depth >= 20: validation accuracy <= chance + 0.1 (0.2)",
        "relu, every depth: ratio at step 0 within [0.01, 100]",
        "tanh, every depth: ratio at step 0 within [0.01, 100]",
        "batchnorm, every depth: ratio at step 0 within [0.01, 100]",
        "residual nets, every swept depth >= 20: the best validation accuracy >= 0.9",
        "residual nets, every swept depth >= 100: the best validation accuracy >= 0.9",
        "the deepest net that trains (val acc >= 0.9) with skips is deeper than the deepest "
        "without",
    ]


def test_trained_includes_the_threshold_less_its_slack():
    at = job("deep_rezero", 20, 1.0, acc=0.9 - 1e-6, residual=True)
    below = job("deep_rezero", 20, 1.0, acc=0.9 - 1e-5, residual=True)
    assert C._trains(groups(at), 20, "q").result == PASS
    assert C._trains(groups(below), 20, "q").result == FAIL


def test_trains_fails_when_any_depth_fails_not_just_the_last():
    runs = [
        job("deep_rezero", 20, 1.0, acc=0.5, residual=True),
        job("deep_rezero", 40, 1.0, acc=0.95, residual=True),
    ]
    claim = C._trains(groups(*runs), 20, "q")
    assert claim.result == FAIL
    assert claim.evidence == "depth 20: deep_rezero 0.500; depth 40: deep_rezero 0.950"


def test_deepest_plain_vs_residual_needs_both_kinds():
    residual_only = groups(job("deep_rezero", 100, 1.0, acc=0.95, residual=True))
    plain_only = groups(job("relu", 10, 0.5, acc=0.95, residual=False))
    for g in (residual_only, plain_only):
        claim = C.deepest_plain_vs_residual(g)
        assert claim.result == NOT_MEASURED
        assert claim.evidence == "needs completed plain and residual jobs"


def test_deepest_plain_vs_residual_evidence_when_no_plain_net_trains():
    g = groups(
        job("relu", 10, 0.5, acc=0.2, residual=False),
        job("relu", 1000, 0.5, acc=0.1, residual=False),
        job("deep_rezero", 100, 1.5, acc=0.95, residual=True),
    )
    claim = C.deepest_plain_vs_residual(g)
    assert claim.result == PASS
    assert claim.evidence == (
        "deepest plain: none trains (depths 10, 1,000); deepest residual: deep_rezero at "
        "depth 100 (val acc 0.950, ratio at step 0 1.50e+00)"
    )


def test_theory_claims_results_and_numbers():
    power = 0.25**10
    arithmetic, demo, tanh = C.theory_claims()
    assert all(c.source == "theory" for c in (arithmetic, demo, tanh))
    assert arithmetic.result == PASS and arithmetic.evidence == f"0.25^10 = {power:.3e}"
    assert abs(power - 9.5e-7) / 9.5e-7 < 0.01  # the article rounds 9.54e-7 to 9.5e-7
    # The corrected demo: mean |gradient| grows from input to output, so it passes.
    assert demo.result == PASS and demo.evidence.startswith("layer 1: ")
    # Mean tanh'(z) of a Xavier tanh MLP at init is far above the article's 0.4.
    value = float(tanh.evidence.rsplit("= ", 1)[1])
    assert tanh.result == (PASS if 0.3 <= value <= 0.5 else FAIL) == FAIL


def test_claims_md_exact_text(tmp_path):
    claims = [
        C.Claim("a | b", "c\nd", PASS, "e", "sweep"),
        C.Claim("q2", "k2", NOT_MEASURED, "w", "sweep"),
        C.Claim("q3", "k3", FAIL, "x", "theory"),
    ]
    jobs = [job("relu", 10), job("relu", 20, status="failed")]
    out = tmp_path / "claims.md"
    C.write_claims(claims, jobs, out, "The title")
    assert out.read_text() == (
        "# The title\n"
        "\n"
        "1 pass, 1 fail, 1 not measured. Measured on 1 completed jobs (1 more did not "
        "complete: see summary.md). Ratio = first layer's gradient norm / output layer's, at "
        "step 0.\n"
        "\n"
        "| # | the article says | checked | result | measured |\n"
        "| --- | --- | --- | --- | --- |\n"
        "| 1 | a \\| b | c d | **PASS** | e |\n"
        "| 2 | q2 | k2 | **not measured** | w |\n"
        "| 3 | q3 | (theory) k3 | **FAIL** | x |\n"
        "\n"
        "Thresholds: healthy band 0.01 to 100 (the callback's verdict band); trained: val acc "
        ">= 0.9; untrainable: val acc <= chance (0.1) + 0.1. (theory) rows come from the "
        "article's numpy demos with the corrected sigmoid derivative (python -m "
        "gradwatch.report.theory).\n"
    )
    C.write_claims(claims[:1], jobs[:1], out, "T")
    assert out.read_text().splitlines()[2] == (
        "1 pass, 0 fail, 0 not measured. Measured on 1 completed jobs. Ratio = first layer's "
        "gradient norm / output layer's, at step 0."
    )


# -- nets/init.py: every scheme's distribution against its formula ----------------------------
import torch  # noqa: E402
from torch import nn  # noqa: E402

from gradwatch.nets.init import init_weights  # noqa: E402

FAN_IN, FAN_OUT = 400, 100  # 40,000 weights: std to ~0.4%, the max within 0.1% of the bound


def initialized(init: str, **kwargs) -> torch.Tensor:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(FAN_IN, FAN_OUT))
    init_weights(net, init, **kwargs)
    return net[0].weight.detach().double()


UNIFORM_BOUND = {  # U(-b, b) with b = gain * sqrt(3 / fan)
    "default": 1 / math.sqrt(FAN_IN),  # kaiming_uniform(a=sqrt(5)): gain sqrt(1/3)
    "kaiming_uniform": math.sqrt(2) * math.sqrt(3 / FAN_IN),
    "xavier_uniform": math.sqrt(6 / (FAN_IN + FAN_OUT)),
}
NORMAL_STD = {
    "normal": 0.01,
    "kaiming_normal": math.sqrt(2 / FAN_IN),
    "xavier_normal": math.sqrt(2 / (FAN_IN + FAN_OUT)),
}


@pytest.mark.parametrize("init", sorted(UNIFORM_BOUND))
def test_uniform_inits_have_their_bound(init):
    w, bound = initialized(init), UNIFORM_BOUND[init]
    assert w.abs().max() <= bound
    assert w.abs().max() > 0.995 * bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)


@pytest.mark.parametrize("init", sorted(NORMAL_STD))
def test_normal_inits_have_their_std(init):
    w, std = initialized(init), NORMAL_STD[init]
    assert w.std().item() == pytest.approx(std, rel=0.02)
    assert abs(w.mean().item()) < 0.02 * std
    assert w.abs().max() > 3.5 * std  # unbounded: a uniform of this std stops at 1.73 std


def test_orthogonal_init_has_orthonormal_rows():
    w = initialized("orthogonal")
    assert torch.allclose(w @ w.T, torch.eye(FAN_OUT, dtype=w.dtype), atol=1e-5)


def test_scale_multiplies_and_bias_zeros_only_weighted_layers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    net(torch.randn(1, 3, 5, 5))
    torch.manual_seed(1)
    init_weights(net, "xavier_normal")
    once = [p.detach().clone() for p in net.parameters()]
    torch.manual_seed(1)
    init_weights(net, "xavier_normal", scale=2.0, bias="zeros")
    conv, bn, _, lin = net
    assert torch.equal(conv.weight, 2 * once[0]) and torch.equal(lin.weight, 2 * once[4])
    assert not conv.bias.any() and not lin.bias.any()
    assert torch.equal(bn.weight, torch.ones(4)) and torch.equal(bn.bias, torch.zeros(4))


def test_default_bias_and_scale_leave_pytorch_init_alone():
    torch.manual_seed(0)
    reference = nn.Linear(FAN_IN, FAN_OUT)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(FAN_IN, FAN_OUT))
    init_weights(net)
    assert torch.equal(net[0].weight, reference.weight)
    assert torch.equal(net[0].bias, reference.bias)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"init": "he"}, "Unknown init 'he'"),
        ({"bias": "ones"}, "Unknown bias init 'ones'. Valid choices: default, zeros."),
        ({"scale": 0.0}, "init_scale must be a positive number, got 0.0"),
    ],
)
def test_bad_init_arguments(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        init_weights(nn.Linear(2, 2), **kwargs)


# -- activation saturation: the margin scales with the output range (tanh: -1..1) -------------
class Fixed(nn.Module):
    """A tanh and a sigmoid fed fixed pre-activations, beside a trainable linear layer."""

    def __init__(self, tanh_out: list[float], sigmoid_out: list[float]) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)
        self.tanh, self.sigmoid, self.relu = nn.Tanh(), nn.Sigmoid(), nn.ReLU()
        self.register_buffer("r", torch.tensor([-1.0, 2.0, -3.0, 0.5]))  # 2 of 4 units dead
        self.register_buffer("t", torch.atanh(torch.tensor(tanh_out, dtype=torch.float64)).float())
        s = torch.tensor(sigmoid_out, dtype=torch.float64)
        self.register_buffer("s", torch.log(s / (1 - s)).float())

    def forward(self, x):
        n = x.shape[0]
        extra = self.tanh(self.t.expand(n, -1)).sum() + self.sigmoid(self.s.expand(n, -1)).sum()
        extra = extra + self.relu(self.r.expand(n, -1)).sum()
        return self.linear(x.flatten(1)) + 0 * extra


def test_tanh_saturation_uses_a_margin_scaled_to_its_range(tmp_path):
    from gradwatch.callbacks import ActivationStatsCallback
    from gradwatch.data import DigitsDataModule
    from gradwatch.module import ClassifierModule

    tanh_out = [0.97, -0.97, 0.95, -0.95, 0.0, 0.5, 0.99, -0.1]
    sigmoid_out = [0.985, 0.015, 0.975, 0.025, 0.5, 0.6, 0.999, 0.1]
    cb = ActivationStatsCallback(log_every_n_steps=1)
    net, log = fit_activations(tmp_path, cb, steps=3, net=Fixed(tanh_out, sigmoid_out))
    # independent: saturated = within 2% of the range (tanh: 0.04, sigmoid: 0.02) of an end
    want_tanh = sum(abs(v) > 1 - 0.02 * 2 for v in tanh_out) / len(tanh_out)
    want_sigmoid = sum(v < 0.02 or v > 0.98 for v in sigmoid_out) / len(sigmoid_out)
    assert (want_tanh, want_sigmoid) == (3 / 8, 3 / 8)
    assert log.values("activation/net.tanh/saturation")[0] == pytest.approx(want_tanh)
    assert log.values("activation/net.sigmoid/saturation")[0] == pytest.approx(want_sigmoid)
    batch = DigitsDataModule(seed=0).batch_size
    t = torch.tensor(tanh_out, dtype=torch.float64).repeat(batch)  # every example
    assert log.values("activation/net.tanh/mean")[0] == pytest.approx(t.mean().item(), abs=1e-6)
    assert log.values("activation/net.tanh/std")[0] == pytest.approx(t.std().item(), rel=1e-5)
    assert "activation/net.tanh/dead" not in log.rows[0][1]
    assert "activation/net.relu/saturation" not in log.rows[0][1]
    assert log.values("activation/net.relu/dead") == {0: 0.5, 1: 0.5, 2: 0.5}
    # signals: averaged over the 3 logged steps (constant here), std from the first step
    signals = cb.signals()
    assert signals["saturation"] == pytest.approx([want_tanh, want_sigmoid])
    assert signals["dead"] == pytest.approx([0.5])
    assert signals["activation_std"] == pytest.approx(
        [log.values(f"activation/net.{m}/std")[0] for m in ("tanh", "sigmoid", "relu")]
    )
    # the checkpointed state: named keys, and a fresh callback that loads it says the same
    state = cb.state_dict()
    assert set(state) == {"first_std", "sums"}
    again = ActivationStatsCallback(log_every_n_steps=1)
    again.load_state_dict(state)
    again.on_fit_start(None, ClassifierModule(net, num_classes=10))
    assert again.signals() == signals
    assert ActivationStatsCallback().state_dict() == {"first_std": {}, "sums": {}}


# -- GradientNormCallback: AMP skips, the collapsed scaler, the checkpointed state -----------
from gradwatch.callbacks import GradientNormCallback  # noqa: E402
from tests.memory_logger import MemoryLogger  # noqa: E402
from tests.test_activation_stats import fit as fit_activations  # noqa: E402
from tests.test_callback_kills import figures  # noqa: E402, F401  (autouse: no drawing)
from tests.test_grad_norm_models import (  # noqa: E402
    Classifier,
    fp16_on_cpu,
    loader,
    mlp,
    trainer,
)


def test_a_skipped_fp16_step_logs_the_skip_count_and_the_new_scale_at_its_step(tmp_path):
    torch.manual_seed(0)
    log = MemoryLogger()
    cb = GradientNormCallback(log_every_n_steps=1)
    # 2^24 overflows step 0's fp16 gradients; the scaler skips it and backs off by 2^-10.
    t = trainer(
        tmp_path, [cb], plugins=[fp16_on_cpu(2.0**24, backoff=2.0**-10)], max_steps=2, logger=log
    )
    t.fit(Classifier(mlp(), lr=1e-3), loader())
    assert log.values("grad_norm/amp_skipped")[0] == 1.0
    assert log.values("grad_norm/amp_scale")[0] == 2.0**24 * 2.0**-10
    assert "grad_norm/net.0" not in log.rows[0][1]  # no gradient values for a skipped step
    assert cb.state_dict()["amp_skipped"] == 1


def test_a_collapsed_scaler_names_the_scaler_and_the_step(tmp_path):
    class NaNLoss(Classifier):
        def training_step(self, batch, batch_idx):
            return super().training_step(batch, batch_idx) * float("nan")

    log = MemoryLogger()
    cb = GradientNormCallback(log_every_n_steps=1, amp_min_scale=1.0)
    t = trainer(tmp_path, [cb], plugins=[fp16_on_cpu(4.0)], max_steps=20, logger=log)
    t.fit(NaNLoss(mlp()), loader())
    # scale 4 -> 2 (step 0) -> 1 (step 1) -> 0.5 (step 2): below amp_min_scale at step 2
    assert (cb.nonfinite_layer, cb.nonfinite_step) == ("the AMP gradient scaler", 2)
    assert log.values("grad_norm/amp_scale") == {0: 2.0, 1: 1.0, 2: 0.5}
    assert log.values("grad_norm/amp_skipped") == {0: 1.0, 1: 2.0, 2: 3.0}


def test_the_callback_state_round_trips_through_a_checkpoint_dict(tmp_path):
    torch.manual_seed(0)
    cb = GradientNormCallback(log_every_n_steps=2)
    trainer(tmp_path, [cb], max_steps=4).fit(Classifier(mlp()), loader())
    state = cb.state_dict()
    # losses of the logged steps: 0, then (step + 1) % 2 == 0: 1 and 3
    assert len(state["losses"]) == 3 and all(math.isfinite(v) for v in state["losses"])
    fresh = GradientNormCallback(log_every_n_steps=2)
    fresh.load_state_dict(state)
    again = fresh.state_dict()
    optimizers = again.pop("optimizers")
    assert optimizers == {}  # one optimizer's state waits until that optimizer steps
    assert again == {k: v for k, v in state.items() if k != "optimizers"}
    assert fresh._saved_opts == {None: state["optimizers"][""]}


# -- verdict: thresholds at their edges, the median, and the advice's exact words -------------
import json  # noqa: E402

from gradwatch.verdict import diagnose  # noqa: E402

GOLDEN = Path(__file__).with_name("mutation_golden")

#: name -> (ratios, signals); the advice each gets is pinned in mutation_golden/.
VERDICT_SCENARIOS: dict[str, tuple[list[float], dict]] = {
    "vanishing_ours": ([1e-4], {}),
    "vanishing_generic": ([1e-4], {"ours": False}),
    "exploding_ours": ([1e4], {}),
    "exploding_generic": ([1e4], {"ours": False}),
    "exploding_batchnorm_ours": ([1e4], {"batchnorm": True}),
    "exploding_batchnorm_generic": ([1e4], {"batchnorm": True, "ours": False}),
    "healthy": ([1.0], {}),
    "nothing_recorded": ([], {}),
    "nonfinite_ours": ([1.0], {"nonfinite_layer": "net.2", "nonfinite_step": 7}),
    "nonfinite_generic": ([1.0], {"nonfinite_layer": "net.2", "nonfinite_step": 7, "ours": False}),
    "starved": ([1.0], {"update_ratios": [1e-7, 1e-3, 1e-3]}),
    "negligible": ([1.0], {"update_ratios": [1e-8, 1e-7, 1e-8], "ours": False}),
    "growing": ([1.0], {"activation_std": [0.5, 1.0, 20.0]}),
    "shrinking": ([1.0], {"activation_std": [2.0, 1.0, 0.1]}),
    "dead": ([1.0], {"dead": [0.5, 0.3]}),
    "saturated_generic": ([1.0], {"saturation": [0.9, 0.8], "ours": False}),
    "loss_flat": ([1.0], {"loss_start": 2.3, "loss_end": 2.2}),
    "loss_at_chance": ([1.0], {"loss_start": 4.0, "loss_end": 2.2, "chance_loss": 2.3}),
    "loss_nan": ([1.0], {"loss_start": 2.3, "loss_end": math.nan}),
    "loss_flat_generic": ([1.0], {"loss_start": 2.3, "loss_end": 2.2, "ours": False}),
    "dead_and_flat": ([1.0], {"dead": [0.5], "loss_start": 2.3, "loss_end": 2.2}),
}


@pytest.mark.parametrize("name", sorted(VERDICT_SCENARIOS))
def test_verdict_advice_words(name):
    """The advice a person reads, word for word (regenerate the file on purpose only)."""
    want = json.loads((GOLDEN / "verdict_advice.json").read_text())[name]
    ratios, signals = VERDICT_SCENARIOS[name]
    d = diagnose(ratios, **signals)
    assert d.verdict == want["verdict"]
    assert d.advice == want["advice"]
    assert list(d.reasons) == want["reasons"]
    if want["ratio"] is None:
        assert math.isnan(d.ratio)
    else:
        assert d.ratio == pytest.approx(want["ratio"])


@pytest.mark.parametrize(
    ("ratios", "verdict", "ratio"),
    [
        ([0.011], "healthy", 0.011),
        ([99.0], "healthy", 99.0),
        ([0.0099], "vanishing", 0.0099),
        ([101.0], "exploding", 101.0),
        ([1e-3, 1.0, 1.0], "healthy", 1.0),  # the median: one odd step does not decide
        ([1e-3, 1e-3, 1.0], "vanishing", 1e-3),
        ([1e-4, 1e-2], "vanishing", 1e-3),  # the geometric mean of the middle two
        ([0.0, 0.0, 1.0], "vanishing", 0.0),  # an underflowed first layer counts
        ([math.inf, math.inf, 1.0], "exploding", math.inf),
        ([math.nan, -1.0, 1e3], "exploding", 1e3),  # NaN and negative ratios are left out
    ],
)
def test_verdict_band_and_median(ratios, verdict, ratio):
    d = diagnose(ratios)
    assert d.verdict == verdict
    assert d.ratio == pytest.approx(ratio)


def test_verdict_band_includes_its_ends():
    # the ratio is exp(median(log r)): with one value, exp(log(v)), rounding included
    low, high = math.exp(math.log(0.02)), math.exp(math.log(50.0))
    assert diagnose([0.02], vanishing_ratio=low).verdict == "healthy"
    assert diagnose([50.0], exploding_ratio=high).verdict == "healthy"


def test_verdict_custom_band():
    assert diagnose([0.05], vanishing_ratio=0.1).verdict == "vanishing"
    assert diagnose([5.0], exploding_ratio=2.0).verdict == "exploding"
    assert diagnose([0.05, 5.0], vanishing_ratio=0.1, exploding_ratio=2.0).verdict == "healthy"


@pytest.mark.parametrize(
    ("signals", "verdict"),
    [
        ({"dead": [0.25]}, "stalled"),  # at DEAD_SHARE: collapsed
        ({"dead": [0.2, 0.29]}, "healthy"),  # mean 0.245
        ({"dead": [0.2, None, math.nan, 0.3]}, "stalled"),  # None/NaN left out of the mean
        ({"saturation": [0.25]}, "stalled"),
        ({"saturation": [0.24]}, "healthy"),
        ({"activation_std": [1.0, 10.0]}, "healthy"),  # x10 is not above STD_GROWTH
        ({"activation_std": [1.0, 10.5]}, "exploding"),
        ({"activation_std": [1.0, 0.1]}, "healthy"),  # x0.1 is not below STD_SHRINK
        ({"activation_std": [1.0, 0.09]}, "stalled"),
        ({"activation_std": [0.0, 5.0]}, "healthy"),  # no trend from a zero std
        ({"activation_std": [1.0]}, "healthy"),  # one layer: no trend
        ({"activation_std": [1.0, math.nan, 20.0]}, "exploding"),
        ({"activation_std": [1.0, None, 20.0]}, "exploding"),
        ({"update_ratios": [1e-6, 1e-6]}, "healthy"),  # at NEGLIGIBLE_UPDATE: not negligible
        ({"update_ratios": [9e-7, 9e-7]}, "stalled"),
        ({"update_ratios": [2e-5, 1e-3, 1e-3]}, "healthy"),  # 0.02 of the median: fine
        ({"update_ratios": [5e-6, 1e-3, 1e-3]}, "vanishing"),  # 0.005: starved
        ({"update_ratios": [0.01, 1.0, 1.0]}, "healthy"),  # exactly STARVED_UPDATE: fine
        ({"update_ratios": [math.nan, 5e-6, 1e-3, 1e-3]}, "vanishing"),
        ({"loss_start": 10.0, "loss_end": 9.0}, "healthy"),  # fell by exactly 10%
        ({"loss_start": 10.0, "loss_end": 9.01}, "stalled"),
        ({"loss_start": math.nan, "loss_end": 9.5}, "healthy"),  # no start: not judged
        ({"loss_start": 10.0}, "healthy"),
        ({"loss_start": 4.0, "loss_end": 1.9, "chance_loss": 2.0}, "stalled"),  # 0.95 chance
        ({"loss_start": 4.0, "loss_end": 1.89, "chance_loss": 2.0}, "healthy"),
        ({"loss_start": 4.0, "loss_end": 1.0}, "healthy"),  # no chance loss given
    ],
)
def test_verdict_signal_thresholds(signals, verdict):
    d = diagnose([1.0], **signals)
    # A stalled network keeps DESIGN.md's words: vanishing, with stalled set.
    want = ("vanishing", True) if verdict == "stalled" else (verdict, False)
    assert (d.verdict, d.stalled) == want


def test_verdict_priority_between_signals():
    starved = {"update_ratios": [5e-6, 1e-3, 1e-3]}
    growing = {"activation_std": [1.0, 20.0]}
    dead = {"dead": [0.9]}
    assert diagnose([1.0], **starved, **growing, **dead).verdict == "vanishing"
    assert diagnose([1.0], **growing, **dead).verdict == "exploding"
    # the ratio outside the band wins over every signal, and then no reasons are given
    d = diagnose([1e4], **starved, **dead)
    assert (d.verdict, d.reasons) == ("exploding", ())
    nonfinite = diagnose([1.0], nonfinite_layer="x", **dead)
    assert nonfinite.verdict == "non-finite" and math.isnan(nonfinite.ratio)


# -- step_csv and resume: cut back, find, check ----------------------------------------------
import csv  # noqa: E402
import os  # noqa: E402

from omegaconf import OmegaConf  # noqa: E402

from gradwatch.run import resume as R  # noqa: E402
from gradwatch.step_csv import drop_rows_from, rows_before, write_rows  # noqa: E402


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def test_rows_before_keeps_earlier_steps_and_stepless_rows(tmp_path):
    p = tmp_path / "m.csv"
    write_csv(p, ["step", "x"], [["0", "a"], ["2.0", "b"], ["", "c"], ["3", "d"], ["1", "e"]])
    fields, kept, dropped = rows_before(p, 2)
    assert fields == ["step", "x"]
    assert [r["x"] for r in kept] == ["a", "c", "e"] and dropped == 2
    write_csv(p, ["epoch", "x"], [["5", "a"]])  # no step column: nothing to cut
    assert rows_before(p, 0) == (["epoch", "x"], [{"epoch": "5", "x": "a"}], 0)


def test_drop_rows_from_rewrites_only_when_needed(tmp_path):
    p = tmp_path / "g.csv"
    assert drop_rows_from(p, 3) == 0 and not p.exists()
    write_csv(p, ["step", "layer"], [["0", "a"], ["1", "a"], ["4", "a"], ["5", "b"]])
    assert drop_rows_from(p, 4) == 2
    assert read_csv(p) == [["step", "layer"], ["0", "a"], ["1", "a"]]
    os.utime(p, (1, 1))
    assert drop_rows_from(p, 4) == 0 and p.stat().st_mtime == 1  # untouched
    assert drop_rows_from(p, 4, fields=["step", "layer"]) == 0 and p.stat().st_mtime == 1
    assert drop_rows_from(p, 1, fields=["step", "layer", "depth"]) == 1
    assert read_csv(p) == [["step", "layer", "depth"], ["0", "a", ""]]
    assert drop_rows_from(p, 5, fields=["step", "depth"]) == 0  # a new header alone rewrites
    assert read_csv(p) == [["step", "depth"], ["0", ""]]
    assert [f.name for f in tmp_path.iterdir()] == ["g.csv"]  # no temporary file left


def test_write_rows_replaces_the_file_and_ignores_extra_keys(tmp_path):
    p = tmp_path / "w.csv"
    p.write_text("old\n")
    write_rows(p, ["a"], [{"a": "1", "b": "2"}])
    assert read_csv(p) == [["a"], ["1"]]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["w.csv"]


def save_ckpt(path: Path, step: int = 3, state: dict | None = None, mtime: float | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": state or {"w": torch.zeros(2)}}, path)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def make_run(root: Path, task: str, name: str, experiment: str | None = None) -> Path:
    run = root / task / "runs" / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"experiment": experiment or task}))
    return run


def test_newest_checkpoint_first_and_last_ckpt_first_among_equals(tmp_path):
    run = make_run(tmp_path, "relu", "a")
    old = save_ckpt(run / "checkpoints" / "epoch=0.ckpt", mtime=100)
    new = save_ckpt(run / "checkpoints" / "step=9.ckpt", mtime=200)  # sorts after "last"
    last = save_ckpt(run / "checkpoints" / "last.ckpt", mtime=200)
    (run / "checkpoints" / "dangling.ckpt").symlink_to(run / "nowhere.ckpt")
    assert R._newest_first([run]) == [last, new, old]
    assert R.last_checkpoint_in(run) == last
    last.write_bytes(b"not a checkpoint")
    os.utime(last, (300, 300))
    assert R.last_checkpoint_in(run) == new  # a file that does not load is passed over
    assert R.last_checkpoint_in(tmp_path / "empty") is None


def test_latest_last_checkpoint_looks_in_every_run_of_the_task(tmp_path):
    a, b = make_run(tmp_path, "relu", "a"), make_run(tmp_path, "relu", "b")
    other = make_run(tmp_path, "tanh", "c")
    save_ckpt(a / "checkpoints" / "last.ckpt", mtime=100)
    newest = save_ckpt(b / "checkpoints" / "last.ckpt", mtime=200)
    save_ckpt(other / "checkpoints" / "last.ckpt", mtime=300)
    assert R.latest_last_checkpoint(tmp_path, "relu") == newest
    assert R.latest_last_checkpoint(tmp_path, "sigmoid") is None


def test_run_dir_of_needs_a_checkpoints_dir_in_a_run(tmp_path):
    run = make_run(tmp_path, "relu", "a")
    ckpt = save_ckpt(run / "checkpoints" / "last.ckpt")
    assert R.run_dir_of(ckpt) == run.resolve()
    loose = save_ckpt(tmp_path / "x" / "checkpoints" / "y.ckpt")  # no summary.json above
    assert R.run_dir_of(loose) is None
    elsewhere = save_ckpt(run / "other" / "z.ckpt")
    assert R.run_dir_of(elsewhere) is None


def cfg(tmp_path: Path, ckpt_path, task: str = "relu"):
    return OmegaConf.create(
        {"ckpt_path": ckpt_path, "task_name": task, "paths": {"log_dir": str(tmp_path)}}
    )


def test_resolve_ckpt_path(tmp_path):
    run = make_run(tmp_path, "relu", "a")
    ckpt = save_ckpt(run / "checkpoints" / "last.ckpt")
    here = make_run(tmp_path, "relu", "b")
    assert R.resolve_ckpt_path(cfg(tmp_path, None), here) is None
    assert R.resolve_ckpt_path(cfg(tmp_path, "last"), here) == ckpt  # another run's
    own = save_ckpt(here / "checkpoints" / "epoch=0.ckpt", mtime=1)  # older, but its own
    assert R.resolve_ckpt_path(cfg(tmp_path, "last"), here) == own
    assert R.resolve_ckpt_path(cfg(tmp_path, str(ckpt)), here) == ckpt
    hint = "Pass ckpt_path=<path to a .ckpt file> (runs keep theirs in <run dir>/checkpoints/)"
    with pytest.raises(ValueError) as err:
        R.resolve_ckpt_path(cfg(tmp_path, "last", task="tanh"), tmp_path / "none")
    msg = str(err.value)
    searched = tmp_path / "tanh" / "runs" / "*" / "checkpoints"
    assert msg.startswith(f"ckpt_path=last: no last.ckpt found in {searched}. Runs save ")
    assert hint in msg and "most recent 'tanh' run" in msg
    with pytest.raises(ValueError, match=re.escape(f"ckpt_path='{tmp_path}' is a directory,")):
        R.resolve_ckpt_path(cfg(tmp_path, str(tmp_path)), here)
    with pytest.raises(ValueError, match=r"ckpt_path='nope\.ckpt' does not exist\. Pass"):
        R.resolve_ckpt_path(cfg(tmp_path, "nope.ckpt"), here)


def test_checkpoint_for_and_the_resumed_run_dir(tmp_path):
    run = make_run(tmp_path, "relu", "a")
    ckpt = save_ckpt(run / "checkpoints" / "last.ckpt")
    assert R._checkpoint_for(cfg(tmp_path, None)) is None
    assert R._checkpoint_for(cfg(tmp_path, "last")) == ckpt
    assert R._checkpoint_for(cfg(tmp_path, str(ckpt))) == ckpt
    assert R._checkpoint_for(cfg(tmp_path, str(tmp_path / "missing.ckpt"))) is None
    assert R._resumed_run_dir(cfg(tmp_path, "last")) == run.resolve()
    assert R.run_dir_resolver("fresh", _root_=cfg(tmp_path, "last")) == str(run.resolve())
    # another experiment's checkpoint starts a run of its own
    assert R._resumed_run_dir(cfg(tmp_path, str(ckpt), task="tanh")) is None
    assert R.run_dir_resolver("fresh", _root_=cfg(tmp_path, str(ckpt), task="tanh")) == "fresh"
    assert R.hydra_subdir_resolver(_root_=cfg(tmp_path, None)) == ".hydra"


def test_load_checkpoint_says_what_the_file_is_not(tmp_path):
    good = save_ckpt(tmp_path / "good.ckpt", step=7)
    assert R.load_checkpoint(good, "relu")["global_step"] == 7
    bad = tmp_path / "bad.ckpt"
    bad.write_text("hello")
    with pytest.raises(ValueError) as err:
        R.load_checkpoint(bad, "relu")
    assert str(err.value).startswith(
        f"ckpt_path='{bad}' is not a Lightning checkpoint: torch.load failed ("
    )
    torch.save({"global_step": 1}, partial := tmp_path / "partial.ckpt")
    with pytest.raises(ValueError, match=r"\(it has no state_dict\)\. Pass ckpt_path"):
        R.load_checkpoint(partial, "relu")
    torch.save([1, 2], listed := tmp_path / "list.ckpt")
    with pytest.raises(ValueError, match=r"\(it has no global_step, state_dict\)\."):
        R.load_checkpoint(listed, "relu")


def test_check_same_network_names_the_first_differences(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    same = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    R.check_same_network({"state_dict": same}, model, tmp_path / "c.ckpt")
    assert R.checked_resume_step(None, model, "relu") is None
    path = save_ckpt(tmp_path / "same.ckpt", step=11, state=same)
    assert R.checked_resume_step(path, model, "relu") == 11
    other = dict(same, **{"0.weight": torch.zeros(5, 3), "extra": torch.zeros(1)})
    del other["1.bias"]
    with pytest.raises(ValueError) as err:
        R.check_same_network({"state_dict": other}, model, tmp_path / "c.ckpt")
    assert str(err.value) == (
        f"ckpt_path='{tmp_path / 'c.ckpt'}' holds a different network than this config: "
        "0.weight is [5, 3] in the checkpoint but [4, 3] here; 1.bias is missing from the "
        "checkpoint; extra is in the checkpoint but not in this network. Resume with the "
        "overrides the checkpoint was trained with, or start a new run without ckpt_path."
    )
    run = make_run(tmp_path, "relu", "r")
    many = {f"x{i}": torch.zeros(1) for i in range(4)}
    with pytest.raises(ValueError) as err:
        R.check_same_network({"state_dict": {**same, **many}}, model, run / "checkpoints" / "l")
    assert "x2 is in the checkpoint but not in this network; and 1 more. Resume" in str(err.value)
    assert f"trained with ({run.resolve() / '.hydra' / 'overrides.yaml'}), or" in str(err.value)


# -- GradientNormCallback: nested optimizer names, p-norm overflow --------------------------
from tests.test_grad_norm_models import GAN, GradProbe, layer_norm  # noqa: E402


class NestedGAN(GAN):
    """The GAN with its two networks one level down (net.g, net.d): names of two parts."""

    def __init__(self):
        super().__init__()
        g, d = self.generator, self.discriminator
        del self.generator, self.discriminator
        self.net = nn.ModuleDict({"g": g, "d": d})

    @property
    def generator(self):
        return self.net["g"]

    @property
    def discriminator(self):
        return self.net["d"]


def test_two_optimizers_are_named_by_their_common_module_path(tmp_path):
    torch.manual_seed(0)
    log = MemoryLogger()
    cb = GradientNormCallback(log_every_n_steps=1)
    trainer(tmp_path, [cb], max_steps=2, logger=log).fit(NestedGAN(), loader(features=8))
    keys = {k for _, m in log.rows for k in m}
    assert {"grad_norm/total/net.g", "grad_norm/total/net.d"} <= keys
    summary = cb.summary()
    assert set(summary["optimizers"]) == {"net.g", "net.d"}
    # the run's verdict is the most severe optimizer's (vanishing and exploding rank alike)
    rank = {"healthy": 0, "stalled": 1, "vanishing": 2, "exploding": 2, "non-finite": 3}
    verdicts = summary["optimizers"].values()
    assert summary["diagnosis"] in verdicts
    assert rank[summary["diagnosis"]] == max(rank[v] for v in verdicts)


class TwoHuge(Classifier):
    """At step 1, two elements of the middle layer's gradient are 1e30: its 2- and 3-norms
    overflow float32 although every element is finite."""

    def __init__(self):
        super().__init__(mlp())

    def on_after_backward(self):
        if self.trainer.global_step == 1:
            self.net[2].weight.grad[0, :2] = 1e30


@pytest.mark.parametrize("p", [3.0, 2.0])
def test_an_overflowing_p_norm_is_the_exact_p_norm(tmp_path, p):
    torch.manual_seed(0)
    probe, log = GradProbe(), MemoryLogger()
    cb = GradientNormCallback(norm_type=p, log_every_n_steps=1)
    trainer(tmp_path, [probe, cb], max_steps=2, logger=log).fit(TwoHuge(), loader())
    _, _, grads = probe.grads[1]
    mine = [g for n, g in grads.items() if n.rpartition(".")[0] == "net.2"]
    want = sum(float(g.double().abs().pow(p).sum()) for g in mine) ** (1 / p)
    assert cb.nonfinite_layer is None
    assert log.values("grad_norm/net.2")[1] == pytest.approx(want, rel=1e-9)
    assert want == pytest.approx(2 ** (1 / p) * 1e30, rel=1e-6)
    if p == 2.0:
        assert log.values("grad_norm/net.0")[1] == pytest.approx(layer_norm(grads, "net.0"))


class DetachedMiddle(Classifier):
    """net.1 runs, but its output is detached: it never gets a gradient."""

    def __init__(self):
        super().__init__(nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)))

    def forward(self, x):
        h = torch.tanh(self.net[0](x))
        return self.net[2](h + self.net[1](h).detach())


def test_histograms_skip_a_layer_without_gradient(tmp_path, monkeypatch):
    import gradwatch.callbacks.grad_norm as grad_norm_module

    seen = []
    monkeypatch.setattr(
        grad_norm_module,
        "log_histograms",
        lambda loggers, values, step: seen.append((step, values)),
    )
    torch.manual_seed(0)
    probe = GradProbe()
    cb = GradientNormCallback(log_every_n_steps=1, histogram_every_n_steps=1)
    trainer(tmp_path, [probe, cb], max_steps=2).fit(DetachedMiddle(), loader())
    assert [s for s, _ in seen] == [0, 1]
    for (_, values), (_, _, grads) in zip(seen, probe.grads):
        assert sorted(values) == ["grad_hist/net.0", "grad_hist/net.2"]
        for layer in ("net.0", "net.2"):
            want = torch.cat([grads[f"{layer}.weight"].flatten(), grads[f"{layer}.bias"].flatten()])
            assert torch.allclose(values[f"grad_hist/{layer}"].double(), want)


# -- callbacks/layers.py and grad_norms_file.py ---------------------------------------------
from gradwatch.callbacks import grad_norms_file as gnf  # noqa: E402
from gradwatch.callbacks.layers import find_layers, select_layers, stable_name  # noqa: E402


def test_stable_name_drops_wrapper_segments_only():
    assert stable_name("model._orig_mod.net.0") == "model.net.0"
    assert stable_name("a._checkpoint_wrapped_module.b._fsdp_wrapped_module.c") == "a.b.c"
    assert stable_name("orig_mod.net") == "orig_mod.net"
    assert stable_name("") == ""


def test_find_layers_owners_in_registration_order_tied_weights_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))  # owned by the model itself
            self.embed = nn.Embedding(5, 3)
            self.frozen = nn.Linear(3, 3).requires_grad_(False)
            self.out = nn.Linear(3, 5, bias=False)
            self.out.weight = self.embed.weight

    model = Tied()
    layers = find_layers(model)
    assert [layer.name for layer in layers] == ["Tied", "embed", "frozen"]
    assert [len(layer.params) for layer in layers] == [1, 1, 2]
    assert layers[1].module is model.embed and layers[1].params[0] is model.embed.weight
    assert layers[2].params == [model.frozen.weight, model.frozen.bias]


@pytest.mark.parametrize(
    ("kwargs", "want"),
    [
        ({}, list(range(10))),
        ({"include": ["n.1*"]}, [1]),
        ({"include": ["n.[0-4]"], "exclude": ["n.2"]}, [0, 1, 3, 4]),
        ({"exclude": ["n.*"]}, []),
        ({"max_layers": 10}, list(range(10))),
        ({"max_layers": 1}, [0]),
        ({"max_layers": 2}, [0, 9]),
        ({"max_layers": 4}, [0, 3, 6, 9]),  # round(k * 9 / 3)
        ({"max_layers": 3, "exclude": ["n.0"]}, [1, 5, 9]),
    ],
)
def test_select_layers(kwargs, want):
    assert select_layers([f"n.{i}" for i in range(10)], **kwargs) == want


def test_grad_norms_file_fresh_resumed_and_flushed(tmp_path, monkeypatch):
    path = tmp_path / "deep" / "grad_norms.csv"
    header = "step,layer,depth,grad_norm,weight_norm,update_ratio,optimizer\n"
    f = gnf.GradNormsFile(path)
    assert not f.is_open
    f.flush()
    f.close()  # harmless before open
    f.open(None)
    assert f.is_open
    now = [10.0]
    monkeypatch.setattr(gnf.time, "monotonic", lambda: now[0])
    f.write("0,a,1,1.0,,,\n")  # first write: more than 2 s since "never": flushed
    assert path.read_text() == header + "0,a,1,1.0,,,\n"
    now[0] = 11.0
    f.write("1,a,1,2.0,,,\n")  # 1 s later: buffered
    assert path.read_text() == header + "0,a,1,1.0,,,\n"
    now[0] = 13.0
    f.write("2,a,1,3.0,,,\n")  # 3 s after the last flush: flushed
    assert path.read_text().count("\n") == 4
    f.close()
    assert not f.is_open
    # a resumed fit keeps the rows before its step and appends
    g = gnf.GradNormsFile(path)
    g.open(2)
    g.write("2,a,1,9.0,,,\n")
    g.close()
    assert path.read_text() == header + "0,a,1,1.0,,,\n1,a,1,2.0,,,\n2,a,1,9.0,,,\n"
    # a fresh fit over an earlier fit's rows warns and starts anew
    with pytest.warns(UserWarning, match="holds an earlier fit's rows: starting it anew"):
        gnf.GradNormsFile(path).open(None)
    assert path.read_text() == header
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gnf.GradNormsFile(empty).open(None)  # an empty file: nothing to warn about


# -- callbacks/norms.py: per-tensor norms, host powers, per-layer grouping -------------------
from gradwatch.callbacks import norms as N  # noqa: E402


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, math.inf])
def test_norms_per_tensor_then_per_group(p):
    torch.manual_seed(0)
    tensors = [torch.randn(3, 4), torch.randn(5), torch.randn(2, 2).half(), torch.randn(7)]
    assert N.local_tensors(tensors) == (tensors, None)
    per_tensor = N.tensor_norms(tensors, p, torch.device("cpu"))
    assert per_tensor.dtype == torch.float32 and per_tensor.shape == (4,)
    want = [float(torch.linalg.vector_norm(t.double(), p)) for t in tensors]
    assert per_tensor.tolist() == pytest.approx(want, rel=1e-3)
    powers = N.to_host(per_tensor, p, None)
    assert all(type(v) is float for v in powers)
    exact = [float(v) for v in per_tensor]
    assert powers == pytest.approx(exact if p == math.inf else [v**p for v in exact])
    # tensors 0 and 3 form group 0, tensor 1 group 2; group 1 has none
    grouped = N.group(powers, [0, 2, 1, 0], 4, p)
    flat = [torch.cat([tensors[0].flatten(), tensors[3]]), tensors[1], tensors[2].float()]
    want = [float(torch.linalg.vector_norm(t.double(), p)) for t in flat]
    assert grouped == pytest.approx([want[0], want[2], want[1], 0.0], rel=1e-3)
    assert N.tensor_norms([], p, torch.device("cpu")).shape == (0,)


@pytest.mark.parametrize("p", [2.0, math.inf])
def test_group_keeps_nan_and_inf_whatever_comes_after(p):
    # a NaN first, between or last in its group; an inf beside a finite value
    nan, inf = math.nan, math.inf
    powers = [nan, 1.0, 4.0, 1.0, nan, 4.0, 1.0, 4.0, nan, inf, 9.0]
    got = N.group(powers, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3], 5, p)
    assert all(math.isnan(v) for v in got[:3]) and got[3:] == [math.inf, 0.0]


def test_elements_finite():
    assert N.elements_finite([torch.ones(2), torch.full((3,), 1e38)])
    assert not N.elements_finite([torch.ones(2), torch.tensor([1.0, math.inf])])
    assert not N.elements_finite([torch.tensor([math.nan])])
    assert N.elements_finite([])


class TwiceReLU(nn.Module):
    """One ReLU called twice per forward, and a tanh called on a 0-d tensor (not measured)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)
        self.relu, self.tanh = nn.ReLU(), nn.Tanh()
        self.register_buffer("a", torch.tensor([-1.0, 2.0]))
        self.register_buffer("b", torch.tensor([3.0, -4.0]))

    def forward(self, x):
        n = x.shape[0]
        extra = self.relu(self.a.expand(n, -1)).sum() + self.relu(self.b.expand(n, -1)).sum()
        extra = extra + self.tanh(torch.tensor(0.5))
        return self.linear(x.flatten(1)) + 0 * extra


def test_a_module_called_twice_logs_the_mean_of_its_calls(tmp_path):
    from gradwatch.callbacks import ActivationStatsCallback

    cb = ActivationStatsCallback(log_every_n_steps=3)
    _, log = fit_activations(tmp_path, cb, steps=7, net=TwiceReLU())
    # logged on step 0 and where (step + 1) % 3 == 0
    assert sorted(log.values("activation/net.relu/mean")) == [0, 2, 5]
    # call 1: relu([-1, 2]) = [0, 2], mean 1; call 2: relu([3, -4]) = [3, 0], mean 1.5
    assert log.values("activation/net.relu/mean")[0] == pytest.approx((1.0 + 1.5) / 2)
    assert log.values("activation/net.relu/dead")[0] == pytest.approx(0.5)  # one unit each
    assert not any(k.startswith("activation/net.tanh/") for _, m in log.rows for k in m)


def test_exponential_shrink_passes_a_fit_of_exactly_a_quarter():
    import numpy as np

    runs = [job("sigmoid", 1, 0.25), job("sigmoid", 3, 0.25**3)]
    factor = 10 ** np.polyfit([1, 3], [math.log10(0.25), math.log10(0.25**3)], 1)[0]
    if factor != 0.25:
        pytest.skip(f"numpy's fit gives {factor!r} here, not exactly 0.25")
    assert C.sigmoid_shrinks_exponentially(groups(*runs)).result == PASS  # <= 0.25, inclusive


def test_theory_claims_words():
    arithmetic, demo, tanh = C.theory_claims()
    assert (arithmetic.quote, arithmetic.check) == (
        "A 10-layer network with average gradient values of 0.25 per layer results in "
        "0.25^10 = 0.00000095.",
        "the arithmetic",
    )
    assert (demo.quote, demo.check) == (
        "deep_network_gradients(): gradient magnitudes vanish across 10 sigmoid layers.",
        "the article's demo with the correct derivative a(1 - a): mean |gradient| grows "
        "monotonically from input to output",
    )
    assert (tanh.quote, tanh.check) == (
        "The tanh function has a maximum derivative of 1, but in practice averages around 0.4.",
        "mean tanh'(z) over the units of a 10-layer width-128 Xavier-normal tanh MLP fed "
        "N(0, 1) inputs, at initialization: within 0.3-0.5",
    )
    assert demo.evidence.endswith("(the article's decay demo assumes ~0.2)")
    assert "first/last" in demo.evidence and "sigmoid applied twice: " in demo.evidence


def test_theory_demo_evidence_numbers():
    from gradwatch.report.theory import deep_network_gradients

    d = deep_network_gradients()
    g, a = list(d.gradients), list(d.article_gradients)
    demo = C.theory_claims()[1]
    assert demo.evidence.startswith(
        f"layer 1: {g[0]:.1e}, layer 10: {g[9]:.1e}, first/last {g[0] / g[9]:.1e} (the "
        f"article's code, sigmoid applied twice: {a[0] / a[9]:.1e}); mean sigmoid derivative "
    )


@pytest.mark.parametrize(
    ("mean", "result"), [(0.3, PASS), (0.4, PASS), (0.5, PASS), (0.29, FAIL), (0.51, FAIL)]
)
def test_tanh_claim_band_is_inclusive(monkeypatch, mean, result):
    monkeypatch.setattr(C, "mean_tanh_derivative", lambda: mean)
    tanh = C.theory_claims()[2]
    assert tanh.result == result and tanh.evidence == f"mean tanh'(z) = {mean:.2f}"


def test_demo_claim_fails_when_the_gradients_do_not_grow(monkeypatch):
    from types import SimpleNamespace

    import numpy as np

    flat = SimpleNamespace(
        gradients=np.array([1.0, 2.0, 2.0]),
        article_gradients=np.array([1.0, 2.0]),
        first_last_ratio=0.5,
        mean_derivative=0.25,
    )
    monkeypatch.setattr(C, "deep_network_gradients", lambda: flat)
    assert C.theory_claims()[1].result == FAIL


def test_a_dict_without_global_step_is_not_a_checkpoint(tmp_path):
    run = make_run(tmp_path, "relu", "a")
    good = save_ckpt(run / "checkpoints" / "epoch=0.ckpt", mtime=100)
    torch.save({"state_dict": {}}, weights := run / "checkpoints" / "weights.ckpt")
    os.utime(weights, (200, 200))
    assert R.last_checkpoint_in(run) == good


def test_hydra_subdir_of_a_resume_keeps_the_first_launch_files(tmp_path):
    run = make_run(tmp_path, "relu", "a")
    save_ckpt(run / "checkpoints" / "last.ckpt")

    def root(output_dir):
        c = cfg(tmp_path, "last")
        c.hydra = {"runtime": {"output_dir": output_dir}}
        return c

    sub = R.hydra_subdir_resolver(_root_=root(str(run)))
    assert re.fullmatch(r"\.hydra/resume-\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-\d{6}", sub)
    assert R.hydra_subdir_resolver(_root_=root(str(tmp_path / "elsewhere"))) == ".hydra"
    assert R.hydra_subdir_resolver(_root_=cfg(tmp_path, "last")) == ".hydra"  # no hydra key
    assert R.hydra_subdir_resolver(_root_=root(None)) == ".hydra"


def test_continue_csv_logger_keeps_earlier_rows_quietly(tmp_path):
    import warnings

    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(tmp_path, name="csv", version=0)
    path = Path(logger.log_dir) / "metrics.csv"
    R.continue_csv_logger(logger, 2)  # no file yet: nothing to keep
    path.parent.mkdir(parents=True)
    write_csv(path, ["step", "train/loss"], [[str(s), str(10 - s)] for s in range(5)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Lightning's "logs directory exists" stays quiet
        R.continue_csv_logger(logger, 2)
    assert read_csv(path) == [["step", "train/loss"], ["0", "10"], ["1", "9"]]
    logger.log_metrics({"train/loss": 7.5}, step=2)
    logger.save()
    assert read_csv(path)[-1] == ["2", "7.5"] and len(read_csv(path)) == 4


def write_verdict_golden() -> None:
    """Rewrite mutation_golden/verdict_advice.json from the current advice (on purpose only:
    ``python -c "from tests.test_mutation_kills import write_verdict_golden as w; w()"``)."""
    out = {}
    for name, (ratios, signals) in VERDICT_SCENARIOS.items():
        d = diagnose(ratios, **signals)
        ratio = None if math.isnan(d.ratio) else d.ratio
        out[name] = {
            "verdict": d.verdict,
            "ratio": ratio,
            "advice": d.advice,
            "reasons": list(d.reasons),
        }
    (GOLDEN / "verdict_advice.json").write_text(json.dumps(out, indent=1))
