"""Data and exact references for the convergence benchmark: scipy's SLSQP and NNLS."""

from __future__ import annotations

import numpy as np
import scipy.optimize
import torch
from sklearn.datasets import load_diabetes
from torch import Tensor, nn
from torch.func import functional_call

from lagrange_opt import ConstrainedProblem, ProblemState
from lagrange_opt.problems import (
    RegressionData,
    check_state,
    max_violation,
    regression_data,
    regression_network,
    standard_form,
)


def diabetes() -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled diabetes data: standardised features, centred target."""
    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    y = y - y.mean()
    return torch.tensor(X, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)


def nnls_objective(X: Tensor, y: Tensor) -> float:
    """``min ||Xw - y||^2 / n`` over ``w >= 0`` by ``scipy.optimize.nnls``."""
    _, residual_norm = scipy.optimize.nnls(X.numpy(), y.numpy())
    return float(residual_norm**2 / X.shape[0])


def per_sample_data(num_samples: int = 200, num_features: int = 5) -> tuple[Tensor, Tensor]:
    """Linear data whose least-squares fit predicts negative values for many samples."""
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(num_samples, num_features, generator=generator, dtype=torch.float64)
    weight = torch.linspace(-1.0, 1.0, num_features, dtype=torch.float64)
    noise = 0.3 * torch.randn(num_samples, generator=generator, dtype=torch.float64)
    y = X @ weight + 0.5 + noise
    return X, y


def network_data(quick: bool) -> RegressionData:
    """The core example's generated regression data (fewer samples in a quick run)."""
    return regression_data(256 if quick else 1024)


def network(hidden: int) -> nn.Sequential:
    """The core example's network, 784-hidden-hidden-2, with a fixed initialisation."""
    return regression_network(hidden=hidden)


class Exp(nn.Module):
    """``exp`` as a module, to put after the network."""

    def forward(self, inputs: Tensor) -> Tensor:
        return inputs.exp()


def slsqp(problem: ConstrainedProblem) -> tuple[float, float]:
    """Solves a problem over all its data with scipy's SLSQP, from its initial parameters.

    Gradients and Jacobians come from autograd; bounds declared with ``add_bounds`` are
    SLSQP's bounds. An indexed constraint is evaluated with ``problem()``'s default indices
    (every sample).

    Returns:
        The objective and the max violation at SLSQP's answer.
    """
    names = [name for name, _ in problem.named_parameters() if not name.startswith("constraints.")]
    params = dict(problem.named_parameters())
    shapes = [params[name].shape for name in names]
    sizes = [params[name].numel() for name in names]
    dtype = params[names[0]].dtype

    def call(vector: Tensor) -> ProblemState:
        pieces = vector.split(sizes)
        values = {name: piece.reshape(shape) for name, piece, shape in zip(names, pieces, shapes)}
        return functional_call(problem, values, ())

    def standard(vector: Tensor, position: int) -> Tensor:
        _, constraint, value, _ = check_state(problem, call(vector))[1][position]
        return standard_form(value, constraint.spec).reshape(-1)

    def objective(x: np.ndarray) -> float:
        return float(call(torch.tensor(x, dtype=dtype)).objective)

    def objective_grad(x: np.ndarray) -> np.ndarray:
        vector = torch.tensor(x, dtype=dtype, requires_grad=True)
        (grad,) = torch.autograd.grad(call(vector).objective, vector)
        return grad.numpy()

    constraint_items = list(problem.constraint_items())

    scipy_constraints = []
    for position, (_, constraint) in enumerate(constraint_items):
        sign = 1.0 if constraint.spec.kind == "equality" else -1.0

        def fun(x: np.ndarray, position: int = position, sign: float = sign) -> np.ndarray:
            return sign * standard(torch.tensor(x, dtype=dtype), position).numpy()

        def jac(x: np.ndarray, position: int = position, sign: float = sign) -> np.ndarray:
            vector = torch.tensor(x, dtype=dtype)
            jacobian = torch.autograd.functional.jacobian(lambda v: standard(v, position), vector)
            return sign * jacobian.numpy()

        kind = "eq" if constraint.spec.kind == "equality" else "ineq"
        scipy_constraints.append({"type": kind, "fun": fun, "jac": jac})

    x0 = torch.cat([params[name].detach().reshape(-1) for name in names]).numpy()
    boxes = {id(param): bounds for param, bounds in problem.bounded_parameters()}
    box_sides = []
    for name in names:
        param = params[name]
        bounds = boxes.get(id(param))
        lower = torch.full_like(param, -np.inf) if bounds is None else bounds.lower
        upper = torch.full_like(param, np.inf) if bounds is None else bounds.upper
        box_sides.append((lower.detach().reshape(-1), upper.detach().reshape(-1)))
    lower_all = torch.cat([low for low, _ in box_sides]).numpy()
    upper_all = torch.cat([high for _, high in box_sides]).numpy()
    solution = scipy.optimize.minimize(
        objective,
        x0,
        jac=objective_grad,
        bounds=scipy.optimize.Bounds(lower_all, upper_all),
        constraints=scipy_constraints,
        method="SLSQP",
        options={"maxiter": 1000, "ftol": 1e-14},
    )
    with torch.no_grad():
        result = call(torch.tensor(solution.x, dtype=dtype))
    return float(result.objective), max_violation(problem, result)
