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

from torch import Tensor

from lagrange_opt.problems.hock_schittkowski_functions import (
    HS002_F,
    HS002_X1,
    HS011_F,
    HS011_X1,
    hs001,
    hs003,
    hs004,
    hs005,
    hs006,
    hs007,
    hs010_inequalities,
    hs012,
    hs014,
    hs016_inequalities,
    hs018_inequalities,
    hs021,
    hs023_inequalities,
    hs024,
    hs024_inequalities,
    hs026,
    hs027,
    hs028,
    hs032,
    hs035,
    hs038,
    hs039_equalities,
    hs040_equalities,
    hs042,
    hs043,
    hs043_inequalities,
    hs044,
    hs044_inequalities,
    hs046,
    hs046_equalities,
    hs047,
    hs047_equalities,
    hs048,
    hs053,
    hs053_equalities,
    hs055,
    hs055_equalities,
    hs060,
    hs064,
    hs065,
    hs071,
    hs076,
    hs076_inequalities,
    hs078_equalities,
    hs081,
    hs113,
    hs113_inequalities,
    hs118,
    hs118_inequalities,
    stack,
)

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


_DEFINITIONS = [
    ProgramDefinition(
        "hs001", hs001,
        None, None,
        (-INF, -1.5), (INF, INF), (-2.0, 1.0), 0.0, (1.0, 1.0),
    ),
    # f* and x* as published: the minimiser (1.2243707, 1.5). A second local minimiser on the
    # bound, (-1.2210262, 1.5) with f = 4.9412293, is the one that SLSQP and IPOPT reach
    # from x0; the "4.941229e-2" that some copies give as f* is its value misprinted.
    ProgramDefinition(
        "hs002", hs001,
        None, None,
        (-INF, 1.5), (INF, INF), (-2.0, 1.0), HS002_F, (HS002_X1, 1.5),
    ),
    ProgramDefinition(
        "hs003", hs003,
        None, None,
        (-INF, 0.0), (INF, INF), (10.0, 1.0), 0.0, (0.0, 0.0),
    ),
    ProgramDefinition(
        "hs004", hs004,
        None, None,
        (1.0, 0.0), (INF, INF), (1.125, 0.125), 8 / 3, (1.0, 0.0),
    ),
    ProgramDefinition(
        "hs005", hs005,
        None, None,
        (-1.5, -3.0), (4.0, 3.0), (0.0, 0.0),
        -math.sqrt(3) / 2 - math.pi / 3, (0.5 - math.pi / 3, -0.5 - math.pi / 3),
    ),
    ProgramDefinition(
        "hs006", hs006,
        lambda x: stack(10 * (x[1] - x[0].square())), None,
        (-INF, -INF), (INF, INF), (-1.2, 1.0), 0.0, (1.0, 1.0),
    ),
    ProgramDefinition(
        "hs007", hs007,
        lambda x: stack((1 + x[0].square()).square() + x[1].square() - 4), None,
        (-INF, -INF), (INF, INF), (2.0, 2.0), -math.sqrt(3), (0.0, math.sqrt(3)),
    ),
    ProgramDefinition(
        "hs010", lambda x: x[0] - x[1],
        None, hs010_inequalities,
        (-INF, -INF), (INF, INF), (-10.0, 10.0), -1.0, (0.0, 1.0),
    ),
    ProgramDefinition(
        "hs011", lambda x: (x[0] - 5).square() + x[1].square() - 25,
        None, lambda x: stack(x[1] - x[0].square()),
        (-INF, -INF), (INF, INF), (4.9, 0.1), HS011_F, (HS011_X1, HS011_X1**2),
    ),
    ProgramDefinition(
        "hs012", hs012,
        None, lambda x: stack(25 - 4 * x[0].square() - x[1].square()),
        (-INF, -INF), (INF, INF), (0.0, 0.0), -30.0, (2.0, 3.0),
    ),
    ProgramDefinition(
        "hs014", hs014,
        lambda x: stack(x[0] - 2 * x[1] + 1),
        lambda x: stack(1 - 0.25 * x[0].square() - x[1].square()),
        (-INF, -INF), (INF, INF), (2.0, 2.0),
        9 - 2.875 * math.sqrt(7), ((math.sqrt(7) - 1) / 2, (math.sqrt(7) + 1) / 4),
    ),
    # x0 lies outside the bounds (x1 = -2 < -0.5). A second local minimiser, the vertex
    # (-0.5, 0.5^(1/2)) where x1 = -0.5 and x1 + x2^2 = 0, has f = 23.1446609: SLSQP, which
    # clips x0 onto the bounds, stops there.
    ProgramDefinition(
        "hs016", hs001,
        None, hs016_inequalities,
        (-0.5, -INF), (0.5, 1.0), (-2.0, 1.0), 0.25, (0.5, 0.25),
    ),
    ProgramDefinition(
        "hs018", lambda x: 0.01 * x[0].square() + x[1].square(),
        None, hs018_inequalities,
        (2.0, 0.0), (50.0, 50.0), (2.0, 2.0), 5.0, (math.sqrt(250), math.sqrt(2.5)),
    ),
    ProgramDefinition(
        "hs021", hs021,
        None, lambda x: stack(10 * x[0] - x[1] - 10),
        (2.0, -50.0), (50.0, 50.0), (-1.0, -1.0), -99.96, (2.0, 0.0),
    ),
    ProgramDefinition(
        "hs022", hs014,
        None, lambda x: stack(2 - x[0] - x[1], x[1] - x[0].square()),
        (-INF, -INF), (INF, INF), (2.0, 2.0), 1.0, (1.0, 1.0),
    ),
    ProgramDefinition(
        "hs023", lambda x: x.square().sum(),
        None, hs023_inequalities,
        (-50.0, -50.0), (50.0, 50.0), (3.0, 1.0), 2.0, (1.0, 1.0),
    ),
    ProgramDefinition(
        "hs024", hs024,
        None, hs024_inequalities,
        (0.0, 0.0), (INF, INF), (1.0, 0.5), -1.0, (3.0, math.sqrt(3)),
    ),
    ProgramDefinition(
        "hs026", hs026,
        lambda x: stack((1 + x[1].square()) * x[0] + x[2] ** 4 - 3), None,
        (-INF,) * 3, (INF,) * 3, (-2.6, 2.0, 2.0), 0.0, (1.0, 1.0, 1.0),
    ),
    ProgramDefinition(
        "hs027", hs027,
        lambda x: stack(x[0] + x[2].square() + 1), None,
        (-INF,) * 3, (INF,) * 3, (2.0, 2.0, 2.0), 0.04, (-1.0, 1.0, 0.0),
    ),
    ProgramDefinition(
        "hs028", hs028,
        lambda x: stack(x[0] + 2 * x[1] + 3 * x[2] - 1), None,
        (-INF,) * 3, (INF,) * 3, (-4.0, 1.0, 1.0), 0.0, (0.5, -0.5, 0.5),
    ),
    ProgramDefinition(
        "hs030", lambda x: x.square().sum(),
        None, lambda x: stack(x[0].square() + x[1].square() - 1),
        (1.0, -10.0, -10.0), (10.0, 10.0, 10.0), (1.0, 1.0, 1.0), 1.0, (1.0, 0.0, 0.0),
    ),
    ProgramDefinition(
        "hs032", hs032,
        lambda x: stack(1 - x.sum()),
        lambda x: stack(6 * x[1] + 4 * x[2] - x[0] ** 3 - 3),
        (0.0,) * 3, (INF,) * 3, (0.1, 0.7, 0.2), 1.0, (0.0, 0.0, 1.0),
    ),
    ProgramDefinition(
        "hs035", hs035,
        None, lambda x: stack(3 - x[0] - x[1] - 2 * x[2]),
        (0.0,) * 3, (INF,) * 3, (0.5, 0.5, 0.5), 1 / 9, (4 / 3, 7 / 9, 4 / 9),
    ),
    ProgramDefinition(
        "hs038", hs038,
        None, None,
        (-10.0,) * 4, (10.0,) * 4, (-3.0, -1.0, -3.0, -1.0), 0.0, (1.0,) * 4,
    ),
    # The objective -x1 is unbounded below off the constraint set.
    ProgramDefinition(
        "hs039", lambda x: -x[0],
        hs039_equalities, None,
        (-INF,) * 4, (INF,) * 4, (2.0,) * 4, -1.0, (1.0, 1.0, 0.0, 0.0),
    ),
    # Of the two published minimisers (x3 and x4 may both change sign), the one with
    # positive coordinates, which the solvers reach from x0.
    ProgramDefinition(
        "hs040", lambda x: -x.prod(),
        hs040_equalities, None,
        (-INF,) * 4, (INF,) * 4, (0.8,) * 4,
        -0.25, (2 ** (-1 / 3), 2 ** (-1 / 2), 2 ** (-11 / 12), 2 ** (-1 / 4)),
    ),
    ProgramDefinition(
        "hs042", hs042,
        lambda x: stack(x[0] - 2, x[2].square() + x[3].square() - 2), None,
        (-INF,) * 4, (INF,) * 4, (1.0,) * 4,
        28 - 10 * math.sqrt(2), (2.0, 2.0, 0.6 * math.sqrt(2), 0.8 * math.sqrt(2)),
    ),
    ProgramDefinition(
        "hs043", hs043,
        None, hs043_inequalities,
        (-INF,) * 4, (INF,) * 4, (0.0,) * 4, -44.0, (0.0, 1.0, 2.0, -1.0),
    ),
    ProgramDefinition(
        "hs044", hs044,
        None, hs044_inequalities,
        (0.0,) * 4, (INF,) * 4, (0.0,) * 4, -15.0, (0.0, 3.0, 0.0, 4.0),
    ),
    # Degenerate: the objective's Hessian is singular at x* (quartic and sixth-power terms).
    ProgramDefinition(
        "hs046", hs046,
        hs046_equalities, None,
        (-INF,) * 5, (INF,) * 5, (math.sqrt(2) / 2, 1.75, 0.5, 2.0, 2.0), 0.0, (1.0,) * 5,
    ),
    # The book's x* = (1, 1, 1, 1, 1), f* = 0, which SLSQP and IPOPT reach from x0, is a
    # degenerate KKT point (zero gradient, zero multipliers) but no minimiser: along the
    # feasible curve through it with tangent (1, 1, -1, -3, -1) t, f = 8 t^3 + O(t^4) < 0 for
    # t < 0. A lower point is known, f = -0.02671418269394084 at (0.6770043949, 0.7260894727,
    # 1.215491214, 1.751329419, 1.477095286) (the revised H+S models, TOMLAB); the benchmark
    # keeps the published optimum, the point that local methods from x0 reach.
    ProgramDefinition(
        "hs047", hs047,
        hs047_equalities, None,
        (-INF,) * 5, (INF,) * 5, (2.0, math.sqrt(2), -1.0, 2 - math.sqrt(2), 0.5),
        0.0, (1.0,) * 5,
    ),
    ProgramDefinition(
        "hs048", hs048,
        lambda x: stack(x.sum() - 5, x[2] - 2 * (x[3] + x[4]) + 3), None,
        (-INF,) * 5, (INF,) * 5, (3.0, 5.0, -3.0, 2.0, -2.0), 0.0, (1.0,) * 5,
    ),
    ProgramDefinition(
        "hs053", hs053,
        hs053_equalities, None,
        (-10.0,) * 5, (10.0,) * 5, (2.0,) * 5,
        176 / 43, (-33 / 43, 11 / 43, 27 / 43, -5 / 43, 11 / 43),
    ),
    # An exponential term with six linear equalities; x0 is infeasible.
    ProgramDefinition(
        "hs055", hs055,
        hs055_equalities, None,
        (0.0,) * 6, (1.0, INF, INF, 1.0, INF, INF), (1.0, 2.0, 0.0, 0.0, 0.0, 2.0),
        19 / 3, (0.0, 4 / 3, 5 / 3, 1.0, 2 / 3, 1 / 3),
    ),
    # f*: the book prints 0.03256820025; SLSQP and IPOPT reach this value from x0 (gaps
    # below 1e-9), here as the KKT system gives it to full precision. Likewise below for
    # hs064, hs066, hs078, hs080 and hs113.
    ProgramDefinition(
        "hs060", hs060,
        lambda x: stack(x[0] * (1 + x[1].square()) + x[2] ** 4 - 4 - 3 * math.sqrt(2)),
        None,
        (-10.0,) * 3, (10.0,) * 3, (2.0,) * 3,
        0.03256820025506984, (1.104859024, 1.196674194, 1.535262257),
    ),
    # f*: the book prints 6299.842428.
    ProgramDefinition(
        "hs064", hs064,
        None, lambda x: stack(1 - 4 / x[0] - 32 / x[1] - 120 / x[2]),
        (1e-5,) * 3, (INF,) * 3, (1.0,) * 3,
        6299.84242792152, (108.7347175, 85.12613942, 204.3247078),
    ),
    ProgramDefinition(
        "hs065", hs065,
        None, lambda x: stack(48 - x.square().sum()),
        (-4.5, -4.5, -5.0), (4.5, 4.5, 5.0), (-5.0, 5.0, 0.0),
        0.9535288567, (3.650461821, 3.65046168, 4.6204170507),
    ),
    # f*: the book prints 0.5181632741, the full value cut off rather than rounded. x1* solves
    # x1 + exp(x1) = log(4), with x2* = exp(x1*) and x3* = exp(x2*).
    ProgramDefinition(
        "hs066", lambda x: 0.2 * x[2] - 0.8 * x[0],
        None, lambda x: stack(x[1] - x[0].exp(), x[2] - x[1].exp()),
        (0.0,) * 3, (100.0, 100.0, 10.0), (0.0, 1.05, 2.9),
        0.518163274181541, (0.1841264879, 1.202167873, 3.327322322),
    ),
    ProgramDefinition(
        "hs071", hs071,
        lambda x: stack(x.square().sum() - 40), lambda x: stack(x.prod() - 25),
        (1.0,) * 4, (5.0,) * 4, (1.0, 5.0, 5.0, 1.0),
        17.0140173, (1.0, 4.7429994, 3.8211503, 1.3794082),
    ),
    ProgramDefinition(
        "hs076", hs076,
        None, hs076_inequalities,
        (0.0,) * 4, (INF,) * 4, (0.5,) * 4,
        -4.6818181818, (0.2727273, 2.090909, 0.0, 0.5454545),
    ),
    # f*: the book prints -2.91970041.
    ProgramDefinition(
        "hs078", lambda x: x.prod(),
        hs078_equalities, None,
        (-INF,) * 5, (INF,) * 5, (-2.0, 1.5, 2.0, -1.0, -1.0),
        -2.919700408963679, (-1.717142, 1.595708, 1.827248, -0.7636429, -0.7636435),
    ),
    # f*: the book prints 0.0539498478. hs078's constraints and minimiser: f* = exp(hs078's f*).
    ProgramDefinition(
        "hs080", lambda x: x.prod().exp(),
        hs078_equalities, None,
        (-2.3, -2.3, -3.2, -3.2, -3.2), (2.3, 2.3, 3.2, 3.2, 3.2), (-2.0, 2.0, 2.0, -1.0, -1.0),
        0.05394984777027201, (-1.717143, 1.595709, 1.827247, -0.7636413, -0.7636450),
    ),
    # hs080 with -(x1^3 + x2^3 + 1)^2 / 2 added, which rewards violating the third equality:
    # the same minimiser and f* on the constraint set. The book's x* for hs081 misprints
    # x2* = 1.595709 as 1.159571 (an infeasible point); x* here is the rHS model's.
    ProgramDefinition(
        "hs081", hs081,
        hs078_equalities, None,
        (-2.3, -2.3, -3.2, -3.2, -3.2), (2.3, 2.3, 3.2, 3.2, 3.2), (-2.0, 2.0, 2.0, -1.0, -1.0),
        0.05394984777027201,
        (-1.717143570394382, 1.595709690183554, 1.827245752927195, -0.7636430781841304,
         -0.7636430781841304),
    ),
    # f*: the book prints 24.3062091. Its x*, printed to 7 digits, violates constraint 4 by
    # 1.2e-5; x* here is the KKT solution to 10 digits, which agrees with the book's to its
    # printed digits. Constraints 1-5 and 7 are active.
    ProgramDefinition(
        "hs113", hs113,
        None, hs113_inequalities,
        (-INF,) * 10, (INF,) * 10, (2.0, 3.0, 5.0, 5.0, 1.0, 2.0, 7.0, 3.0, 6.0, 10.0),
        24.30620906817981,
        (2.171996371, 2.363682974, 8.773925738, 5.095984488, 0.990654765,
         1.430573979, 1.321644208, 9.828725808, 8.28009167, 8.375926664),
    ),
    # A convex QP with 29 linear inequalities and bounds; at x* nine bounds are active.
    ProgramDefinition(
        "hs118", hs118,
        None, hs118_inequalities,
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
