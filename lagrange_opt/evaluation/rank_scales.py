"""The first step's scales over every rank: the whole batch's, measured once."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch import distributed as dist

from lagrange_opt.evaluation.distributed import Synchronizer
from lagrange_opt.evaluation.scaling import MAX_ROWS, local_gradients, scales_from
from lagrange_opt.maths.formulation import Scales
from lagrange_opt.problem.constrained_problem import ConstrainedProblem
from lagrange_opt.problem.constraints import ProblemState


def measure_scales_across_ranks(
    sync: Synchronizer,
    problem: ConstrainedProblem,
    closures: Sequence[Callable[[], ProblemState]],
    params: Sequence[Tensor],
) -> Scales:
    """:func:`.scaling.measure_scales` over every rank's batch: the whole batch (this rank's
    closure, or its micro-batches: :func:`.scaling.local_gradients`): the gradients of the
    objective
    and of each dense constraint element are averaged across ranks before their
    largest entry is taken (one ``all_reduce`` of ``1 + dense elements`` gradient
    vectors, once per run); an indexed constraint takes the largest over the ranks of
    each rank's largest over its first rows (equal to the whole batch's when the batch
    holds at most :data:`.scaling.MAX_ROWS` entries)."""
    # The closure reads no indexed table (the evaluation reads their rows): a table's
    # gradient is None, and a vector of its zeros would be O(table).
    params = [param for param in params if param.requires_grad and id(param) not in sync.tables]
    try:
        local = local_gradients(problem, closures, params)
    except BaseException as error:
        sync.agree(error)
        raise
    # The dtype is not needed here: which ranks observed each constraint is.
    presence = sync.agree_observed(dict.fromkeys(local.observed, torch.float64))
    measured = [
        name
        for name in sync.names
        if name in presence and sync.constraints[name].multiplier is not None
    ]
    specs = {name: sync.constraints[name].spec for name in measured}
    dense_shapes = [
        (name, torch.Size(spec.shape)) for name, spec in specs.items() if not spec.indexed
    ]
    # The rows of every constraint some rank observed, zeros where this rank did not:
    # the sum over the ranks divided by the number of ranks that observed it.
    own_rows: dict[str, Tensor] = {}
    start = 1
    for name, shape in local.dense_shapes:
        count = min(MAX_ROWS, shape.numel())
        own_rows[name] = local.dense[start : start + count]
        start += count
    rows = [local.dense[:1]]
    divisors = [float(sync.world_size)]
    for name, shape in dense_shapes:
        count = min(MAX_ROWS, shape.numel())
        own = own_rows.get(name)
        rows.append(local.dense.new_zeros((count, local.dense.shape[1])) if own is None else own)
        divisors += [float(presence[name].ranks)] * count
    dense = torch.cat(rows).to(sync.device)
    dist.all_reduce(dense, group=sync.group)
    divisor = torch.tensor(divisors, dtype=dense.dtype, device=dense.device).unsqueeze(1)
    norms = (dense / divisor).abs().amax(dim=1).clamp(min=1.0).tolist()
    # An indexed constraint's largest row over the ranks (at least 1 where observed).
    names = [name for name, spec in specs.items() if spec.indexed]
    largest = torch.tensor(
        [local.indexed.get(name, 0.0) for name in names], dtype=torch.float64
    ).to(sync.device)
    dist.all_reduce(largest, op=dist.ReduceOp.MAX, group=sync.group)
    indexed = dict(zip(names, largest.tolist()))
    return scales_from(problem, norms, dense_shapes, indexed)
