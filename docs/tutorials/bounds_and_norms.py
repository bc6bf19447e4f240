# %% [markdown]
# # Non-negative weights and a norm constraint
#
# Two common requirements on a model's weights, taken together on one regression:
#
# - **Every weight non-negative.** Each feature may only push the prediction up: a
#   monotone model, which is easier to explain and to audit. This is a *bound* on a
#   parameter, and the package keeps it by projection: the weights are clamped onto
#   $[0, \infty)$ after every update, so they are never negative, not even in between.
# - **A budget on the weights' squared norm**, $\lVert W \rVert^2 \le c$. This is
#   a *constraint* on a function of the parameters, with a Lagrange multiplier. Unlike
#   weight decay, whose strength you must guess, it states the size you want; the
#   multiplier then *is* the weight decay that achieves it, found by the optimisation.
#
# The data are scikit-learn's diabetes set (442 patients, 10 features, a measure of disease
# progression one year later). The model is a single `nn.Linear(10, 1)` layer, so the
# problem is convex and its solution can be checked independently.

# %%
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.optimize import minimize, nnls
from sklearn.datasets import load_diabetes

from lagrange_opt import ConstrainedProblem, ProblemState, default_optimizer, kkt

torch.manual_seed(0)

# %% [markdown]
# ## Data and the budget
#
# Features and target are standardised, so that the weights are comparable and the loss
# is a fraction of the target's variance. Everything is in float64: the run below checks
# the optimality conditions to $10^{-6}$, beyond float32's precision.
#
# The budget is chosen to bind. Without it, the non-negative least-squares fit (scipy's
# `nnls`) has a squared norm of about 0.25; the budget is half of that, so the norm
# constraint must be active at the solution.

# %%
features, target = load_diabetes(return_X_y=True)
features = (features - features.mean(axis=0)) / features.std(axis=0)
target = (target - target.mean()) / target.std()
X, y = torch.tensor(features), torch.tensor(target)  # float64

nnls_weights, _ = nnls(features, target)
BUDGET = 0.5 * float(np.square(nnls_weights).sum())
print(f"non-negative fit without a budget: squared norm {np.square(nnls_weights).sum():.4f}")
print(f"budget c = {BUDGET:.4f}")

# %% [markdown]
# ## The problem
#
# - `add_bounds(self.layer.weight, lower=0.0)` declares the box. There is no upper bound
#   (`upper=None`), and the bias stays free. A bound has no multiplier and adds nothing to
#   the Lagrangian: it costs one clamp per update.
# - `add_inequality("norm", "<=")` declares the budget; `forward` returns
#   $\lVert W \rVert^2 - c$, which must be non-positive.
#
# `forward` also records the smallest weight it is ever evaluated at, to show that the
# projection holds at every point the optimizer visits, the look-ahead points of
# extra-gradient included, not only after each step.


# %%
class BudgetedRegression(ConstrainedProblem):
    """MSE of a linear layer with non-negative weights and ||W||^2 <= BUDGET."""

    def __init__(self, budget: float) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(10, 1, dtype=torch.float64)
        self.budget = budget
        self.add_bounds(self.layer.weight, lower=0.0)
        self.add_inequality("norm", "<=")
        self.smallest_weight_evaluated = float("inf")

    def forward(self) -> ProblemState:
        weight = self.layer.weight
        self.smallest_weight_evaluated = min(
            self.smallest_weight_evaluated, float(weight.detach().min())
        )
        loss = (self.layer(X).squeeze(-1) - y).square().mean()
        return ProblemState(loss, {"norm": weight.square().sum() - self.budget})


# %% [markdown]
# ## Solving it
#
# `default_optimizer(problem)` needs no learning rate: extra-gradient on the augmented
# Lagrangian with a backtracking step. The problem is made float64 as a whole
# (`.to(torch.float64)`), so the multiplier is float64 too. `layer`'s initial weights are
# random, some negative: `add_bounds` projects them onto the box at once.
#
# The loop stops when the KKT residuals (stationarity, feasibility, the multiplier's sign
# and complementarity, in the problem's own units) are all below $10^{-6}$. Computing
# them costs an evaluation and a gradient, so they are checked every 25 steps.

# %%
problem = BudgetedRegression(BUDGET).to(torch.float64)
optimizer = default_optimizer(problem)

smallest_weight_per_step: list[float] = []
weights_path = [problem.layer.weight.detach().clone().squeeze(0)]
steps = 0
while steps < 3000:
    optimizer.step(problem)
    steps += 1
    weight = problem.layer.weight.detach().squeeze(0)
    smallest_weight_per_step.append(float(weight.min()))
    weights_path.append(weight.clone())
    if steps % 25 == 0 and kkt(problem).converged(1e-6):
        break

residuals = kkt(problem)
weights = problem.layer.weight.detach().squeeze(0)
multiplier = float(problem.constraints["norm"].multiplier.detach())
squared_norm = float(weights.square().sum())
print(f"steps: {steps}")
print("KKT residuals:", ", ".join(f"{k} {v:.1e}" for k, v in residuals._asdict().items()))
print(f"smallest weight after any step: {min(smallest_weight_per_step):.3g}")
print(f"smallest weight evaluated:      {problem.smallest_weight_evaluated:.3g}")
print(f"squared norm {squared_norm:.6f} (budget {BUDGET:.6f}), multiplier {multiplier:.4f}")
print("weights:", np.round(weights.numpy(), 4))

