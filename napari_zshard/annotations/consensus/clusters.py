"""Grouping annotators' items (objects, points) that are the same thing, best match first."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TypeVar

Node = TypeVar("Node", bound=Hashable)


def join_best_first(nodes: Sequence[Node], pairs: Iterable[tuple[Node, Node]],
                    owner: Callable[[Node], Hashable]) -> list[list[Node]]:
    """Groups of ``nodes`` made by joining ``pairs`` in the order given (best match first),
    skipping a pair whose join would put two nodes of one ``owner`` (annotator) in a group:
    a group holds at most one item per annotator, and chains break deterministically.

    Returns every group (singletons too) as a list of nodes in ``nodes`` order, the groups in
    the order of their first node. Nodes must be orderable (the smaller root wins a join).
    """
    parent = {n: n for n in nodes}
    owners = {n: {owner(n)} for n in nodes}

    def find(x: Node) -> Node:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra == rb or owners[ra] & owners[rb]:
            continue
        # nodes are ints or tuples of ints, so ordered; Hashable (the bound) does not say so
        root, other = (ra, rb) if ra < rb else (rb, ra)  # type: ignore[operator]
        parent[other] = root
        owners[root] |= owners.pop(other)
    groups: dict[Node, list[Node]] = {}
    for n in nodes:
        groups.setdefault(find(n), []).append(n)
    return list(groups.values())
