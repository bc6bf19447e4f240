"""One evaluation of the problem: calling and checking the closure, finiteness, slacks, micro-
batches, distributed agreement, randomness and buffers, scaling."""
