"""Mutation testing (``make mutation``): mutmut 3 over the modules whose bugs the tests must catch.

Each group below is run by mutmut in its own workspace under ``.mutation/<group>/`` (git-ignored),
with only that group's covering test files, so a mutant is never run against unrelated tests.
mutmut itself narrows further: a mutant runs only the tests that called its function.

Equivalent mutants (that cannot change behaviour) are listed, one per line with a reason, in
``tests/mutation_equivalents.txt``; they are counted apart, not silently dropped.

    python scripts/mutation.py                 # every group, then the report
    python scripts/mutation.py verdict claims  # some groups
    python scripts/mutation.py --report        # the report of the last run only
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutation"
EQUIVALENTS = ROOT / "tests" / "mutation_equivalents.txt"

# Tiny fits checked value by value (a second or two in all): the slower model tests of
# tests/test_grad_norm*.py would multiply the time of every mutant that survives the first.
CALLBACK_TESTS = [
    "tests/test_callback_kills.py",
    "tests/test_activation_stats.py",
    "tests/test_mutation_kills.py",
]
# The one place to edit when a module moves: group -> (mutated files, covering test files).
GROUPS: dict[str, tuple[list[str], list[str]]] = {
    "init": (
        ["src/gradwatch/nets/init.py"],
        ["tests/test_nets.py", "tests/test_deep.py", "tests/test_mutation_kills.py"],
    ),
    "callbacks": (
        [
            "src/gradwatch/callbacks/layers.py",
            "src/gradwatch/callbacks/depth.py",
            "src/gradwatch/callbacks/norms.py",
            "src/gradwatch/callbacks/grad_norms_file.py",
            "src/gradwatch/callbacks/activation_stats.py",
        ],
        CALLBACK_TESTS,
    ),
    "verdict": (
        ["src/gradwatch/verdict.py"],
        [
            "tests/test_verdict.py",
            "tests/test_grad_norm.py",
            "tests/test_grad_norm_models.py",
            "tests/test_mutation_kills.py",
        ],
    ),
    "resume": (
        ["src/gradwatch/run/resume.py", "src/gradwatch/step_csv.py"],
        ["tests/test_resume.py", "tests/test_mutation_kills.py"],
    ),
    "claims": (
        ["src/gradwatch/report/claims.py"],
        ["tests/test_report.py", "tests/test_mutation_kills.py"],
    ),
    # the largest (about 1,150 mutants): last, so a time-boxed run scores the rest first
    "grad_norm": (["src/gradwatch/callbacks/grad_norm.py"], CALLBACK_TESTS),
}
# Slow tests (minutes of training) stay out of mutation runs, and so does a wall-clock timing
# test, which fails under load whatever the code.
PYTEST_ARGS = [
    "-m",
    "not slow",
    "-p",
    "no:cacheprovider",
    "--deselect",
    "tests/test_deep.py::test_building_grows_linearly_with_depth",
    # pytest's unraisable-exception plugin runs gc.collect() at the end of every session: over
    # the heap torch and Lightning leave, 1.5 s of each mutant's 2 s. Not needed to kill one.
    "-p",
    "no:unraisableexception",
]
# What the tests need besides src/ and tests/ (copied into mutmut's mutants/ tree).
ALSO_COPY = ["configs", "scripts"]


def _status(code: int | None) -> str:
    from mutmut.stats import status_by_exit_code  # mutmut 3's exit codes -> status

    return status_by_exit_code[code]


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(value)


def _pytest_options() -> dict:
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return data["tool"]["pytest"]["ini_options"]


NO_GRAD = "@torch.no_grad()"


def undecorate(source: str) -> str:
    """``@torch.no_grad()`` on a function -> a ``with torch.no_grad():`` around its body.

    The same behaviour, but mutmut 3 leaves decorated functions alone, and these are the
    callbacks' measuring steps and init_weights. Applied to the workspace's copy only.
    """
    import ast

    lines = source.splitlines(keepends=True)
    funcs = [
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef)
        and [ast.unparse(d) for d in node.decorator_list] == [NO_GRAD[1:]]
    ]
    for node in sorted(funcs, key=lambda n: -n.lineno):  # bottom up: line numbers stay valid
        body = node.body[1:] if ast.get_docstring(node) is not None else node.body
        first, last = body[0].lineno - 1, node.end_lineno
        pad = " " * body[0].col_offset
        body = [("    " + ln if ln.strip() else ln) for ln in lines[first:last]]
        lines[first:last] = [f"{pad}with torch.no_grad():\n", *body]
        deco = node.decorator_list[0].lineno - 1
        assert lines[deco].strip() == NO_GRAD, lines[deco]
        del lines[deco]
    return "".join(lines)


def prepare(group: str, fresh: bool) -> Path:
    """The workspace: links to src/ tests/ configs/ scripts/, and a pyproject for mutmut."""
    files, tests = GROUPS[group]
    ws = WORK / group
    if fresh:
        shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir(parents=True, exist_ok=True)
    for name in ["tests", *ALSO_COPY]:
        if not (ws / name).is_symlink():
            (ws / name).symlink_to(ROOT / name)
    # mutmut copies files, not the link src/gradwatch/configs -> ../../configs: made here.
    (ws / "mutants" / "src" / "gradwatch").mkdir(parents=True, exist_ok=True)
    link = ws / "mutants" / "src" / "gradwatch" / "configs"
    if not link.is_symlink():
        link.symlink_to(Path("..", "..", "configs"))
    if fresh or not (ws / "src").exists():
        shutil.copytree(ROOT / "src", ws / "src", symlinks=True)
        for f in files:
            path = ws / f
            path.write_text(undecorate(path.read_text()))
    pytest_opts = {k: v for k, v in _pytest_options().items() if k != "testpaths"}
    lines = ["[tool.pytest.ini_options]"]
    lines += [f"{k} = {_toml(v)}" for k, v in pytest_opts.items()]
    lines += [
        "",
        "[tool.mutmut]",
        'source_paths = ["src"]',
        f"only_mutate = {_toml(files)}",
        f"also_copy = {_toml(ALSO_COPY)}",
        f"pytest_add_cli_args_test_selection = {_toml(tests)}",
        f"pytest_add_cli_args = {_toml(PYTEST_ARGS)}",
        "use_git_change_detection = false",
    ]
    (ws / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return ws


def run_group(group: str, again: bool = False, resume: bool = False, workers: int = 2) -> float:
    """mutmut over one group; ``again``: only rerun the last run's survivors (tests changed);
    ``resume``: go on with the mutants an interrupted run did not check."""
    names = []
    if again:
        skip = load_equivalents()
        names = [
            m
            for f in results(group).values()
            for m, s in f.items()
            if not _killed(s) and m not in skip
        ]
        if not names:
            return 0.0
    ws = prepare(group, fresh=not (again or resume))
    # Tests that start ``python -m gradwatch...`` in a subprocess run the workspace's unmutated
    # copy: mutmut's trampolines need its config in the working directory, which a subprocess
    # started elsewhere does not have (mutmut cannot trace subprocesses anyway).
    env = {**os.environ, "PYTHONPATH": str(ws / "src")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE="offline")
    mutmut = Path(sys.executable).with_name("mutmut")
    start = time.monotonic()
    print(
        f"== {group}: mutmut run in {ws.relative_to(ROOT)}"
        + (f" ({len(names)} survivors again)" if again else ""),
        flush=True,
    )
    with open(ws / "mutmut.log", "a" if again or resume else "w") as log:
        subprocess.run(
            [str(mutmut), "run", "--max-children", str(workers), *names],
            cwd=ws,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
    took = time.monotonic() - start
    (ws / "wall_s").write_text(f"{took:.0f}\n")
    print(f"   {took:.0f} s (log: {(ws / 'mutmut.log').relative_to(ROOT)})", flush=True)
    return took


def _killed(status: str) -> bool:
    return status in ("killed", "timeout", "caught by type check")


def load_equivalents() -> dict[str, str]:
    """``mutant name  # reason`` per line; a mutant without a reason is an error."""
    out: dict[str, str] = {}
    for n, line in enumerate(EQUIVALENTS.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition("#")
        if not reason.strip():
            raise SystemExit(f"{EQUIVALENTS}:{n}: an equivalent mutant needs a reason after '#'")
        out[name.strip()] = reason.strip()
    return out


def results(group: str) -> dict[str, dict[str, str]]:
    """file -> {mutant name: status}, read from mutmut's .meta files."""
    files, _ = GROUPS[group]
    out: dict[str, dict[str, str]] = {}
    for f in files:
        meta = WORK / group / "mutants" / (f + ".meta")
        if not meta.exists():
            continue
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        out[f] = {k: _status(v) for k, v in codes.items()}
    return out


def show(group: str, mutant: str) -> str:
    mutmut = Path(sys.executable).with_name("mutmut")
    r = subprocess.run(
        [str(mutmut), "show", mutant], cwd=WORK / group, capture_output=True, text=True, check=False
    )
    return r.stdout


def report(groups: list[str], with_diffs: bool = True) -> int:
    equivalents = load_equivalents()
    seen: set[str] = set()
    worst = 100.0
    rows = []
    for group in groups:
        for f, statuses in results(group).items():
            eq = [m for m in statuses if m in equivalents]
            seen.update(eq)
            live = {m: s for m, s in statuses.items() if m not in equivalents}
            unchecked = sum(s == "not checked" for s in live.values())
            checked = {m: s for m, s in live.items() if s != "not checked"}
            killed = sum(_killed(s) for s in checked.values())
            survivors = sorted(m for m, s in checked.items() if not _killed(s))
            score = 100.0 * killed / len(checked) if checked else 0.0
            worst = min(worst, score if not unchecked else 0.0)
            rows.append((f, killed, len(checked), len(eq), score, unchecked))
            if survivors:
                print(f"\n-- {f}: {len(survivors)} surviving")
                for m in survivors:
                    print(f"   {checked[m]:<10} {m}")
                    if with_diffs:
                        diff = show(group, m).split("\n", 1)[-1].strip()
                        lines = [ln for ln in diff.splitlines() if re.match(r"^[-+][^-+]", ln)]
                        print("      " + "\n      ".join(lines))
    print(
        "\nmutation score (killed / non-equivalent mutants; equivalents listed in "
        f"{EQUIVALENTS.relative_to(ROOT)})"
    )
    for f, killed, total, eq, score, unchecked in rows:
        left = f", {unchecked} NOT CHECKED (interrupted: --resume)" if unchecked else ""
        print(f"  {f:<48} {killed:>4} / {total:<4} {score:5.1f}%   ({eq} equivalent{left})")
    for group in groups:
        for f in sorted(set(GROUPS[group][0]) - set(results(group))):
            print(f"  {f:<48} not run (no mutants: see .mutation/{group}/mutmut.log)")
            worst = 0.0
    stale = sorted(set(equivalents) - seen)
    if stale and set(groups) == set(GROUPS):
        print("\nequivalents listed but not generated any more (remove them):")
        for m in stale:
            print("  ", m)
    return 0 if worst >= 90.0 else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("groups", nargs="*", help=f"default: all of {', '.join(GROUPS)}")
    p.add_argument("--report", action="store_true", help="only print the last run's report")
    p.add_argument(
        "--again",
        action="store_true",
        help="rerun only the last run's survivors (after adding tests)",
    )
    p.add_argument(
        "--resume", action="store_true", help="go on with an interrupted run (its results are kept)"
    )
    p.add_argument("--no-diffs", action="store_true", help="survivors by name only")
    p.add_argument("--workers", type=int, default=2, help="mutants run at once (default 2)")
    a = p.parse_args()
    groups = a.groups or list(GROUPS)
    if unknown := set(groups) - set(GROUPS):
        p.error(f"unknown group(s) {sorted(unknown)}; the groups are {', '.join(GROUPS)}")
    if not a.report:
        start = time.monotonic()
        for g in groups:
            run_group(g, again=a.again, resume=a.resume, workers=a.workers)
        print(f"\nmutation run: {time.monotonic() - start:.0f} s wall", flush=True)
    return report(groups, with_diffs=not a.no_diffs)


if __name__ == "__main__":
    sys.exit(main())
