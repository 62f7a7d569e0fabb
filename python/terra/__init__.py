"""Terra: imperative-symbolic co-execution of PyTorch training programs.

Under ``terrarun`` importing terra joins the job (``terra.distributed.init()``
runs automatically) and starts tracing in the mode terrarun was given
(``--mode``, default auto). In a plain ``python`` process nothing happens
until the program asks for it: ``terra.enable()``.
"""

from terra._version import __version__
import torch  # noqa: F401  (loads the Torch libraries terra._C links to)
from terra import _C
from terra._C import TerraError, TerraTimeoutError
from terra import distributed
from terra._tracing import disable, dot, enable, enabled, iteration, report, stats

__all__ = ["__version__", "TerraError", "TerraTimeoutError", "distributed",
           "enable", "disable", "enabled", "iteration", "report", "stats", "dot"]

if distributed._launched_by_terrarun():
    distributed.init()
    from terra import _tracing

    _tracing._start_from_environment()
