"""Sharding data by rank."""
from terra.distributed import _group


def shard_indices(num_items, rank=None, world_size=None, drop_last=False):
    """The indices of a dataset of num_items that this rank owns: every
    world_size-th item starting at rank (as DistributedSampler without
    shuffling). With drop_last, every rank gets the same count; otherwise the
    first num_items % world_size ranks get one more."""
    rank = _group.rank() if rank is None else rank
    world_size = _group.world_size() if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    end = num_items - (num_items % world_size) if drop_last else num_items
    return range(rank, end, world_size)


def shard(sequence, rank=None, world_size=None, drop_last=False):
    """This rank's items of an indexable sequence (a list, a tensor, a Dataset)."""
    indices = shard_indices(len(sequence), rank, world_size, drop_last)
    try:
        import torch
        if isinstance(sequence, torch.Tensor):
            return sequence[indices.start:indices.stop:indices.step]
    except ImportError:
        pass
    return [sequence[i] for i in indices]
