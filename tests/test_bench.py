"""The benchmark harness discovers groups, writes its table, and refuses bad options.

Timings are never asserted: only that the rows are measured, related and written.
"""

from __future__ import annotations

import json
import math
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch

import scripts.bench
from scripts.bench import __main__ as harness
from scripts.bench import callback_cost, gpu, process, sweep, training
from scripts.bench.core import interleaved, rows_against, with_ratios

TINY_GROUP = textwrap.dedent(
    """
    from scripts.bench.core import Row, median_time

    def run(repeats, quick):
        slow = median_time(lambda: sum(range(20000)), repeats)
        fast = median_time(lambda: sum(range(2000)), repeats)
        return [
            Row("tiny", "slow", slow, "s", repeats=repeats),
            Row("tiny", "fast", fast, "s", baseline="slow", note="quick" if quick else ""),
        ]
    """
)


@pytest.fixture
def tiny_group(tmp_path, monkeypatch):
    """A group module ``tinygroup`` placed where the harness discovers groups."""
    groups_dir = tmp_path / "groups"
    groups_dir.mkdir()
    (groups_dir / "tinygroup.py").write_text(TINY_GROUP)
    monkeypatch.setattr(scripts.bench, "__path__", [*scripts.bench.__path__, str(groups_dir)])
    yield "tinygroup"


def test_discovers_every_group_module_but_core_and_main(tiny_group):
    groups = harness.available_groups()
    assert {"training", "sweep", tiny_group} <= set(groups)
    assert "core" not in groups and "__main__" not in groups


