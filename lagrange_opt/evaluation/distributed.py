"""Data-parallel steps with ``torch.distributed``: what makes every rank take the same step.

Each rank evaluates the closure on its own shard of the batch; a :class:`Synchronizer`
then makes the dual side and the decisions of the step identical on every rank, with a few
collectives at fixed points of a step (docs/distributed.md lists them):

- **Declarations** (:meth:`Synchronizer.agree`, its first call): before the first status
  code, every rank sends a fingerprint of its declared constraints (a fixed-size hash of
  their names and specs, in declaration order), so that ranks which declared different
  constraints (whose later payloads would differ in size, which gloo answers by aborting
  the process) raise a ``ValueError`` on every rank, naming the ranks and what differs.
  One ``all_gather`` of 4 integers, once per :class:`Synchronizer` (per method; per
  ``kkt()`` call), until the ranks agree.
- **Agreement** (:meth:`Synchronizer.agree`): after the step's checks of its arguments
  (:func:`failing_together`), after each closure call and its local validation, after
  each finiteness check and at the end of a step, every rank sends one status code (an
  ``all_gather`` of a few numbers). If any rank failed, every rank raises: the failing
  rank its own error, the others a :class:`~._validation.NonFiniteError` (if that rank's
  error was one: the adaptive step then backtracks on every rank alike) or a
  ``RuntimeError`` naming the rank. Every error that can happen on one rank only happens
  just before an agreement, so no rank waits in another collective for a rank that raised.
- **The objective and the dense constraint values** (:meth:`Synchronizer.average_dense`)
  are averaged across ranks before anything is formed from them (the augmented
  Lagrangian's weights, a penalty's gradient and the slack's initial value depend on the
  value), with their graphs kept:
  backward sends the averaged value's cotangent into each rank's own graph, and
  ``DistributedDataParallel`` averages the resulting gradients, which is the gradient of the
  averaged value.
- **Indexed constraints** (:meth:`Synchronizer.gather_indexed`): each rank's indices and
  residuals (the standard form, detached) are gathered, O(batch) per rank, so that every
  rank updates the same rows with the same residuals in the same order; a row drawn on two
  ranks steps twice, as a row drawn twice in one batch. The cotangents stay per rank (each
  sample's term divided by the gathered batch's entries per rank, averaged by DDP: the
  full batch's mean whatever the shards).
- **Absent constraints** (:meth:`Synchronizer.agree_observed`): the agreement after the
  closure call tells every rank which constraints some rank observed; one absent on a rank
  (left out, or with no sample) is averaged over the ranks that observed it if dense (its
  cotangent scaled by ``world_size / those ranks``), gathered with an empty share from
  this rank if indexed, and every rank forms its term and steps it alike.
- **Gradients that DDP does not average** (:meth:`Synchronizer.reduce_gradients`): those of
  primal parameters outside every ``DistributedDataParallel`` submodule of the problem
  (dense slacks, the problem's bare parameters) are averaged; those of the indexed slack
  rows are summed (each rank's holds its own samples' terms).

A step's result is the whole batch's: the objective averaged, the Lagrangian's indexed
terms summed over the gathered batch, the violations of the constraints with multipliers
read from it (a penalised indexed constraint's penalty and violations stay the rank's).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch import distributed as dist

from lagrange_opt.evaluation.global_batch import GlobalBatch, Substitute
from lagrange_opt.evaluation.process_group import device_of, is_process_group
from lagrange_opt.evaluation.rank_declarations import (
    DTYPES,
    Presence,
    declarations,
    describe_difference,
    dtype_code,
    fingerprint,
)
from lagrange_opt.problem.constrained_problem import ConstrainedProblem
from lagrange_opt.problem.validation import Checked, NonFiniteError

_OK, _NON_FINITE, _FAILED = 0.0, 1.0, 2.0


@contextlib.contextmanager
def failing_together(sync: Synchronizer | None) -> Iterator[None]:
    """Runs checks that may fail on one rank only before a step's first collective: a
    failure is agreed on (:meth:`Synchronizer.agree`) before it propagates, so that every
    rank raises instead of waiting in the step's first agreement for a rank that left.

    On the normal path it costs nothing: the step's first agreement follows.

    Args:
        sync: The step's synchronizer, or ``None`` (a single process: no collective).
    """
    try:
        yield
    except BaseException as error:
        if sync is not None:
            sync.agree(error)
        raise


def _ddp_parameters(problem: nn.Module) -> set[int]:
    """The parameters (by ``id``) whose gradients a DDP submodule of the problem averages."""
    ddp = torch.nn.parallel.DistributedDataParallel
    return {
        id(param)
        for module in problem.modules()
        if isinstance(module, ddp)
        for param in module.parameters()
    }


class Synchronizer:
    """The collectives of a data-parallel step, over one process group.

    Args:
        group: The process group (``None``: the default group).
        problem: The problem; its ``DistributedDataParallel`` submodules average their
            parameters' gradients themselves.
        params: The primal optimizer's parameters.
        indexed_tables: The ``id`` of every indexed table (stepped by rows, not reduced).
    """

    def __init__(
        self,
        group: dist.ProcessGroup | None,
        problem: ConstrainedProblem,
        params: Sequence[Tensor],
        indexed_tables: set[int],
    ) -> None:
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.names = list(problem.declared())
        self.constraints = dict(problem.declared())
        self.declarations = declarations(problem)
        # Whether the ranks agreed on the declarations: checked by the first agreement.
        self._declarations_agreed = False
        skip = _ddp_parameters(problem) | indexed_tables
        self.params = [param for param in params if id(param) not in skip]
        self.tables = indexed_tables
        self.device = device_of(group, problem)
        self._agreed: BaseException | None = None

    # Agreement.

    def agree(self, error: BaseException | None, observed: Sequence[str] | None = None) -> None:
        """Tells every rank whether this one failed; raises on every rank if one did.

        Args:
            error: This rank's error, or ``None``. With an error the call returns (the
                caller raises it) once every rank knows.
            observed: The constraints this rank's evaluation observed: every rank must
                observe the same ones (their collectives depend on it).

        Raises:
            NonFiniteError: If another rank failed with one (the adaptive step backtracks).
            RuntimeError: If another rank failed otherwise.
            ValueError: If the ranks declared different constraints (on every rank, the
                failing one too: the declarations come first), or observed different ones.
        """
        mask = [0.0 if observed is None else float(name in observed) for name in self.names]
        rows = self._exchange(error, mask)
        if rows is None:
            return
        if observed is not None and any(row[1:] != rows[0][1:] for row in rows):
            differing = [
                name
                for position, name in enumerate(self.names, start=1)
                if len({row[position] for row in rows}) > 1
            ]
            raised = ValueError(
                f"constraint(s) {differing} were observed on some ranks but not on others: "
                "with a process group, every rank must return the same constraints (an "
                "indexed one with at least one sample on every rank)"
            )
            self._agreed = raised
            raise raised

    def agree_observed(self, observed: Mapping[str, torch.dtype]) -> dict[str, Presence]:
        """:meth:`agree` for a rank that did not fail, which also learns which constraints
        the ranks observed: a constraint absent on some ranks (left out, or with no
        sample) is observed by the whole batch if one rank observed it.

        Args:
            observed: The constraints this rank observed, each with its value's dtype.

        Returns:
            Each constraint observed by at least one rank, in declaration order.

        Raises:
            NonFiniteError, RuntimeError: As :meth:`agree`, if another rank failed.
        """
        codes = [dtype_code(observed[name]) if name in observed else 0.0 for name in self.names]
        rows = self._exchange(None, codes)
        assert rows is not None
        presence = {}
        for position, name in enumerate(self.names, start=1):
            sent = [row[position] for row in rows if row[position] != 0.0]
            if sent:
                presence[name] = Presence(len(sent), DTYPES[int(sent[0]) - 1])
        return presence

    def _exchange(
        self, error: BaseException | None, codes: list[float]
    ) -> list[list[float]] | None:
        """Sends this rank's status and ``codes`` (one per declared constraint) to every
        rank; raises if another rank failed, returns ``None`` if this one did, else every
        rank's row (its status, then its codes)."""
        if not self._declarations_agreed:
            self._agree_on_declarations()
        code = _OK if error is None else _FAILED
        if isinstance(error, NonFiniteError):
            code = _NON_FINITE
        # A fixed size whatever the rank's state: gloo and NCCL need matching sizes.
        payload = torch.tensor([code, *codes], dtype=torch.float64, device=self.device)
        gathered = [torch.empty_like(payload) for _ in range(self.world_size)]
        dist.all_gather(gathered, payload, group=self.group)
        rows: list[list[float]] = torch.stack(gathered).cpu().tolist()
        if error is not None:
            self._agreed = error
            return None
        failed = [(rank, row[0]) for rank, row in enumerate(rows) if row[0] != _OK]
        if failed:
            rank, failure = failed[0]
            what = "found a non-finite value or gradient" if failure == _NON_FINITE else "failed"
            message = (
                f"rank {rank} of the process group {what} in this step (its own error says "
                "what); every rank raises and puts the step back"
            )
            raised: BaseException = (
                NonFiniteError(message) if failure == _NON_FINITE else RuntimeError(message)
            )
            self._agreed = raised
            raise raised
        return rows

    def _agree_on_declarations(self) -> None:
        """Compares every rank's fingerprint of its declarations (a fixed-size
        ``all_gather``); where they differ, gathers each rank's declarations (every rank
        knows they differ, so every rank takes part) and raises on every rank.

        Raises:
            ValueError: Naming the ranks that disagree and what each declared.
        """
        payload = torch.tensor(fingerprint(self.declarations), dtype=torch.int64)
        gathered = self._gather(payload.to(self.device)).cpu()
        if bool((gathered == gathered[0]).all()):
            self._declarations_agreed = True
            return
        slots: list[tuple[list[str], list[str]] | None] = [None] * self.world_size
        dist.all_gather_object(slots, (self.names, self.declarations), group=self.group)
        declared = [entry for entry in slots if entry is not None]
        names = [rank_names for rank_names, _ in declared]
        specs = [rank_specs for _, rank_specs in declared]
        raised = ValueError(
            "the ranks of the process group declared different constraints: "
            f"{describe_difference(names, specs)}; every rank must declare the same "
            "constraints, in the same order, before the method is built"
        )
        self._agreed = raised
        raise raised

    def settle(self, error: BaseException) -> None:
        """Called by a failing step: tells the other ranks, unless an agreement already did
        (the error, or its direct cause, came from one)."""
        agreed = self._agreed
        if agreed is not None and (error is agreed or error.__cause__ is agreed):
            return
        self.agree(error)

    def broadcast(self, tensor: Tensor) -> Tensor:
        """Rank 0's ``tensor`` on every rank (a decision every rank must take alike)."""
        source = 0 if self.group is None else dist.get_global_rank(self.group, 0)
        sent = tensor.to(self.device)
        dist.broadcast(sent, source, group=self.group)
        return sent.to(tensor.device)

    # The dual side.

    def average_dense(
        self, objective: Tensor, checked: Checked, presence: Mapping[str, Presence] | None = None
    ) -> tuple[Tensor, Checked]:
        """The objective and every dense constraint value averaged across ranks (one
        ``all_reduce``), their graphs kept: backward passes the average's cotangent to the
        rank's own value. The objective's average is the whole batch's (for shards of equal
        size), which the step reports.

        Args:
            objective: This rank's objective.
            checked: This rank's values.
            presence: What :meth:`agree_observed` returned: a dense constraint observed on
                some ranks only is averaged over them (its cotangent scaled for DDP's
                average over every rank), and a rank that did not observe it gets the
                average, without a graph, among its values (in declaration order).
                ``None``: every rank observed the constraints of ``checked``.
        """
        own = {name: value for name, _, value, indices in checked if indices is None}
        if presence is None:
            names = list(own)
            counts = dict.fromkeys(names, self.world_size)
        else:
            names = [
                name
                for name in self.names
                if name in presence and self.constraints[name].spec.num_samples is None
            ]
            counts = {name: presence[name].ranks for name in names}
        parts = [objective.detach().reshape(-1).to(self.device, torch.float64)]
        for name in names:
            value = own.get(name)
            if value is None:
                # Zeros: the sum over the ranks is the sum over those that observed it.
                size = math.prod(self.constraints[name].spec.shape)
                parts.append(torch.zeros(size, dtype=torch.float64, device=self.device))
            else:
                parts.append(value.detach().reshape(-1).to(self.device, torch.float64))
        flat = torch.cat(parts)
        dist.all_reduce(flat, group=self.group)
        chunks = flat.split([part.numel() for part in parts])
        average = (chunks[0] / self.world_size).reshape(objective.shape)
        average = average.to(objective.device, objective.dtype)
        if objective.requires_grad:
            average = Substitute.apply(objective, average, 1.0)
        averages: dict[str, Tensor] = {}
        for name, chunk in zip(names, chunks[1:]):
            mean = (chunk / counts[name]).reshape(self.constraints[name].spec.shape)
            value = own.get(name)
            if value is None:
                assert presence is not None
                averages[name] = mean.to(objective.device, presence[name].dtype)
                continue
            mean = mean.to(value.device, value.dtype)
            scale = self.world_size / counts[name]
            averages[name] = Substitute.apply(value, mean, scale) if value.requires_grad else mean
        result: Checked = [
            (name, constraint, averages[name] if indices is None else value, indices)
            for name, constraint, value, indices in checked
        ]
        seen = {name for name, _, _, _ in checked}
        result += [
            (name, self.constraints[name], average_value, None)
            for name, average_value in averages.items()
            if name not in seen
        ]
        order = {name: position for position, name in enumerate(self.names)}
        result.sort(key=lambda entry: order[entry[0]])
        return average, result

    def gather_indexed(self, batches: Sequence[tuple[Tensor, Tensor]]) -> list[GlobalBatch]:
        """Every rank's indices and standard values, per indexed constraint, in rank order.

        Three ``all_gather`` calls whatever the number of constraints: the sizes, then the
        indices and the values padded to the largest rank's.

        Args:
            batches: Per constraint, this rank's indices and detached standard values.
        """
        if not batches:
            return []
        sizes = torch.tensor([indices.shape[0] for indices, _ in batches], device=self.device)
        all_sizes = self._gather(sizes).tolist()
        # From the shape, not a row: a rank's batch may have none.
        widths = [math.prod(standard.shape[1:]) for _, standard in batches]
        indices = self._gather_padded(
            torch.cat([indices.to(self.device, torch.int64) for indices, _ in batches]),
            [sum(rank_sizes) for rank_sizes in all_sizes],
        )
        values = self._gather_padded(
            torch.cat(
                [standard.reshape(-1).to(self.device, torch.float64) for _, standard in batches]
            ),
            [sum(n * w for n, w in zip(rank_sizes, widths)) for rank_sizes in all_sizes],
        )
        result = []
        offsets = [0] * self.world_size
        value_offsets = [0] * self.world_size
        for position, (local_indices, standard) in enumerate(batches):
            parts, value_parts = [], []
            local = slice(0)
            total = 0
            for rank in range(self.world_size):
                size = all_sizes[rank][position]
                if rank == self.rank:
                    local = slice(total, total + size)
                total += size
                parts.append(indices[rank][offsets[rank] : offsets[rank] + size])
                offsets[rank] += size
                width = size * widths[position]
                start = value_offsets[rank]
                value_parts.append(values[rank][start : start + width])
                value_offsets[rank] += width
            gathered = torch.cat(value_parts).to(standard.device, standard.dtype)
            result.append(
                GlobalBatch(
                    torch.cat(parts).to(local_indices.device, local_indices.dtype),
                    gathered.reshape(total, *standard.shape[1:]),
                    local,
                    total / self.world_size,
                )
            )
        return result

    def _gather(self, tensor: Tensor) -> Tensor:
        gathered = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(gathered, tensor, group=self.group)
        return torch.stack(gathered)

    def _gather_padded(self, tensor: Tensor, lengths: list[int]) -> list[Tensor]:
        padded = tensor.new_zeros(max(lengths))
        padded[: tensor.shape[0]] = tensor
        gathered = self._gather(padded)
        return [gathered[rank, :length] for rank, length in enumerate(lengths)]

    # The primal side.

    def reduce_gradients(self, slack_rows: Sequence[Tensor]) -> None:
        """Averages the gradients of the primal parameters outside DDP and sums those of
        the indexed slack rows (each rank's holds its own samples' terms), in one
        ``all_reduce``. A gradient absent on a rank counts as zero; absent on every rank
        it stays ``None``."""
        params = [param for param in self.params if param.requires_grad]
        if not params and not slack_rows:
            return
        row_grads = [
            torch.zeros_like(values) if values.grad is None else values.grad
            for values in slack_rows
        ]
        averages, sums = self._reduce(params, [param.grad for param in params], row_grads)
        for param, average in zip(params, averages):
            if average is not None:
                param.grad = average
        for values, total in zip(slack_rows, sums):
            values.grad = total

    # KKT residuals.

    def average_gradients(
        self, params: Sequence[Tensor], grads: Sequence[Tensor | None]
    ) -> list[Tensor | None]:
        """``grads`` (one per parameter, ``None`` where there is none on this rank)
        averaged across ranks: one ``all_reduce`` of the parameters' size and a presence
        count per parameter."""
        return self._reduce(params, grads, [])[0]

    def largest(self, values: Sequence[float]) -> list[float]:
        """Each of ``values``, the largest over the ranks (one ``all_reduce``)."""
        tensor = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.group)
        return tensor.tolist()

    def _reduce(
        self, params: Sequence[Tensor], grads: Sequence[Tensor | None], summed: Sequence[Tensor]
    ) -> tuple[list[Tensor | None], list[Tensor]]:
        """``grads`` averaged across ranks (``None`` where no rank has one; a rank without
        one counts as zero) and the tensors ``summed`` summed, in one float64
        ``all_reduce`` with a presence count per parameter."""
        parts = [
            (torch.zeros(param.numel()) if grad is None else grad.detach().reshape(-1)).to(
                self.device, torch.float64
            )
            for param, grad in zip(params, grads)
        ]
        parts.append(
            torch.tensor(
                [float(grad is not None) for grad in grads],
                dtype=torch.float64,
                device=self.device,
            )
        )
        parts.extend(tensor.reshape(-1).to(self.device, torch.float64) for tensor in summed)
        flat = torch.cat(parts)
        dist.all_reduce(flat, group=self.group)
        sizes = [*(param.numel() for param in params), len(params)]
        chunks = flat.split([*sizes, *(tensor.numel() for tensor in summed)])
        counts = chunks[len(params)].tolist()
        averages = [
            (chunk / self.world_size).reshape(param.shape).to(param.device, param.dtype)
            if count
            else None
            for param, chunk, count in zip(params, chunks, counts)
        ]
        sums = [
            chunk.reshape(tensor.shape).to(tensor.device, tensor.dtype)
            for tensor, chunk in zip(summed, chunks[len(params) + 1 :])
        ]
        return averages, sums

    # Scaling.


