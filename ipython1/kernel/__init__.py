"""The kernel: controller, engines, adapters and clients."""

from ipython1.kernel.errors import TaskRejectError  # IPython 0.10: `from IPython.kernel import`

__all__ = ["TaskRejectError"]
