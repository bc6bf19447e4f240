"""One side's update: row stepping, the functional optimizers, optimizer groups, nuPI, loss
scaling and rollback."""
