"""A PyTorch Lightning ``LightningModule`` trained by the package's optimizers (the optional
extra ``lagrange_opt[lightning]``): subclass :class:`ConstrainedModule`, give it a problem and
say which optimizer steps it; Lightning counts the steps, logs the figures and checkpoints
everything, and a resumed run continues bitwise as an uninterrupted one."""

from lagrange_opt.lightning.module import CHECKPOINT_KEY, SUPPORTED_PRECISIONS, ConstrainedModule

__all__ = ["CHECKPOINT_KEY", "SUPPORTED_PRECISIONS", "ConstrainedModule"]
