"""Lightning's TensorBoardLogger, made for reading gradients: one event per logged step, a
run named after what it is, log10 companions of the norms, the CUSTOM SCALARS layout and an
HPARAMS session."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.logger import _add_prefix, _convert_params
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from tensorboard.compat.proto.event_pb2 import Event
from torch import Tensor

from gradwatch.loggers.hparams import HPARAMS, HPARAMS_METRICS, flatten, shown
from gradwatch.loggers.naming import dir_name

EVENTS_GLOB = "events.out.tfevents.*"
LOG10 = "log10_"
#: Tags whose log10 companion is remembered (a run logs a few thousand at most).
LOG10_TAGS_KEPT = 100_000


def use_c_crc32c() -> bool:
    """Checksum TensorBoard's event records with google-crc32c's C code.

    TensorBoard's writer computes every record's CRC-32C in pure Python: 0.5 ms for the 3 kB
    event of a small net's logging step, 10 ms for a 520-layer net's, in its writer thread
    and holding the GIL, so training waits. The C version gives the same value 2,000x
    faster. Returns whether it is in use (not when google-crc32c has no C build here).
    """
    try:
        import google_crc32c
    except ImportError:
        return False
    if google_crc32c.implementation != "c":
        return False
    from tensorboard.summary.writer import record_writer

    def masked_crc32c(data: bytes) -> int:  # TFRecord's masking of the CRC
        crc = google_crc32c.value(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    record_writer.masked_crc32c = masked_crc32c
    return True


def continued_version(root: Path) -> str | None:
    """The run directory an earlier launch of this run wrote under ``root``, so that a resume
    continues it: ``""`` for event files directly in ``root``, else its only subdirectory
    holding event files; ``None`` when there is none (a new run)."""
    if not root.is_dir():
        return None
    if any(root.glob(EVENTS_GLOB)):
        return ""
    found = [d.name for d in root.iterdir() if d.is_dir() and any(d.glob(EVENTS_GLOB))]
    return found[0] if len(found) == 1 else None


class BatchedTensorBoardLogger(TensorBoardLogger):
    """TensorBoard logs a person can read, in ``<save_dir>/<name>/<run name>/``.

    - One event per logged step: the gradient callbacks log three values per layer on a
      logging step; Lightning's logger calls ``add_scalar`` once per value, each building and
      queueing an event. Here the step's values share one ``Summary``, read the same way.
    - The run is named after what it is: with ``run_name="relu"`` and the command-line
      overrides ``model.net.depth=20 seed=1`` the event files go to
      ``tensorboard/relu,model.net.depth=20,seed=1/`` (a resume continues the directory the
      run already has). An explicit ``version`` wins.
    - ``log10``: for each of these kinds, every ``<kind>/<name>`` scalar also gets a
      ``log10_<kind>/<name>`` companion (positive finite values only): TensorBoard charts
      have a linear axis unless a person presses the card's log-scale button.
    - The CUSTOM SCALARS page gets a layout (``tensorboard_plugins.layout``): every layer's
      gradient norm in one chart, update ratios, weight norms, activation saturation,
      total norm and first/last ratio.
    - Lightning asks for ``save()`` (a flush of the event file, a look for hparams.yaml) on
      every logging step; here at most every :attr:`flush_every_s` seconds, and always at
      the end (``finalize``), so a short logging interval costs no file-system round trips.
    - ``log_hyperparams`` writes an HPARAMS session with the config keys ``hparams``
      (default :data:`gradwatch.loggers.hparams.HPARAMS`) and the metric columns
      :data:`~gradwatch.loggers.hparams.HPARAMS_METRICS`; no placeholder metric is logged.
      The session is marked successful when the run finishes.

    Example::

        logger = BatchedTensorBoardLogger("logs/run", name="tensorboard", run_name="relu")
    """

    #: Seconds between flushes on Lightning's ``save()``: what TensorBoard shows of a live
    #: run lags by at most this (it reloads every 5 s itself).
    flush_every_s = 5.0

    def __init__(
        self,
        save_dir: str | os.PathLike,
        name: str | None = "tensorboard",
        version: int | str | None = None,
        run_name: str | None = None,
        log10: Iterable[str] | None = ("grad_norm", "update_ratio"),
        hparams: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if version is None and run_name is not None:
            version = continued_version(Path(save_dir, name or ""))
            if version is None:
                version = dir_name(run_name)
        super().__init__(save_dir, name=name, version=version, **kwargs)
        use_c_crc32c()
        self.log10 = tuple(log10 or ())
        self._log10_parts = tuple(f"{kind}/" for kind in self.log10)
        self._log10_tags: dict[str, str | None] = {}
        self.hparams_keys = tuple(HPARAMS if hparams is None else hparams)
        self._session_started = self._session_ended = False
        self._saved_at: float | None = None

    @property
    def experiment(self):
        new = self._experiment is None
        writer = super().experiment
        if new and self._experiment is not None:  # rank zero, first use: the page layout
            from gradwatch.loggers.tensorboard_plugins import layout_summary

            writer._get_file_writer().add_summary(layout_summary(self.log10), 0)
        return writer

    def _log10_tag(self, tag: str) -> str | None:
        try:
            return self._log10_tags[tag]
        except KeyError:
            pass
        companion = None
        for part in self._log10_parts:
            if tag.startswith(part):
                companion = LOG10 + tag
                break
            at = tag.find("/" + part)
            if at >= 0:
                companion = f"{tag[: at + 1]}{LOG10}{tag[at + 1 :]}"
                break
        if len(self._log10_tags) >= LOG10_TAGS_KEPT:  # tags made up on the fly: start over
            self._log10_tags.clear()
        self._log10_tags[tag] = companion
        return companion

    @rank_zero_only
    def save(self) -> None:
        now = time.monotonic()
        if self._saved_at is None or now - self._saved_at >= self.flush_every_s:
            self._saved_at = now
            super().save()

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        event = Event()  # the values are added in place: no copies of a Summary
        values, nested = event.summary.value, {}
        for tag, value in metrics.items():
            if isinstance(value, Tensor):
                value = value.item()
            if isinstance(value, dict):
                nested[tag] = value
                continue
            value = float(value)
            values.add(tag=tag, simple_value=value)
            if self._log10_parts and value > 0 and math.isfinite(value):
                companion = self._log10_tag(tag)
                if companion is not None:
                    values.add(tag=companion, simple_value=math.log10(value))
        if values:
            self.experiment._get_file_writer().add_event(event, step)
        if nested:
            super().log_metrics(nested, step)

    @rank_zero_only
    def log_hyperparams(
        self, params: Any, metrics: Mapping[str, float] | None = None, step: int | None = None
    ) -> None:
        """Keeps ``params`` for ``hparams.yaml`` and starts this run's HPARAMS session."""
        from gradwatch.loggers.tensorboard_plugins import (
            experiment_summary,
            hparam_value,
            session_start_summary,
        )

        params = flatten(_convert_params(params))
        self.hparams.update(params)
        values = {k: hparam_value(v) for k, v in shown(params, self.hparams_keys).items()}
        writer = self.experiment._get_file_writer()
        writer.add_summary(experiment_summary(values, HPARAMS_METRICS))
        writer.add_summary(session_start_summary(values))
        self._session_started = True
        if metrics:
            self.log_metrics(metrics, step or 0)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        # Only success is recorded: TensorBoard keeps the first end status a run writes, and
        # an interrupted run may be resumed and finish.
        if status == "success" and self._session_started and not self._session_ended:
            from gradwatch.loggers.tensorboard_plugins import session_end_summary

            self.experiment._get_file_writer().add_summary(session_end_summary(True))
            self._session_ended = True
        self._saved_at = None  # the last save is never skipped
        super().finalize(status)
