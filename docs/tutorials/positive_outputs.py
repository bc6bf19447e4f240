# %% [markdown]
# # Non-negative outputs without a final activation
#
# A question that comes up on forums: *"My regression network must never predict a
# negative value. I don't want a ReLU or an `exp` on the last layer (a ReLU output has no
# gradient wherever it is clipped, and `exp` changes what the network can fit near zero).
# How do I make every output non-negative?"*
#
# Two answers are compared here on the same network and data:
#
# 1. **A penalty**: add `alpha * relu(-pred)**2` to the loss. It is one line, but it only
#    makes negative outputs expensive, not impossible.
# 2. **A constraint per output**: declare `pred >= 0` for every output of every training
#    example, each with its own Lagrange multiplier, and train the saddle point with
#    `ExtraGradient`. The multiplier of an output keeps growing while that output is
#    negative, so no violation can persist.
#
# The figure of merit is the fraction of training outputs below $-10^{-3}$, beside the
# training MSE.

# %%
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import nn

from lagrange_opt import ConstrainedProblem, ExtraGradient, IndexedValue, ProblemState

torch.manual_seed(0)

# %% [markdown]
# ## Data whose targets are often negative
#
# 256 examples with 8 features and 2 targets: a smooth function of the features shifted
# down, plus noise, so that more than half the targets are negative. An unconstrained fit
# follows them below zero.
#
# No fit with non-negative outputs can do better than predicting `max(target, 0)`, since
# each output's squared error is smallest at its target clipped to $[0, \infty)$. That MSE
# is a lower bound for every feasible fit; a fit below it is infeasible.

# %%
NUM_SAMPLES, NUM_FEATURES = 256, 8
generator = torch.Generator().manual_seed(0)
inputs = torch.randn(NUM_SAMPLES, NUM_FEATURES, generator=generator)
mixing = torch.randn(NUM_FEATURES, 2, generator=generator) / NUM_FEATURES**0.5
targets = torch.tanh(1.5 * inputs @ mixing) - 0.1
targets = targets + 0.1 * torch.randn(NUM_SAMPLES, 2, generator=generator)

lower_bound = float((targets.clamp(min=0) - targets).square().mean())
print(f"negative targets: {float((targets < 0).float().mean()):.1%}")
print(f"lower bound of any feasible fit's MSE: {lower_bound:.4f}")

# %% [markdown]
# ## The network and the measurements
#
# Two hidden layers of 128 ReLU units and a **linear** last layer: it can output any real
# number. Every run below starts from the same initial weights, so the differences come
# from the training alone. The network has about 17,900 parameters for 512 constrained
# outputs; this matters for the constrained fit (see below).
#
# Every method trains for the same 3,000 full-batch steps, and every 25 steps the whole
# training set is measured.

# %%
STEPS, EVERY = 3000, 25
TOLERANCE = 1e-3  # an output below -TOLERANCE counts as violated


def make_network() -> nn.Sequential:
    """The network, from the same initial weights at every call."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(NUM_FEATURES, 128),
        nn.ReLU(),
        nn.Linear(128, 128),
        nn.ReLU(),
        nn.Linear(128, 2),  # no activation: outputs can be negative
    )


def measure(network: nn.Module) -> tuple[float, float]:
    """The training MSE and the fraction of training outputs below -TOLERANCE."""
    with torch.no_grad():
        predictions = network(inputs)
    mse = float(nn.functional.mse_loss(predictions, targets))
    return mse, float((predictions < -TOLERANCE).float().mean())


# %% [markdown]
# ## Answer 1: a penalty
#
# Plain gradient descent on `mse + alpha * mean(relu(-pred)**2)`. For an output whose
# target $y$ is negative, and ignoring the coupling through the shared weights, the
# penalised loss $(p - y)^2 + \alpha p^2$ is smallest at $p = y / (1 + \alpha)$: still
# negative, for every finite $\alpha$. A larger $\alpha$ shrinks the violations; it does
# not remove them, and it makes the problem stiffer. With `alpha=10` the learning rate of
# the constrained run below, 0.05, is stable; with `alpha=100` that rate (and 0.01) makes
# the outputs near zero jump back and forth across it, so that run takes a tenth of it.

# %%
LR = 0.05


def train_penalty(alpha: float, lr: float) -> dict[str, list[float]]:
    """Gradient descent on the penalised loss; the history of MSE and violated fraction."""
    network = make_network()
    optimizer = torch.optim.SGD(network.parameters(), lr=lr)
    history: dict[str, list[float]] = {"step": [], "mse": [], "violated": []}
    for step in range(STEPS + 1):
        if step % EVERY == 0:
            mse, violated = measure(network)
            history["step"].append(step)
            history["mse"].append(mse)
            history["violated"].append(violated)
        if step == STEPS:
            break
        predictions = network(inputs)
        loss = nn.functional.mse_loss(predictions, targets)
        loss = loss + alpha * torch.relu(-predictions).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return history


penalty_histories = {10.0: train_penalty(10.0, LR), 100.0: train_penalty(100.0, LR / 10)}
penalty_fraction_violated = {
    alpha: history["violated"][-1] for alpha, history in penalty_histories.items()
}
penalty_mse = {alpha: history["mse"][-1] for alpha, history in penalty_histories.items()}
for alpha in penalty_histories:
    print(
        f"penalty alpha={alpha:g}: MSE {penalty_mse[alpha]:.4f}, "
        f"outputs < -1e-3: {penalty_fraction_violated[alpha]:.1%}"
    )

# %% [markdown]
# ## Answer 2: one constraint per output
#
# The problem declares one inequality per training example, `num_samples=NUM_SAMPLES`,
# each a vector of the example's 2 outputs, `shape=(2,)`: 512 constraints in all, with a
# table of 256 x 2 multipliers. `forward` takes the indices of the examples it evaluates
# and returns the predictions as `IndexedValue(predictions, indices)`, so that each row
# meets its own multipliers. The sense `">="` says the value must be non-negative. The
# inequality keeps the default treatment, `"projection"`: a multiplier is clamped at zero
# after each dual step, so an output that is comfortably positive exerts no force.
#
# The code would be the same on minibatches (pass a batch's indices instead of all of
# them); full batches are used here so that every multiplier moves at every step.


# %%
class NonNegativeRegression(ConstrainedProblem):
    """MSE of the network, subject to every output of every training example >= 0."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.add_inequality("nonnegative", ">=", num_samples=NUM_SAMPLES, shape=(2,))

    def forward(self, indices: torch.Tensor) -> ProblemState:
        predictions = self.network(inputs[indices])
        loss = nn.functional.mse_loss(predictions, targets[indices])
        return ProblemState(loss, {"nonnegative": IndexedValue(predictions, indices)})


