"""terra.distributed.DistributedDataParallel: data-parallel training that
mirrors torch.nn.parallel.DistributedDataParallel.

What it does, step by step:
  1. At wrap time, rank 0's parameters and buffers are broadcast to every rank.
  2. The parameters that require gradients are cut into buckets (the bucket
     plan, _bucket_plan below): in reverse registration order, because
     backward produces gradients roughly in that order; one dtype and device
     per bucket; the first bucket up to 1 MiB (or ``bucket_cap_mb`` if less),
     the others up to ``bucket_cap_mb``. Every rank computes the plan and checks, through the
     control plane, that all ranks computed the same one (a different model on
     one rank is an error naming the difference, not a hang).
  3. During backward, a hook on each parameter (post-accumulate-grad) marks
     it ready. When a bucket's last gradient is ready, its gradients are
     copied into one flat tensor and its all-reduce (average) is launched
     asynchronously, while backward goes on. Buckets are launched strictly in
     plan order, so every rank issues the same collectives in the same order.
  4. When backward ends (an autograd engine callback), DDP waits for the
     buckets and copies the averaged gradients back into ``param.grad``.

As in PyTorch: parameters without ``requires_grad`` are not synchronized;
a parameter that gets no gradient in an iteration is an error at the next
forward unless ``find_unused_parameters=True`` (then it contributes zeros,
and a parameter no rank used keeps its ``grad`` untouched); ``no_sync()``
skips the all-reduce so gradients accumulate locally until the next
synchronized backward; buffers are broadcast from rank 0 before each forward
when ``broadcast_buffers``.

CUDA modules work the same way over NCCL; the wait at the end of backward
then also waits on the host.
"""
import contextlib
import hashlib
import itertools
import time

import torch

from terra import _C, _tracing
from terra.distributed import _collectives
from terra.distributed import _group

_FIRST_BUCKET_BYTES = 1024 * 1024  # as torch.distributed._DEFAULT_FIRST_BUCKET_BYTES
_BROADCAST_BUCKET_BYTES = 250 * 1024 * 1024
_instances = itertools.count()


class _Bucket:
    __slots__ = ("index", "params", "offsets", "flat", "pending", "work")

    def __init__(self, index, params):
        self.index = index
        self.params = params  # indices into DDP._params
        self.offsets = []
        self.flat = None
        self.pending = 0
        self.work = None


def _bucket_plan(params, cap_bytes, first_cap_bytes=_FIRST_BUCKET_BYTES):
    """Buckets of parameter indices: reverse order, one (dtype, device) per
    bucket, a bucket closes once it reaches its cap."""
    buckets = []
    open_buckets = {}
    for i in reversed(range(len(params))):
        p = params[i]
        key = (p.dtype, p.device)
        current = open_buckets.get(key)
        if current is None:
            current = open_buckets[key] = [[], 0]
        current[0].append(i)
        current[1] += p.numel() * p.element_size()
        cap = min(first_cap_bytes, cap_bytes) if not buckets else cap_bytes
        if current[1] >= cap:
            buckets.append(current[0])
            del open_buckets[key]
    buckets.extend(b for b, _ in open_buckets.values())
    return buckets


def _plan_text(params, names, buckets):
    lines = []
    for b, indices in enumerate(buckets):
        p0 = params[indices[0]]
        lines.append(f"bucket {b} ({p0.dtype}, {p0.device.type}): " + ", ".join(
            f"{names[i]}{list(params[i].shape)}" for i in indices))
    return "\n".join(lines)


