"""``python -m scripts.bench`` (``make bench``): every benchmark group, one table.

Groups are the modules of :mod:`scripts.bench` other than ``core`` and ``__main__``;
each exposes ``run(repeats: int, quick: bool) -> list[Row]``. They run one after the other
in this process with torch threads pinned; the table of medians and ratios is printed and
written to ``<out>/bench-<timestamp>.{json,md}`` and ``<out>/latest.{json,md}``.

    python -m scripts.bench                     # all groups but the long ones, 3 repeats
    python -m scripts.bench --quick --repeats 1 --groups training
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import scripts.bench
from scripts.bench.core import Row, pin_threads, with_ratios

NOT_GROUPS = {"core", "__main__"}
#: Groups that take minutes of their own: run only when named in --groups.
LONG_GROUPS = {"sweep"}


def available_groups() -> list[str]:
    return sorted(
        m.name
        for m in pkgutil.iter_modules(scripts.bench.__path__)
        if m.name not in NOT_GROUPS and not m.name.startswith("_")
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    groups = available_groups()
    parser = argparse.ArgumentParser(
        prog="python -m scripts.bench",
        description="Benchmark table: medians over interleaved repeats, ratios to baselines.",
    )
    default = [g for g in groups if g not in LONG_GROUPS]
    parser.add_argument(
        "--groups",
        default=",".join(default),
        help=f"comma-separated groups to run (default: {', '.join(default)}; also: "
        f"{', '.join(sorted(LONG_GROUPS))})",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per row")
    parser.add_argument("--quick", action="store_true", help="shorter runs, long rows skipped")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="time rates with wall time (default) or this process's CPU time (shared machines)",
    )
    parser.add_argument("--out", type=Path, default=Path("logs/bench"), help="output folder")
    args = parser.parse_args(argv)
    args.groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = [g for g in args.groups if g not in groups]
    if unknown or not args.groups:
        parser.error(
            f"unknown benchmark group {', '.join(map(repr, unknown)) or '(none given)'}. "
            f"Valid choices: {', '.join(groups)}."
        )
    for name in ("repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}.")
    return args


def machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    with_name = Path("/proc/cpuinfo")
    if with_name.exists():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in with_name.read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"


def markdown(rows: list[Row], meta: dict) -> str:
    lines = [
        f"Benchmark {meta['started']}: {meta['machine']['cpu']}, {meta['machine']['cores']} "
        f"cores, torch {meta['machine']['torch']}, {meta['threads']} torch thread(s), "
        f"{meta['repeats']} repeats{' (quick)' if meta['quick'] else ''}, {meta['clock']} clock, "
        f"load average {meta['machine']['load_avg_1m']} at start.",
        "",
        "| group | row | median | unit | vs | ratio | note |",
        "| --- | --- | ---: | --- | --- | ---: | --- |",
    ]
    for r in rows:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        lines.append(
            f"| {r.group} | {r.name} | {_fmt(r.value)} | {r.unit} | {r.baseline or ''} | "
            f"{ratio} | {r.note} |"
        )
    lines.append("")
    lines.append("Ratios above 1 mean faster than the row named under `vs`.")
    return "\n".join(lines) + "\n"


def write(rows: list[Row], meta: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    stamp = meta["started"].replace(":", "-")
    payload = json.dumps({**meta, "rows": [r.as_dict() for r in rows]}, indent=2)
    table = markdown(rows, meta)
    for name in (f"bench-{stamp}", "latest"):
        (out / f"{name}.json").write_text(payload)
        (out / f"{name}.md").write_text(table)
    return out / f"bench-{stamp}.json", out / f"bench-{stamp}.md"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pin_threads(args.threads)
    os.environ["GRADWATCH_BENCH_CLOCK"] = args.clock
    started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    meta = {
        "started": started,
        "machine": machine(),
        "threads": args.threads,
        "clock": args.clock,
        "repeats": args.repeats,
        "quick": args.quick,
        "groups": args.groups,
        "duration_s": {},
    }
    rows: list[Row] = []
    for group in args.groups:
        print(f"[bench] {group} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        module = importlib.import_module(f"scripts.bench.{group}")
        rows += module.run(repeats=args.repeats, quick=args.quick)
        meta["duration_s"][group] = round(time.perf_counter() - t0, 1)
    rows = with_ratios(rows)
    json_path, md_path = write(rows, meta, args.out)
    print(markdown(rows, meta))
    print(f"written: {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
