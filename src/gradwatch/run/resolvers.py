"""The config's ``gradwatch.*`` resolvers, registered on import.

``hydra.run.dir: ${gradwatch.run_dir:<default>}`` and ``hydra.output_subdir:
${gradwatch.hydra_subdir:}`` (configs/hydra/default.yaml) continue a resumed run in its own
directory (:mod:`gradwatch.run.resume`). This module imports only OmegaConf, for the entry
point: :mod:`gradwatch.run.resume` (torch) is imported when a config is resolved.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


def _run_dir(default: str, *, _root_: DictConfig) -> str:
    from gradwatch.run.resume import run_dir_resolver

    return run_dir_resolver(default, _root_=_root_)


def _hydra_subdir(*, _root_: DictConfig) -> str:
    from gradwatch.run.resume import hydra_subdir_resolver

    return hydra_subdir_resolver(_root_=_root_)


OmegaConf.register_new_resolver("gradwatch.run_dir", _run_dir, replace=True)
OmegaConf.register_new_resolver("gradwatch.hydra_subdir", _hydra_subdir, replace=True)
