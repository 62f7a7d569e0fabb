import atexit
import ctypes
import os
import sys
import time

from terra import _C

_DEFAULT_TIMEOUT_S = 300.0


class _Group:
    def __init__(self, rank, world_size, local_rank, client, heartbeat, not_a_rank=None):
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.client = client
        self.heartbeat = heartbeat
        # A process a rank forked or started: how ("forked from", "started
        # by"); it answers rank() as that rank but has no control plane.
        self.not_a_rank = not_a_rank
        self.rendezvous_s = 0.0
        self.process_group = None  # terra._C.ProcessGroup, made on first collective


_group = None
_failed = False  # an uncaught exception is ending this process
# How long a rank exiting normally waits for the others before finalizing MPI
# together with them; past it, it leaves MPI without finalizing.
_EXIT_BARRIER_S = 10.0


def _note_failure(hook):
    def excepthook(*args):
        global _failed
        _failed = True
        hook(*args)
    return excepthook


def _in_terrarun_job():
    return os.environ.get("TERRA_LAUNCHER") == "terrarun" and "TERRA_JOB_SECRET" in os.environ


def _started_by_a_rank():
    # A process a rank started (multiprocessing's spawn, a subprocess running
    # Python) inherits the rank's environment, but is not the rank: the rank
    # notes its pid when it joins.
    rank_pid = os.environ.get("TERRA_RANK_PID")
    return _in_terrarun_job() and rank_pid is not None and rank_pid != str(os.getpid())


def _launched_by_terrarun():
    return _in_terrarun_job() and not _started_by_a_rank()


def _env_int(name, default=None):
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise _C.TerraError(f"{name} is not set: launch the program with terrarun")
        return default
    try:
        return int(value)
    except ValueError:
        raise _C.TerraError(f"{name}={value!r} is not an integer") from None


def init(timeout=_DEFAULT_TIMEOUT_S):
    """Joins the job: connects to the control plane, starts the heartbeat, and
    waits until every rank has joined. Idempotent. Runs at ``import terra``
    under terrarun."""
    global _group
    if _group is not None:
        return
    start = time.perf_counter()
    if _started_by_a_rank():
        # rank() and world_size() answer as the rank that started it (a
        # dataset may shard by them); collectives and barriers refuse.
        rank_ = _env_int("RANK")
        _group = _Group(rank_, _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK", rank_), None, None,
                        not_a_rank="started by")
        return
    if not _launched_by_terrarun():
        world = _env_int("WORLD_SIZE", 1)
        if world != 1:
            raise _C.TerraError(
                f"WORLD_SIZE={world} but this process was not started by terrarun: "
                "run it as `terrarun -np N program.py`")
        _group = _Group(0, 1, 0, None, None)
        return
    rank_ = _env_int("RANK")
    world = _env_int("WORLD_SIZE")
    local = _env_int("LOCAL_RANK", rank_)
    host = os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = _env_int("MASTER_PORT")
    secret = os.environ["TERRA_JOB_SECRET"]
    interval = _env_int("TERRA_HEARTBEAT_INTERVAL_MS", 1000) / 1000.0
    if not 0 <= rank_ < world:
        raise _C.TerraError(f"RANK={rank_} is outside WORLD_SIZE={world}")
    os.environ["TERRA_RANK_PID"] = str(os.getpid())
    client = _C.ControlClient(host, port, secret, rank_, timeout)
    heartbeat = _C.Heartbeat(host, port, secret, rank_, interval)
    _group = _Group(rank_, world, local, client, heartbeat)
    client.barrier("terra/init", world, timeout)
    _group.rendezvous_s = time.perf_counter() - start
    sys.excepthook = _note_failure(sys.excepthook)
    atexit.register(shutdown)


def _after_fork_in_child():
    """A forked child is not a rank: it leaves the job's control plane to its
    parent. Its copies of the client and the heartbeat are never destroyed,
    since their destructors would say goodbye as the parent's rank and wait
    for threads that stayed in the parent."""
    global _group
    group = _group
    if group is None:
        return
    for handle in (group.client, group.heartbeat, group.process_group):
        if handle is not None:
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(handle))
    # rank() and world_size() still answer (a dataset may shard by them);
    # collectives and barriers refuse (_control_plane).
    _group = _Group(group.rank, group.world_size, group.local_rank, None, None, not_a_rank="forked from")


def _control_plane(group, what):
    """The group's client; in a process a rank forked or started, an error."""
    if group.not_a_rank is not None:
        how = ("(a DataLoader worker, multiprocessing)" if group.not_a_rank == "forked from"
               else "(multiprocessing's spawn, a subprocess)")
        raise _C.TerraError(
            f"terra.distributed.{what}: this process was {group.not_a_rank} rank {group.rank} {how} and "
            "is not a rank of the job; run collectives and barriers in the rank's own process")
    return group.client


os.register_at_fork(after_in_child=_after_fork_in_child)


def is_initialized():
    return _group is not None


def _require():
    if _group is None:
        init()
    return _group


def rank():
    return _require().rank


def world_size():
    return _require().world_size


def local_rank():
    return _require().local_rank


def process_group():
    """This process's terra._C.ProcessGroup (collectives on tensors)."""
    group = _require()
    if group.process_group is None:
        group.process_group = _C.ProcessGroup(_control_plane(group, "process_group"), group.rank,
                                              group.world_size)
    return group.process_group


def barrier(name="terra/barrier", timeout=_DEFAULT_TIMEOUT_S):
    """Blocks until every rank has called barrier() with the same name as
    many times; raises terra.TerraTimeoutError after `timeout` seconds."""
    group = _require()
    if _control_plane(group, "barrier") is not None:
        group.client.barrier(name, group.world_size, timeout)


def shutdown():
    """Leaves the job cleanly: the heartbeat says goodbye, so exiting is not
    mistaken for a lost rank."""
    global _group
    group, _group = _group, None
    if group is None:
        return
    pg, group.process_group = group.process_group, None
    if pg is not None:
        # Closing MPI (MPI_Finalize) is collective: only when every rank is
        # leaving too. A rank that fails, or leaves while the others go on,
        # exits without it, so it never waits on ranks that will not come.
        together = False
        if not _failed and group.client is not None:
            try:
                group.client.barrier("terra/exit", group.world_size, _EXIT_BARRIER_S)
                together = True
            except Exception:  # noqa: BLE001 (a timeout or a lost control plane)
                pass
        if not together and group.world_size > 1:
            pg.abandon()
        del pg
    group.heartbeat = None
    group.client = None
