"""The Hock-Schittkowski test problems: published definitions, start points and optima.

Hock and Schittkowski, *Test Examples for Nonlinear Programming Codes*, Lecture Notes in
Economics and Mathematical Systems 187, Springer (1981). Every optimum is confirmed by an
independent solver in the test suite (scipy's SLSQP) and by ``benchmarks/verify_optima.py``
(SLSQP and IPOPT); ``docs/hock_schittkowski.md`` lists the problems, the second source each
definition was checked against, and the notes on published values.

Conventions: variable bounds are in ``lower``/``upper``, never among the inequalities; the
inequalities are written ``g(x) >= 0``. ``f_star`` is the published optimal value; where the
book prints few digits, it is the value that SLSQP and IPOPT both reach from ``x0``, which
agrees with the printed digits (a comment says so).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

INF = math.inf


# hs002: the minimiser lies on the bound x2 = 1.5, where x1* is the largest root of
# 400 x1^3 - 598 x1 - 2 = 0: x1* = 2a cos(arccos(1/b) / 3), a = (598/1200)^(1/2), b = 400a^3.
_HS002_A = math.sqrt(598 / 1200)
_HS002_X1 = 2 * _HS002_A * math.cos(math.acos(1 / (400 * _HS002_A**3)) / 3)
_HS002_F = 100 * (1.5 - _HS002_X1**2) ** 2 + (1 - _HS002_X1) ** 2
# hs011: the constraint x2 >= x1^2 is active; x1* is the real root of 2 x1^3 + x1 - 5 = 0,
# by Cardano x1* = (c - 1/c) / 6^(1/2) with c = (7.5 * 6^(1/2) + 338.5^(1/2))^(1/3).
_HS011_C = (7.5 * math.sqrt(6) + math.sqrt(338.5)) ** (1 / 3)
_HS011_X1 = (_HS011_C - 1 / _HS011_C) / math.sqrt(6)
_HS011_F = (_HS011_X1 - 5) ** 2 + _HS011_X1**4 - 25


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


def _hs001(x: Tensor) -> Tensor:
    # Rosenbrock's function, which hs002 and hs016 minimise too.
    return 100 * (x[1] - x[0].square()).square() + (1 - x[0]).square()


def _hs003(x: Tensor) -> Tensor:
    return x[1] + 1e-5 * (x[1] - x[0]).square()


def _hs004(x: Tensor) -> Tensor:
    return (x[0] + 1) ** 3 / 3 + x[1]


def _hs005(x: Tensor) -> Tensor:
    x1, x2 = x.unbind()
    return torch.sin(x1 + x2) + (x1 - x2) ** 2 - 1.5 * x1 + 2.5 * x2 + 1


def _hs006(x: Tensor) -> Tensor:
    return (1 - x[0]).square()


def _hs007(x: Tensor) -> Tensor:
    return torch.log1p(x[0].square()) - x[1]


def _hs010_inequalities(x: Tensor) -> Tensor:
    x1, x2 = x.unbind()
    return _stack(-3 * x1**2 + 2 * x1 * x2 - x2**2 + 1)


def _hs012(x: Tensor) -> Tensor:
    x1, x2 = x.unbind()
    return 0.5 * x1**2 + x2**2 - x1 * x2 - 7 * x1 - 7 * x2


def _hs014(x: Tensor) -> Tensor:
    # hs022 minimises the same function.
    return (x[0] - 2).square() + (x[1] - 1).square()


def _hs016_inequalities(x: Tensor) -> Tensor:
    x1, x2 = x.unbind()
    return _stack(x1 + x2**2, x1**2 + x2)


def _hs018_inequalities(x: Tensor) -> Tensor:
    x1, x2 = x.unbind()
    return _stack(x1 * x2 - 25, x1**2 + x2**2 - 25)


def _hs021(x: Tensor) -> Tensor:
    return 0.01 * x[0].square() + x[1].square() - 100


def _hs023_inequalities(x: Tensor) -> Tensor:
    x1, x2 = x.unbind()
    return _stack(
        x1 + x2 - 1,
        x1**2 + x2**2 - 1,
        9 * x1**2 + x2**2 - 9,
        x1**2 - x2,
        x2**2 - x1,
    )


def _hs024(x: Tensor) -> Tensor:
    x1, x2 = x.unbind()
    return ((x1 - 3) ** 2 - 9) * x2**3 / (27 * math.sqrt(3))


def _hs024_inequalities(x: Tensor) -> Tensor:
    x1, x2 = x.unbind()
    return _stack(
        x1 / math.sqrt(3) - x2,
        x1 + math.sqrt(3) * x2,
        6 - x1 - math.sqrt(3) * x2,
    )


def _hs026(x: Tensor) -> Tensor:
    x1, x2, x3 = x.unbind()
    return (x1 - x2) ** 2 + (x2 - x3) ** 4


def _hs027(x: Tensor) -> Tensor:
    x1, x2, _ = x.unbind()
    return 0.01 * (x1 - 1) ** 2 + (x2 - x1**2) ** 2


def _hs028(x: Tensor) -> Tensor:
    return (x[0] + x[1]).square() + (x[1] + x[2]).square()


def _hs032(x: Tensor) -> Tensor:
    x1, x2, x3 = x.unbind()
    return (x1 + 3 * x2 + x3) ** 2 + 4 * (x1 - x2) ** 2


def _hs035(x: Tensor) -> Tensor:
    x1, x2, x3 = x.unbind()
    return (
        9 - 8 * x1 - 6 * x2 - 4 * x3
        + 2 * x1**2 + 2 * x2**2 + x3**2 + 2 * x1 * x2 + 2 * x1 * x3
    )  # fmt: skip


def _hs038(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return (
        100 * (x2 - x1**2) ** 2 + (1 - x1) ** 2
        + 90 * (x4 - x3**2) ** 2 + (1 - x3) ** 2
        + 10.1 * ((x2 - 1) ** 2 + (x4 - 1) ** 2) + 19.8 * (x2 - 1) * (x4 - 1)
    )  # fmt: skip


def _hs040_equalities(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return _stack(x1**3 + x2**2 - 1, x1**2 * x4 - x3, x4**2 - x2)


def _hs042(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return (x1 - 1) ** 2 + (x2 - 2) ** 2 + (x3 - 3) ** 2 + (x4 - 4) ** 2


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


def _hs046(x: Tensor) -> Tensor:
    x1, x2, x3, x4, x5 = x.unbind()
    return (x1 - x2) ** 2 + (x3 - 1) ** 2 + (x4 - 1) ** 4 + (x5 - 1) ** 6


def _hs046_equalities(x: Tensor) -> Tensor:
    x1, x2, x3, x4, x5 = x.unbind()
    return _stack(x1**2 * x4 + torch.sin(x4 - x5) - 1, x2 + x3**4 * x4**2 - 2)


def _hs047(x: Tensor) -> Tensor:
    x1, x2, x3, x4, x5 = x.unbind()
    return (x1 - x2) ** 2 + (x2 - x3) ** 3 + (x3 - x4) ** 4 + (x4 - x5) ** 4


def _hs047_equalities(x: Tensor) -> Tensor:
    x1, x2, x3, x4, x5 = x.unbind()
    return _stack(x1 + x2**2 + x3**3 - 3, x2 - x3**2 + x4 - 1, x1 * x5 - 1)


def _hs048(x: Tensor) -> Tensor:
    return (x[0] - 1).square() + (x[1] - x[2]).square() + (x[3] - x[4]).square()


def _hs053(x: Tensor) -> Tensor:
    x1, x2, x3, x4, x5 = x.unbind()
    return (x1 - x2) ** 2 + (x2 + x3 - 2) ** 2 + (x4 - 1) ** 2 + (x5 - 1) ** 2


def _hs053_equalities(x: Tensor) -> Tensor:
    x1, x2, x3, x4, x5 = x.unbind()
    return _stack(x1 + 3 * x2, x3 + x4 - 2 * x5, x2 - x5)


def _hs060(x: Tensor) -> Tensor:
    x1, x2, x3 = x.unbind()
    return (x1 - 1) ** 2 + (x1 - x2) ** 2 + (x2 - x3) ** 4


def _hs064(x: Tensor) -> Tensor:
    x1, x2, x3 = x.unbind()
    return 5 * x1 + 50000 / x1 + 20 * x2 + 72000 / x2 + 10 * x3 + 144000 / x3


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


def _hs078_equalities(x: Tensor) -> Tensor:
    # hs080 has the same constraints.
    x1, x2, x3, x4, x5 = x.unbind()
    return _stack(x.square().sum() - 10, x2 * x3 - 5 * x4 * x5, x1**3 + x2**3 + 1)


def _hs039_equalities(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return _stack(x2 - x1**3 - x3.square(), x1.square() - x2 - x4.square())


def _hs055(x: Tensor) -> Tensor:
    return x[0] + 2 * x[1] + 4 * x[4] + (x[0] * x[3]).exp()


def _hs055_equalities(x: Tensor) -> Tensor:
    x1, x2, x3, x4, x5, x6 = x.unbind()
    return _stack(
        x1 + 2 * x2 + 5 * x5 - 6,
        x1 + x2 + x3 - 3,
        x4 + x5 + x6 - 2,
        x1 + x4 - 1,
        x2 + x5 - 2,
        x3 + x6 - 2,
    )


def _hs081(x: Tensor) -> Tensor:
    return x.prod().exp() - 0.5 * (x[0] ** 3 + x[1] ** 3 + 1).square()


def _hs113(x: Tensor) -> Tensor:
    x1, x2, x3, x4, x5, x6, x7, x8, x9, x10 = x.unbind()
    return (
        x1**2 + x2**2 + x1 * x2 - 14 * x1 - 16 * x2 + (x3 - 10) ** 2
        + 4 * (x4 - 5) ** 2 + (x5 - 3) ** 2 + 2 * (x6 - 1) ** 2 + 5 * x7**2
        + 7 * (x8 - 11) ** 2 + 2 * (x9 - 10) ** 2 + (x10 - 7) ** 2 + 45
    )  # fmt: skip


def _hs113_inequalities(x: Tensor) -> Tensor:
    x1, x2, x3, x4, x5, x6, x7, x8, x9, x10 = x.unbind()
    return _stack(
        105 - 4 * x1 - 5 * x2 + 3 * x7 - 9 * x8,
        -10 * x1 + 8 * x2 + 17 * x7 - 2 * x8,
        8 * x1 - 2 * x2 - 5 * x9 + 2 * x10 + 12,
        -3 * (x1 - 2) ** 2 - 4 * (x2 - 3) ** 2 - 2 * x3**2 + 7 * x4 + 120,
        -5 * x1**2 - 8 * x2 - (x3 - 6) ** 2 + 2 * x4 + 40,
        -0.5 * (x1 - 8) ** 2 - 2 * (x2 - 4) ** 2 - 3 * x5**2 + x6 + 30,
        -(x1**2) - 2 * (x2 - 2) ** 2 + 2 * x1 * x2 - 14 * x5 + 6 * x6,
        3 * x1 - 6 * x2 - 12 * (x9 - 8) ** 2 + 7 * x10,
    )


# hs118's objective: for each of its five periods k, three outputs with linear and quadratic costs.
_HS118_LINEAR = (2.3, 1.7, 2.2)
_HS118_QUADRATIC = (0.0001, 0.0001, 0.00015)


def _hs118(x: Tensor) -> Tensor:
    periods = x.reshape(5, 3)
    linear = torch.tensor(_HS118_LINEAR, dtype=x.dtype, device=x.device)
    quadratic = torch.tensor(_HS118_QUADRATIC, dtype=x.dtype, device=x.device)
    return (periods * linear + periods.square() * quadratic).sum()


def _hs118_inequalities(x: Tensor) -> Tensor:
    periods = x.reshape(5, 3)
    # Each output may change by at most its ramp between periods: -7 <= x_next - x_prev
    # <= 6, 7, 6 for the three outputs; and each period's total meets its demand.
    change = periods[1:] - periods[:-1] + 7
    ramp = torch.tensor((13.0, 14.0, 13.0), dtype=x.dtype, device=x.device)
    demand = torch.tensor((60.0, 50.0, 70.0, 85.0, 100.0), dtype=x.dtype, device=x.device)
    return torch.cat([change.reshape(-1), (ramp - change).reshape(-1), periods.sum(1) - demand])


_DEFINITIONS = [
    ProgramDefinition(
        "hs001", _hs001,
        None, None,
        (-INF, -1.5), (INF, INF), (-2.0, 1.0), 0.0, (1.0, 1.0),
    ),
    # f* and x* as published: the minimiser (1.2243707, 1.5). A second local minimiser on the
    # bound, (-1.2210262, 1.5) with f = 4.9412293, is the one that SLSQP and IPOPT reach
    # from x0; the "4.941229e-2" that some copies give as f* is its value misprinted.
    ProgramDefinition(
        "hs002", _hs001,
        None, None,
        (-INF, 1.5), (INF, INF), (-2.0, 1.0), _HS002_F, (_HS002_X1, 1.5),
    ),
    ProgramDefinition(
        "hs003", _hs003,
        None, None,
        (-INF, 0.0), (INF, INF), (10.0, 1.0), 0.0, (0.0, 0.0),
    ),
    ProgramDefinition(
        "hs004", _hs004,
        None, None,
        (1.0, 0.0), (INF, INF), (1.125, 0.125), 8 / 3, (1.0, 0.0),
    ),
    ProgramDefinition(
        "hs005", _hs005,
        None, None,
        (-1.5, -3.0), (4.0, 3.0), (0.0, 0.0),
        -math.sqrt(3) / 2 - math.pi / 3, (0.5 - math.pi / 3, -0.5 - math.pi / 3),
    ),
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
        "hs010", lambda x: x[0] - x[1],
        None, _hs010_inequalities,
        (-INF, -INF), (INF, INF), (-10.0, 10.0), -1.0, (0.0, 1.0),
    ),
    ProgramDefinition(
        "hs011", lambda x: (x[0] - 5).square() + x[1].square() - 25,
        None, lambda x: _stack(x[1] - x[0].square()),
        (-INF, -INF), (INF, INF), (4.9, 0.1), _HS011_F, (_HS011_X1, _HS011_X1**2),
    ),
    ProgramDefinition(
        "hs012", _hs012,
        None, lambda x: _stack(25 - 4 * x[0].square() - x[1].square()),
        (-INF, -INF), (INF, INF), (0.0, 0.0), -30.0, (2.0, 3.0),
    ),
    ProgramDefinition(
        "hs014", _hs014,
        lambda x: _stack(x[0] - 2 * x[1] + 1),
        lambda x: _stack(1 - 0.25 * x[0].square() - x[1].square()),
        (-INF, -INF), (INF, INF), (2.0, 2.0),
        9 - 2.875 * math.sqrt(7), ((math.sqrt(7) - 1) / 2, (math.sqrt(7) + 1) / 4),
    ),
    # x0 lies outside the bounds (x1 = -2 < -0.5). A second local minimiser, the vertex
    # (-0.5, 0.5^(1/2)) where x1 = -0.5 and x1 + x2^2 = 0, has f = 23.1446609: SLSQP, which
    # clips x0 onto the bounds, stops there.
    ProgramDefinition(
        "hs016", _hs001,
        None, _hs016_inequalities,
        (-0.5, -INF), (0.5, 1.0), (-2.0, 1.0), 0.25, (0.5, 0.25),
    ),
    ProgramDefinition(
        "hs018", lambda x: 0.01 * x[0].square() + x[1].square(),
        None, _hs018_inequalities,
        (2.0, 0.0), (50.0, 50.0), (2.0, 2.0), 5.0, (math.sqrt(250), math.sqrt(2.5)),
    ),
    ProgramDefinition(
        "hs021", _hs021,
        None, lambda x: _stack(10 * x[0] - x[1] - 10),
        (2.0, -50.0), (50.0, 50.0), (-1.0, -1.0), -99.96, (2.0, 0.0),
    ),
    ProgramDefinition(
        "hs022", _hs014,
        None, lambda x: _stack(2 - x[0] - x[1], x[1] - x[0].square()),
        (-INF, -INF), (INF, INF), (2.0, 2.0), 1.0, (1.0, 1.0),
    ),
    ProgramDefinition(
        "hs023", lambda x: x.square().sum(),
        None, _hs023_inequalities,
        (-50.0, -50.0), (50.0, 50.0), (3.0, 1.0), 2.0, (1.0, 1.0),
    ),
    ProgramDefinition(
        "hs024", _hs024,
        None, _hs024_inequalities,
        (0.0, 0.0), (INF, INF), (1.0, 0.5), -1.0, (3.0, math.sqrt(3)),
    ),
    ProgramDefinition(
        "hs026", _hs026,
        lambda x: _stack((1 + x[1].square()) * x[0] + x[2] ** 4 - 3), None,
        (-INF,) * 3, (INF,) * 3, (-2.6, 2.0, 2.0), 0.0, (1.0, 1.0, 1.0),
    ),
    ProgramDefinition(
        "hs027", _hs027,
        lambda x: _stack(x[0] + x[2].square() + 1), None,
        (-INF,) * 3, (INF,) * 3, (2.0, 2.0, 2.0), 0.04, (-1.0, 1.0, 0.0),
    ),
    ProgramDefinition(
        "hs028", _hs028,
        lambda x: _stack(x[0] + 2 * x[1] + 3 * x[2] - 1), None,
        (-INF,) * 3, (INF,) * 3, (-4.0, 1.0, 1.0), 0.0, (0.5, -0.5, 0.5),
    ),
    ProgramDefinition(
        "hs030", lambda x: x.square().sum(),
        None, lambda x: _stack(x[0].square() + x[1].square() - 1),
        (1.0, -10.0, -10.0), (10.0, 10.0, 10.0), (1.0, 1.0, 1.0), 1.0, (1.0, 0.0, 0.0),
    ),
    ProgramDefinition(
        "hs032", _hs032,
        lambda x: _stack(1 - x.sum()),
        lambda x: _stack(6 * x[1] + 4 * x[2] - x[0] ** 3 - 3),
        (0.0,) * 3, (INF,) * 3, (0.1, 0.7, 0.2), 1.0, (0.0, 0.0, 1.0),
    ),
    ProgramDefinition(
        "hs035", _hs035,
        None, lambda x: _stack(3 - x[0] - x[1] - 2 * x[2]),
        (0.0,) * 3, (INF,) * 3, (0.5, 0.5, 0.5), 1 / 9, (4 / 3, 7 / 9, 4 / 9),
    ),
    ProgramDefinition(
        "hs038", _hs038,
        None, None,
        (-10.0,) * 4, (10.0,) * 4, (-3.0, -1.0, -3.0, -1.0), 0.0, (1.0,) * 4,
    ),
    # The objective -x1 is unbounded below off the constraint set.
    ProgramDefinition(
        "hs039", lambda x: -x[0],
        _hs039_equalities, None,
        (-INF,) * 4, (INF,) * 4, (2.0,) * 4, -1.0, (1.0, 1.0, 0.0, 0.0),
    ),
    # Of the two published minimisers (x3 and x4 may both change sign), the one with
    # positive coordinates, which the solvers reach from x0.
    ProgramDefinition(
        "hs040", lambda x: -x.prod(),
        _hs040_equalities, None,
        (-INF,) * 4, (INF,) * 4, (0.8,) * 4,
        -0.25, (2 ** (-1 / 3), 2 ** (-1 / 2), 2 ** (-11 / 12), 2 ** (-1 / 4)),
    ),
    ProgramDefinition(
        "hs042", _hs042,
        lambda x: _stack(x[0] - 2, x[2].square() + x[3].square() - 2), None,
        (-INF,) * 4, (INF,) * 4, (1.0,) * 4,
        28 - 10 * math.sqrt(2), (2.0, 2.0, 0.6 * math.sqrt(2), 0.8 * math.sqrt(2)),
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
    # Degenerate: the objective's Hessian is singular at x* (quartic and sixth-power terms).
    ProgramDefinition(
        "hs046", _hs046,
        _hs046_equalities, None,
        (-INF,) * 5, (INF,) * 5, (math.sqrt(2) / 2, 1.75, 0.5, 2.0, 2.0), 0.0, (1.0,) * 5,
    ),
    # The book's x* = (1, 1, 1, 1, 1), f* = 0, which SLSQP and IPOPT reach from x0, is a
    # degenerate KKT point (zero gradient, zero multipliers) but no minimiser: along the
    # feasible curve through it with tangent (1, 1, -1, -3, -1) t, f = 8 t^3 + O(t^4) < 0 for
    # t < 0. A lower point is known, f = -0.02671418269394084 at (0.6770043949, 0.7260894727,
    # 1.215491214, 1.751329419, 1.477095286) (the revised H+S models, TOMLAB); the benchmark
    # keeps the published optimum, the point that local methods from x0 reach.
    ProgramDefinition(
        "hs047", _hs047,
        _hs047_equalities, None,
        (-INF,) * 5, (INF,) * 5, (2.0, math.sqrt(2), -1.0, 2 - math.sqrt(2), 0.5),
        0.0, (1.0,) * 5,
    ),
    ProgramDefinition(
        "hs048", _hs048,
        lambda x: _stack(x.sum() - 5, x[2] - 2 * (x[3] + x[4]) + 3), None,
        (-INF,) * 5, (INF,) * 5, (3.0, 5.0, -3.0, 2.0, -2.0), 0.0, (1.0,) * 5,
    ),
    ProgramDefinition(
        "hs053", _hs053,
        _hs053_equalities, None,
        (-10.0,) * 5, (10.0,) * 5, (2.0,) * 5,
        176 / 43, (-33 / 43, 11 / 43, 27 / 43, -5 / 43, 11 / 43),
    ),
    # An exponential term with six linear equalities; x0 is infeasible.
    ProgramDefinition(
        "hs055", _hs055,
        _hs055_equalities, None,
        (0.0,) * 6, (1.0, INF, INF, 1.0, INF, INF), (1.0, 2.0, 0.0, 0.0, 0.0, 2.0),
        19 / 3, (0.0, 4 / 3, 5 / 3, 1.0, 2 / 3, 1 / 3),
    ),
    # f*: the book prints 0.03256820025; SLSQP and IPOPT reach this value from x0 (gaps
    # below 1e-9), here as the KKT system gives it to full precision. Likewise below for
    # hs064, hs066, hs078, hs080 and hs113.
    ProgramDefinition(
        "hs060", _hs060,
        lambda x: _stack(x[0] * (1 + x[1].square()) + x[2] ** 4 - 4 - 3 * math.sqrt(2)),
        None,
        (-10.0,) * 3, (10.0,) * 3, (2.0,) * 3,
        0.03256820025506984, (1.104859024, 1.196674194, 1.535262257),
    ),
    # f*: the book prints 6299.842428.
    ProgramDefinition(
        "hs064", _hs064,
        None, lambda x: _stack(1 - 4 / x[0] - 32 / x[1] - 120 / x[2]),
        (1e-5,) * 3, (INF,) * 3, (1.0,) * 3,
        6299.84242792152, (108.7347175, 85.12613942, 204.3247078),
    ),
    ProgramDefinition(
        "hs065", _hs065,
        None, lambda x: _stack(48 - x.square().sum()),
        (-4.5, -4.5, -5.0), (4.5, 4.5, 5.0), (-5.0, 5.0, 0.0),
        0.9535288567, (3.650461821, 3.65046168, 4.6204170507),
    ),
    # f*: the book prints 0.5181632741, the full value cut off rather than rounded. x1* solves
    # x1 + exp(x1) = log(4), with x2* = exp(x1*) and x3* = exp(x2*).
    ProgramDefinition(
        "hs066", lambda x: 0.2 * x[2] - 0.8 * x[0],
        None, lambda x: _stack(x[1] - x[0].exp(), x[2] - x[1].exp()),
        (0.0,) * 3, (100.0, 100.0, 10.0), (0.0, 1.05, 2.9),
        0.518163274181541, (0.1841264879, 1.202167873, 3.327322322),
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
    # f*: the book prints -2.91970041.
    ProgramDefinition(
        "hs078", lambda x: x.prod(),
        _hs078_equalities, None,
        (-INF,) * 5, (INF,) * 5, (-2.0, 1.5, 2.0, -1.0, -1.0),
        -2.919700408963679, (-1.717142, 1.595708, 1.827248, -0.7636429, -0.7636435),
    ),
    # f*: the book prints 0.0539498478. hs078's constraints and minimiser: f* = exp(hs078's f*).
    ProgramDefinition(
        "hs080", lambda x: x.prod().exp(),
        _hs078_equalities, None,
        (-2.3, -2.3, -3.2, -3.2, -3.2), (2.3, 2.3, 3.2, 3.2, 3.2), (-2.0, 2.0, 2.0, -1.0, -1.0),
        0.05394984777027201, (-1.717143, 1.595709, 1.827247, -0.7636413, -0.7636450),
    ),
    # hs080 with -(x1^3 + x2^3 + 1)^2 / 2 added, which rewards violating the third equality:
    # the same minimiser and f* on the constraint set. The book's x* for hs081 misprints
    # x2* = 1.595709 as 1.159571 (an infeasible point); x* here is the rHS model's.
    ProgramDefinition(
        "hs081", _hs081,
        _hs078_equalities, None,
        (-2.3, -2.3, -3.2, -3.2, -3.2), (2.3, 2.3, 3.2, 3.2, 3.2), (-2.0, 2.0, 2.0, -1.0, -1.0),
        0.05394984777027201,
        (-1.717143570394382, 1.595709690183554, 1.827245752927195, -0.7636430781841304,
         -0.7636430781841304),
    ),
    # f*: the book prints 24.3062091. Its x*, printed to 7 digits, violates constraint 4 by
    # 1.2e-5; x* here is the KKT solution to 10 digits, which agrees with the book's to its
    # printed digits. Constraints 1-5 and 7 are active.
    ProgramDefinition(
        "hs113", _hs113,
        None, _hs113_inequalities,
        (-INF,) * 10, (INF,) * 10, (2.0, 3.0, 5.0, 5.0, 1.0, 2.0, 7.0, 3.0, 6.0, 10.0),
        24.30620906817981,
        (2.171996371, 2.363682974, 8.773925738, 5.095984488, 0.990654765,
         1.430573979, 1.321644208, 9.828725808, 8.28009167, 8.375926664),
    ),
    # A convex QP with 29 linear inequalities and bounds; at x* nine bounds are active.
    ProgramDefinition(
        "hs118", _hs118,
        None, _hs118_inequalities,
        (8.0, 43.0, 3.0) + (0.0,) * 12, (21.0, 57.0, 16.0) + (90.0, 120.0, 60.0) * 4,
        (20.0, 55.0, 15.0) + (20.0, 60.0, 20.0) * 4,
        664.82045,
        (8.0, 49.0, 3.0, 1.0, 56.0, 0.0, 1.0, 63.0, 6.0, 3.0, 70.0, 12.0, 5.0, 77.0, 18.0),
    ),
]  # fmt: skip

HOCK_SCHITTKOWSKI: dict[str, ProgramDefinition] = {d.name: d for d in _DEFINITIONS}
"""The Hock-Schittkowski problems by name: hs001, hs002, hs003, hs004, hs005, hs006, hs007,
hs010, hs011, hs012, hs014, hs016, hs018, hs021, hs022, hs023, hs024, hs026, hs027, hs028,
hs030, hs032, hs035, hs038, hs039, hs040, hs042, hs043, hs044, hs046, hs047, hs048, hs053,
hs055, hs060, hs064, hs065, hs066, hs071, hs076, hs078, hs080, hs081, hs113, hs118."""
