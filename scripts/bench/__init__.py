"""Benchmark harness: ``python -m scripts.bench`` (``make bench``).

Each group is a module of this package exposing ``run(repeats: int, quick: bool) ->
list[Row]``; all groups run in one process, with torch threads pinned, and the table of
medians and ratios is printed and written to ``logs/bench/``.
"""

from scripts.bench.core import Row, median_time, pin_threads

__all__ = ["Row", "median_time", "pin_threads"]
