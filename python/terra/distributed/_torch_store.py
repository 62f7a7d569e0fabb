"""A torch.distributed Store over Terra's control plane, so that PyTorch's own
process groups (gloo, nccl) rendezvous through the job terrarun started,
without a second TCPStore."""
import datetime

import torch.distributed as dist

from terra.distributed import _group


class TorchStore(dist.Store):
    """torch.distributed.Store backed by the job's control-plane store."""

    def __init__(self, timeout=datetime.timedelta(seconds=300)):
        super().__init__()
        group = _group._require()
        if _group._control_plane(group, "TorchStore") is None:
            raise _group._C.TerraError(
                "TorchStore needs a job started by terrarun (this process is a world of one)")
        self._client = group.client
        self._timeout_s = timeout.total_seconds()

    def set(self, key, value):
        self._client.set(key, value.encode() if isinstance(value, str) else bytes(value))

    def get(self, key):
        return self._client.get(key, self._timeout_s)

    def add(self, key, delta):
        return self._client.add(key, int(delta))

    def wait(self, keys, timeout=None):
        seconds = timeout.total_seconds() if timeout is not None else self._timeout_s
        self._client.wait(list(keys), seconds)

    def check(self, keys):
        return self._client.check(list(keys))


def init_torch_process_group(backend="gloo", timeout=datetime.timedelta(seconds=300)):
    """Initializes PyTorch's default process group for this terrarun job."""
    if dist.is_initialized():
        return
    group = _group._require()
    if _group._control_plane(group, "init_torch_process_group") is None:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                timeout=timeout)
        return
    dist.init_process_group(backend, store=TorchStore(timeout), rank=group.rank,
                            world_size=group.world_size, timeout=timeout)
