"""Depth order of layers (input side first) from what the backward pass really does.

A layer's depth is the longest path in the autograd graph from the loss to its parameters:
the number of operations the gradient passes through before it reaches them. This sees what
module hooks miss: ``nn.MultiheadAttention.out_proj`` (called functionally), parameters
owned by the LightningModule itself, tied weights (placed at their deepest use) and the
real data flow whatever the registration order. Where the graph does not lead to a layer's
parameters (FSDP's unsharded copies, reentrant activation checkpointing, a compiled region
that hides its inner order) the forward pre-hooks recorded in the same step place it.

Ordering runs on a step where some trainable layer has no place yet: the first step, and
later steps where a layer is unfrozen or a branch is first taken. That step runs with
``torch.compile`` disabled, so compiled models show their inner order too.
"""

from __future__ import annotations

from typing import Any

import torch

from gradwatch.callbacks.layers import Layer


def graph_depths(loss: torch.Tensor) -> dict[int, int]:
    """``id(parameter) -> longest path length`` from ``loss`` to its gradient accumulator."""
    root = loss.grad_fn
    if root is None:
        return {}
    # Post-order by an iterative DFS (graphs of deep nets overflow Python's recursion).
    post, seen = [], {root}
    stack = [(root, iter(root.next_functions))]
    while stack:
        node, children = stack[-1]
        for child, _ in children:
            if child is not None and child not in seen:
                seen.add(child)
                stack.append((child, iter(child.next_functions)))
                break
        else:
            stack.pop()
            post.append(node)
    # Reversed post-order is topological: every node comes after all of its parents.
    dist = {root: 0}
    depths = {}
    for node in reversed(post):
        d = dist[node]
        variable = getattr(node, "variable", None)  # AccumulateGrad nodes hold the leaf
        if variable is not None:
            depths[id(variable)] = d
        for child, _ in node.next_functions:
            if child is not None and dist.get(child, -1) < d + 1:
                dist[child] = d + 1
    return depths


class DepthOrder:
    """Places layers by depth: :meth:`start` a pass, :meth:`observe` each backward, then
    :meth:`merge` and :meth:`stop`; :meth:`order` gives the layers input side first."""

    def __init__(self, layers: list[Layer]) -> None:
        self.layers = layers
        self._layer_of = {id(p): i for i, layer in enumerate(layers) for p in layer.params}
        self.key: dict[int, float] = {}  # layer -> depth key, larger = nearer the input
        self._graph: dict[int, int] = {}
        self._forward: list[int] = []
        self._handles: list[Any] = []
        self._stance: Any = None
        self._open = set(range(len(layers)))  # neither placed nor looked for in vain
        self._had_gradient: set[int] = set()

    def wanted(self) -> bool:
        """Whether an ordering pass is due: a trainable layer not looked for yet (the first
        step, an unfrozen layer) or one that got a gradient without having a place."""
        self._open -= self.key.keys()
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
        return self._stance is not None

    def start(self) -> None:
        """Record the next forward and backward passes (compiled code runs eagerly meanwhile)."""
        self._graph, self._forward = {}, []
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.module.register_forward_pre_hook(self._ran(i)))
        self._stance = torch.compiler.set_stance("force_eager")

    def _ran(self, index: int):
        def hook(module: torch.nn.Module, args: tuple) -> None:
            self._forward.append(index)

        return hook

    def observe(self, loss: torch.Tensor) -> None:
        """Before a backward pass: the depths its graph gives."""
        for param_id, d in graph_depths(loss).items():
            layer = self._layer_of.get(param_id)
            if layer is not None and self._graph.get(layer, -1) < d:
                self._graph[layer] = d

    def stop(self) -> None:
        """End an ordering pass (call :meth:`merge` first to keep what it saw)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._stance is not None:
            self._stance.__exit__(None, None, None)
            self._stance = None
            unplaced = {i for i in range(len(self.layers)) if i not in self.key}
            self._open -= {i for i in unplaced if self._trainable(i)}
            self._had_gradient &= unplaced

    def merge(self) -> None:
        """Place the layers seen so far in this pass (again, as more backward passes come)."""
        self.key.update(self._graph)
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

    def order(self) -> list[int]:
        """Layer indices input side first. Layers never seen keep their registration
        neighbourhood: right after the placed layer registered before them."""
        keys, previous, after = {}, None, 0
        top = max(self.key.values(), default=0) + 1
        for i in range(len(self.layers)):
            if i in self.key:
                keys[i], previous, after = self.key[i], self.key[i], 0
            else:
                after += 1
                base = top if previous is None else previous
                keys[i] = base - 1 + 1 / (after + 1)
        return sorted(keys, key=lambda i: -keys[i])
