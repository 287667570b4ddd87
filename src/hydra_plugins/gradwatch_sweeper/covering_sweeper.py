"""``hydra/sweeper=covering``: Hydra's basic sweeper, with a shorter check before launching.

Before it launches a batch of jobs, Hydra's ``BasicSweeper`` composes every job's config,
so that an override that does not compose stops the sweep before any job starts. Each
composition of this project's configs takes about 0.1 s, in the launching process, while
no job runs: 2 s of ``make sweep``'s 20 jobs, a minute of a 500-job grid. This sweeper
composes only as many jobs as it takes to try every override of the batch at least once
(5 of ``make sweep``'s 20: one per network, each with another depth), so a misspelt value
anywhere in the grid still stops the sweep up front. A pair of values that compose alone
but not together is only found when its job starts.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore


@dataclass
class CoveringSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.gradwatch_sweeper.covering_sweeper.CoveringSweeper"


ConfigStore.instance().store(
    group="hydra/sweeper", name="covering", node=CoveringSweeperConf, provider="gradwatch"
)


def covering_jobs(batch: Sequence[Sequence[str]]) -> list[Sequence[str]]:
    """A few jobs of ``batch`` that hold every override in it between them: each pick is
    the job with the most overrides not yet held (greedy set cover)."""
    left = {override for job in batch for override in job}
    chosen = []
    while left:
        job = max(batch, key=lambda job: len(left.intersection(job)))
        chosen.append(job)
        left.difference_update(job)
    return chosen


class CoveringSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        super().validate_batch_is_legal(covering_jobs(batch))
