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

from terra.distributed._data import shard, shard_indices
from terra.distributed._group import process_group
from terra.distributed._collectives import (
    ReduceOp,
    Work,
    all_gather,
    all_gather_into_tensor,
    all_reduce,
    broadcast,
    get_backend,
    reduce_scatter,
    reduce_scatter_tensor,
)
from terra.distributed._ddp import DistributedDataParallel


def __getattr__(name):
    # Imported on first use: torch.distributed is slow to import.
    if name in ("TorchStore", "init_torch_process_group"):
        from terra.distributed import _torch_store
        return getattr(_torch_store, name)
    raise AttributeError(name)


__all__ = ["init", "is_initialized", "shutdown", "rank", "world_size", "local_rank", "barrier",
           "shard", "shard_indices", "TorchStore", "init_torch_process_group", "ReduceOp", "Work",
           "all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter",
           "reduce_scatter_tensor", "get_backend", "DistributedDataParallel"]
