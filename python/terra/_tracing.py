"""Tracing: record the program's ATen ops into a TraceGraph (design.md §5).

The recording itself is C++ (``terra._C._Tracer``: dispatcher interception,
no Python per op). This module holds the policy around it:

- Iterations end at an optimizer's ``step()`` (a global post-step hook) or,
  once the program calls it, only at ``terra.iteration()``. With several
  optimizers the iteration ends at the step of the one that steps last in a
  round; the first round, and everything before the first boundary (model
  set-up), is the prologue and is not merged.
- Direct reads of tensor data that bypass the dispatcher (``numpy()``,
  printing, ``torch.save``, ...) are recorded as sync points through the
  patches of ``terra._sync``; they run with interception suspended, so that
  printing's own ops are not mistaken for the program's.
- Modes: ``trace`` records for the whole run; ``auto`` records until the
  TraceGraph has not changed for ``stable_after`` iterations, then stops;
  ``coexec`` (experimental, CPU) records until stable and then
  co-executes: each op is validated against the TraceGraph and handed to the
  C++ executor, Python gets future tensors, and reads of values wait for
  them; an iteration that leaves the graph finishes eagerly, the next one is
  traced, and co-execution resumes once the graph is stable again;
  ``eager`` records nothing.
- Several ranks (terra.distributed with world_size > 1): the decisions
  taken at a boundary while tracing (start co-executing, stop tracing when
  stable, give up) are agreed by all ranks at the same iteration through the
  control-plane store (``_Session._agree``), and terra.distributed's
  collectives make co-executed values real before they touch tensor memory
  (``fetch_for_collective``).

Only the thread that enables tracing is traced, plus the autograd engine's
threads working for it.
"""

import atexit
import contextlib
import itertools
import os
import statistics
import sys
import sysconfig
import threading
import time
import weakref

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from terra import _C, _sync

MODES = ("eager", "trace", "auto", "coexec")
DEFAULT_STABLE_AFTER = 3
# auto and coexec: traced iterations after which a TraceGraph that is still
# not stable is given up on (tracing costs more than eager; the rest runs
# eagerly). TERRA_GIVE_UP_AFTER overrides it.
DEFAULT_GIVE_UP_AFTER = 20
# ... and sooner, a TraceGraph that changed in all but one of the last
# CHURN_WINDOW traced iterations with new shapes of one op at one location
# in at least CHURN_WINDOW - 3 of them: the program's shapes vary nearly every
# iteration (episode or sequence lengths), so tracing would go on costing for
# nothing. A graph that grows by new paths (LBFGS's history, the first steps
# of a schedule) is not given up on this way. TERRA_CHURN_WINDOW overrides it
# (0: off).
DEFAULT_CHURN_WINDOW = 6
# auto: once the TraceGraph is stable, co-execution and eager run the
# program's own iterations in turn, in blocks of PROBE_BLOCK iterations
# (co-execution first and last, eager between, so that a drift of the
# machine's speed cancels), and the faster runs the rest. The first iteration
# of a block pays the switch (an executor starting, or the drain of what
# co-execution left queued) and is not timed; a co-executed block is timed
# from a drained executor to a drained executor, so work still queued counts.
# TERRA_AUTO_COEXEC=0 turns the probe off (auto then runs eagerly once the
# graph is stable).
# TERRA_AUTO_PROBE_BLOCKS (odd, default 3) and TERRA_AUTO_PROBE_BLOCK
# (default 3) lengthen the probe: many alternating blocks make an in-process
# A/B comparison that a noisy machine's drift cannot bias
# (examples/bench/auto_ab.py).
PROBE_BLOCKS = 3
PROBE_BLOCK = 3
# Co-execution is kept only when it is at least this much faster than eager:
# eager is the safe default, and a gain within the machine's noise is none.
PROBE_MARGIN = 0.03
_READ_ONLY_KINDS = frozenset(("print", "format", "tolist", "save"))
_REPORT_WAIT_POINTS = 8  # wait points the report lists
# Several ranks: how long a rank waits at a traced boundary for the others'
# votes (a rank still computing its iteration), and the slice between checks
# whether a rank stopped voting.
AGREE_TIMEOUT_S = 300.0
_AGREE_POLL_S = 0.5
_session_numbers = itertools.count(1)  # keys each session's store entries apart


def _peer_client():
    """(control client, rank, world size) when this process is one of several
    ranks of a terrarun job, else None."""
    group = sys.modules.get("terra.distributed._group")
    g = getattr(group, "_group", None)
    if g is None or g.client is None or g.world_size <= 1:
        return None
    return g.client, g.rank, g.world_size


