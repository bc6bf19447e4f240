"""The saddle-point methods over all of that: the base class and its checks, the formulation's
state and margins, the adaptive step's test, extra-gradient, descent-ascent, optimism and the
default."""
