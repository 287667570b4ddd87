"""Depth order of layers (input side first) from what the backward pass really does.

The backward pass accumulates a parameter's gradient once every use of it has been
differentiated, in the reverse order of the forward operations: the later a layer's
gradient is complete, the nearer the input it is. Recorded with post-accumulate-grad
hooks, this sees what module hooks miss: ``nn.MultiheadAttention.out_proj`` (called
functionally), parameters owned by the LightningModule itself, tied weights (placed at
their deepest use) and the real data flow whatever the registration order. Where no
gradient is accumulated into a layer's own parameters (FSDP2 writes the reduced shards
directly) the forward pre-hooks recorded in the same step place it.

Ordering runs on a step where some trainable layer has no place yet: the first step, and
later steps where a layer is unfrozen or a branch is first taken. That step runs with
``torch.compile`` disabled, so compiled models show their inner order too. (Walking the
autograd graph from the loss would also work, but wrapping its nodes in Python objects
makes freeing a 10,000-layer graph overflow the C stack.)
"""

from __future__ import annotations

import bisect

import torch

from gradwatch.callbacks.eager_pass import EagerPass
from gradwatch.callbacks.layers import Layer


class DepthOrder:
    """Places layers by depth: :meth:`start` a pass before a step's forward, then
    :meth:`merge` and :meth:`stop` after its backward; :meth:`order` gives the layers input
    side first."""

    def __init__(self, layers: list[Layer]) -> None:
        self.layers = layers
        self.key: dict[int, float] = {}  # layer -> depth key, larger = nearer the input
        self._graph: dict[int, int] = {}  # layer -> when its gradient was complete
        self._accumulated = 0
        self._forward: list[int] = []
        self._pass = EagerPass()
        self._open = set(range(len(layers)))  # neither placed nor looked for in vain
        self._had_gradient: set[int] = set()

    def wanted(self) -> bool:
        """Whether an ordering pass is due: a trainable layer not looked for yet (the first
        step, an unfrozen layer) or one that got a gradient without having a place."""
        return bool(self._had_gradient) or any(self._trainable(i) for i in self._open)

    def _trainable(self, index: int) -> bool:
        return any(p.requires_grad for p in self.layers[index].params)

    def place(self, indices: set[int]) -> bool:
        """Whether all of ``indices`` (layers that have a gradient) already have a place."""
        return all(i in self.key for i in indices)

    def note_gradient(self, indices: set[int]) -> None:
        """Layers that got a gradient without a place: the next ordering pass looks again."""
        self._had_gradient.update(i for i in indices if i not in self.key)

    @property
    def active(self) -> bool:
        return self._pass.active

    def start(self) -> None:
        """Record the next passes (compiled code runs eagerly meanwhile)."""
        self._graph, self._forward, self._accumulated = {}, [], 0
        handles = []
        for i, layer in enumerate(self.layers):
            handles.append(layer.module.register_forward_pre_hook(self._ran(i)))
            for param in layer.params:
                if param.requires_grad:
                    handles.append(param.register_post_accumulate_grad_hook(self._got(i)))
        self._pass.start(handles)

    def _ran(self, index: int):
        def hook(module: torch.nn.Module, args: tuple) -> None:
            self._forward.append(index)

        return hook

    def _got(self, index: int):
        def hook(param: torch.Tensor) -> None:
            self._accumulated += 1
            self._graph[index] = self._accumulated  # the layer's last parameter wins

        return hook

    def stop(self) -> None:
        """End an ordering pass (call :meth:`merge` first to keep what it saw)."""
        if self._pass.active:
            self._pass.stop()
            unplaced = {i for i in range(len(self.layers)) if i not in self.key}
            self._open -= {i for i in unplaced if self._trainable(i)}
            self._had_gradient &= unplaced

    def merge(self) -> None:
        """Place the layers seen so far in this pass (again, as more backward passes come)."""
        self.key.update(self._graph)
        self._open -= self._graph.keys()
        # Layers that ran but that the graph does not reach go right after the last layer
        # before them that it does reach (all of them in forward order when it reaches none).
        previous = (max(self._graph.values()) if self._graph else len(self._forward)) + 1
        after = 0
        for layer in dict.fromkeys(self._forward):
            if layer in self._graph:
                previous, after = self._graph[layer], 0
            else:
                after += 1
                self.key[layer] = previous - 1 + 1 / (after + 1)
                self._open.discard(layer)

    def order(self) -> list[int]:
        """Layer indices input side first. Layers never seen keep their registration
        neighbourhood: right after the placed layer registered before them (halfway to
        the next placed key, however close; a run of them stays in registration order, as
        the sort is stable)."""
        placed = sorted(set(self.key.values()))
        keys, previous, gap = {}, max(placed, default=0) + 1, 1.0
        for i in range(len(self.layers)):
            if i in self.key:
                previous = keys[i] = self.key[i]
                below = bisect.bisect_left(placed, previous)  # the next key down, if any
                gap = previous - placed[below - 1] if below else 1.0
            else:
                keys[i] = previous - gap / 2
        return sorted(keys, key=lambda i: -keys[i])