def _library_prefixes():
    torch_dir = os.path.dirname(torch.__file__) + os.sep
    terra_dir = os.path.dirname(os.path.abspath(__file__)) + os.sep
    stdlib = sysconfig.get_paths()["stdlib"] + os.sep
    return [torch_dir, terra_dir, stdlib]


_backward_calls = threading.local()  # .stack: callback lists of the patched backwards running here


def queue_backward_callback(callback):
    """Runs ``callback()`` when the ``loss.backward()`` running on this thread ends, as
    ``Variable._execution_engine.queue_callback`` does, but from Terra's backward
    wrapper, in every phase alike: so a replayed backward (no engine runs) ends the
    same way, and the callback's ops are located the same way whichever phase runs
    them. False where no patched backward runs on this thread (no session; another
    thread; ``torch.autograd.grad``): use the engine's queue then."""
    stack = getattr(_backward_calls, "stack", None)
    if not stack:
        return False
    stack[-1].append(callback)
    return True


_hook_states = []  # weakref.WeakMethod: owners of deferrable hooks, each giving a hashable state


def deferrable_post_accumulate_grad_hook(fn, state=None):
    """``fn`` as a post-accumulate-grad hook a replayed backward may run itself: where
    co-execution replays a learned backward as one segment, it runs the segment up to
    the hook's leaf, then the hook as the engine would (grad mode off, located as the
    leaf's AccumulateGrad), and checks that the hook validated the ops it validated when
    learned (docs/coexecution.md, "Data-parallel training"). For hooks whose ops
    depend on the backward's order and on ``state()`` only (a bound method returning a
    hashable value, part of the segment's key), not on values the hook reads.
    Register the result with ``tensor.register_post_accumulate_grad_hook``."""
    if state is not None:
        _hook_states.append(weakref.WeakMethod(state))

    def hook(param):
        session = _coexecuting()
        if session is None:
            return fn(param)
        tracer = session.tracer
        tracer.coexec_hook_begin(param)
        try:
            return fn(param)
        finally:
            tracer.coexec_hook_end()

    hook.__terra_deferrable__ = True
    return hook


def _hook_state():
    if not _hook_states:
        return 0
    states = []
    for ref in list(_hook_states):
        method = ref()
        if method is None:
            _hook_states.remove(ref)
        else:
            states.append(method())
    return hash(tuple(states)) & 0xFFFFFFFFFFFFFFFF


class _BackwardPatch:
    """``torch.autograd.backward`` (which ``Tensor.backward`` calls) while a session lives.

    Under co-execution a plain ``loss.backward()`` goes to the co-executor first: where
    it has learned this backward's ops (from two earlier backwards it validated op by
    op, on the same forward path and autograd graph), the executor replays them as one
    segment and the autograd engine does not run on the program's thread at all
    (docs/coexecution.md, "The backward as one unit"). Anything else runs as usual.
    Callbacks queued through ``queue_backward_callback`` (DDP's end of backward) run
    after either, from one call site.
    """

    def __init__(self, session):
        self.original = torch.autograd.backward
        original = self.original

        def backward(tensors, grad_tensors=None, retain_graph=None, create_graph=False,
                     grad_variables=None, inputs=None):
            callbacks = []
            stack = getattr(_backward_calls, "stack", None)
            if stack is None:
                stack = _backward_calls.stack = []
            stack.append(callbacks)
            try:
                result = _run(tensors, grad_tensors, retain_graph, create_graph,
                              grad_variables, inputs)
            finally:
                stack.pop()
            for callback in callbacks:
                callback()
            return result

        def _run(tensors, grad_tensors, retain_graph, create_graph, grad_variables, inputs):
            start = None
            if (session.phase == "coexec" and session.active and isinstance(tensors, torch.Tensor)
                    and grad_tensors is None and grad_variables is None and not retain_graph
                    and not create_graph and inputs is None
                    and threading.get_ident() == session.thread):
                start = session.tracer.coexec_backward_begin(tensors, _hook_state())
                if start == "replayed":
                    return None
            # One call site for every path: the ops the engine issues are
            # located by the Python frames, this one's included.
            completed = False
            try:
                result = original(tensors, grad_tensors, retain_graph, create_graph,
                                  grad_variables, inputs=inputs)
                completed = True
            finally:
                if start == "learning":
                    session.tracer.coexec_backward_end(completed)
            return result

        backward.__wrapped__ = original
        backward.__doc__ = original.__doc__
        self.patched = backward
        torch.autograd.backward = backward

    def remove(self):
        if torch.autograd.backward is self.patched:
            torch.autograd.backward = self.original


