"""The Hock-Schittkowski test problems: published definitions, start points and optima.

Hock and Schittkowski, *Test Examples for Nonlinear Programming Codes*, Lecture Notes in
Economics and Mathematical Systems 187, Springer (1981). Every optimum is confirmed by an
independent solver in the test suite (scipy's SLSQP).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

INF = math.inf


class ProgramDefinition(NamedTuple):
    """A smooth nonlinear program ``min f(x) s.t. h(x) = 0, g(x) >= 0, lower <= x <= upper``.

    Attributes:
        name: Short name, such as ``"hs071"``.
        objective: ``f``, a function of the 1-D tensor ``x``.
        equalities: ``h``, returning a 1-D tensor, or ``None``.
        inequalities: ``g``, returning a 1-D tensor that must be ``>= 0``, or ``None``.
        lower: Lower bounds, ``-inf`` where there is none.
        upper: Upper bounds, ``inf`` where there is none.
        x0: The standard start point.
        f_star: The optimal value.
        x_star: An optimal point.
    """

    name: str
    objective: Callable[[Tensor], Tensor]
    equalities: Callable[[Tensor], Tensor] | None
    inequalities: Callable[[Tensor], Tensor] | None
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    x0: tuple[float, ...]
    f_star: float
    x_star: tuple[float, ...]


def _stack(*values: Tensor) -> Tensor:
    return torch.stack(values)


def _hs006(x: Tensor) -> Tensor:
    return (1 - x[0]).square()


def _hs007(x: Tensor) -> Tensor:
    return torch.log1p(x[0].square()) - x[1]


def _hs021(x: Tensor) -> Tensor:
    return 0.01 * x[0].square() + x[1].square() - 100


def _hs028(x: Tensor) -> Tensor:
    return (x[0] + x[1]).square() + (x[1] + x[2]).square()


def _hs035(x: Tensor) -> Tensor:
    x1, x2, x3 = x.unbind()
    return (
        9 - 8 * x1 - 6 * x2 - 4 * x3
        + 2 * x1**2 + 2 * x2**2 + x3**2 + 2 * x1 * x2 + 2 * x1 * x3
    )  # fmt: skip


def _hs043(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return x1**2 + x2**2 + 2 * x3**2 + x4**2 - 5 * x1 - 5 * x2 - 21 * x3 + 7 * x4


def _hs043_inequalities(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return _stack(
        8 - x1**2 - x2**2 - x3**2 - x4**2 - x1 + x2 - x3 + x4,
        10 - x1**2 - 2 * x2**2 - x3**2 - 2 * x4**2 + x1 + x4,
        5 - 2 * x1**2 - x2**2 - x3**2 - 2 * x1 + x2 + x4,
    )


def _hs044(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return x1 - x2 - x3 - x1 * x3 + x1 * x4 + x2 * x3 - x2 * x4


def _hs044_inequalities(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return _stack(
        8 - x1 - 2 * x2,
        12 - 4 * x1 - x2,
        12 - 3 * x1 - 4 * x2,
        8 - 2 * x3 - x4,
        8 - x3 - 2 * x4,
        5 - x3 - x4,
    )


def _hs048(x: Tensor) -> Tensor:
    return (x[0] - 1).square() + (x[1] - x[2]).square() + (x[3] - x[4]).square()


def _hs065(x: Tensor) -> Tensor:
    x1, x2, x3 = x.unbind()
    return (x1 - x2) ** 2 + (x1 + x2 - 10) ** 2 / 9 + (x3 - 5) ** 2


def _hs071(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return x1 * x4 * (x1 + x2 + x3) + x3


def _hs076(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return (
        x1**2 + 0.5 * x2**2 + x3**2 + 0.5 * x4**2
        - x1 * x3 + x3 * x4 - x1 - 3 * x2 + x3 - x4
    )  # fmt: skip


def _hs076_inequalities(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return _stack(
        5 - x1 - 2 * x2 - x3 - x4,
        4 - 3 * x1 - x2 - 2 * x3 + x4,
        x2 + 4 * x3 - 1.5,
    )


_DEFINITIONS = [
    ProgramDefinition(
        "hs006", _hs006,
        lambda x: _stack(10 * (x[1] - x[0].square())), None,
        (-INF, -INF), (INF, INF), (-1.2, 1.0), 0.0, (1.0, 1.0),
    ),
    ProgramDefinition(
        "hs007", _hs007,
        lambda x: _stack((1 + x[0].square()).square() + x[1].square() - 4), None,
        (-INF, -INF), (INF, INF), (2.0, 2.0), -math.sqrt(3), (0.0, math.sqrt(3)),
    ),
    ProgramDefinition(
        "hs021", _hs021,
        None, lambda x: _stack(10 * x[0] - x[1] - 10),
        (2.0, -50.0), (50.0, 50.0), (-1.0, -1.0), -99.96, (2.0, 0.0),
    ),
    ProgramDefinition(
        "hs028", _hs028,
        lambda x: _stack(x[0] + 2 * x[1] + 3 * x[2] - 1), None,
        (-INF,) * 3, (INF,) * 3, (-4.0, 1.0, 1.0), 0.0, (0.5, -0.5, 0.5),
    ),
    ProgramDefinition(
        "hs035", _hs035,
        None, lambda x: _stack(3 - x[0] - x[1] - 2 * x[2]),
        (0.0,) * 3, (INF,) * 3, (0.5, 0.5, 0.5), 1 / 9, (4 / 3, 7 / 9, 4 / 9),
    ),
    ProgramDefinition(
        "hs043", _hs043,
        None, _hs043_inequalities,
        (-INF,) * 4, (INF,) * 4, (0.0,) * 4, -44.0, (0.0, 1.0, 2.0, -1.0),
    ),
    ProgramDefinition(
        "hs044", _hs044,
        None, _hs044_inequalities,
        (0.0,) * 4, (INF,) * 4, (0.0,) * 4, -15.0, (0.0, 3.0, 0.0, 4.0),
    ),
    ProgramDefinition(
        "hs048", _hs048,
        lambda x: _stack(x.sum() - 5, x[2] - 2 * (x[3] + x[4]) + 3), None,
        (-INF,) * 5, (INF,) * 5, (3.0, 5.0, -3.0, 2.0, -2.0), 0.0, (1.0,) * 5,
    ),
    ProgramDefinition(
        "hs065", _hs065,
        None, lambda x: _stack(48 - x.square().sum()),
        (-4.5, -4.5, -5.0), (4.5, 4.5, 5.0), (-5.0, 5.0, 0.0),
        0.9535288567, (3.650461821, 3.65046168, 4.6204170507),
    ),
    ProgramDefinition(
        "hs071", _hs071,
        lambda x: _stack(x.square().sum() - 40), lambda x: _stack(x.prod() - 25),
        (1.0,) * 4, (5.0,) * 4, (1.0, 5.0, 5.0, 1.0),
        17.0140173, (1.0, 4.7429994, 3.8211503, 1.3794082),
    ),
    ProgramDefinition(
        "hs076", _hs076,
        None, _hs076_inequalities,
        (0.0,) * 4, (INF,) * 4, (0.5,) * 4,
        -4.6818181818, (0.2727273, 2.090909, 0.0, 0.5454545),
    ),
]  # fmt: skip

HOCK_SCHITTKOWSKI: dict[str, ProgramDefinition] = {d.name: d for d in _DEFINITIONS}
"""The Hock-Schittkowski problems by name: hs006, hs007, hs021, hs028, hs035, hs043, hs044,
hs048, hs065, hs071, hs076."""
