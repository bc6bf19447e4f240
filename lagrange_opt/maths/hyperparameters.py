"""Checks of the numbers an optimizer is set with: one function per kind of number, shared
by the constructors, ``load_state_dict`` and the checks that run at every step.

Each raises in the style of torch's own ``Invalid learning rate: -1.0``, with ``where``
(``" in the dual optimizer (param group 1)"``, or empty) naming the place at fault.

This module imports nothing from the package: :mod:`..updates.nupi`, which imports nothing else
from it, uses it too.
"""

from __future__ import annotations

import math

import torch


def check_real(name: str, value: object, where: str = "") -> float:
    """``value`` as a float.

    Raises:
        TypeError: If it is not an ``int`` or a ``float`` (a ``bool`` is refused: ``True``
            as a rate is a slip, not a 1), naming ``name`` and its type.
    """
    if isinstance(value, bool) or not isinstance(value, float | int):
        raise TypeError(f"{name}{where} must be a float, got {type(value).__name__}")
    return float(value)


def check_learning_rate(value: float, where: str = "") -> float:
    """A learning rate: finite and ``>= 0`` (0 is a warm-up's start).

    Raises:
        ValueError: ``Invalid learning rate{where}: {value}``.
    """
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"Invalid learning rate{where}: {value}")
    return value


def check_group_rate(value: object, where: str) -> float | None:
    """A param group's ``lr`` as torch optimizers hold it: a number, or a one-element tensor
    (Adam accepts one). A tensor off the CPU is not read (``None``): reading it would wait
    for the device, and this check runs at every step.

    Raises:
        TypeError, ValueError: As :func:`check_real` and :func:`check_learning_rate`.
    """
    if isinstance(value, torch.Tensor):
        if value.device.type != "cpu" or value.numel() != 1:
            return None
        value = value.item()
    return check_learning_rate(check_real("learning rate", value, where), where)


def check_count(name: str, value: object, where: str = "") -> int:
    """A count: an ``int`` ``>= 0``.

    Raises:
        ValueError: ``Invalid {name}{where}: {value}`` (a float or a bool too).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"Invalid {name}{where}: {value!r}")
    return value
