"""Lightning's TensorBoardLogger, writing the scalars of one log_metrics call as one event."""

from __future__ import annotations

from collections.abc import Mapping

from lightning.fabric.utilities.logger import _add_prefix
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor


class BatchedTensorBoardLogger(TensorBoardLogger):
    """Same files, same tags, same viewer; one event per logged step instead of one per scalar.

    The gradient callbacks log three values per layer on a logging step; Lightning's logger
    calls ``add_scalar`` once per value, each building and queueing an event of its own.
    Here the step's values share one ``Summary``, which TensorBoard reads the same way.
    """

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        values, nested = [], {}
        for tag, value in metrics.items():
            if isinstance(value, Tensor):
                value = value.item()
            if isinstance(value, dict):
                nested[tag] = value
            else:
                values.append(Summary.Value(tag=tag, simple_value=float(value)))
        if values:
            self.experiment._get_file_writer().add_summary(Summary(value=values), step)
        if nested:
            super().log_metrics(nested, step)
