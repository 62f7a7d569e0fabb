"""Terra: imperative-symbolic co-execution of PyTorch training programs.

Under ``terrarun`` importing terra joins the job (``terra.distributed.init()``
runs automatically); in a plain ``python`` process nothing happens until the
program asks for it.
"""

from terra._version import __version__
import torch  # noqa: F401  (loads the Torch libraries terra._C links to)
from terra import _C
from terra._C import TerraError, TerraTimeoutError
from terra import distributed

__all__ = ["__version__", "TerraError", "TerraTimeoutError", "distributed"]

if distributed._launched_by_terrarun():
    distributed.init()