# %% [markdown]
# The weights never went below zero, after any step or at any evaluation. The squared
# norm sits on the budget, and the multiplier is positive: the constraint is *active*.
# Complementarity ($\lambda \cdot (\lVert W \rVert^2 - c) = 0$) allows a positive
# multiplier only on an active constraint, and the residuals confirm it holds.
#
# ## Reading the multiplier
#
# At the solution, every weight strictly inside its box has a zero derivative of the
# Lagrangian $f(W) + \lambda (\lVert W \rVert^2 - c)$:
#
# $$\frac{\partial f}{\partial w_j} + 2 \lambda w_j = 0
# \quad\Longrightarrow\quad
# \lambda = -\frac{\partial f / \partial w_j}{2 w_j} \quad \text{for every } w_j > 0.$$
#
# So $\lambda$ is exactly an L2 weight decay: the one whose minimiser has norm $c$. And
# for a weight held at zero, $\partial f / \partial w_j \ge 0$: the loss would only fall
# if that weight could turn negative, which is the bound's implicit multiplier. Both are
# checked below from the loss's own gradient.

# %%
weight_param = problem.layer.weight
loss = (problem.layer(X).squeeze(-1) - y).square().mean()
gradient = torch.autograd.grad(loss, weight_param)[0].squeeze(0)
positive = weights > 1e-6
implied = -gradient[positive] / (2 * weights[positive])
smallest_gradient_at_zero = float(gradient[~positive].min())
print(
    f"weights at zero: {int((~positive).sum())}, gradient there >= {smallest_gradient_at_zero:.3f}"
)
print("multiplier implied by each positive weight:", np.round(implied.numpy(), 4))
implied_multipliers = implied

# %% [markdown]
# The multiplier is also a price: loosening the budget by $\delta$ lowers the best
# achievable loss by about $\lambda \delta$. Solving again with budgets 1 % smaller and 1 %
# larger shows it (a central difference, accurate to second order in $\delta$). The
# solution is also compared with scipy's SLSQP on the same problem, an independent
# solver.


# %%
def solve(budget: float) -> tuple[BudgetedRegression, float]:
    """Solves the problem for a budget; returns it with its final loss."""
    torch.manual_seed(0)
    solved = BudgetedRegression(budget).to(torch.float64)
    solver = default_optimizer(solved)
    for step in range(1, 3001):
        solver.step(solved)
        if step % 25 == 0 and kkt(solved).converged(1e-6):
            break
    return solved, float(solved().objective.detach())


delta = 0.01 * BUDGET
_, loss_tighter = solve(BUDGET - delta)
_, loss_looser = solve(BUDGET + delta)
loss_drop_per_unit = (loss_tighter - loss_looser) / (2 * delta)
print(f"loss drop per unit of budget: {loss_drop_per_unit:.4f} (multiplier {multiplier:.4f})")

reference = minimize(
    lambda v: np.mean(np.square(features @ v[:10] + v[10] - target)),
    np.zeros(11),
    method="SLSQP",
    bounds=[(0.0, None)] * 10 + [(None, None)],
    constraints=[{"type": "ineq", "fun": lambda v: BUDGET - np.square(v[:10]).sum()}],
    options={"ftol": 1e-14, "maxiter": 1000},
)
distance_to_slsqp = float(np.abs(reference.x[:10] - weights.numpy()).max())
print(f"largest difference from SLSQP's weights: {distance_to_slsqp:.1e}")

# %% [markdown]
# The finite difference agrees with the multiplier to about $10^{-4}$, and the weights
# agree with SLSQP's to about $10^{-6}$, the tolerance the loop stopped at.
#
# ## The path
#
# The left panel shows each weight over the steps (on a logarithmic scale of steps), from
# the random initialisation projected onto the box. Weights reach zero and are held there
# exactly while the loss pulls them below it; `age` touches zero and leaves it again once
# the budget lets it, so the projection does not trap a weight. Four weights end at zero.
# The right panel shows the squared norm settling on the budget.

# %%
path = torch.stack(weights_path).numpy()
figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
for j, name in enumerate(load_diabetes().feature_names):
    left.plot(np.arange(len(path)), path[:, j], label=name, linewidth=1)
left.axhline(0.0, color="black", linewidth=0.8)
left.set_title("weights")
left.legend(fontsize=7, ncol=2)
right.plot(np.arange(len(path)), np.square(path).sum(axis=1), label="squared norm")
right.axhline(BUDGET, color="black", linestyle=":", label="budget c")
right.set_title("squared norm of the weights")
right.legend()
for axes in (left, right):
    axes.set_xlabel("step")
    axes.set_xscale("symlog", linthresh=1.0)  # step 0 is the initial point
    axes.set_xlim(0, steps)
    axes.grid(alpha=0.3)
figure.tight_layout()

# %% [markdown]
# To take away:
#
# - **Bounds for simple boxes** (`add_bounds`): exact at every iterate, no multiplier, no
#   tuning. Use them for sign constraints, ranges of a mixing coefficient, clipping of a
#   temperature.
# - **Constraints for functions of the parameters** (`add_inequality`): a norm, a sum, a
#   budget on the model's outputs. They hold at the solution, not at every step, and their
#   multiplier says how much the constraint costs.
# - **`kkt(problem).converged(tol)`** is the stopping test that covers both: its
#   stationarity is measured with the projected gradient, so a weight held at a bound
#   does not count as a residual. The [KKT diagnostics](../how-to/kkt-diagnostics.md) and
#   [bounds](../how-to/bounds.md) guides go further.
