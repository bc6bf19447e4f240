"""Several primal optimizers stepped as one (e.g. Adam for an encoder, SGD for a head)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import Any

import torch
from torch import Tensor

State = dict[str, Any]


class _RoutedState(MutableMapping[Tensor, State]):
    """The members' states seen as one mapping: each parameter's entry lives in the state of
    the member that holds it, so that stepping through the group and stepping the members
    leave the same states."""

    def __init__(self, owners: dict[int, torch.optim.Optimizer], members: list[Any]) -> None:
        self._owners = owners
        self._members = members

    def _state_of(self, param: Tensor) -> MutableMapping[Tensor, State]:
        owner = self._owners.get(id(param))
        if owner is None:
            shape = tuple(param.shape)
            raise KeyError(f"no optimizer of the group holds a tensor of shape {shape}")
        return owner.state

    def __getitem__(self, param: Tensor) -> State:
        return self._state_of(param)[param]

    def __setitem__(self, param: Tensor, state: State) -> None:
        self._state_of(param)[param] = state

    def __delitem__(self, param: Tensor) -> None:
        del self._state_of(param)[param]

    def __contains__(self, param: object) -> bool:
        if not isinstance(param, Tensor) or id(param) not in self._owners:
            return False
        return param in self._state_of(param)

    def get(self, param: Tensor, default: Any = None) -> Any:
        # The members' states are defaultdicts: reading must not create an entry.
        return self._state_of(param).get(param, default)

    def pop(self, param: Tensor, default: Any = None) -> Any:
        return self._state_of(param).pop(param, default)

    def __iter__(self) -> Iterator[Tensor]:
        for member in self._members:
            yield from member.state

    def __len__(self) -> int:
        return sum(len(member.state) for member in self._members)


class OptimizerGroup(torch.optim.Optimizer):
    """Optimizers over disjoint parameters, stepped together as one primal optimizer.

    Its ``param_groups`` are the members' own (a learning rate set through either is seen
    by both; load a member's state through the group, which then takes the member's new
    groups), its ``state`` routes each parameter to its member's, and ``step()`` steps
    every member in order: the methods use it as any other optimizer. A method built with a
    list of primal optimizers wraps them in one.

    Args:
        optimizers: The members; no parameter may be in two of them.

    Raises:
        TypeError: If a member is not a ``torch.optim.Optimizer``.
        ValueError: If there is no member or a parameter is in two of them.
    """

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        members = list(optimizers)
        if not members:
            raise ValueError("an optimizer group needs at least one optimizer")
        owners: dict[int, torch.optim.Optimizer] = {}
        for index, member in enumerate(members):
            if not isinstance(member, torch.optim.Optimizer):
                raise TypeError(
                    f"optimizer {index} of the group must be a torch.optim.Optimizer, got "
                    f"{type(member).__name__}"
                )
            for group in member.param_groups:
                for param in group["params"]:
                    if id(param) in owners:
                        raise ValueError(
                            f"a parameter of shape {tuple(param.shape)} is in two optimizers "
                            f"of the group (the second is optimizer {index})"
                        )
                    owners[id(param)] = member
        self._building = True
        super().__init__([p for m in members for g in m.param_groups for p in g["params"]], {})
        self._building = False
        self.optimizers = members
        self.param_groups = [group for member in members for group in member.param_groups]
        # Optimizer declares its state a defaultdict; this mapping routes instead.
        self.state = _RoutedState(owners, members)  # type: ignore[assignment]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Refused once built: add the group to one of the members."""
        if self._building:
            super().add_param_group(param_group)
            return
        raise TypeError("add the param group to one of the group's optimizers")

    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        """Steps every member, in order."""
        if closure is not None:
            raise TypeError("an optimizer group's step takes no closure")
        for member in self.optimizers:
            member.step()

    def state_dict(self) -> dict[str, Any]:
        """Each member's ``state_dict``, in order."""
        return {"optimizers": [member.state_dict() for member in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned, member by member.

        Raises:
            ValueError: If it holds another number of optimizers.
        """
        parts = state_dict.get("optimizers")
        if not isinstance(parts, list) or len(parts) != len(self.optimizers):
            count = len(parts) if isinstance(parts, list) else "no"
            raise ValueError(
                f"state_dict holds {count} optimizer states; this group has "
                f"{len(self.optimizers)} optimizers"
            )
        for member, part in zip(self.optimizers, parts):
            member.load_state_dict(part)
        # Loading gives a member new param group dicts.
        self.param_groups = [group for member in self.optimizers for group in member.param_groups]


def members(optimizer: torch.optim.Optimizer) -> list[torch.optim.Optimizer]:
    """The optimizers that step the parameters: a group's members, or the optimizer."""
    if isinstance(optimizer, OptimizerGroup):
        return [leaf for member in optimizer.optimizers for leaf in members(member)]
    return [optimizer]


def holder(optimizer: torch.optim.Optimizer, param: Tensor) -> torch.optim.Optimizer:
    """The optimizer among :func:`members` that steps ``param``."""
    for member in members(optimizer):
        if any(p is param for group in member.param_groups for p in group["params"]):
            return member
    return optimizer


def as_optimizer(
    label: str, optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer]
) -> torch.optim.Optimizer:
    """The optimizer, or a list or tuple of optimizers as one :class:`OptimizerGroup`.

    Raises:
        TypeError: If it is neither (naming what it is: a list of parameters is a common
            slip).
    """
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if isinstance(optimizer, list | tuple):
        if all(isinstance(member, torch.optim.Optimizer) for member in optimizer):
            return OptimizerGroup(optimizer)
        kinds = sorted({type(member).__name__ for member in optimizer})
        got = f"{type(optimizer).__name__} of {', '.join(kinds)}"
    else:
        got = type(optimizer).__name__
    raise TypeError(
        f"the {label} optimizer must be a torch.optim.Optimizer or a list of them, got {got}"
    )
