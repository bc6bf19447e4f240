"""What every rank must declare alike, and how the ranks compare their declarations."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import NamedTuple

import torch

from lagrange_opt.problem.constrained_problem import ConstrainedProblem

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""The dtypes a value is sent as in an agreement (its code: 1 + its position; 0: absent)."""


class Presence(NamedTuple):
    """How the ranks observed one constraint in an evaluation.

    Attributes:
        ranks: How many ranks observed it (at least 1).
        dtype: The dtype of the value on the first rank that observed it: a rank that did
            not observe it takes the whole batch's value in that dtype, as that rank does.
    """

    ranks: int
    dtype: torch.dtype


def dtype_code(dtype: torch.dtype) -> float:
    return float(1 + (DTYPES.index(dtype) if dtype in DTYPES else len(DTYPES) - 1))


FINGERPRINT_WORDS = 4
"""The declarations' fingerprint: a 256-bit hash as 4 int64 words (a fixed size on every
rank, whatever it declared)."""


def declarations(problem: ConstrainedProblem) -> list[str]:
    """Each declared constraint's spec as text, in declaration order: what every rank must
    declare alike (the payloads of the collectives, and their order, follow from it)."""
    return [repr(constraint.spec) for constraint in problem.declared().values()]


def fingerprint(declarations: Sequence[str]) -> list[int]:
    """A hash of ``declarations`` (order included) as :data:`FINGERPRINT_WORDS` int64s."""
    digest = hashlib.blake2b("\n".join(declarations).encode(), digest_size=8 * FINGERPRINT_WORDS)
    return [
        int.from_bytes(digest.digest()[8 * word : 8 * word + 8], "little", signed=True)
        for word in range(FINGERPRINT_WORDS)
    ]


def describe_difference(
    names: Sequence[Sequence[str]], declarations: Sequence[Sequence[str]]
) -> str:
    """What differs between the ranks' declarations (each rank's names and spec texts)."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for rank, rank_names in enumerate(names):
        groups.setdefault(tuple(rank_names), []).append(rank)
    if len(groups) > 1:
        parts = [
            f"{'rank' if len(ranks) == 1 else 'ranks'} "
            f"{ranks[0] if len(ranks) == 1 else ranks} declared {list(rank_names)}"
            for rank_names, ranks in groups.items()
        ]
        return "; ".join(parts)
    # The same names in the same order: some spec differs.
    parts = []
    for position, name in enumerate(names[0]):
        specs: dict[str, list[int]] = {}
        for rank, rank_declarations in enumerate(declarations):
            specs.setdefault(rank_declarations[position], []).append(rank)
        if len(specs) > 1:
            described = ", ".join(
                f"{'rank' if len(ranks) == 1 else 'ranks'} "
                f"{ranks[0] if len(ranks) == 1 else ranks}: {spec}"
                for spec, ranks in specs.items()
            )
            parts.append(f"constraint '{name}' is declared differently ({described})")
    return "; ".join(parts)
