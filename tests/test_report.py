"""The report on a hand-made multirun directory: tables, claims, figures, index.html, errors."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import yaml

from gradwatch.report import build_report, collect_jobs, newest_multirun
from gradwatch.report.__main__ import main as report_main
from gradwatch.report.claims import FAIL, NOT_MEASURED, PASS, check_claims
from gradwatch.run.summary import update_summary

NETS = {
    "sigmoid": {"activation": "sigmoid", "init": "default", "norm": "none", "residual": False},
    "relu": {"activation": "relu", "init": "kaiming_normal", "norm": "none", "residual": False},
    "residual": {"activation": "relu", "init": "kaiming_normal", "norm": "batch", "residual": True},
}
NETS["deep_rezero"] = NETS["deep_fixup"] = {**NETS["relu"], "residual": True}


def make_job(root: Path, number: int, experiment: str, depth: int, **summary) -> Path:
    """A job directory as train() and the callback leave it."""
    job = root / str(number)
    (job / ".hydra").mkdir(parents=True)
    overrides = [f"experiment={experiment}", f"model.net.depth={depth}"]
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    net = {"depth": depth, "width": 128, **NETS[experiment]}
    fields = {"experiment": experiment, "net": net, "status": "completed", "steps": 20}
    update_summary(job, **{**fields, **summary})
    ratio = summary.get("initial_first_last_ratio") or 1.0
    with (job / "grad_norms.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "layer", "depth", "grad_norm"])
        for step in (0, 10):
            for layer in range(1, depth + 2):
                norm = ratio ** ((depth + 1 - layer) / depth) if ratio > 0 else 0.0
                writer.writerow([step, f"net.network.{2 * (layer - 1)}", layer, norm])
    return job


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = (
        tmp_path_factory.mktemp("report")
        / "logs"
        / "sweep_small"
        / "multiruns"
        / "2026-01-01_00-00-00-000000"
    )
    make_job(
        root,
        0,
        "sigmoid",
        10,
        initial_first_last_ratio=3e-9,
        final_first_last_ratio=2e-9,
        val_acc=0.1,
        test_acc=0.09,
        diagnosis="vanishing",
    )
    make_job(
        root,
        1,
        "sigmoid",
        20,
        initial_first_last_ratio=0.0,
        final_first_last_ratio=0.0,
        val_acc=0.11,
        test_acc=0.1,
        diagnosis="vanishing",
    )
    make_job(
        root,
        2,
        "sigmoid",
        5,
        initial_first_last_ratio=2e-5,
        final_first_last_ratio=1e-5,
        val_acc=0.6,
        test_acc=0.55,
        diagnosis="vanishing",
    )
    make_job(
        root,
        3,
        "relu",
        10,
        initial_first_last_ratio=0.4,
        final_first_last_ratio=2.0,
        val_acc=0.95,
        test_acc=0.94,
        diagnosis="healthy",
    )
    make_job(
        root,
        4,
        "residual",
        20,
        initial_first_last_ratio=1.1,
        final_first_last_ratio=1.0,
        val_acc=0.96,
        test_acc=0.95,
        diagnosis="healthy",
    )
    make_job(root, 5, "relu", 20, status="failed", error="ValueError: boom")
    return root


def _claim(claims, text):
    (claim,) = [c for c in claims if text in c.quote]
    return claim


def test_claims_follow_the_measured_numbers(sweep):
    claims = check_claims(collect_jobs(sweep))
    assert _claim(claims, "10^-6 or more").result == PASS
    assert "3.00e-09" in _claim(claims, "10^-6 or more").evidence
    assert _claim(claims, "6-10 orders").result == PASS  # 8.5 orders
    assert _claim(claims, "shrinks exponentially").result == PASS  # 2e-5 at 5, 3e-9 at 10
    assert _claim(claims, "20-layer").result == PASS  # 0.11 <= chance + 0.1
    assert _claim(claims, "ReLU has a derivative").result == PASS  # the failed relu job ignored
    assert _claim(claims, "very deep networks").result == PASS
    assert _claim(claims, "hundreds of layers").result == NOT_MEASURED
    assert _claim(claims, "Batch normalization").result == NOT_MEASURED


def test_claims_fail_when_the_numbers_disagree(tmp_path):
    root = tmp_path / "m"
    make_job(root, 0, "sigmoid", 10, initial_first_last_ratio=1e-3, val_acc=0.5)
    make_job(root, 1, "sigmoid", 20, initial_first_last_ratio=1e-4, val_acc=0.8)
    make_job(root, 2, "relu", 10, initial_first_last_ratio=1e-4, val_acc=0.2)
    make_job(root, 3, "residual", 50, initial_first_last_ratio=1.0, val_acc=0.5)
    claims = check_claims(collect_jobs(root))
    for text in (
        "10^-6 or more",
        "6-10 orders",
        "shrinks exponentially",
        "20-layer",
        "ReLU has a derivative",
        "very deep networks",
    ):
        assert _claim(claims, text).result == FAIL, text


def deep_sweep(root: Path, rezero_1000_acc: float) -> list:
    """A small deep sweep: plain ReLU at 10 and 100, residual nets at 100 and 1,000 blocks."""
    # 243/270 correct, as float32 stores it (just below 0.9): it counts as trained.
    make_job(root, 0, "relu", 10, initial_first_last_ratio=0.4, val_acc=0.8999999761581421)
    make_job(root, 1, "relu", 100, initial_first_last_ratio=0.5, val_acc=0.31)
    make_job(root, 2, "deep_rezero", 100, initial_first_last_ratio=1.1, val_acc=0.95)
    make_job(root, 3, "deep_fixup", 100, initial_first_last_ratio=1.2, val_acc=0.40)
    make_job(root, 4, "deep_rezero", 1000, initial_first_last_ratio=1.3, val_acc=rezero_1000_acc)
    make_job(root, 5, "deep_fixup", 1000, status="failed", error="RuntimeError: boom")
    return check_claims(collect_jobs(root))


def test_hundreds_of_layers_is_measured_by_depth_with_the_numbers(tmp_path):
    claims = deep_sweep(tmp_path / "m", rezero_1000_acc=0.92)
    claim = _claim(claims, "hundreds of layers")
    # depth 100: the best residual net (rezero, 0.95) trains; depth 1,000: rezero 0.92.
    assert claim.result == PASS
    assert "depth 100: deep_rezero 0.950, deep_fixup 0.400 (plain relu: 0.310)" in claim.evidence
    assert "depth 1,000: deep_rezero 0.920" in claim.evidence
    row = _claim(claims, "Skip connections in ResNets")
    assert row.result == PASS
    assert "deepest plain: relu at depth 10 (val acc 0.900" in row.evidence
    assert "deepest residual: deep_rezero at depth 1,000 (val acc 0.920" in row.evidence


def test_hundreds_of_layers_fails_when_no_residual_net_trains_at_a_depth(tmp_path):
    claims = deep_sweep(tmp_path / "m", rezero_1000_acc=0.35)
    claim = _claim(claims, "hundreds of layers")
    assert claim.result == FAIL and "depth 1,000: deep_rezero 0.350" in claim.evidence
    # The deepest residual net that trains (100) is still deeper than the plain one (10).
    row = _claim(claims, "Skip connections in ResNets")
    assert row.result == PASS and "deep_rezero at depth 100 " in row.evidence


def test_deepest_plain_vs_residual_fails_when_plain_goes_as_deep(tmp_path):
    root = tmp_path / "m"
    make_job(root, 0, "relu", 100, initial_first_last_ratio=0.5, val_acc=0.92)
    make_job(root, 1, "deep_rezero", 100, initial_first_last_ratio=1.0, val_acc=0.95)
    make_job(root, 2, "deep_rezero", 1000, initial_first_last_ratio=1.0, val_acc=0.2)
    row = _claim(check_claims(collect_jobs(root)), "Skip connections in ResNets")
    assert row.result == FAIL and "relu at depth 100" in row.evidence


@pytest.fixture(scope="module")
def report(sweep):
    return build_report(sweep)


def test_summary_csv_and_md_have_one_row_per_job(report):
    rows = list(csv.DictReader((report.out_dir / "summary.csv").open()))
    assert [r["job"] for r in rows] == ["0", "1", "2", "3", "4", "5"]
    assert rows[0]["experiment"] == "sigmoid" and rows[0]["depth"] == "10"
    assert float(rows[0]["initial_first_last_ratio"]) == 3e-9
    assert float(rows[3]["val_acc"]) == 0.95 and rows[3]["verdict"] == "healthy"
    assert rows[5]["status"] == "failed" and rows[5]["error"] == "ValueError: boom"
    md = (report.out_dir / "summary.md").read_text()
    assert "0 (underflow)" in md  # the depth-20 sigmoid's ratio of exactly 0
    assert "| experiment=sigmoid model.net.depth=10 |" in md  # what the sweep varied
    assert "job 5 (relu, `experiment=relu model.net.depth=20`): failed: ValueError: boom" in md


def test_index_html_shows_everything_and_links_only_existing_files(report):
    out = report.out_dir
    html = (out / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert set(refs) >= {
        "summary.csv",
        "summary.md",
        "claims.md",
        "gradient_flow.png",
        "ratio_vs_depth.png",
        "accuracy_vs_depth.png",
        "layer_norms_over_training.png",
        "activation_comparison.png",
        "gradient_vanishing.png",
    }
    for ref in refs:
        assert (out / ref).is_file(), ref
        assert not re.match(r"^[a-z]+://|^/", ref), f"not offline: {ref}"
    for ref in refs:
        if ref.endswith(".png"):
            assert (out / ref).read_bytes()[:4] == b"\x89PNG"
    assert "ValueError: boom" in html


def test_a_job_that_never_wrote_its_summary_is_listed_as_missing(tmp_path):
    root = tmp_path / "m"
    make_job(root, 0, "relu", 3, initial_first_last_ratio=0.5, val_acc=0.9)
    (root / "1" / ".hydra").mkdir(parents=True)
    (root / "1" / ".hydra" / "config.yaml").write_text(
        yaml.safe_dump({"task_name": "tanh", "model": {"net": {"depth": 7}}})
    )
    jobs = collect_jobs(root)
    assert [(j.job, j.experiment, j.depth, j.status) for j in jobs] == [
        ("0", "relu", 3, "completed"),
        ("1", "tanh", 7, "missing"),
    ]
    assert jobs[1].val_acc is None and jobs[1].initial_first_last_ratio is None


def test_newest_multirun_is_the_latest_timestamp_across_sweeps(tmp_path):
    for name in (
        "sweep_small/multiruns/2026-01-02_00-00-00-000000",
        "multiruns/2026-01-03_00-00-00-000000",  # a plain -m
        "sweep_full/multiruns/2026-01-01_00-00-00-000000",
    ):
        (tmp_path / name).mkdir(parents=True)
    assert newest_multirun(tmp_path).name == "2026-01-03_00-00-00-000000"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/nope"], "No such multirun directory"),
        (["{tmp}"], "holds no job directories"),
        (["--log-dir", "{tmp}"], "No multirun under"),
    ],
)
def test_bad_input_exits_nonzero_with_a_clear_message(tmp_path, capsys, args, message):
    assert report_main([a.format(tmp=tmp_path) for a in args]) == 2
    assert message in capsys.readouterr().err
