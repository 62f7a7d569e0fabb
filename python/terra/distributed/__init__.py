"""Process-group basics over Terra's control plane.

Reads the variables terrarun (and torchrun users) know: RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT, plus TERRA_JOB_SECRET. Outside
terrarun the world is this one process: rank 0 of 1.
"""

from terra.distributed._group import (
    barrier,
    init,
    is_initialized,
    local_rank,
    rank,
    shutdown,
    world_size,
    _launched_by_terrarun,
)

__all__ = ["init", "is_initialized", "shutdown", "rank", "world_size", "local_rank", "barrier"]