def test_quick_run_writes_json_and_markdown(tiny_group, tmp_path, capsys):
    out = tmp_path / "bench"
    assert (
        harness.main(["--quick", "--repeats", "1", "--groups", tiny_group, "--out", str(out)]) == 0
    )
    latest = json.loads((out / "latest.json").read_text())
    assert latest["quick"] is True and latest["repeats"] == 1 and latest["threads"] == 1
    assert latest["machine"]["cores"] >= 1 and latest["groups"] == [tiny_group]
    rows = {r["name"]: r for r in latest["rows"]}
    assert rows.keys() == {"slow", "fast"}
    fast, slow = rows["fast"], rows["slow"]
    assert fast["note"] == "quick" and slow["ratio"] is None
    assert fast["ratio"] == pytest.approx(slow["value"] / fast["value"])  # durations: base / value
    stamped = sorted(out.glob("bench-*.json"))
    assert len(stamped) == 1 and json.loads(stamped[0].read_text()) == latest
    table = (out / "latest.md").read_text()
    assert "| tiny | fast |" in table and f"{fast['ratio']:.2f}x" in table
    assert table == stamped[0].with_suffix(".md").read_text()
    assert "| tiny | slow |" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--groups", "nosuch"], "unknown benchmark group 'nosuch'. Valid choices:"),
        (["--repeats", "0"], "--repeats must be a positive integer, got 0"),
    ],
)
def test_bad_options_exit_nonzero_naming_the_value(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        harness.main([*args, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert not any(tmp_path.iterdir())


def test_training_rows_measure_the_stack_and_the_plain_loop(tmp_path):
    cfg = training.compose_config("sigmoid", str(tmp_path), "data.batch_size=512")
    with training.quiet():
        stack = training.stack_steps_per_s(cfg, warmup=1, epochs=1)
        plain = training.plain_loop_steps_per_s(cfg, warmup=1, epochs=1, item_norms=True)
    assert math.isfinite(stack) and stack > 0 and math.isfinite(plain) and plain > 0
    assert list((tmp_path).glob("*/grad_norms.csv")), "the stack ran with its default callbacks"


def test_interleaved_rounds_rotate_the_order():
    calls: list[str] = []
    values = {"a": iter([1.0, 5.0, 3.0]), "b": iter([2.0, 2.0, 9.0])}
    variants = {
        name: (lambda name=name: calls.append(name) or next(values[name])) for name in values
    }
    assert interleaved(variants, repeats=3) == {"a": [1.0, 5.0, 3.0], "b": [2.0, 2.0, 9.0]}
    assert calls == ["a", "b", "b", "a", "a", "b"]


def test_sweep_ceiling_rows_compare_two_processes_with_one():
    one, two = sweep.ceiling_rows(seconds=0.3)
    assert one.value > 0 and two.value > 0 and two.baseline == one.name
    assert with_ratios([one, two])[1].ratio == pytest.approx(two.value / one.value)


def test_sweep_grid_is_the_make_sweep_preset():
    assert (training.CONFIG_DIR / "sweep" / "small.yaml").exists()
    grid, source = sweep.grid_overrides(quick=False)
    assert grid == ["sweep=small"] and "small.yaml" in source
    assert "debug=fast" in sweep.grid_overrides(quick=True)[0]


def test_long_groups_run_only_when_named():
    assert "sweep" not in harness.parse_args([]).groups
    assert {"training", "callback_cost"} <= set(harness.parse_args([]).groups)
    assert harness.parse_args(["--groups", "sweep"]).groups == ["sweep"]


def test_gpu_group_skips_without_cuda_and_its_rows_run_on_cpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu.torch.cuda, "is_available", lambda: False)
    assert gpu.run(repeats=1, quick=True) == []
    assert "no CUDA device" in capsys.readouterr().err
    # The same code on the CPU (the GPU run differs only in the device): every row measured.
    rows = gpu.rows(repeats=1, quick=True, device="cpu", precisions=("bf16-mixed",))
    names = {r.name: r for r in rows}
    assert set(names) == {
        "bf16-mixed residual: plain loop",
        "bf16-mixed residual: gradwatch",
        "bf16-mixed resnet18/none",
        "bf16-mixed resnet18/gradwatch",
        "bf16-mixed resnet18/gradwatch_grads_only",
    }
    assert all(r.value > 0 and math.isfinite(r.value) for r in rows)
    assert names["bf16-mixed resnet18/gradwatch"].baseline == "bf16-mixed resnet18/none"


def test_the_plain_torch_baseline_does_the_default_runs_work():
    """The whole-process baseline trains, validates (20 epochs) and tests, as the default run
    (whose 10-layer sigmoid net stays near chance on digits: the article's point)."""
    command = process.commands(Path("unused"))["plain torch script"]
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=process.HERE)
    epochs = [ln for ln in out.stdout.splitlines() if ln.startswith("epoch")]
    assert len(epochs) == 20
    assert 0 <= float(out.stdout.split("test acc")[-1]) <= 1


def test_rows_against_name_every_row_and_compare_all_but_the_baseline():
    rows = rows_against(
        "g", {"plain loop": 10.0, "gradwatch": 8.0}, "plain loop", "steps/s", 3, "sigmoid: ",
        {"gradwatch": "default callbacks"},
    )  # fmt: skip
    assert [(r.name, r.baseline, r.note, r.repeats) for r in rows] == [
        ("sigmoid: plain loop", None, "", 3),
        ("sigmoid: gradwatch", "sigmoid: plain loop", "default callbacks", 3),
    ]
    assert with_ratios(rows)[1].ratio == 0.8


def test_ratios_are_taken_round_by_round_and_values_are_medians():
    # The host slows by half in the middle round: both variants' medians move, their ratio
    # within each round does not.
    rounds = {"plain": [10.0, 5.0, 10.0], "fast": [12.0, 6.0, 12.0], "dur": [2.0, 4.0, 2.5]}
    rows = with_ratios(rows_against("g", rounds, "plain", "steps/s", 3))
    assert [(r.value, r.ratio) for r in rows] == [(10.0, None), (12.0, 1.2), (2.5, 0.25)]
    seconds = rows_against("g", {"a": [2.0, 4.0], "b": [1.0, 1.0]}, "a", "s", 2)
    assert with_ratios(seconds)[1].ratio == pytest.approx(3.0)  # durations: base / value


def test_epoch_clock_leaves_out_the_final_checkpoint_only(tmp_path, monkeypatch):
    """A fake clock: each step takes 1 s and each checkpoint save 100 s. Timed: the two
    epochs after the warm-up (4 steps) and the save at the end of the first of them; the
    save that ends the fit is left out."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.demos.boring_classes import BoringModel
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    now = [0.0]
    monkeypatch.setattr(training, "clock", lambda: now[0])

    class Tick(L.Callback):
        def on_train_batch_end(self, *args) -> None:
            now[0] += 1.0

    class SlowIO(TorchCheckpointIO):
        def save_checkpoint(self, *args, **kwargs) -> None:
            now[0] += 100.0
            super().save_checkpoint(*args, **kwargs)

    timer = training.EpochClock(warmup_epochs=1)
    every_epoch = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_top_k=-1)
    trainer = L.Trainer(
        max_epochs=3,
        limit_train_batches=2,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        plugins=[SlowIO()],
        callbacks=[Tick(), timer, every_epoch],
    )
    trainer.fit(BoringModel())
    assert len(list(tmp_path.glob("*.ckpt"))) == 3  # one a epoch, the warm-up's too
    assert timer.final_saves_s == 100.0
    assert timer.steps_per_s == 4 / (4 + 100)


@pytest.mark.parametrize(
    ("variant", "owner", "work"),
    [
        ("gradwatch", torch, "_foreach_norm"),  # our norms
        ("lightning_grad_norm", torch.Tensor, "norm"),  # the recipe's p.grad.data.norm
        ("wandb_watch", torch.Tensor, "histc"),  # wandb.watch's histograms
    ],
)
def test_resnet_rows_time_as_monitored_exactly_the_steps_that_monitor(
    tmp_path, monkeypatch, variant, owner, work
):
    """The ResNet rows compare a run's monitored steps with its other steps: each variant's
    monitoring work must fall on the steps counted as monitored, and only there."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    now, worked = {}, set()

    class Steps(callback_cost.StepTimes):
        def on_train_batch_start(self, trainer, pl_module, *args) -> None:
            now["step"] = trainer.global_step
            super().on_train_batch_start(trainer, pl_module, *args)

    original = getattr(owner, work)

    def spy(*args, **kwargs):
        worked.add(now.get("step"))
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, work, spy)
    monkeypatch.setattr(callback_cost, "StepTimes", Steps)
    times = callback_cost.resnet_step_times(variant, 8, str(tmp_path), every=2)
    assert sorted(times) == list(range(8))
    monitored = {s for s in times if callback_cost.lightning_logs_at(s, 2)}
    assert monitored == {1, 3, 5, 7}
    assert worked - {0} == monitored  # step 0: our callback's first measurement
