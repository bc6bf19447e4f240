"""A step's figures as a flat dict of Python floats, for any logger."""

from __future__ import annotations

from lagrange_opt.diagnostics.kkt import KKTResiduals
from lagrange_opt.diagnostics.step_result import StepResult


def scalars(
    result: StepResult,
    residuals: KKTResiduals | None = None,
    *,
    prefix: str = "",
) -> dict[str, float]:
    """A step's figures, and optionally a point's KKT residuals, as ``{name: float}``.

    The keys are ``objective``, ``lagrangian``, ``max_violation``, ``mean_violation``;
    per constraint observed in the step, ``violation/<name>`` (its largest violation) and,
    where it has multipliers, ``multiplier_norm/<name>`` (its largest absolute multiplier);
    with ``residuals``, ``kkt/stationarity``, ``kkt/primal_feasibility``,
    ``kkt/dual_feasibility`` and ``kkt/complementarity``. Every key starts with ``prefix``.
    The slashes group the figures in TensorBoard and Weights & Biases; the dict goes as is
    to ``SummaryWriter.add_scalar`` in a loop, ``wandb.log`` or Lightning's ``log_dict``.

    Converting the step's tensors to floats synchronises with the device once per figure:
    call it on the steps you log, not on every step.

    Args:
        result: What ``optimizer.step`` returned.
        residuals: What :func:`lagrange_opt.kkt` returned, if the residuals are wanted.
        prefix: Put before every key, e.g. ``"train/"``.

    Returns:
        The figures, in the order above.

    Example:
        >>> import torch
        >>> from lagrange_opt import ConstrainedProblem, ProblemState, scalars
        >>> from lagrange_opt import SimultaneousGDA
        >>> class Problem(ConstrainedProblem):
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.x = torch.nn.Parameter(torch.tensor(0.0))
        ...         self.add_inequality("floor", ">=", treatment="projection")
        ...     def forward(self) -> ProblemState:
        ...         return ProblemState(self.x.square(), {"floor": self.x - 1})
        >>> problem = Problem()
        >>> optimizer = SimultaneousGDA(
        ...     problem,
        ...     torch.optim.SGD(problem.primal_parameters(), lr=0.1),
        ...     torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True),
        ... )
        >>> scalars(optimizer.step(problem), prefix="train/")  # doctest: +NORMALIZE_WHITESPACE
        {'train/objective': 0.0, 'train/lagrangian': 0.0, 'train/max_violation': 1.0,
         'train/mean_violation': 1.0, 'train/violation/floor': 1.0,
         'train/multiplier_norm/floor': 0.0}
    """
    figures = {
        "objective": float(result.objective),
        "lagrangian": float(result.lagrangian),
        "max_violation": float(result.max_violation),
        "mean_violation": float(result.mean_violation),
    }
    for name, constraint in result.constraints.items():
        figures[f"violation/{name}"] = float(constraint.max_violation)
        if constraint.multiplier_norm is not None:
            figures[f"multiplier_norm/{name}"] = float(constraint.multiplier_norm)
    if residuals is not None:
        figures.update({f"kkt/{field}": value for field, value in residuals._asdict().items()})
    return {prefix + key: value for key, value in figures.items()}
