"""Collectives on tensors, with torch.distributed's signatures.

CPU tensors go through MPI, CUDA tensors through NCCL (terra._C.ProcessGroup
picks per call); in a world of one process they are local. Every rank must
issue the same collectives in the same order, as with torch.distributed.

``async_op=True`` returns a :class:`Work`; otherwise the call returns once the
result is in place. ``timeout`` (seconds; default 10 minutes) bounds each
collective: past it the collective fails with terra.TerraTimeoutError and the
communicator is broken (the job should exit; terrarun stops the other ranks).

Under co-execution (``--mode coexec``) the communicators read and write tensor
memory directly, not through ATen: each call first makes the co-executed
values real (``_tracing.fetch_for_collective``: the executor is drained), so
a collective never reads a future's unfilled memory or races the executor's
pending writes into its tensors. An asynchronous all-reduce of a CPU tensor
in ordinary memory (DDP's buckets) is queued on the executor instead, and
so is its wait: the executor launches it when it reaches it, in program
order, and the program's thread goes on. What the program does with the
results afterwards is ATen ops again, co-executed as usual.
"""
import enum

import torch

from terra import _C, _tracing
from terra.distributed import _group


class ReduceOp(enum.IntEnum):
    """Reductions; values match terra::comm::ReduceOp. AVG divides the sum by
    the world size (integer tensors: floor division)."""
    SUM = 0
    AVG = 1
    MAX = 2
    MIN = 3


def _op(op):
    if isinstance(op, ReduceOp):
        return int(op)
    if isinstance(op, str):
        try:
            return int(ReduceOp[op.upper()])
        except KeyError:
            pass
    name = getattr(op, "name", None) or str(op).rsplit(".", 1)[-1]  # torch.distributed.ReduceOp
    if name.upper() in ReduceOp.__members__:
        return int(ReduceOp[name.upper()])
    raise ValueError(f"unsupported reduce op {op!r}: use terra.distributed.ReduceOp "
                     "(SUM, AVG, MAX, MIN)")


class Work:
    """The handle of an asynchronous collective (``async_op=True``).

    ``wait(timeout=None)`` blocks until the collective completes and its result
    is in place, raising its error if it failed; with a timeout in seconds it
    raises terra.TerraTimeoutError when that passes first (the collective goes
    on). ``is_completed()`` does not block."""

    def __init__(self, work, then=None):
        self._work = work
        self._then = then

    def wait(self, timeout=None):
        self._work.wait(timeout)
        if self._then is not None:
            then, self._then = self._then, None
            then()
        return True

    def is_completed(self):
        return self._work.is_completed()

    def __repr__(self):
        state = "completed" if self.is_completed() else "pending"
        return f"<terra.distributed.Work {self._work.description} ({state})>"


def _finish(work, async_op, then=None):
    handle = Work(work, then)
    if async_op:
        return handle
    handle.wait()
    return None


def _stream(tensor):
    """The CUDA stream a collective on ``tensor`` is ordered after: Torch's
    current stream on its device (0 for CPU tensors)."""
    return torch.cuda.current_stream(tensor.device).cuda_stream if tensor.is_cuda else 0


def _check_group(group):
    if group is not None:
        raise ValueError("terra.distributed supports only the default group (group=None)")


def _check_per_rank_list(op, name, tensors, like, like_name, world):
    if len(tensors) != world:
        raise ValueError(f"{op}: {name} has {len(tensors)} tensors; it needs one per rank "
                         f"({world})")
    for i, t in enumerate(tensors):
        if t.shape != like.shape or t.dtype != like.dtype:
            raise ValueError(f"{op}: {name}[{i}] is {tuple(t.shape)} {t.dtype}; every entry "
                             f"must match the {like_name}, {tuple(like.shape)} {like.dtype}")