class _Session:
    """One tracing session of this process (there is at most one)."""

    def __init__(self, mode, stable_after, report, dot, rank):
        self.mode = mode
        self.stable_after = stable_after
        self.report_at_exit = report
        self.dot_path = dot
        self.rank = rank
        self.tracer = _C._Tracer(_library_prefixes(), os.getcwd())
        self.thread = threading.get_ident()
        self.active = False
        self.explicit = False  # terra.iteration() was called: optimizer steps no longer end iterations
        self.step_order = []   # ids of optimizers in the order they first stepped
        self.order_known = False
        self.stopped_reason = None
        self.phase = "trace"  # or "coexec"
        self.give_up_after = int(os.environ.get("TERRA_GIVE_UP_AFTER", DEFAULT_GIVE_UP_AFTER))
        self.churn_window = int(os.environ.get("TERRA_CHURN_WINDOW", DEFAULT_CHURN_WINDOW))
        self.changed_at = []  # the iterations (0-based) whose merge changed the TraceGraph
        self.synchronous = False  # debug mode: the executor runs each op at once
        self.coexec_iterations = 0
        self.fallbacks = 0
        self.boundaries = 0  # iterations ended, the prologue's included
        self.coexec_started_at = None  # the iteration (0-based) co-execution started with
        self.probe = None  # auto: the timing of co-execution against eager (_probe_boundary)
        self.no_probe_reason = None  # auto: why co-execution was not tried
        self.locally_stable_at = None  # the first such iteration by this rank's graph alone
        # Several ranks: this rank still votes at each boundary (_agree).
        self._voting = _peer_client() is not None and mode in ("auto", "coexec")
        self._agree_key = f"terra/trace/{next(_session_numbers)}/"
        self._hook = register_optimizer_step_post_hook(self._on_step)
        _sync.install(self._on_read, self._suspend, _on_handout, self._on_scalar)
        self._backward_patch = _BackwardPatch(self)
        self._start()

    # -- interception on this thread -------------------------------------
    def _start(self):
        self.tracer.start()
        self.active = True

    def _stop(self, reason):
        if self._voting:
            self._leave_vote()
        if self.phase == "coexec":
            self.tracer.coexec_stop()
            self.phase = "trace"
        if self.active or self.phase == "eager":
            if self.phase != "eager":
                self.tracer.stop()
            self.active = False
            self.phase = "trace"
            self.stopped_reason = reason
        self._unpatch()

    def _unpatch(self):
        """Takes out the optimizer-step hook, the read hooks and the backward patch."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        _sync.uninstall()
        if self._backward_patch is not None:
            self._backward_patch.remove()
            self._backward_patch = None

    @contextlib.contextmanager
    def _suspend(self):
        if not (self.active and threading.get_ident() == self.thread):
            yield
            return
        self.tracer.pause()
        try:
            yield
        finally:
            self.tracer.resume()

    def _on_scalar(self, tensor):
        """.item(), float(t), ...: the C++ interception handles this thread's; another
        thread's wait for the value. True where the read came from another thread."""
        if self.active and self.phase == "coexec" and threading.get_ident() != self.thread:
            # A checkpoint or logging thread the program handed a tensor to cannot
            # drain this thread's executor: it waits for that value.
            if tensor is not None:
                _C._await_on_any_thread(tensor)
            return True
        return False

    def _on_read(self, tensor, kind):
        if self._on_scalar(tensor):
            return
        if kind == "set_data":
            # The tensor will point at other memory: queued ops that hold it (not
            # its memory: an ordinary tensor is held as given) must run first.
            if self.active and self.phase == "coexec" and threading.get_ident() == self.thread:
                self.tracer.coexec_fetch_value(tensor, kind)
            return
        if self.active and threading.get_ident() == self.thread:
            if tensor is None:
                # The generator's state (kind "rng"): queued random ops consume it
                # in program order, so it is read or replaced after they ran. Or a
                # torch.save whose object hides tensors (a module): all of them.
                if self.phase == "coexec":
                    self.tracer.coexec_fetch(kind)
                return
            if self.phase == "coexec":
                # The value must be real before Python reads it. A read only
                # (printing, tolist, saving) waits for the ops writing that
                # tensor; a read that hands out the memory (numpy, data_ptr,
                # storage, DLPack) waits for everything queued, since the
                # program may write through it.
                if kind in _READ_ONLY_KINDS:
                    self.tracer.coexec_fetch_value(tensor, kind)
                else:
                    self.tracer.coexec_fetch(kind)
            else:
                self.tracer.sync(tensor, kind)

    # -- iterations --------------------------------------------------------
    def _listening(self):
        # Boundaries still count while auto's probe runs an iteration eagerly.
        return self.active or self.phase == "eager"

    def _on_step(self, optimizer, args, kwargs):
        if self.explicit or not self._listening():
            return
        key = id(optimizer)
        if not self.order_known:
            if key in self.step_order:
                self.order_known = True
            else:
                self.step_order.append(key)
        if not self.order_known:
            self._boundary(merge=False)  # the first round: prologue
        elif key == self.step_order[-1]:
            self._boundary(merge=True)

    def iteration(self):
        if not self._listening():
            return
        first = not self.explicit
        self.explicit = True
        # The first explicit mark closes the prologue (set-up, or what ran
        # before the program started marking).
        self._boundary(merge=not first)

    def _boundary(self, merge):
        self.boundaries += 1
        if self.probe is not None and self.probe["chosen"] is None:
            self._probe_boundary()
            return
        if self.phase == "coexec":
            self._end_coexec_iteration()
            return
        if self.tracer.end_iteration(merge):  # never for the prologue (not merged)
            self.changed_at.append(self.boundaries - 1)
        if self.mode not in ("auto", "coexec"):
            return
        if self.tracer.is_stable(self.stable_after):
            local = "stable"
            if self.locally_stable_at is None:
                self.locally_stable_at = self.boundaries
        else:
            traced = self.tracer.traced_iterations() if merge else 0
            local = "give_up" if traced >= self.give_up_after or self._churning() else "trace"
        decision = self._agree(local) if self._voting else local
        if decision == "trace":
            return
        # Every rank takes this decision at this boundary. Auto's probe ends
        # with one more round (its timings); a rank that does not probe
        # leaves, so the others do not wait for it.
        probing = decision == "stable" and self.mode == "auto" and self._may_probe()
        if not probing and self._voting:
            self._leave_vote()
        if decision == "give_up":
            self._stop("unstable" if local == "give_up" else "unstable_elsewhere")
        elif self.mode == "auto" and not probing:
            self._stop("stable")
        elif self.mode == "auto":
            blocks = max(3, int(os.environ.get("TERRA_AUTO_PROBE_BLOCKS", PROBE_BLOCKS))) | 1
            self.probe = {"block": 0, "i": 0, "t": 0.0, "started_at_iteration": self.boundaries,
                          "s": {"coexec": [], "eager": []}, "chosen": None,
                          # Read before the executor starts (it takes the program's pool).
                          "intra_op_threads": torch.get_num_threads(), "cores": _usable_cores(),
                          "order": ["coexec" if b % 2 == 0 else "eager" for b in range(blocks)],
                          "length": max(2, int(os.environ.get("TERRA_AUTO_PROBE_BLOCK", PROBE_BLOCK)))}
            self._switch("coexec")
        else:
            self._switch("coexec")

    def _may_probe(self):
        if os.environ.get("TERRA_AUTO_COEXEC", "1") == "0" or self.synchronous:
            return False
        if not self.tracer.graph_on_cpu():
            self.no_probe_reason = "the program computes on a device other than the CPU"
            return False
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # PyTorch's process groups (gloo, NCCL, MPI) read and write tensor
            # memory in C++ without ATen ops, from DDP's reducer too: Terra
            # cannot make a future real before they touch it.
            self.no_probe_reason = ("a torch.distributed process group is in use (its collectives read "
                                    "memory without ATen; terra.distributed's do not)")
            return False
        return True

    def _switch(self, phase):
        """Starts co-executing, or running eagerly (auto's probe), at this
        boundary."""
        if phase == "coexec":
            if self.phase != "eager":
                self.tracer.stop()  # recording ends here
            self.tracer.coexec_start(self.synchronous)
            self.phase = "coexec"
            self.active = True
            if self.coexec_started_at is None:
                self.coexec_started_at = self.boundaries
        else:
            if self.phase == "coexec":
                self.tracer.coexec_stop()  # drains
            else:
                self.tracer.stop()
            self.phase = "eager"
            self.active = False  # nothing intercepted; boundaries still count

    def _end_coexec_iteration(self):
        self.coexec_iterations += 1
        if self.tracer.coexec_iteration() == "learned":
            # The iteration left the TraceGraph and finished eagerly while
            # its new path was recorded; co-execution goes on with it.
            self.fallbacks += 1

    def _probe_boundary(self):
        p = self.probe
        mode = p["order"][p["block"]]
        length = p["length"]
        if self.phase == "coexec":
            self._end_coexec_iteration()
        i = p["i"]
        if i == 0 or i == length - 1:
            if mode == "coexec":
                self.tracer.coexec_fetch("auto's timing")  # drained: queued work is timed too
            now = time.perf_counter()
            if i == 0:
                p["t"] = now
            else:
                p["s"][mode].append((now - p["t"]) / (length - 1))
        p["i"] = i = i + 1
        if i < length:
            return
        p["block"] += 1
        p["i"] = 0
        if p["block"] < len(p["order"]):
            self._switch(p["order"][p["block"]])
            return
        # Decided once, the same on every rank (design.md: the coordinator
        # replicates when to co-execute): the job runs at its slowest rank's
        # pace, so the ranks compare the slowest rank's time per iteration in
        # each mode. A rank that left (its program ended) is counted out.
        timings = [(statistics.mean(p["s"]["coexec"]), statistics.mean(p["s"]["eager"]))]
        if self._voting:
            votes = self._exchange(f"{timings[0][0]!r} {timings[0][1]!r}", "its timing of co-execution")
            timings = [tuple(map(float, v.split())) for v in votes]
            self._leave_vote()
            p["ranks_timed"] = len(timings)
        coexec_s, eager_s = max(t[0] for t in timings), max(t[1] for t in timings)
        p["job_s"] = {"coexec": coexec_s, "eager": eager_s}
        p["chosen"] = "coexec" if coexec_s <= eager_s * (1 - PROBE_MARGIN) else "eager"
        p["decided_at_iteration"] = self.boundaries
        if p["chosen"] == "coexec":
            if self.phase != "coexec":
                self._switch("coexec")
            return
        if self.phase == "coexec":
            self._switch("eager")
        self._stop("stable")

    def _churning(self):
        """Whether the TraceGraph changed in all but at most one of the last
        churn_window merged iterations, by new shapes."""
        w = self.churn_window
        if w <= 0 or self.tracer.traced_iterations() < w:
            return False
        recent = sum(1 for i in self.changed_at if i >= self.boundaries - w)
        return recent >= w - 1 and self.tracer.new_shape_variants() >= max(1, w - 3)

    # -- agreement between ranks -------------------------------------------
    # Protocol (one round per boundary while tracing, keyed by the session
    # (the count of terra.enable() calls, so a second session never reads the
    # first one's votes) and the boundary's number n, the same on every rank
    # since all run the same iterations):
    #   1. each rank sets  terra/trace/<session>/vote/<n>/<rank> = its verdict
    #      ("trace", "stable" or "give_up");
    #   2. each rank reads every other rank's vote for n and computes the same
    #      decision from the same votes: "give_up" if any rank gives up, else
    #      "stable" if every rank is stable, else "trace".
    # A rank that stops voting early (terra.disable(), or its program ends
    # while the others still trace) sets terra/trace/<session>/left/<rank>; the
    # others then count it out of every later round. Its vote for a round is
    # set before its "left" mark, so every rank sees the same set of votes.
    # A rank that neither votes nor leaves for AGREE_TIMEOUT_S is an error
    # naming it (never a hang). The store has no delete: the keys are bounded
    # by the boundaries traced (at most give_up_after plus the prologue).
    def _agree(self, local):
        votes = self._exchange(local, "whether its TraceGraph is stable")
        if "give_up" in votes:
            return "give_up"
        return "stable" if all(v == "stable" for v in votes) else "trace"

    def _exchange(self, local, what):
        """This boundary's round: sets this rank's vote and returns every
        voting rank's, this rank's first."""
        peer = _peer_client()
        if peer is None:  # the program shut terra.distributed down
            return [local]
        client, rank, world = peer
        n = self.boundaries
        client.set(f"{self._agree_key}vote/{n}/{rank}", local.encode())
        votes = [local]
        for r in range(world):
            if r != rank:
                vote = self._vote_of(client, r, n, what)
                if vote is not None:
                    votes.append(vote)
        return votes

    def _vote_of(self, client, r, n, what):
        """Rank r's vote at boundary n, or None when r stopped voting before it."""
        key, left = f"{self._agree_key}vote/{n}/{r}", f"{self._agree_key}left/{r}"
        deadline = time.monotonic() + AGREE_TIMEOUT_S
        while True:
            try:
                return client.get(key, _AGREE_POLL_S).decode()
            except _C.TerraTimeoutError:
                pass
            if client.check([left]):
                return client.get(key, _AGREE_POLL_S).decode() if client.check([key]) else None
            if time.monotonic() >= deadline:
                raise _C.TerraTimeoutError(
                    f"terra: rank {self.rank} waited {AGREE_TIMEOUT_S:.0f} s at iteration {n} for "
                    f"rank {r} to say {what}; rank {r} has not reached "
                    "that iteration's end. Every rank must end the same number of iterations "
                    "(optimizer steps, or terra.iteration() marks) while tracing.")

    def _leave_vote(self):
        self._voting = False
        peer = _peer_client()
        if peer is None:
            return
        try:
            peer[0].set(f"{self._agree_key}left/{peer[1]}", b"1")
        except Exception:  # noqa: BLE001 (leaving: the control plane may be gone)
            pass

    # -- results -----------------------------------------------------------
    def _changes_text(self):
        return (f"it changed in {len(self.changed_at)} of {self.tracer.traced_iterations()} traced iterations, "
                f"at iterations {', '.join(map(str, self.changed_at[-8:]))}")

    def report(self):
        text = self.tracer.report(self.mode, self.stable_after, self.rank)
        p = self.probe
        if p is not None:
            c, e = p["s"]["coexec"], p["s"]["eager"]
            if p["chosen"] is None:
                text += (f"  auto: the program ended while co-execution and eager were being timed "
                         f"(from iteration {p['started_at_iteration']})\n")
            else:
                text += (f"  auto: co-execution took {1e3 * statistics.mean(c):.3g} ms per iteration "
                         f"against eager's {1e3 * statistics.mean(e):.3g} ms (timed in turns over iterations "
                         f"{p['started_at_iteration']}-{p['decided_at_iteration'] - 1}); ")
                if p.get("ranks_timed", 1) > 1:
                    j = p["job_s"]
                    text += (f"the slowest of the {p['ranks_timed']} ranks timed took {1e3 * j['coexec']:.3g} ms "
                             f"co-executed against {1e3 * j['eager']:.3g} ms eagerly, and on every rank ")
                text += "the rest was co-executed\n" if p["chosen"] == "coexec" else "the rest ran eagerly\n"
                own_eager = statistics.mean(c) > statistics.mean(e) * (1 - PROBE_MARGIN)
                if p["chosen"] == "eager" and own_eager and p["intra_op_threads"] + 1 > p["cores"]:
                    text += (f"  auto: the executor runs eager's {p['intra_op_threads']} intra-op threads (the same "
                             f"count keeps results bit-identical) beside the program's thread, on {p['cores']} "
                             "cores: they share a core; co-execution gains where one is left for Python "
                             "(docs/coexecution.md, \"The cores\")\n")
        elif self.stopped_reason == "stable":
            text += (f"  tracing stopped after the TraceGraph was unchanged for {self.stable_after} "
                     "iterations; the rest ran eagerly\n")
            if self.no_probe_reason:
                text += f"  auto: co-execution was not tried: {self.no_probe_reason}\n"
        elif self.stopped_reason == "unstable":
            text += (f"  tracing stopped: the TraceGraph was still changing ({self._changes_text()}; "
                     "new shapes or paths every iteration); the rest ran eagerly\n")
        elif self.stopped_reason == "unstable_elsewhere":
            text += ("  tracing stopped: another rank's TraceGraph was still changing "
                     f"(here: {self._changes_text()}); every rank ran the rest eagerly\n")
        elif self.stopped_reason == "disabled":
            text += "  tracing was stopped by terra.disable()\n"
        if self.mode == "coexec" or self.coexec_iterations:
            c = self.tracer.coexec_stats()
            text += (f"  co-execution: {self.coexec_iterations} iterations, {self.fallbacks} fallbacks; "
                     f"{c['submitted']} ops to the executor, {c['eager']} run by Python (views, fetches), "
                     f"{c['fetches']} fetches; executor busy {c['executor_busy_s']:.3f} s, "
                     f"Python waited {c['fetch_wait_s']:.3f} s\n")
            if c.get("backward_replayed") or c.get("backward_not_replayed"):
                why = c.get("backward_not_replayed")
                text += (f"  backward as one segment: {c['backward_replayed']} replayed "
                         f"({c['backward_ops_replayed']} ops), {c['backward_learned']} learned"
                         + (f"; a backward kept op by op because {why}" if why else "") + "\n")
            if c.get("tasks_queued"):
                text += (f"  collectives queued on the executor: {c['tasks_queued']} tasks "
                         "(all-reduce launches and waits)\n")
            if self.coexec_started_at is not None:
                text += f"  co-execution started with iteration {self.coexec_started_at}\n"
            fallbacks = c.get("fallback_points") or []
            if fallbacks:
                unfinished = c["divergences"] - self.fallbacks
                text += ("  where the program left the TraceGraph (fallbacks, first seen first"
                         + (f"; {unfinished} in the last iteration, which the program ended before its boundary"
                            if unfinished > 0 else "") + "):\n")
                for f in fallbacks[:_REPORT_WAIT_POINTS]:
                    text += f"    {f['count']:6d}x  {f['where']}  {f['what']}; the graph expected {f['expected']}\n"
                if len(fallbacks) > _REPORT_WAIT_POINTS:
                    text += f"    ... and {len(fallbacks) - _REPORT_WAIT_POINTS} more\n"
            points = c.get("fetch_points") or []
            if points:
                text += "  where Python waited for the executor (longest first):\n"
                for p in points[:_REPORT_WAIT_POINTS]:
                    text += f"    {p['wait_s']:8.3f} s  {p['count']:6d}x  {p['where']}  {p['what']}\n"
                if len(points) > _REPORT_WAIT_POINTS:
                    text += f"    ... and {len(points) - _REPORT_WAIT_POINTS} more\n"
        return text

    def at_exit(self):
        phase = self.phase  # _stop ends co-execution; the stats say where the run ended
        if self.active:
            self._stop("exit")
        if self.report_at_exit and self.rank == 0:
            sys.stdout.flush()
            print(self.report(), end="", file=sys.stderr, flush=True)
        if self.dot_path and self.rank == 0:
            with open(self.dot_path, "w") as f:
                f.write(self.tracer.dot())
        stats_path = os.environ.get("TERRA_STATS_JSON")
        if stats_path and self is _last_session():
            _write_stats_json(stats_path, self.rank, phase)


