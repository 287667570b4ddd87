"""A plain (non-editable) install runs `python -m gradwatch.train` from any directory with
the one top-level configs/ (packaged through the src/gradwatch/configs link)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_built_wheel_finds_its_configs_from_any_directory(tmp_path):
    # Built from a copy: setuptools writes build/ into the tree it builds.
    source = tmp_path / "source"
    skip = {"logs", "data", "build", "wandb", "outputs", "multirun"}
    shutil.copytree(
        ROOT,
        source,
        symlinks=True,
        ignore=lambda d, names: [
            n for n in names if n.startswith(".") or (Path(d) == ROOT and n in skip)
        ],
    )
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("gradwatch-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # The sweeper that configs/hydra/default.yaml names, where Hydra looks for plugins.
    assert (site / "hydra_plugins" / "gradwatch_sweeper" / "covering_sweeper.py").is_file()
    assert not (site / "hydra_plugins" / "__init__.py").exists()  # a namespace package
    configs = site / "gradwatch" / "configs"
    packaged = sorted(p.relative_to(configs) for p in configs.rglob("*.yaml"))
    sources = ROOT / "configs"
    assert packaged == sorted(p.relative_to(sources) for p in sources.glob("**/*.yaml"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "offline"}
    where = subprocess.run(
        [sys.executable, "-c", "import gradwatch; print(gradwatch.__file__)"],
        cwd=elsewhere, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr
    run = subprocess.run(
        [sys.executable, "-m", "gradwatch.train", "experiment=relu", "debug=fast", "test=false",
         f"paths.log_dir={tmp_path / 'logs'}"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert list((tmp_path / "logs" / "relu" / "runs").glob("*/summary.json"))
