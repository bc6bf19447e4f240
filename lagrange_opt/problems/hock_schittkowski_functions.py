"""The Hock-Schittkowski problems' objectives and constraints, and two optima in closed form."""

from __future__ import annotations

import math

import torch
from torch import Tensor

# hs002: the minimiser lies on the bound x2 = 1.5, where x1* is the largest root of
# 400 x1^3 - 598 x1 - 2 = 0: x1* = 2a cos(arccos(1/b) / 3), a = (598/1200)^(1/2), b = 400a^3.
HS002_A = math.sqrt(598 / 1200)
HS002_X1 = 2 * HS002_A * math.cos(math.acos(1 / (400 * HS002_A**3)) / 3)
HS002_F = 100 * (1.5 - HS002_X1**2) ** 2 + (1 - HS002_X1) ** 2
# hs011: the constraint x2 >= x1^2 is active; x1* is the real root of 2 x1^3 + x1 - 5 = 0,
# by Cardano x1* = (c - 1/c) / 6^(1/2) with c = (7.5 * 6^(1/2) + 338.5^(1/2))^(1/3).
HS011_C = (7.5 * math.sqrt(6) + math.sqrt(338.5)) ** (1 / 3)
HS011_X1 = (HS011_C - 1 / HS011_C) / math.sqrt(6)
HS011_F = (HS011_X1 - 5) ** 2 + HS011_X1**4 - 25


def stack(*values: Tensor) -> Tensor:
    return torch.stack(values)


def hs001(x: Tensor) -> Tensor:
    # Rosenbrock's function, which hs002 and hs016 minimise too.
    return 100 * (x[1] - x[0].square()).square() + (1 - x[0]).square()


def hs003(x: Tensor) -> Tensor:
    return x[1] + 1e-5 * (x[1] - x[0]).square()


def hs004(x: Tensor) -> Tensor:
    return (x[0] + 1) ** 3 / 3 + x[1]


def hs005(x: Tensor) -> Tensor:
    x1, x2 = x.unbind()
    return torch.sin(x1 + x2) + (x1 - x2) ** 2 - 1.5 * x1 + 2.5 * x2 + 1


def hs006(x: Tensor) -> Tensor:
    return (1 - x[0]).square()


def hs007(x: Tensor) -> Tensor:
    return torch.log1p(x[0].square()) - x[1]


def hs010_inequalities(x: Tensor) -> Tensor:
    x1, x2 = x.unbind()
    return stack(-3 * x1**2 + 2 * x1 * x2 - x2**2 + 1)


def hs012(x: Tensor) -> Tensor:
    x1, x2 = x.unbind()
    return 0.5 * x1**2 + x2**2 - x1 * x2 - 7 * x1 - 7 * x2


def hs014(x: Tensor) -> Tensor:
    # hs022 minimises the same function.
    return (x[0] - 2).square() + (x[1] - 1).square()


def hs016_inequalities(x: Tensor) -> Tensor:
    x1, x2 = x.unbind()
    return stack(x1 + x2**2, x1**2 + x2)


def hs018_inequalities(x: Tensor) -> Tensor:
    x1, x2 = x.unbind()
    return stack(x1 * x2 - 25, x1**2 + x2**2 - 25)


def hs021(x: Tensor) -> Tensor:
    return 0.01 * x[0].square() + x[1].square() - 100


def hs023_inequalities(x: Tensor) -> Tensor:
    x1, x2 = x.unbind()
    return stack(
        x1 + x2 - 1,
        x1**2 + x2**2 - 1,
        9 * x1**2 + x2**2 - 9,
        x1**2 - x2,
        x2**2 - x1,
    )


def hs024(x: Tensor) -> Tensor:
    x1, x2 = x.unbind()
    return ((x1 - 3) ** 2 - 9) * x2**3 / (27 * math.sqrt(3))


def hs024_inequalities(x: Tensor) -> Tensor:
    x1, x2 = x.unbind()
    return stack(
        x1 / math.sqrt(3) - x2,
        x1 + math.sqrt(3) * x2,
        6 - x1 - math.sqrt(3) * x2,
    )


def hs026(x: Tensor) -> Tensor:
    x1, x2, x3 = x.unbind()
    return (x1 - x2) ** 2 + (x2 - x3) ** 4