class _QueuedWork(Work):
    """The handle of an all-reduce queued on the co-executor
    (``_tracing.queue_all_reduce``). ``wait()`` queues its wait likewise, so
    the program's thread goes on; with a timeout, or once co-execution has
    stopped, it waits here. ``is_completed()`` is False until the executor
    has launched it and the reduction is done."""

    def __init__(self, handle, tensor):
        super().__init__(handle)
        self._tensor = tensor
        self.wait_queued = False  # the last wait() went to the executor

    def wait(self, timeout=None):
        self.wait_queued = timeout is None and _tracing.queue_collective_wait(self._work, self._tensor)
        if self.wait_queued:
            return True
        _tracing.fetch_for_collective()  # the executor has launched it
        self._work.wait_now(timeout)
        return True


def all_reduce(tensor, op=ReduceOp.SUM, group=None, async_op=False, timeout=None):
    """Reduces ``tensor`` across ranks, in place, on every rank."""
    _check_group(group)
    if tensor.is_complex() and _op(op) in (ReduceOp.SUM, ReduceOp.AVG):
        tensor = torch.view_as_real(tensor)  # sums and averages part by part
    if async_op:
        queued = _tracing.queue_all_reduce(_group.process_group(), tensor, _op(op), timeout)
        if queued is not None:
            return _QueuedWork(queued, tensor)
    _tracing.fetch_for_collective()
    return _finish(_group.process_group().all_reduce(tensor, _op(op), timeout, _stream(tensor)), async_op)


def broadcast(tensor, src=0, group=None, async_op=False, timeout=None):
    """Copies rank ``src``'s ``tensor`` into every rank's ``tensor``."""
    _check_group(group)
    _tracing.fetch_for_collective()
    return _finish(_group.process_group().broadcast(tensor, src, timeout, _stream(tensor)), async_op)


def all_gather_into_tensor(output_tensor, input_tensor, group=None, async_op=False,
                           timeout=None):
    """``output_tensor`` (world_size times ``input_tensor``'s elements) gets every
    rank's ``input_tensor``, in rank order."""
    _check_group(group)
    _tracing.fetch_for_collective()
    work = _group.process_group().all_gather(output_tensor, input_tensor, timeout,
                                             _stream(input_tensor))
    return _finish(work, async_op)


def all_gather(tensor_list, tensor, group=None, async_op=False, timeout=None):
    """``tensor_list[r]`` gets rank r's ``tensor``."""
    _check_group(group)
    world = _group.world_size()
    _check_per_rank_list("all_gather", "tensor_list", tensor_list, tensor, "input", world)
    flat = torch.empty((world,) + tuple(tensor.shape), dtype=tensor.dtype, device=tensor.device)
    tensor = tensor.contiguous()
    _tracing.fetch_for_collective()
    work = _group.process_group().all_gather(flat, tensor, timeout, _stream(tensor))

    def scatter_back():
        for out, block in zip(tensor_list, flat):
            out.copy_(block)
    return _finish(work, async_op, scatter_back)


def reduce_scatter_tensor(output, input, op=ReduceOp.SUM, group=None, async_op=False,
                          timeout=None):
    """``output`` gets block ``rank`` of the reduction of every rank's ``input``
    (world_size times ``output``'s elements)."""
    _check_group(group)
    _tracing.fetch_for_collective()
    work = _group.process_group().reduce_scatter(output, input, _op(op), timeout,
                                                 _stream(input))
    return _finish(work, async_op)


def reduce_scatter(output, input_list, op=ReduceOp.SUM, group=None, async_op=False,
                   timeout=None):
    """``output`` gets the reduction over ranks of ``input_list[rank]``."""
    _check_group(group)
    world = _group.world_size()
    _check_per_rank_list("reduce_scatter", "input_list", input_list, output, "output", world)
    flat = torch.stack(list(input_list))
    _tracing.fetch_for_collective()
    work = _group.process_group().reduce_scatter(output, flat, _op(op), timeout, _stream(flat))
    return _finish(work, async_op)


def get_backend(tensor):
    """The backend collectives on ``tensor`` use: "mpi", "nccl" or "local"."""
    return _group.process_group().backend_for(tensor)
