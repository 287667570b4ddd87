"""Checkpoints that are whole or absent, and that load without running code.

- :class:`AtomicCheckpointIO` (a Lightning ``CheckpointIO`` plugin, ``trainer.plugins``)
  writes a checkpoint to a hidden temporary file in the *same* directory, fsyncs it, then
  renames it over the target: a kill or a full disk at any moment leaves either the old
  file or the new one, never half of one, and the temporary name never ends in ``.ckpt``.
  It loads with ``torch.load(weights_only=True)`` unless told otherwise.
- :class:`ModelCheckpoint` is Lightning's, except that ``save_last="link"`` replaces
  ``last.ckpt`` atomically too (Lightning removes the old link first, and falls back to a
  plain copy, which a full disk cuts short).
- :func:`load_plain` loads a checkpoint as plain data, refusing one that would unpickle code.

Example::

    trainer = L.Trainer(
        plugins=[AtomicCheckpointIO()], callbacks=[ModelCheckpoint(save_last="link")]
    )
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import callbacks as pl_callbacks
from typing_extensions import override

#: Temporary files are ``.<name>.tmp-<pid>``: hidden, and never matched by ``*.ckpt``.
TMP_MARK = ".tmp-"


class UnsafeCheckpointError(ValueError):
    """The file needs code to be unpickled (``weights_only=True`` refused it)."""


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def _is_local(path: Any) -> bool:
    return "://" not in str(path)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _swapped_in(tmp: Path, path: Path) -> Iterator[None]:
    """Rename ``tmp`` (made in the block) over ``path``; on any error remove ``tmp``."""
    try:
        yield
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and rename it to ``path``.

    On any error (a full disk included) the temporary file is removed and ``path`` is left
    as it was.
    """
    path = Path(path)
    tmp = temp_path(path)
    with _swapped_in(tmp, path), open(tmp, mode, **kwargs) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete temporary files a killed writer left in ``directory`` (call with the run locked)."""
    removed = []
    for tmp in directory.glob(f".*{TMP_MARK}*"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def load_plain(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``; a file that carries code is refused.

    Raises:
        UnsafeCheckpointError: the file would need arbitrary code to be unpickled (nothing
            of it is executed).
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeCheckpointError(
            f"{path} holds more than plain data, so it was not loaded (loading it would run "
            f"code it carries: {first}). gradwatch checkpoints are plain tensors, numbers and "
            "strings; a file that is not is either from another program or has been tampered "
            "with. Resume only from checkpoints a gradwatch run wrote."
        ) from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO``, writing through a same-directory temporary file.

    Remote (``scheme://``) paths are left to Lightning. ``load_checkpoint`` defaults to
    ``weights_only=True`` and refuses a file that would unpickle code
    (:class:`UnsafeCheckpointError`).
    """

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options.")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Serialized in memory first (as Lightning does): torch's writer turns a failed
        # write into a RuntimeError without the errno; a plain write keeps the OSError.
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with atomic_write(path) as f:
            f.write(buffer.getbuffer())

    @override
    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = True,
    ) -> dict[str, Any]:
        if not _is_local(path) or weights_only is False:
            return super().load_checkpoint(path, map_location, weights_only)
        if not Path(path).exists():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        return load_plain(path, map_location=map_location)


def replace_with_link(target: str | os.PathLike, link: str | os.PathLike) -> None:
    """Make ``link`` point at ``target`` (a relative symlink, else a hard link, else a copy),
    replacing any old ``link`` atomically: there is always a whole ``link`` or the old one."""
    target, link = Path(target), Path(link)
    tmp = temp_path(link)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    with _swapped_in(tmp, link):
        try:
            os.symlink(os.path.relpath(target, link.parent), tmp)
        except OSError:
            try:
                os.link(target, tmp)
            except OSError:
                with atomic_write(tmp) as f, open(target, "rb") as src:
                    shutil.copyfileobj(src, f)


class ModelCheckpoint(pl_callbacks.ModelCheckpoint):
    """Lightning's ``ModelCheckpoint``; ``save_last="link"`` swaps ``last.ckpt`` atomically.

    Args:
        min_interval_s: skip a scheduled save that comes less than this many seconds after
            the previous one, except at the end of fit (max_epochs / max_steps reached or a
            stop requested): runs of many tiny epochs then pay for a checkpoint every few
            seconds, not every epoch. ``None``: every scheduled save. Ctrl-C and SIGTERM
            still save at once (``InterruptCheckpoint``); a ``kill -9`` loses at most this
            long of training, and the resume from the older checkpoint stays exact.
        **kwargs: Lightning's ``ModelCheckpoint`` arguments.
    """

    def __init__(self, *args: Any, min_interval_s: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if min_interval_s is not None and not min_interval_s >= 0:
            raise ValueError(f"min_interval_s must be >= 0 or null, got {min_interval_s!r}.")
        self.min_interval_s = min_interval_s
        self._saved_at: float | None = None
        self._key_of: tuple | None = None  # the settings state_key was made from
        self._key = ""

    @property
    def state_key(self) -> str:
        # Lightning formats this key on every hook call, to name a profiler section: a repr
        # of five settings, about 8 us a call inside a training step (1% of a make-train step).
        settings = (
            self.monitor,
            self.mode,
            self._every_n_train_steps,
            self._every_n_epochs,
            self._train_time_interval,
        )
        if settings != self._key_of:
            self._key_of, self._key = settings, super().state_key
        return self._key

    def on_train_batch_end(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        # Saves by step or by time only: without either Lightning's hook saves nothing, but
        # checks the trainer's state first (30 us a step). Lightning's own attributes (2.6);
        # tests/test_checkpoint_interval.py saves by step and by time through this.
        if self._every_n_train_steps >= 1 or self._train_time_interval is not None:
            super().on_train_batch_end(trainer, *args, **kwargs)

    def _should_skip_saving_checkpoint(self, trainer: Any) -> bool:
        return super()._should_skip_saving_checkpoint(trainer) or self._too_soon(trainer)

    def _too_soon(self, trainer: Any) -> bool:
        if not self.min_interval_s or self._saved_at is None:
            return False
        final = (
            trainer.should_stop
            or (
                trainer.max_epochs not in (None, -1)
                and trainer.current_epoch + 1 >= trainer.max_epochs
            )
            or (trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps)
        )
        return not final and time.monotonic() - self._saved_at < self.min_interval_s

    def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self._saved_at = time.monotonic()

    @staticmethod
    def _link_checkpoint(trainer: Any, filepath: str, linkpath: str) -> None:
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            if os.path.isdir(linkpath) and not os.path.islink(linkpath):
                shutil.rmtree(linkpath)
            replace_with_link(filepath, linkpath)
        trainer.strategy.barrier()