def synchronizer(
    process_group: object,
    problem: ConstrainedProblem,
    params: Sequence[Tensor],
    indexed_tables: set[int],
) -> Synchronizer | None:
    """Validates a method's ``process_group`` argument and builds its :class:`Synchronizer`.

    Args:
        process_group: ``None`` (a single process: no collective), ``"default"`` (the
            default process group) or a ``torch.distributed.ProcessGroup``.

    Raises:
        TypeError: If ``process_group`` is none of these.
        RuntimeError: If ``torch.distributed`` is unavailable or not initialised.
    """
    if process_group is None:
        return None
    if not (process_group == "default" or is_process_group(process_group)):
        raise TypeError(
            "process_group must be None, 'default' or a torch.distributed.ProcessGroup, got "
            f"{type(process_group).__name__}"
        )
    if not dist.is_available():
        raise RuntimeError("process_group given, but torch.distributed is not available")
    if not dist.is_initialized():
        raise RuntimeError(
            "process_group given, but the default process group is not initialized: call "
            "torch.distributed.init_process_group() first (torchrun sets its environment)"
        )
    group = None if process_group == "default" else process_group
    assert group is None or isinstance(group, dist.ProcessGroup)
    if dist.get_rank(group) < 0:
        raise ValueError("process_group: this process is not a member of the group")
    return Synchronizer(group, problem, params, indexed_tables)
