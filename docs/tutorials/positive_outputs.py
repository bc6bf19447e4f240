# %% [markdown]
# # Non-negative outputs without a final activation
#
# A question that comes up on forums: *"My regression network must never predict a
# negative value. How do I make every output non-negative?"*
#
# Three answers are compared here on the same network, data and minibatches, each with
# Adam at its usual rate, as a network is trained:
#
# 1. **A penalty**: add `alpha * relu(-pred)**2` to the loss. One line, but it only makes
#    negative outputs expensive, not impossible.
# 2. **A final activation**: put `softplus` after the last layer. Every output is positive
#    by construction, on every input.
# 3. **A constraint per output**: declare `pred >= 0` for every output of every training
#    example, each with its own Lagrange multiplier, and train with
#    `default_optimizer(problem, primal_optimizer=adam)`.
#
# The figures of merit: the fraction of training outputs below $-10^{-3}$, the training MSE,
# and the fraction of **held-out** outputs below 0. The honest answer comes at the end.

# %%
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import nn

from lagrange_opt import ConstrainedProblem, IndexedValue, ProblemState, default_optimizer

# %% [markdown]
# ## Data whose targets are often negative
#
# 256 training examples with 8 features and 2 targets (a smooth function of the features
# shifted down, plus noise: more than half the targets are negative), and 256 held-out
# examples of the same distribution. An unconstrained fit follows the targets below zero.
#
# No fit with non-negative outputs can do better than predicting `max(target, 0)`, since
# each output's squared error is smallest at its target clipped to $[0, \infty)$. That MSE
# is a lower bound for every feasible fit; a fit below it is infeasible.

# %%
NUM_SAMPLES, NUM_FEATURES = 256, 8
generator = torch.Generator().manual_seed(0)
all_inputs = torch.randn(2 * NUM_SAMPLES, NUM_FEATURES, generator=generator)
mixing = torch.randn(NUM_FEATURES, 2, generator=generator) / NUM_FEATURES**0.5
all_targets = torch.tanh(1.5 * all_inputs @ mixing) - 0.1
all_targets = all_targets + 0.1 * torch.randn(2 * NUM_SAMPLES, 2, generator=generator)
inputs, targets = all_inputs[:NUM_SAMPLES], all_targets[:NUM_SAMPLES]
held_out_inputs = all_inputs[NUM_SAMPLES:]

lower_bound = float((targets.clamp(min=0) - targets).square().mean())
print(f"negative targets: {float((targets < 0).float().mean()):.1%}")
print(f"lower bound of any feasible fit's MSE: {lower_bound:.4f}")

# %% [markdown]
# ## The network, the batches and the measurements
#
# Two hidden layers of 128 ReLU units and a **linear** last layer: it can output any real
# number. Every run starts from the same initial weights and sees the same 200 epochs of
# batches of 32 (1,600 steps), with Adam at lr $10^{-3}$; every 5 epochs the whole training
# set is measured.

# %%
EPOCHS, BATCH, EVERY = 200, 32, 5
TOLERANCE = 1e-3  # a training output below -TOLERANCE counts as violated


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


def epochs() -> list[list[torch.Tensor]]:
    """The batches of every epoch, the same for every run."""
    order = torch.Generator().manual_seed(1)
    return [list(torch.randperm(NUM_SAMPLES, generator=order).split(BATCH)) for _ in range(EPOCHS)]


def measure(model: nn.Module) -> dict[str, float]:
    """Training MSE, training outputs below -TOLERANCE, held-out outputs below 0."""
    with torch.no_grad():
        predictions, held_out = model(inputs), model(held_out_inputs)
    return {
        "mse": float(nn.functional.mse_loss(predictions, targets)),
        "violated": float((predictions < -TOLERANCE).float().mean()),
        "held_out_negative": float((held_out < 0).float().mean()),
    }


def train(model: nn.Module, step: Callable[[torch.Tensor], None]) -> dict[str, list[float]]:
    """Runs ``step(indices)`` on every batch; the history of the measurements."""
    history: dict[str, list[float]] = {"epoch": [], "mse": [], "violated": []}
    for epoch, batches in enumerate(epochs()):
        for indices in batches:
            step(indices)
        if (epoch + 1) % EVERY == 0:
            figures = measure(model)
            history["epoch"].append(epoch + 1)
            history["mse"].append(figures["mse"])
            history["violated"].append(figures["violated"])
    return history


# %% [markdown]
# ## Answer 1: a penalty
#
# For an output whose target $y$ is negative, and ignoring the coupling through the shared
# weights, the penalised loss $(p - y)^2 + \alpha p^2$ is smallest at $p = y / (1 + \alpha)$:
# still negative, for every finite $\alpha$.

# %%
ALPHA = 10.0
penalised = make_network()
penalty_adam = torch.optim.Adam(penalised.parameters(), lr=1e-3)


def penalty_step(indices: torch.Tensor) -> None:
    predictions = penalised(inputs[indices])
    loss = nn.functional.mse_loss(predictions, targets[indices])
    loss = loss + ALPHA * torch.relu(-predictions).square().mean()
    penalty_adam.zero_grad()
    loss.backward()
    penalty_adam.step()