# %% [markdown]
# The method is extra-gradient with fixed steps: plain SGD on the network at the penalty's
# learning rate, and SGD *ascent* (`maximize=True`) on the multipliers. Extra-gradient
# evaluates each step twice, once at a look-ahead point, which damps the rotation that
# makes simultaneous descent-ascent spiral around a saddle point.
#
# Why these rates: a multiplier is on the scale of one example's loss gradient, and each
# multiplier ascends along its own example's violation, so a dual rate of a few units
# lets a violation of $10^{-3}$ raise its multiplier noticeably within a few steps. At a
# dual rate of 10 the multipliers overshoot and the violations oscillate; 5 converges.
# `default_optimizer(problem)`, which chooses its own step, is slower on this kind of
# problem: its backtracking step, held small by the network's curvature, also scales the
# multipliers' step, and after the same 3,000 steps about a fifth of the outputs are still
# below $-10^{-3}$ (see [choosing a method](../how-to/choose-a-method.md)).

# %%
DUAL_LR = 5.0

problem = NonNegativeRegression(make_network())
optimizer = ExtraGradient(
    problem,
    torch.optim.SGD(problem.primal_parameters(), lr=LR),
    torch.optim.SGD(problem.dual_parameters(), lr=DUAL_LR, maximize=True),
)
everything = torch.arange(NUM_SAMPLES)
constrained_history: dict[str, list[float]] = {"step": [], "mse": [], "violated": []}
for step in range(STEPS + 1):
    if step % EVERY == 0:
        mse, violated = measure(problem.network)
        constrained_history["step"].append(step)
        constrained_history["mse"].append(mse)
        constrained_history["violated"].append(violated)
    if step == STEPS:
        break
    optimizer.step(lambda: problem(everything))

constrained_mse = constrained_history["mse"][-1]
constrained_fraction_violated = constrained_history["violated"][-1]
with torch.no_grad():
    final_predictions = problem.network(inputs)
multipliers = problem.constraints["nonnegative"].multiplier.detach()
smallest_output = float(final_predictions.min())
active_fraction = float((multipliers > 0).float().mean())
print(
    f"constraints: MSE {constrained_mse:.4f}, outputs < -1e-3: "
    f"{constrained_fraction_violated:.1%}, smallest output {smallest_output:.1e}"
)
print(f"outputs with a positive multiplier (active constraints): {active_fraction:.1%}")

# %% [markdown]
# The multipliers say which constraints matter: an output whose multiplier is positive is
# one the network would push below zero if it could, and the size of the multiplier is how
# hard. Roughly the outputs whose targets are negative end up with one.
#
# ## The comparison

# %%
figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
runs = {f"penalty, alpha={alpha:g}": history for alpha, history in penalty_histories.items()}
runs["constraint per output"] = constrained_history
for label, history in runs.items():
    left.plot(history["step"], [100 * v for v in history["violated"]], label=label)
    right.plot(history["step"], history["mse"], label=label)
right.axhline(lower_bound, color="black", linestyle=":", label="lower bound (feasible fits)")
left.set_title("training outputs below -1e-3 (%)")
right.set_title("training MSE")
right.set_ylim(min(penalty_mse.values()) - 0.02, lower_bound + 0.1)
for axes in (left, right):
    axes.set_xlabel("step")
    axes.grid(alpha=0.3)
left.legend()
right.legend()
figure.tight_layout()

# %% [markdown]
# The printed figures (MSE, then the fraction of outputs below $-10^{-3}$) read as
# follows.
#
# - **The penalty with `alpha=10`** fits best and is the most infeasible: its MSE is below
#   the lower bound, which only a fit with negative outputs can reach, and about half the
#   outputs stay below $-10^{-3}$.
# - **The penalty with `alpha=100`** is above the bound after 3,000 steps (its smaller step
#   trains more slowly), and its violated fraction *grows* as the fit improves: the outputs
#   approach $y / (1 + \alpha)$, which for most negative targets is below $-10^{-3}$. Small,
#   not zero.
# - **The constraint per output** ends with no output below $-10^{-3}$ and an MSE just above
#   the lower bound (no feasible fit can be below it). After the first few hundred steps
#   the violated fraction falls steadily, as the multipliers of the negative outputs grow
#   to the price of their constraints.
#
# Two conditions made exact feasibility reachable here, and are worth checking on your own
# problem. The network has many more parameters than there are constraints, so it can hold
# every output at zero where needed and still fit the rest; and every multiplier was
# updated at every step. On minibatches a multiplier moves only when its example is in the
# batch, and a model that cannot satisfy every example at once leaves violations at the
# level of the batch noise ([per-sample constraints](../how-to/per-sample-constraints.md)).
