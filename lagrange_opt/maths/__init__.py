"""Pure functions of tensors and numbers: the Lagrangian's and the augmented Lagrangian's
pieces, the formulation's rules, the step-size rules and the checks of settings."""
