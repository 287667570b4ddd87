"""The dashboards people look at, read back the way people see them: a real TensorBoard server
over HTTP, a real browser (headless chromium) on its CUSTOM SCALARS page and on the report's
index.html, and W&B's own offline run files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gradwatch.loggers.hparams import HPARAMS_METRICS, VERDICT_CODE
from gradwatch.recipe import train
from gradwatch.run.files import WANDB_ID_FILE
from tests.browser import browser
from tests.conftest import run_cli
from tests.runs import compose_run
from tests.tensorboard_server import get_json, post_json, quote, tensorboard
from tests.wandb_records import history, records

#: The dashboard callback, whether or not configs/callbacks/default.yaml lists it yet.
DASHBOARD = "++callbacks.dashboard._target_=gradwatch.callbacks.dashboard.DashboardCallback"
DEPTH = 8
#: An 8-layer sigmoid MLP (vanishing) and an 8-layer ReLU + He MLP (healthy).
SWEEP = ["experiment=sigmoid,relu", f"model.net.depth={DEPTH}", "debug=fast", "logger=many"]
PER_LAYER_CHART = "gradient norm per layer (log10)"
LAYERS = [f"net.network.{2 * i}" for i in range(DEPTH + 1)]  # 8 hidden + the output layer
STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A two-job multirun, as a user runs it (TensorBoard + CSV + W&B offline)."""
    tmp = tmp_path_factory.mktemp("dash")
    result = run_cli(
        "-m", *SWEEP, DASHBOARD, f"paths.log_dir={tmp}", f"hydra.sweep.dir={tmp}/sweep", cwd=tmp
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "sweep"


def _chart(layout: dict, title: str) -> dict:
    charts = [c for cat in layout["category"] for c in cat["chart"] if c["title"] == title]
    assert len(charts) == 1, f"{title!r} appears {len(charts)} times in {layout}"
    return charts[0]


def _sessions(base: str) -> list[dict]:
    body = {
        "experimentName": "",
        "allowedStatuses": STATUSES,
        "colParams": [],
        "startIndex": 0,
        "sliceSize": 100,
    }
    groups = post_json(f"{base}/data/plugin/hparams/session_groups", body)["sessionGroups"]
    return [
        {**session, "hparams": group["hparams"]}
        for group in groups
        for session in group["sessions"]
    ]


@pytest.mark.parametrize("where", ["run", "sweep"])
def test_tensorboard_serves_the_layout_the_verdict_and_one_hparams_session_per_job(sweep, where):
    logdir = sweep / "0" if where == "run" else sweep
    jobs = 1 if where == "run" else 2
    with tensorboard(logdir, ready_runs=jobs) as base:
        runs = get_json(f"{base}/data/runs")
        # Run names say what the run is: the experiment and its overrides.
        assert len(runs) == jobs
        assert all(
            re.search(rf"tensorboard/(sigmoid|relu),.*model\.net\.depth={DEPTH}", r) for r in runs
        )
        assert not any(r.endswith("tensorboard") for r in runs)

        # CUSTOM SCALARS: one per-layer chart (merged, not repeated per job) whose regex the
        # server matches to exactly the layers of each run, aggregates excluded.
        layout = get_json(f"{base}/data/plugin/custom_scalars/layout")
        (regex,) = _chart(layout, PER_LAYER_CHART)["multiline"]["tag"]
        for run in runs:
            url = f"{base}/data/plugin/custom_scalars/scalars?run={quote(run)}&tag={quote(regex)}"
            matched = get_json(url)
            assert matched["regex_valid"]
            assert sorted(matched["tag_to_events"]) == sorted(
                f"log10_grad_norm/{n}" for n in LAYERS
            )
            steps = [e[1] for e in matched["tag_to_events"]["log10_grad_norm/net.network.0"]]
            assert steps == [0, 1, 2]
        titles = {c["title"] for cat in layout["category"] for c in cat["chart"]}
        for words in (
            "update ratio per layer",
            "weight norm per layer",
            "activation saturation",
            "total gradient norm",
            "first/last gradient-norm ratio",
        ):
            assert any(t.startswith(words) for t in titles), (words, titles)

        # TEXT: the verdict and the advice.
        verdicts = {}
        for run in runs:
            assert "verdict/text_summary" in get_json(f"{base}/data/plugin/text/tags")[run]
            texts = get_json(
                f"{base}/data/plugin/text/text?run={quote(run)}&tag=verdict/text_summary"
            )
            last = texts[-1]["text"]
            verdicts[run] = re.search(r"<strong>(\w[\w-]*)</strong>", last).group(1)
            assert "first/last gradient-norm ratio" in last
        expected = {"sigmoid": "vanishing", "relu": "healthy"}
        for run, verdict in verdicts.items():
            assert verdict == expected[re.search(r"tensorboard/(\w+),", run).group(1)]
        assert "ReLU with He init" in texts[-1]["text"] or jobs == 2

        # HPARAMS: one session per job, with its config and final metrics.
        experiment = post_json(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
        names = {h["name"] for h in experiment["hparamInfos"]}
        assert {
            "experiment",
            "model.net.depth",
            "model.net.activation",
            "model.net.init",
            "model.net.norm",
            "model.net.residual",
            "optimizer",
            "model.optimizer.lr",
            "dataset",
            "seed",
            "data.batch_size",
        } <= names
        metrics = [m["name"]["tag"] for m in experiment["metricInfos"]]
        assert metrics == [tag for tag, _ in HPARAMS_METRICS]
        sessions = _sessions(base)
        assert sorted(s["name"] for s in sessions) == sorted(runs)
        for session in sessions:
            assert session["status"] == "STATUS_SUCCESS"
            assert session["hparams"]["model.net.depth"] == DEPTH
            values = {m["name"]["tag"]: m["value"] for m in session["metricValues"]}
            assert set(values) == set(metrics)
            activation = session["hparams"]["model.net.activation"]
            assert values[VERDICT_CODE] == (-1.0 if activation == "sigmoid" else 0.0)
            assert 0 <= values["val/acc"] <= 1 and 0 <= values["test/acc"] <= 1


def _wandb_log(job: Path) -> Path:
    (log,) = job.glob("wandb/offline-run-*/run-*.wandb")
    return log


def _wandb_run(log: Path):
    return next(r.run for r in records(log) if r.WhichOneof("record_type") == "run")


def _wandb_config(log: Path) -> dict:
    config = {}
    for record in records(log):
        if record.WhichOneof("record_type") == "config":
            for item in record.config.update:
                config[item.key] = json.loads(item.value_json)
    return config


def _wandb_summary(log: Path) -> dict:
    summary = {}
    for record in records(log):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return summary


def test_wandb_run_has_the_config_the_verdict_and_one_chart_of_every_layer(sweep):
    for job, experiment, verdict in (("0", "sigmoid", "vanishing"), ("1", "relu", "healthy")):
        log = _wandb_log(sweep / job)
        run = _wandb_run(log)
        assert run.job_type == experiment
        assert run.run_group  # one group per sweep
        config = _wandb_config(log)
        assert config["model.net.depth"] == DEPTH
        assert config["experiment"] == experiment
        assert config["model.net.activation"] == experiment
        assert config["model.optimizer.lr"] == pytest.approx(1e-3)
        summary = _wandb_summary(log)
        assert summary["diagnosis"] == verdict
        assert summary["advice"].startswith(("The input-side", "Gradients reach"))
        assert summary["initial_first_last_ratio"] > 0 and summary["final_first_last_ratio"] > 0
        keys = set().union(*history(log))
        assert {f"grad_norm/{name}" for name in LAYERS} <= keys
        assert "charts/grad_norm_per_layer_table/_type" in keys
        assert "charts/grad_norm_vs_depth_table/_type" in keys


def test_a_resumed_run_continues_the_same_wandb_run_and_tensorboard_run(tmp_path):
    def launch(*overrides: str) -> None:
        common = ("experiment=relu", "debug=fast", "logger=many", "test=false", DASHBOARD)
        train(compose_run(tmp_path / "run", tmp_path, *common, *overrides))

    launch()
    run_dir = tmp_path / "run"
    launch(f"ckpt_path={run_dir}/checkpoints/last.ckpt", "trainer.max_epochs=2")
    logs = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == 2
    ids = {_wandb_run(log).run_id for log in logs}
    assert ids == {(run_dir / WANDB_ID_FILE).read_text().strip()}
    resumed = [r["trainer/global_step"] for r in history(logs[1]) if "grad_norm/total" in r]
    assert resumed == [3, 4, 5]
    (tb_run,) = (run_dir / "tensorboard").iterdir()  # the resume wrote into the same run
    assert len(list(tb_run.glob("events.out.tfevents.*"))) >= 2


def _loaded(state: dict) -> bool:
    return bool(state["images"]) and all(i["complete"] and i["width"] > 0 for i in state["images"])


def test_browser_shows_the_per_layer_chart_on_tensorboards_custom_scalars_page(sweep, tmp_path):
    with tensorboard(sweep, ready_runs=2) as base, browser() as page:
        page.goto(f"{base}/#custom_scalars")
        state = page.wait_for(
            lambda s: any(PER_LAYER_CHART in t for t in s["texts"]),
            what=f"the {PER_LAYER_CHART!r} card",
        )
        # Every run's lines are drawn: the card's legend or runs selector names both jobs.
        page.wait_for(
            lambda s: all(any(f"{job}/tensorboard/" in t for t in s["texts"]) for job in "01"),
            what="both jobs' runs",
        )
        cards = page.evaluate(
            """(() => { let n = 0; const walk = (r) => { for (const e of r.querySelectorAll('*')) {
                 if (e.tagName.toLowerCase() === 'tf-custom-scalar-multi-line-chart-card') n++;
                 if (e.shadowRoot) walk(e.shadowRoot); } }; walk(document); return n; })()"""
        )
        assert cards >= 6
        shot = page.screenshot(tmp_path / "custom_scalars.png")
    assert shot.stat().st_size > 10_000
    assert "first/last gradient-norm ratio" in " ".join(state["texts"])


def test_browser_shows_every_figure_of_the_report_and_its_tensorboard_command(sweep, tmp_path):
    from gradwatch.report import build_report

    report = build_report(sweep)
    index = report.out_dir / "index.html"
    with browser() as page:
        page.goto(index.resolve().as_uri())
        state = page.wait_for(_loaded, what="every figure to load")
        page.screenshot(tmp_path / "report.png")
    figures = sorted(p.name for p in report.out_dir.glob("*.png"))
    shown = sorted(Path(i["src"]).name for i in state["images"])
    assert shown == figures and figures
    for link in state["links"]:
        if link.startswith("file://"):
            assert Path(link.removeprefix("file://").split("#")[0]).exists(), link
    text = state["texts"][0]
    assert f"tensorboard --logdir {sweep.resolve()}" in text
    assert "HPARAMS" in text and "CUSTOM SCALARS" in text
    assert (tmp_path / "report.png").stat().st_size > 10_000