class DistributedDataParallel(torch.nn.Module):
    """Wraps ``module`` for data-parallel training (see the module docstring).

    Arguments as torch.nn.parallel.DistributedDataParallel's where they mean
    the same: ``device_ids`` (None, or the one device of a CUDA module),
    ``broadcast_buffers``, ``bucket_cap_mb``, ``find_unused_parameters``;
    ``timeout``: seconds each collective may take (default 10 minutes)."""

    def __init__(self, module, device_ids=None, output_device=None, broadcast_buffers=True,
                 bucket_cap_mb=25, find_unused_parameters=False, timeout=None):
        super().__init__()
        if device_ids is not None and len(device_ids) > 1:
            raise ValueError("DistributedDataParallel takes one device per process: "
                             f"device_ids={device_ids}")
        if bucket_cap_mb is None or bucket_cap_mb <= 0:
            raise ValueError(f"bucket_cap_mb must be positive, not {bucket_cap_mb!r}")
        self.module = module
        self.broadcast_buffers = broadcast_buffers
        self.find_unused_parameters = find_unused_parameters
        self.bucket_bytes_cap = int(bucket_cap_mb * 1024 * 1024)
        self._timeout = timeout
        self._require_sync = True
        self._world = _group.world_size()
        self._instance = next(_instances)

        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        plan = _bucket_plan(self._params, self.bucket_bytes_cap)
        self._check_plan_across_ranks(_plan_text(self._params, self._names, plan))
        self._buckets = [_Bucket(i, indices) for i, indices in enumerate(plan)]
        self._bucket_of = {}
        for bucket in self._buckets:
            offset = 0
            for i in bucket.params:
                self._bucket_of[i] = bucket
                bucket.offsets.append(offset)
                offset += self._params[i].numel()
            first = self._params[bucket.params[0]]
            bucket.flat = torch.zeros(offset, dtype=first.dtype, device=first.device)

        self._sync_module_states()
        self._reset_iteration()
        self._error = None
        self.stats = {"iterations": 0, "comm_wait_s": 0.0, "buckets_launched_in_backward": 0,
                      "waits_queued": 0}
        # Deferrable: a replayed backward runs them itself, in the order the
        # engine did (docs/coexecution.md, "Data-parallel training").
        self._hooks = [p.register_post_accumulate_grad_hook(
                           _tracing.deferrable_post_accumulate_grad_hook(self._make_hook(i),
                                                                         self._hook_state))
                       for i, p in enumerate(self._params)]

    # --- plan -------------------------------------------------------------

    @property
    def bucket_plan(self):
        """The buckets, as lists of parameter names, in launch order."""
        return [[self._names[i] for i in b.params] for b in self._buckets]

    def _check_plan_across_ranks(self, text):
        group = _group._require()
        if _group._control_plane(group, "DistributedDataParallel") is None:
            return
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        key = f"terra/ddp/{self._instance}/plan/"
        group.client.set(key + str(group.rank), f"{digest}\n{text}".encode())
        for r in range(group.world_size):
            theirs = group.client.get(key + str(r), 300.0).decode()
            their_digest, their_text = theirs.split("\n", 1)
            if their_digest != digest:
                ours, other = text.splitlines(), their_text.splitlines()
                diff = next((i for i in range(max(len(ours), len(other)))
                             if i >= len(ours) or i >= len(other) or ours[i] != other[i]), 0)
                raise _C.TerraError(
                    f"DistributedDataParallel: rank {group.rank} and rank {r} computed different "
                    f"gradient bucket plans, so their all-reduces would not match. First "
                    f"difference:\n  rank {group.rank}: "
                    f"{ours[diff] if diff < len(ours) else '(no bucket)'}\n  rank {r}: "
                    f"{other[diff] if diff < len(other) else '(no bucket)'}\n"
                    "Every rank must wrap the same model (same parameters, shapes, dtypes, "
                    "requires_grad) with the same bucket_cap_mb.")

    def _sync_module_states(self):
        tensors = [p.detach() for p in self.module.parameters()]
        tensors += [b.detach() for b in self.module.buffers()]
        self._broadcast_coalesced(tensors)

    def _broadcast_coalesced(self, tensors):
        if self._world == 1 or not tensors:
            return
        groups = {}
        for t in tensors:
            groups.setdefault((t.dtype, t.device), []).append(t)
        with torch.no_grad():
            for (dtype, _), group in sorted(groups.items(), key=lambda kv: str(kv[0])):
                chunk, size = [], 0
                for t in group + [None]:
                    if t is not None:
                        chunk.append(t)
                        size += t.numel() * t.element_size()
                    if chunk and (t is None or size >= _BROADCAST_BUCKET_BYTES):
                        flat = torch.cat([c.reshape(-1) for c in chunk])
                        _collectives.broadcast(flat, 0, timeout=self._timeout)
                        offset = 0
                        for c in chunk:
                            c.copy_(flat[offset:offset + c.numel()].view_as(c))
                            offset += c.numel()
                        chunk, size = [], 0

    # --- forward ----------------------------------------------------------

    def forward(self, *inputs, **kwargs):
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if self.broadcast_buffers and self._require_sync:
            buffers = [b.detach() for b in self.module.buffers()]
            if buffers:
                self._broadcast_coalesced(buffers)
        return self.module(*inputs, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside skip the all-reduce: gradients accumulate
        locally and are averaged by the first synchronized backward after."""
        previous, self._require_sync = self._require_sync, False
        try:
            yield
        finally:
            self._require_sync = previous

    # --- backward ---------------------------------------------------------

    def _reset_iteration(self):
        self._ready = [False] * len(self._params)
        self._next_bucket = 0
        self._callback_queued = False
        for bucket in self._buckets:
            bucket.pending = len(bucket.params)
            bucket.work = None

    def _hook_state(self):
        # What decides which ops the hooks issue, besides the backward's order.
        return (self._instance, self._require_sync, self.find_unused_parameters)

    def _make_hook(self, index):
        def hook(param):
            if self._require_sync:
                self._mark_ready(index, param)
        return hook

    def _mark_ready(self, index, param):
        if not self._callback_queued:
            self._callback_queued = True
            # Terra's backward wrapper runs it where one runs (a replayed
            # backward has no engine to queue on); else the engine does.
            if not _tracing.queue_backward_callback(self._finish_backward):
                torch.autograd.Variable._execution_engine.queue_callback(self._finish_backward)
        if self._ready[index]:
            # A parameter's gradient accumulated twice in one backward (a
            # reentrant backward): its bucket may be reduced already.
            raise _C.TerraError(
                f"DistributedDataParallel: parameter {self._names[index]} got its gradient "
                "twice in one backward; this is not supported (as in PyTorch without "
                "static_graph)")
        self._ready[index] = True
        bucket = self._bucket_of[index]
        bucket.pending -= 1
        if bucket.pending == 0:
            self._launch_ready_buckets()

    def _launch_ready_buckets(self):
        while self._next_bucket < len(self._buckets):
            bucket = self._buckets[self._next_bucket]
            if bucket.pending != 0:
                return
            self._launch(bucket)
            self._next_bucket += 1

    def _launch(self, bucket):
        with torch.no_grad():
            for i, offset in zip(bucket.params, bucket.offsets):
                p = self._params[i]
                view = bucket.flat[offset:offset + p.numel()]
                if p.grad is None:
                    view.zero_()
                else:
                    view.copy_(p.grad.reshape(-1))
        bucket.work = _collectives.all_reduce(bucket.flat, _collectives.ReduceOp.AVG,
                                              async_op=True, timeout=self._timeout)

    def _finish_backward(self):
        unready = [i for i, ready in enumerate(self._ready) if not ready]
        self.stats["buckets_launched_in_backward"] += self._next_bucket
        used = None
        if unready and self.find_unused_parameters:
            # Which parameters any rank used: one more all-reduce, after the
            # buckets, as PyTorch's DDP does.
            local = torch.tensor(self._ready, dtype=torch.int32)
            for i in unready:
                self._ready[i] = True
                self._bucket_of[i].pending -= 1
            self._launch_ready_buckets()
            _collectives.all_reduce(local, _collectives.ReduceOp.MAX, timeout=self._timeout)
            used = local.tolist()
        elif unready:
            launched = [b for b in self._buckets if b.work is not None]
            for bucket in launched:
                bucket.work.wait()
            names = [self._names[i] for i in unready]
            self._error = _C.TerraError(
                "DistributedDataParallel: expected to have finished reduction in the prior "
                "iteration before starting a new one. These parameters received no gradient "
                f"on rank {_group.rank()}: {', '.join(names)}. Pass "
                "find_unused_parameters=True if parts of the model are unused in some "
                "iterations, or make sure every output takes part in the loss.")
            self._reset_iteration()
            return
        start = time.perf_counter()
        for bucket in self._buckets:
            bucket.work.wait()
            # Under co-execution the wait goes to the executor, in program
            # order: the program's thread does not wait here.
            self.stats["waits_queued"] += 1 if getattr(bucket.work, "wait_queued", False) else 0
        self.stats["comm_wait_s"] += time.perf_counter() - start
        self.stats["iterations"] += 1
        with torch.no_grad():
            for bucket in self._buckets:
                for i, offset in zip(bucket.params, bucket.offsets):
                    if used is not None and not used[i]:
                        continue  # no rank used it: grad stays as it was
                    p = self._params[i]
                    view = bucket.flat[offset:offset + p.numel()].view_as(p)
                    if p.grad is None:
                        p.grad = view.clone()
                    else:
                        p.grad.copy_(view)
        self._reset_iteration()
