"""A write that failed for lack of room or permission, told as one paragraph.

Whoever writes (our checkpoint IO, the gradient callback's CSV, TensorBoard's event writer,
matplotlib), the run catches the ``OSError`` at its top level (``gradwatch.train``) and
:func:`disk_error` turns it into a sentence naming the file and the free space left.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import threading
from pathlib import Path
from types import TracebackType

#: A write failing with one of these means "the disk", not "the program".
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO}
#: These too, when the error names the file it could not write.
PERMISSION_ERRNOS = {errno.EACCES, errno.EPERM}


def _chain(err: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def find_disk_error(err: BaseException) -> OSError | None:
    """The disk-full / read-only / permission ``OSError`` behind ``err``, if one is: the
    first that happened (the deepest in the chain), not a later write that failed too."""
    found = None
    for e in _chain(err):
        if isinstance(e, OSError) and (
            e.errno in DISK_ERRNOS or (e.errno in PERMISSION_ERRNOS and e.filename)
        ):
            found = e
    return found


class QuietThreadDiskErrors:
    """While installed, a writer thread dying of a full disk (TensorBoard's event writer)
    prints one line instead of a traceback; the writer raises the error again in the main
    thread, where the run reports it. Other thread errors print as usual."""

    def __init__(self) -> None:
        self._previous: object = None

    def _hook(self, args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None and find_disk_error(args.exc_value) is not None:
            name = args.thread.name if args.thread is not None else "a thread"
            print(f"({name}: {args.exc_value})", file=sys.stderr)
            return
        self._previous(args)  # type: ignore[operator]

    def install(self) -> None:
        if self._previous is None:
            self._previous, threading.excepthook = threading.excepthook, self._hook

    def remove(self) -> None:
        if self._previous is not None:
            threading.excepthook, self._previous = self._previous, None  # type: ignore[assignment]


def _path_like(value: object) -> str | None:
    if not isinstance(value, (str, bytes, os.PathLike)):
        value = getattr(value, "name", None)  # an open file
        if not isinstance(value, (str, bytes)):
            return None
    try:
        text = os.fsdecode(value)
    except (TypeError, ValueError):
        return None
    return text if os.path.isabs(text) and "\n" not in text else None


def _paths_in(tb: TracebackType | None) -> list[str]:
    """Absolute paths held by the failing frames' locals, innermost frame first."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    found = []
    for frame in reversed(frames):
        for value in list(frame.f_locals.values()):
            path = _path_like(value)
            if path and path not in found:
                found.append(path)
    return found


def failed_path(err: OSError, run_dir: Path) -> Path:
    """The file the write was for: ``err.filename``, else the innermost path in the
    traceback that lies in ``run_dir`` (else any), else ``run_dir`` itself."""
    if err.filename:
        return Path(os.fsdecode(err.filename))
    paths = [p for e in _chain(err) for p in _paths_in(e.__traceback__)]
    run = str(run_dir.resolve())
    inside = [p for p in paths if os.path.realpath(p).startswith(run)]
    return Path((inside or paths or [str(run_dir)])[0])


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def free_space(path: Path) -> str:
    """``"1.2 GB free of 50.0 GB"`` for the filesystem holding ``path`` (or its parents)."""
    for where in [path, *path.parents]:
        try:
            usage = shutil.disk_usage(where)
        except OSError:
            continue
        return f"{human_bytes(usage.free)} free of {human_bytes(usage.total)}"
    return "free space unknown"


def disk_error(err: BaseException, run_dir: Path, outcome: str) -> str | None:
    """One paragraph saying what could not be written and why; None for other errors.

    ``outcome`` says what became of the run (its summary, its newest checkpoint).
    """
    found = find_disk_error(err)
    if found is None:
        return None
    path = failed_path(found, run_dir)
    reason = found.strerror or str(found)
    code = errno.errorcode.get(found.errno or 0, str(found.errno))
    advice = {
        errno.EROFS: "Point paths.log_dir at a writable disk",
        errno.EACCES: "Fix the permissions or point paths.log_dir elsewhere",
        errno.EPERM: "Fix the permissions or point paths.log_dir elsewhere",
        errno.EFBIG: "Raise the file-size limit (ulimit -f) or point paths.log_dir elsewhere",
    }.get(found.errno or 0, "Free some space (or point paths.log_dir at a bigger disk)")
    return (
        f"Could not write {path}: {reason} ({code}); the disk holding it has "
        f"{free_space(path)}. The run stopped there. {outcome} {advice}, then resume with "
        "ckpt_path=last."
    )