def _usable_cores():
    """The CPUs this process may run on (its affinity), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _jsonable(value):
    """`value` with anything JSON cannot hold (odd keys, NaN, objects) as text."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def _write_stats_json(path, rank, phase):
    """TERRA_STATS_JSON: stats() as JSON at exit. A path with "{rank}" is per
    rank; otherwise only rank 0 writes. Never fails the program's exit."""
    import json

    if "{rank}" in path:
        path = path.replace("{rank}", str(rank))
    elif rank != 0:
        return
    try:
        data = stats()
        if "coexec" in data:
            data["coexec"] = dict(data["coexec"], phase=phase)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(_jsonable(data), f, indent=1)
        os.replace(tmp, path)
    except Exception as error:  # the program's own exit status must stand
        print(f"terra: could not write TERRA_STATS_JSON={path!r}: {type(error).__name__}: {error}",
              file=sys.stderr, flush=True)


_session = None
_finished = []  # sessions that were disabled; kept so their tracers outlive any thread using them


def enable(mode="trace", *, stable_after=DEFAULT_STABLE_AFTER, report=False, dot=None, rank=None,
           synchronous=False):
    """Starts tracing the calling thread's ATen ops (see the module docstring).

    mode: "trace" (record for the whole run), "auto" (record until the
    TraceGraph is stable for ``stable_after`` iterations), "coexec"
    (experimental: record until stable, then co-execute) or "eager" (do
    nothing). report: print ``terra.report()`` to stderr at exit (rank 0
    only). dot: write the TraceGraph as Graphviz DOT to this path at exit
    (rank 0 only). synchronous (debug mode, with "coexec"): the executor
    runs each op as soon as it is validated, so an error surfaces at the
    Python line that issued the op.
    Results are never changed: every op still runs eagerly, bit for bit.
    """
    global _session
    if mode not in MODES:
        raise ValueError(f"terra.enable: unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if not isinstance(stable_after, int) or stable_after < 1:
        raise ValueError(f"terra.enable: stable_after must be a positive int, got {stable_after!r}")
    if _session is not None:
        raise RuntimeError("terra.enable: tracing is already enabled in this process; "
                           "call terra.disable() first")
    if mode == "eager":
        return
    if rank is None:
        rank = int(os.environ.get("RANK", "0") or 0)
    _session = _Session(mode, stable_after, report, dot, rank)
    _session.synchronous = bool(synchronous)
    atexit.register(_exit_hook, _session)


def _before_fork():
    # The executor's thread does not come along into the child: make every
    # value real first, so that the child can read what it inherits.
    s = _session
    if s is not None and s.phase == "coexec" and s.active and threading.get_ident() == s.thread:
        s.tracer.coexec_fetch("os.fork()")


def _after_fork_in_child():
    """A forked child (DataLoader's workers, multiprocessing) runs eagerly: no
    tracing, no executor, no report, no votes with the ranks."""
    global _session
    s, _session = _session, None
    if s is None:
        return
    s.tracer.forget_after_fork()
    s.active = False
    s.phase = "trace"
    s.stopped_reason = "forked"
    s._voting = False
    s._unpatch()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def _exit_hook(session):
    if session is _session or session in _finished:
        session.at_exit()


def disable():
    """Stops tracing; what was recorded stays available to ``report()``."""
    global _session
    if _session is None:
        return
    _session._stop("disabled")
    _finished.append(_session)
    _session = None


def enabled():
    """Whether tracing is recording ops now."""
    return _session is not None and _session.active


def iteration():
    """Marks the end of an iteration (for programs with no optimizer step, or
    whose iterations are not one step each). Once called, only these marks end
    iterations. Does nothing when tracing is off."""
    if _session is not None:
        _session.iteration()


def _last_session():
    if _session is not None:
        return _session
    return _finished[-1] if _finished else None


def report():
    """The tracing report as text ("" when tracing never ran)."""
    s = _last_session()
    return s.report() if s is not None else ""


def stats():
    """The tracing figures as a dict (iterations, ops per iteration, nodes,
    branch points, segments, sync points with their source lines, ...; under
    mode "coexec" also "coexec": ops submitted, run eagerly, fetches,
    fallbacks, iterations co-executed); ``{}`` when tracing never ran."""
    s = _last_session()
    if s is None:
        return {}
    d = s.tracer.stats()
    d["changed_at_iterations"] = list(s.changed_at)
    if s.no_probe_reason:
        d["auto"] = {"chosen": None, "not_tried": s.no_probe_reason}
    if s.probe is not None:
        p = s.probe
        d["auto"] = {"chosen": p["chosen"], "coexec_iteration_s": list(p["s"]["coexec"]),
                     "eager_iteration_s": list(p["s"]["eager"]),
                     "probe_started_at_iteration": p["started_at_iteration"],
                     "intra_op_threads": p["intra_op_threads"], "cores": p["cores"],
                     "decided_at_iteration": p.get("decided_at_iteration"),
                     "ranks_timed": p.get("ranks_timed", 1), "job_iteration_s": p.get("job_s")}
    if s.mode == "coexec" or s.coexec_iterations:
        d["coexec"] = dict(s.tracer.coexec_stats(), iterations=s.coexec_iterations,
                           fallbacks=s.fallbacks, phase=s.phase,
                           started_at_iteration=s.coexec_started_at,
                           locally_stable_at_iteration=s.locally_stable_at)
    return d


def _coexecuting():
    """The session, when it co-executes this thread's ops; else None."""
    s = _session
    return s if s is not None and s.phase == "coexec" and threading.get_ident() == s.thread else None


def fetch_for_collective():
    """Makes every co-executed value real before a terra.distributed
    collective reads or writes tensor memory directly (the communicators do
    not go through ATen, so they would read a future's unfilled memory, or
    race the executor's pending writes). Drains the executor when this
    thread co-executes; otherwise does nothing. Collectives from other
    threads are not ordered with the program thread's co-executed ops."""
    s = _coexecuting()
    if s is not None:
        s.tracer.coexec_fetch("collective")


def queue_all_reduce(group, tensor, op, timeout):
    """An asynchronous all-reduce queued on the executor, when this thread
    co-executes: the executor launches it in program order, after the queued
    ops that write ``tensor``, so the program's thread does not drain. None
    otherwise (or for a tensor it cannot queue): the caller drains
    (``fetch_for_collective``) and launches it itself."""
    s = _coexecuting()
    return s.tracer.coexec_all_reduce(group, tensor, op, timeout) if s is not None else None


def queue_collective_wait(handle, tensor):
    """Queues the wait of a queued all-reduce when this thread co-executes:
    the ops issued after it run after the reduction, and a direct read of
    ``tensor`` waits for it (a fetch drains). False otherwise: wait here."""
    s = _coexecuting()
    return s.tracer.coexec_wait(handle, tensor) if s is not None else False


def dot():
    """The TraceGraph as Graphviz DOT text ("" when tracing never ran)."""
    s = _last_session()
    return s.tracer.dot() if s is not None else ""


def _on_handout(tensor, array):
    """The program holds tensor's memory through numpy array `array` (Tensor.numpy,
    numpy.asarray) and may write or read it at any time while the array lives: ops then
    read that memory when queued and write it at once (docs/coexecution.md, "Inputs from
    Python"). Any thread, any phase: the array may outlive tracing."""
    if getattr(array, "base", None) is None:
        return  # a copy (a dtype conversion), not the tensor's memory
    key = _C._expose_memory(tensor)
    weakref.finalize(array, _C._end_exposure, key).atexit = False


def _start_from_environment():
    """Under terrarun: TERRA_MODE, TERRA_REPORT, TERRA_DOT, TERRA_DEBUG."""
    mode = os.environ.get("TERRA_MODE", "auto") or "auto"
    if mode not in MODES:
        raise ValueError(f"TERRA_MODE={mode!r}: expected one of {', '.join(MODES)}")
    debug = os.environ.get("TERRA_DEBUG", "0") == "1"
    report = os.environ.get("TERRA_REPORT", "0") == "1" or debug
    if debug and mode == "auto":
        mode = "coexec"  # --debug: co-execute with a synchronous executor (design.md §9)
    stable_after = int(os.environ.get("TERRA_STABLE_AFTER", DEFAULT_STABLE_AFTER))
    enable(mode, stable_after=stable_after, report=report, dot=os.environ.get("TERRA_DOT") or None,
           synchronous=debug)
