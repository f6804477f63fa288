"""Reduce values held on engines among the engines, as a binomial tree.

`tree_plan` is pure: who sends to whom. `reduce_on_engines` drives the two
commands of `ipython1.engine.reduction` through an AsyncMultiEngineClient
and fires with the result; only small plans and the final value pass the
client, the partial results go engine to engine. When the targets are the
whole MPI job (engines started with --mpi), one mpi4py allreduce does it.
"""

from __future__ import annotations

import os
import uuid
import weakref
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from ipython1.client.each import apply_each
from ipython1.engine import reduction as engine_side

__all__ = ["TreeNode", "reduce_on_engines", "tree_plan"]

TreeNode = tuple[int | None, list[int]]  # (parent position, children positions)


def tree_plan(n: int) -> list[TreeNode]:
    """Return a binomial tree over positions 0..n-1: (parent, children) for each.

    Position i sends to i with its lowest set bit cleared; position 0 is the
    root. Each child's subtree covers the positions just after its parent's
    own, in order, so folding the children in order of position folds the
    values in position order: the function need only be associative.
    """
    if n < 1:
        raise ValueError(f"a reduction needs at least one engine, not {n}")
    plan: list[TreeNode] = []
    for i in range(n):
        parent = None if i == 0 else i & (i - 1)
        low = (i & -i) if i else 1 << max(n - 1, 0).bit_length()
        children = []
        step = 1
        while step < low and i + step < n:
            children.append(i + step)
            step <<= 1
        plan.append((parent, children))
    return plan


# Per client: whether a tuple of engine ids is one whole MPI job, in rank order.
_mpi_known: weakref.WeakKeyDictionary[Any, dict[tuple[int, ...], bool]] = (
    weakref.WeakKeyDictionary())


def _mpi_job(infos: list[dict[str, Any]]) -> bool:
    """Tell whether these engines are exactly one whole MPI job."""
    jobs = {info.get("mpi_job") for info in infos}
    sizes = {info.get("mpi_size") for info in infos}
    ranks = sorted(info.get("mpi_rank", -1) for info in infos)
    return (len(jobs) == 1 and None not in jobs and sizes == {len(infos)}
            and ranks == list(range(len(infos))))


@defer.inlineCallbacks
def reduce_on_engines(client: Any, func: Callable[[Any, Any], Any], source: Any,
                      ids: list[int], result_key: str | None = None,
                      return_result: bool = True, use_mpi: bool | None = None) -> Any:
    """Reduce source (a name, or (func, args) computed there) over engines ids, in order.

    source may also be {engine_id: source}, one for each engine.
    With result_key the result is also bound to that name on every engine
    (an allreduce). Fires with the result (None unless return_result).
    """
    ids = list(ids)
    if not ids:
        raise ValueError("a reduction needs at least one engine")
    known = _mpi_known.setdefault(client, {})
    if use_mpi is None and len(ids) > 1:
        use_mpi = known.get(tuple(ids))
    if use_mpi is None and len(ids) > 1:
        infos = yield client.engine_info(ids)
        ordered = sorted(infos, key=lambda info: ids.index(info["engine_id"]))
        use_mpi = _mpi_job(ordered) and [i["mpi_rank"] for i in ordered] == list(
            range(len(ids)))
        known[tuple(ids)] = use_mpi  # ids are never reused: the answer stays true

    def source_of(e: int) -> Any:
        return source[e] if isinstance(source, dict) else source

    if use_mpi:
        results = yield apply_each(client, engine_side.mpi_allreduce, {
            e: (source_of(e), func, result_key, return_result) for e in ids})
        return results[ids[0]]
    rid = uuid.uuid4().hex
    plan = tree_plan(len(ids))
    try:
        addresses = yield apply_each(client, engine_side.stage, {
            e: (rid, source_of(e), bool(plan[i][1])) for i, e in enumerate(ids)})
    except Exception:
        yield client.apply(engine_side.discard, rid, targets=ids, block=True).addErrback(
            lambda _: None)
        raise
    secret = os.urandom(32)
    combine_args = {}
    for i, e in enumerate(ids):
        parent, children = plan[i]
        parent_address = None if parent is None else tuple(addresses[ids[parent]])
        combine_args[e] = (rid, func, i, parent_address, children, secret, result_key,
                           return_result)
    results = yield apply_each(client, engine_side.combine, combine_args)
    return results[ids[0]]
