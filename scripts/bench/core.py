"""Timing primitives shared by every benchmark group."""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch


@dataclass
class Row:
    """One measured line of the table.

    ``value`` is a rate (``unit`` like ``steps/s``) or a duration (``s``); ``ratio`` is
    value / baseline's value within the same group (for durations, baseline / value, so a
    ratio above 1 always means faster than the baseline).
    """

    group: str
    name: str
    value: float
    unit: str
    baseline: str | None = None
    ratio: float | None = None
    repeats: int = 1
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def rows_against(
    group: str,
    values: dict[str, float] | dict[str, list[float]],
    baseline: str,
    unit: str,
    repeats: int,
    prefix: str = "",
    notes: dict[str, str] | None = None,
) -> list[Row]:
    """One row per ``name -> value``, named ``prefix + name``; each row but the
    ``baseline``'s own is compared with it.

    Given each variant's values round by round (:func:`interleaved`),
    a row shows the median value, and its ratio is the median of the rounds' own ratios (so
    not always the quotient of the medians shown): a round's variants run close together,
    while the host's speed drifts by 10 to 40% over a group, which moves each variant's
    median far more than the ratio within a round.
    """
    rows = []
    for name, value in values.items():
        row = Row(
            group,
            prefix + name,
            statistics.median(value) if isinstance(value, list) else value,
            unit,
            baseline=None if name == baseline else prefix + baseline,
            repeats=repeats,
            note=(notes or {}).get(name, ""),
        )
        base = values[baseline]
        if row.baseline and isinstance(value, list) and isinstance(base, list):
            pairs = [_ratio(v, b, unit) for v, b in zip(value, base) if v and b]
            row.ratio = statistics.median(pairs) if pairs else None
        rows.append(row)
    return rows


def _ratio(value: float, base: float, unit: str) -> float:
    """Above 1: faster than the baseline (a higher rate, or a shorter duration)."""
    return value / base if unit != "s" else base / value


def interleaved(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Each variant's value in each of ``repeats`` rounds, variants in a rotating order.

    Rotating spreads the machine's slow moments (other jobs) over all variants instead of
    charging them to whichever ran at that time.
    """
    names = list(variants)
    results: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            results[name].append(variants[name]())
    return results


def pin_threads(n: int = 1) -> None:
    """Fix torch's intra- and inter-op threads so timings do not fight over cores."""
    torch.set_num_threads(n)
    # Inter-op threads can only be set once, before any parallel work.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(n)


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def with_ratios(rows: list[Row]) -> list[Row]:
    """Fill ``ratio`` for every row that names a baseline row of its group and has none."""
    by_name = {(r.group, r.name): r for r in rows}
    for row in rows:
        base = by_name.get((row.group, row.baseline)) if row.baseline else None
        if row.ratio is not None or base is None or not base.value or not row.value:
            continue  # a ratio already taken round by round stays
        row.ratio = _ratio(row.value, base.value, row.unit)
    return rows


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Lightning's per-fit banners and warnings while timing: they would bury the table."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
