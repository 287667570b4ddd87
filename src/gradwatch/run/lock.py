"""One launch at a time per run directory: ``<run dir>/.lock``, held with ``fcntl.flock``.

The lock belongs to the open file, so the kernel releases it when the process ends, however
it ends (a ``kill -9`` included): a dead launch never leaves a run locked. A refused launch
names the holder: its pid from ``/proc/locks`` (Linux), else the pid and command line the
holder wrote into the file (:meth:`RunLock.record`, once its checks passed: a launch refused
by them leaves the file as it was).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gradwatch.run.files import LOCK_FILE


class RunLockedError(RuntimeError):
    """Another live process holds the run directory."""


def _holder(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text())
    return {}


def _locking_pid(path: Path) -> int | None:
    """The pid holding a ``flock`` on ``path``, from ``/proc/locks`` (None if unknown)."""
    try:
        inode = path.stat().st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()  # "1: FLOCK ADVISORY WRITE <pid> <maj>:<min>:<inode> 0 EOF"
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].endswith(f":{inode}"):
            with contextlib.suppress(ValueError):
                return int(fields[4])
    return None


def _command_of(pid: int) -> str | None:
    with contextlib.suppress(OSError):
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    return None


def refusal(err: BaseException) -> str | None:
    """The message of a refused launch, or None when ``err`` is something else."""
    return str(err) if isinstance(err, RunLockedError) else None


class RunLock:
    """An exclusive, non-blocking lock on a run directory.

    Example::

        with RunLock(run_dir):
            ...  # this process alone writes in run_dir

    Raises:
        RunLockedError: (from :meth:`acquire`) another process holds it; the message names
            its pid, command line and start time.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(self._refusal()) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def record(self) -> None:
        """Write who holds the lock into it (for a refused launch's message, where
        ``/proc/locks`` cannot say). A full disk leaves the old record; the lock holds."""
        if self._fd is None:
            return
        record = {
            "pid": os.getpid(),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, (json.dumps(record) + "\n").encode(), 0)

    def _refusal(self) -> str:
        holder = _holder(self.path)
        pid = _locking_pid(self.path)
        if pid is None or pid == holder.get("pid"):
            pid = pid or holder.get("pid")
        else:
            holder = {}  # the file still names an earlier holder
        command = (_command_of(pid) if isinstance(pid, int) else None) or holder.get("command")
        who = f"process {pid}" if pid is not None else "another process"
        details = "".join(
            [
                f" ({command})" if command else "",
                f", running since {holder['since']}" if holder.get("since") else "",
            ]
        )
        return (
            f"The run directory {self.path.parent} is in use by {who}{details}. Two launches "
            "writing one run would mix their checkpoints and logs, so this one stops without "
            f"touching it. Wait for {who} to end (or stop it: kill -TERM {pid or '<pid>'} saves "
            "a checkpoint), then resume; or start a new run without ckpt_path."
        )

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
