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
  ``coexec`` (experimental, CPU, one process) records until stable and then
  co-executes: each op is validated against the TraceGraph and handed to the
  C++ executor, Python gets future tensors, and reads of values wait for
  them; an iteration that leaves the graph finishes eagerly, the next one is
  traced, and co-execution resumes once the graph is stable again;
  ``eager`` records nothing.

Only the thread that enables tracing is traced, plus the autograd engine's
threads working for it.
"""

import atexit
import contextlib
import os
import sys
import sysconfig
import threading

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from terra import _C, _sync

MODES = ("eager", "trace", "auto", "coexec")
DEFAULT_STABLE_AFTER = 3
# auto and coexec: traced iterations after which a TraceGraph that is still
# not stable is given up on (tracing costs more than eager; the rest runs
# eagerly). TERRA_GIVE_UP_AFTER overrides it.
DEFAULT_GIVE_UP_AFTER = 20


def _library_prefixes():
    torch_dir = os.path.dirname(torch.__file__) + os.sep
    terra_dir = os.path.dirname(os.path.abspath(__file__)) + os.sep
    stdlib = sysconfig.get_paths()["stdlib"] + os.sep
    return [torch_dir, terra_dir, stdlib]


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
        self.synchronous = False  # debug mode: the executor runs each op at once
        self.coexec_iterations = 0
        self.fallbacks = 0
        self._hook = register_optimizer_step_post_hook(self._on_step)
        _sync.install(self._on_read, self._suspend)
        self._start()

    # -- interception on this thread -------------------------------------
    def _start(self):
        self.tracer.start()
        self.active = True

    def _stop(self, reason):
        if self.phase == "coexec":
            self.tracer.coexec_stop()
            self.phase = "trace"
        if self.active:
            self.tracer.stop()
            self.active = False
            self.stopped_reason = reason
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        _sync.uninstall()

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

    def _on_read(self, tensor, kind):
        if self.active and threading.get_ident() == self.thread:
            if self.phase == "coexec":
                self.tracer.coexec_fetch()  # the value must be real before Python reads it
            else:
                self.tracer.sync(tensor, kind)

    # -- iterations --------------------------------------------------------
    def _on_step(self, optimizer, args, kwargs):
        if self.explicit or not self.active:
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
        if not self.active:
            return
        first = not self.explicit
        self.explicit = True
        # The first explicit mark closes the prologue (set-up, or what ran
        # before the program started marking).
        self._boundary(merge=not first)

    def _boundary(self, merge):
        if self.phase == "coexec":
            self.coexec_iterations += 1
            if self.tracer.coexec_iteration() == "learned":
                # The iteration left the TraceGraph and finished eagerly while
                # its new path was recorded; co-execution goes on with it.
                self.fallbacks += 1
            return
        self.tracer.end_iteration(merge)
        if not self.tracer.is_stable(self.stable_after):
            traced = self.tracer.traced_iterations() if merge else 0
            if self.mode in ("auto", "coexec") and traced >= self.give_up_after:
                self._stop("unstable")
            return
        if self.mode == "auto":
            self._stop("stable")
        elif self.mode == "coexec":
            self.tracer.stop()
            self.tracer.coexec_start(self.synchronous)
            self.phase = "coexec"

    # -- results -----------------------------------------------------------
    def report(self):
        text = self.tracer.report(self.mode, self.stable_after, self.rank)
        if self.stopped_reason == "stable":
            text += (f"  tracing stopped after the TraceGraph was unchanged for {self.stable_after} "
                     "iterations; the rest ran eagerly\n")
        elif self.stopped_reason == "unstable":
            text += (f"  tracing stopped: the TraceGraph was still changing after {self.give_up_after} "
                     "iterations (new shapes or paths every iteration); the rest ran eagerly\n")
        elif self.stopped_reason == "disabled":
            text += "  tracing was stopped by terra.disable()\n"
        if self.mode == "coexec":
            c = self.tracer.coexec_stats()
            text += (f"  co-execution: {self.coexec_iterations} iterations, {self.fallbacks} fallbacks; "
                     f"{c['submitted']} ops to the executor, {c['eager']} run by Python (views, fetches), "
                     f"{c['fetches']} fetches; executor busy {c['executor_busy_s']:.3f} s, "
                     f"Python waited {c['fetch_wait_s']:.3f} s\n")
            if c["first_divergence"]:
                text += f"  first fallback: {c['first_divergence']}\n"
        return text

    def at_exit(self):
        if self.active:
            self._stop("exit")
        if self.report_at_exit and self.rank == 0:
            sys.stdout.flush()
            print(self.report(), end="", file=sys.stderr, flush=True)
        if self.dot_path and self.rank == 0:
            with open(self.dot_path, "w") as f:
                f.write(self.tracer.dot())


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
    if s.mode == "coexec":
        d["coexec"] = dict(s.tracer.coexec_stats(), iterations=s.coexec_iterations,
                           fallbacks=s.fallbacks, phase=s.phase)
    return d


def dot():
    """The TraceGraph as Graphviz DOT text ("" when tracing never ran)."""
    s = _last_session()
    return s.tracer.dot() if s is not None else ""


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