penalty_history = train(penalised, penalty_step)
penalty = measure(penalised)

# %% [markdown]
# ## Answer 2: a final activation
#
# The same network followed by `softplus`, trained on the plain MSE.

# %%
softplus_model = nn.Sequential(make_network(), nn.Softplus())
softplus_adam = torch.optim.Adam(softplus_model.parameters(), lr=1e-3)


def softplus_step(indices: torch.Tensor) -> None:
    loss = nn.functional.mse_loss(softplus_model(inputs[indices]), targets[indices])
    softplus_adam.zero_grad()
    loss.backward()
    softplus_adam.step()


softplus_history = train(softplus_model, softplus_step)
softplus = measure(softplus_model)

# %% [markdown]
# ## Answer 3: one constraint per output
#
# The problem declares one inequality per training example, `num_samples=NUM_SAMPLES`,
# each a vector of the example's 2 outputs, `shape=(2,)`: 512 constraints in all, with a
# table of 256 x 2 multipliers. `forward` takes the indices of the batch's examples and
# returns the predictions as `IndexedValue(predictions, indices)`, so that each row meets
# its own multipliers; a step reads and updates the batch's rows only.


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
# The optimizer is the default with our own Adam: nothing to choose on the dual side. On
# minibatches a sample's row moves only when the sample is in the batch, and between visits
# the other batches' steps push its output up and down; the default holds the rows at a
# self-tuned margin above 0, wide enough for that noise, so that the **last** iterate is
# feasible, not only the average one ([constraints on minibatches](../stochastic.md)).

# %%
problem = NonNegativeRegression(make_network())
adam = torch.optim.Adam(problem.primal_parameters(), lr=1e-3)
optimizer = default_optimizer(problem, primal_optimizer=adam)


def constrained_step(indices: torch.Tensor) -> None:
    optimizer.step(lambda: problem(indices))


constrained_history = train(problem.network, constrained_step)
constrained = measure(problem.network)
multipliers = problem.constraints["nonnegative"].multiplier.detach()
active_fraction = float((multipliers > 0).float().mean())
with torch.no_grad():
    smallest_output = float(problem.network(inputs).min())

for name, figures in (("penalty", penalty), ("softplus", softplus), ("constraints", constrained)):
    print(
        f"{name:<12} training MSE {figures['mse']:.4f}, training outputs < -1e-3 "
        f"{figures['violated']:.1%}, held-out outputs < 0 {figures['held_out_negative']:.1%}"
    )
print(f"smallest training output with constraints: {smallest_output:.1e}")
print(f"outputs with a positive multiplier (active constraints): {active_fraction:.1%}")

# %% [markdown]
# The multipliers say which constraints matter: an output whose multiplier is positive is
# one the network would push below the margin if it could, and the size of the multiplier
# is how hard. The outputs whose targets are negative end up with one, and so do some whose
# targets are just above 0, within the margin.
#
# ## The comparison

# %%
figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
runs = {
    f"penalty, alpha={ALPHA:g}": penalty_history,
    "softplus output": softplus_history,
    "constraint per output": constrained_history,
}
for label, history in runs.items():
    left.plot(history["epoch"], [100 * v for v in history["violated"]], label=label)
    right.plot(history["epoch"], history["mse"], label=label)
right.axhline(lower_bound, color="black", linestyle=":", label="lower bound (feasible fits)")
left.set_title("training outputs below -1e-3 (%)")
right.set_title("training MSE")
right.set_ylim(penalty["mse"] - 0.02, lower_bound + 0.15)
for axes in (left, right):
    axes.set_xlabel("epoch")
    axes.grid(alpha=0.3)
left.legend()
right.legend()
figure.tight_layout()

# %% [markdown]
# The printed figures read as follows.
#
# - **The penalty** fits best and is the most infeasible: its MSE is below the lower
#   bound, which only a fit with negative outputs can reach, and about half the training
#   outputs, and as many held-out ones, stay below zero.
# - **The constraints** end with no training output below $-10^{-3}$ (the last iterate, on
#   minibatches). The price is the margin: the active outputs are held a little above 0,
#   where the noise of the batches cannot push them below, and the MSE is some 8 % above
#   the bound. On held-out inputs nothing is promised: per-sample constraints bind the
#   training samples only, and a few percent of the held-out outputs are negative.
# - **The softplus output** is feasible on every input, seen or not, and fits at the bound.
#
# So, honestly: **where a final activation is acceptable, use it.** It is exact on unseen
# inputs and, here, it fits better. Constraints are the tool where no activation can
# express the requirement: a rate over a batch (a recall, a false-positive rate: the
# [recall tutorial](recall-constraint.md)), a budget or an ordering across outputs,
# every training sample's loss below a bound, a derivative of the model. What they cost on
# the package's network suite, row by row, is in the
# [benchmarks](../benchmarks.md#the-network-suite).