def hs027(x: Tensor) -> Tensor:
    x1, x2, _ = x.unbind()
    return 0.01 * (x1 - 1) ** 2 + (x2 - x1**2) ** 2


def hs028(x: Tensor) -> Tensor:
    return (x[0] + x[1]).square() + (x[1] + x[2]).square()


def hs032(x: Tensor) -> Tensor:
    x1, x2, x3 = x.unbind()
    return (x1 + 3 * x2 + x3) ** 2 + 4 * (x1 - x2) ** 2


def hs035(x: Tensor) -> Tensor:
    x1, x2, x3 = x.unbind()
    return (
        9 - 8 * x1 - 6 * x2 - 4 * x3
        + 2 * x1**2 + 2 * x2**2 + x3**2 + 2 * x1 * x2 + 2 * x1 * x3
    )  # fmt: skip


def hs038(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return (
        100 * (x2 - x1**2) ** 2 + (1 - x1) ** 2
        + 90 * (x4 - x3**2) ** 2 + (1 - x3) ** 2
        + 10.1 * ((x2 - 1) ** 2 + (x4 - 1) ** 2) + 19.8 * (x2 - 1) * (x4 - 1)
    )  # fmt: skip


def hs040_equalities(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return stack(x1**3 + x2**2 - 1, x1**2 * x4 - x3, x4**2 - x2)


def hs042(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return (x1 - 1) ** 2 + (x2 - 2) ** 2 + (x3 - 3) ** 2 + (x4 - 4) ** 2


def hs043(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return x1**2 + x2**2 + 2 * x3**2 + x4**2 - 5 * x1 - 5 * x2 - 21 * x3 + 7 * x4


def hs043_inequalities(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return stack(
        8 - x1**2 - x2**2 - x3**2 - x4**2 - x1 + x2 - x3 + x4,
        10 - x1**2 - 2 * x2**2 - x3**2 - 2 * x4**2 + x1 + x4,
        5 - 2 * x1**2 - x2**2 - x3**2 - 2 * x1 + x2 + x4,
    )


def hs044(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return x1 - x2 - x3 - x1 * x3 + x1 * x4 + x2 * x3 - x2 * x4


def hs044_inequalities(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return stack(
        8 - x1 - 2 * x2,
        12 - 4 * x1 - x2,
        12 - 3 * x1 - 4 * x2,
        8 - 2 * x3 - x4,
        8 - x3 - 2 * x4,
        5 - x3 - x4,
    )


def hs046(x: Tensor) -> Tensor:
    x1, x2, x3, x4, x5 = x.unbind()
    return (x1 - x2) ** 2 + (x3 - 1) ** 2 + (x4 - 1) ** 4 + (x5 - 1) ** 6


def hs046_equalities(x: Tensor) -> Tensor:
    x1, x2, x3, x4, x5 = x.unbind()
    return stack(x1**2 * x4 + torch.sin(x4 - x5) - 1, x2 + x3**4 * x4**2 - 2)


def hs047(x: Tensor) -> Tensor:
    x1, x2, x3, x4, x5 = x.unbind()
    return (x1 - x2) ** 2 + (x2 - x3) ** 3 + (x3 - x4) ** 4 + (x4 - x5) ** 4


def hs047_equalities(x: Tensor) -> Tensor:
    x1, x2, x3, x4, x5 = x.unbind()
    return stack(x1 + x2**2 + x3**3 - 3, x2 - x3**2 + x4 - 1, x1 * x5 - 1)


def hs048(x: Tensor) -> Tensor:
    return (x[0] - 1).square() + (x[1] - x[2]).square() + (x[3] - x[4]).square()


def hs053(x: Tensor) -> Tensor:
    x1, x2, x3, x4, x5 = x.unbind()
    return (x1 - x2) ** 2 + (x2 + x3 - 2) ** 2 + (x4 - 1) ** 2 + (x5 - 1) ** 2


def hs053_equalities(x: Tensor) -> Tensor:
    x1, x2, x3, x4, x5 = x.unbind()
    return stack(x1 + 3 * x2, x3 + x4 - 2 * x5, x2 - x5)


def hs060(x: Tensor) -> Tensor:
    x1, x2, x3 = x.unbind()
    return (x1 - 1) ** 2 + (x1 - x2) ** 2 + (x2 - x3) ** 4


def hs064(x: Tensor) -> Tensor:
    x1, x2, x3 = x.unbind()
    return 5 * x1 + 50000 / x1 + 20 * x2 + 72000 / x2 + 10 * x3 + 144000 / x3


def hs065(x: Tensor) -> Tensor:
    x1, x2, x3 = x.unbind()
    return (x1 - x2) ** 2 + (x1 + x2 - 10) ** 2 / 9 + (x3 - 5) ** 2


def hs071(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return x1 * x4 * (x1 + x2 + x3) + x3


def hs076(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return (
        x1**2 + 0.5 * x2**2 + x3**2 + 0.5 * x4**2
        - x1 * x3 + x3 * x4 - x1 - 3 * x2 + x3 - x4
    )  # fmt: skip


def hs076_inequalities(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return stack(
        5 - x1 - 2 * x2 - x3 - x4,
        4 - 3 * x1 - x2 - 2 * x3 + x4,
        x2 + 4 * x3 - 1.5,
    )


def hs078_equalities(x: Tensor) -> Tensor:
    # hs080 has the same constraints.
    x1, x2, x3, x4, x5 = x.unbind()
    return stack(x.square().sum() - 10, x2 * x3 - 5 * x4 * x5, x1**3 + x2**3 + 1)


def hs039_equalities(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return stack(x2 - x1**3 - x3.square(), x1.square() - x2 - x4.square())


def hs055(x: Tensor) -> Tensor:
    return x[0] + 2 * x[1] + 4 * x[4] + (x[0] * x[3]).exp()


def hs055_equalities(x: Tensor) -> Tensor:
    x1, x2, x3, x4, x5, x6 = x.unbind()
    return stack(
        x1 + 2 * x2 + 5 * x5 - 6,
        x1 + x2 + x3 - 3,
        x4 + x5 + x6 - 2,
        x1 + x4 - 1,
        x2 + x5 - 2,
        x3 + x6 - 2,
    )


def hs081(x: Tensor) -> Tensor:
    return x.prod().exp() - 0.5 * (x[0] ** 3 + x[1] ** 3 + 1).square()


def hs113(x: Tensor) -> Tensor:
    x1, x2, x3, x4, x5, x6, x7, x8, x9, x10 = x.unbind()
    return (
        x1**2 + x2**2 + x1 * x2 - 14 * x1 - 16 * x2 + (x3 - 10) ** 2
        + 4 * (x4 - 5) ** 2 + (x5 - 3) ** 2 + 2 * (x6 - 1) ** 2 + 5 * x7**2
        + 7 * (x8 - 11) ** 2 + 2 * (x9 - 10) ** 2 + (x10 - 7) ** 2 + 45
    )  # fmt: skip


def hs113_inequalities(x: Tensor) -> Tensor:
    x1, x2, x3, x4, x5, x6, x7, x8, x9, x10 = x.unbind()
    return stack(
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
HS118_LINEAR = (2.3, 1.7, 2.2)
HS118_QUADRATIC = (0.0001, 0.0001, 0.00015)


def hs118(x: Tensor) -> Tensor:
    periods = x.reshape(5, 3)
    linear = torch.tensor(HS118_LINEAR, dtype=x.dtype, device=x.device)
    quadratic = torch.tensor(HS118_QUADRATIC, dtype=x.dtype, device=x.device)
    return (periods * linear + periods.square() * quadratic).sum()


def hs118_inequalities(x: Tensor) -> Tensor:
    periods = x.reshape(5, 3)
    # Each output may change by at most its ramp between periods: -7 <= x_next - x_prev
    # <= 6, 7, 6 for the three outputs; and each period's total meets its demand.
    change = periods[1:] - periods[:-1] + 7
    ramp = torch.tensor((13.0, 14.0, 13.0), dtype=x.dtype, device=x.device)
    demand = torch.tensor((60.0, 50.0, 70.0, 85.0, 100.0), dtype=x.dtype, device=x.device)
    return torch.cat([change.reshape(-1), (ramp - change).reshape(-1), periods.sum(1) - demand])
