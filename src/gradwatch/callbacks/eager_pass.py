"""Hooks for one training step, with ``torch.compile``'d code run eagerly meanwhile.

Compiled code ignores module and tensor hooks added after it was compiled, so a callback
that hooks a step (to order layers, to measure activations) runs that one step eagerly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class EagerPass:
    def __init__(self) -> None:
        self._handles: list[Any] = []
        self._stance: Any = None

    @property
    def active(self) -> bool:
        return self._stance is not None

    def start(self, handles: Iterable[Any]) -> None:
        """Keep ``handles`` (removed by :meth:`stop`) and run compiled code eagerly."""
        self._handles = list(handles)
        self._stance = torch.compiler.set_stance("force_eager")

    def stop(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._stance is not None:
            self._stance.__exit__(None, None, None)
            self._stance = None
