"""Sync points: the Python entry points that read tensor data without the dispatcher.

Loads python/terra/_sync.py as a standalone module, so no build of terra._C is needed.
"""

import collections
import contextlib
import copy
import importlib.util
import io
import operator
import pathlib
import pickle
import threading

import numpy as np
import pytest
import torch
import torch.utils.dlpack

_PATH = pathlib.Path(__file__).resolve().parents[2] / "python" / "terra" / "_sync.py"
_spec = importlib.util.spec_from_file_location("terra_sync_under_test", _PATH)
sync = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sync)

PATCHED_METHODS = (
    "numpy", "__array__", "tolist", "data_ptr", "const_data_ptr", "untyped_storage",
    "__repr__", "__format__", "__dlpack__", "apply_", "map_", "map2_",
    "item", "__float__", "__int__", "__bool__", "__index__", "__complex__", "data",
)
PATCHED_FUNCTIONS = (
    (torch, "save"), (torch.serialization, "save"),
    (torch, "to_dlpack"), (torch.utils.dlpack, "to_dlpack"), (torch.utils, "swap_tensors"),
)


class Recorder:
    """on_read and suspend that log into one list: ("read", tensor, kind), "enter", "exit"."""

    def __init__(self):
        self.log = []

    def on_read(self, tensor, kind):
        self.log.append(("read", tensor, kind))

    @contextlib.contextmanager
    def suspend(self):
        self.log.append("enter")
        try:
            yield
        finally:
            self.log.append("exit")

    def reads(self):
        return [(e[1], e[2]) for e in self.log if isinstance(e, tuple)]

    def kinds(self):
        return [k for _, k in self.reads()]


@pytest.fixture
def rec():
    recorder = Recorder()
    sync.install(recorder.on_read, recorder.suspend)
    return recorder


@pytest.fixture
def spies(monkeypatch):
    """monkeypatch for replacing an original before install; uninstalls before undoing."""
    yield monkeypatch
    sync.uninstall()


@pytest.fixture(autouse=True)
def _always_uninstall():
    yield
    sync.uninstall()
    assert not sync.installed()


def snapshot():
    methods = {name: torch.Tensor.__dict__.get(name, "absent") for name in PATCHED_METHODS}
    methods["__str__"] = torch.Tensor.__dict__.get("__str__", "absent")
    functions = {(owner.__name__, name): owner.__dict__[name] for owner, name in PATCHED_FUNCTIONS}
    return methods, functions


def same(a, b):
    if isinstance(a, torch.Tensor):
        return type(a) is type(b) and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


T = torch.arange(6, dtype=torch.float32).reshape(2, 3) / 3
Z = torch.tensor(2.0 / 3)
A = torch.arange(3, dtype=torch.float32)  # apply_ and map_ write it: identity callables

# (test id, kind, tensor read, the call, result to compare with the unpatched call)
CASES = [
    ("numpy", "numpy", T, lambda: T.numpy(), lambda r: r),
    ("np.asarray", "__array__", T, lambda: np.asarray(T), lambda r: r),
    ("np.asarray-dtype", "__array__", T, lambda: np.asarray(T, dtype=np.float64), lambda r: r),
    # numpy 2 calls __array__(copy=True), which Tensor.__array__ rejects, then retries.
    ("np.array", "__array__", T, lambda: np.array(T), lambda r: r),
    ("np.sin", "__array__", T, lambda: np.sin(T), lambda r: r),
    ("tolist", "tolist", T, lambda: T.tolist(), lambda r: r),
    ("tolist-0dim", "tolist", Z, lambda: Z.tolist(), lambda r: r),
    ("data_ptr", "data_ptr", T, lambda: T.data_ptr(), lambda r: r),
    ("const_data_ptr", "data_ptr", T, lambda: T.const_data_ptr(), lambda r: r),
    ("untyped_storage", "untyped_storage", T, lambda: T.untyped_storage(),
     lambda r: (r.data_ptr(), r.nbytes())),
    ("repr", "print", T, lambda: repr(T), lambda r: r),
    ("str", "print", T, lambda: str(T), lambda r: r),
    ("f-string-repr", "print", T, lambda: f"{T!r}", lambda r: r),
    ("f-string", "format", T, lambda: f"{T}", lambda r: r),
    ("f-string-0dim", "format", Z, lambda: f"{Z}", lambda r: r),
    ("f-string-0dim-spec", "format", Z, lambda: f"{Z:.3f}", lambda r: r),
    ("format", "format", Z, lambda: format(Z, "+.2e"), lambda r: r),
    ("__dlpack__", "dlpack", T, lambda: T.__dlpack__(), lambda r: torch.from_dlpack(r)),
    ("from_dlpack", "dlpack", T, lambda: torch.from_dlpack(T), lambda r: r),
    ("np.from_dlpack", "dlpack", T, lambda: np.from_dlpack(T), lambda r: r),
    ("utils.dlpack.to_dlpack", "dlpack", T, lambda: torch.utils.dlpack.to_dlpack(T),
     lambda r: torch.from_dlpack(r)),
    ("torch.to_dlpack", "dlpack", T, lambda: torch.to_dlpack(T), lambda r: torch.from_dlpack(r)),
    ("apply_", "apply", A, lambda: A.apply_(lambda v: v), lambda r: r.clone()),
    ("map_", "apply", A, lambda: A.map_(A, lambda a, b: a), lambda r: r.clone()),
    ("map2_", "apply", A, lambda: A.map2_(A, A, lambda a, b, c: a), lambda r: r.clone()),
]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2: __array__ without copy=
@pytest.mark.parametrize("kind,tensor,call,result", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_entry_point_reports_once(rec, kind, tensor, call, result):
    sync.uninstall()
    expected = result(call())
    sync.install(rec.on_read, rec.suspend)
    got = result(call())
    assert len(rec.reads()) == 1
    read, read_kind = rec.reads()[0]
    assert read is tensor
    assert read_kind == kind
    assert rec.log[1:] == ["enter", "exit"]
    assert same(got, expected)


def test_handouts_report_the_array_they_return(rec):
    # Tensor.numpy and __array__ hand out the tensor's memory: on_handout gets the
    # array (Terra notes the memory while it lives); reads that copy get no call.
    handed = []
    sync.install(rec.on_read, rec.suspend, lambda t, array: handed.append((t, array)))
    a = T.numpy()
    b = np.asarray(T)
    c = np.asarray(T, dtype=np.float64)
    T.tolist()
    repr(T)
    assert [t is T for t, _ in handed] == [True, True, True]
    assert handed[0][1] is a and handed[1][1] is b and handed[2][1] is c
    assert a.base is not None and np.shares_memory(b, a) and c.base is None
    assert rec.kinds() == ["numpy", "__array__", "__array__", "tolist", "print"]


def test_scalar_reads_call_on_scalar_without_suspending(rec):
    # Dispatched reads: the C++ interception must still see them, so no suspend; on_scalar
    # hears of each (Terra makes those on other threads wait for the value).
    scalars = []
    z = Z.item()
    sync.install(rec.on_read, rec.suspend, None, scalars.append)
    i = torch.tensor(3)
    c = torch.tensor(1 + 2j)
    got = (Z.item(), float(Z), int(i), bool(i), operator.index(i), complex(c), [0, 1, 2, 3][i])
    assert got == (z, z, 3, True, 3, 1 + 2j, 3)
    assert [t is Z for t in scalars[:2]] == [True, True] and all(t is i for t in scalars[2:5])
    assert scalars[5] is c and scalars[6] is i and len(scalars) == 7
    assert rec.log == []
    sync.install(rec.on_read, rec.suspend)  # no on_scalar: nothing to call
    assert Z.item() == float(Z)


def test_data_assignment_and_swap_report_the_tensors_they_repoint(rec):
    # p.data = x and swap_tensors point a tensor at other memory with no ATen op the
    # interception sees; reading p.data reports nothing.
    p = torch.nn.Parameter(T.clone())
    view = p.data
    new = torch.zeros(2, 3)
    p.data = new
    assert rec.reads() == [(p, "set_data")]
    assert torch.equal(p, new) and p.requires_grad and torch.equal(view, T)
    a, b = torch.ones(2), torch.zeros(2)
    torch.utils.swap_tensors(a, b)
    assert rec.reads()[1:] == [(a, "set_data"), (b, "set_data")]
    assert a.tolist() == [0.0, 0.0] and b.tolist() == [1.0, 1.0]


def test_pickle_reports_once(rec):
    # Tensor.__reduce_ex__ -> _typed_storage() -> untyped_storage(); the storage's own
    # __reduce__ then calls torch.save on the storage, which holds no tensor to report.
    got = pickle.loads(pickle.dumps(T))
    assert rec.reads() == [(T, "untyped_storage")]
    assert torch.equal(got, T)


def test_print_reports_once(rec, capsys):
    sync.uninstall()
    print(T)
    expected = capsys.readouterr().out
    sync.install(rec.on_read, rec.suspend)
    print(T)
    assert capsys.readouterr().out == expected
    assert rec.reads() == [(T, "print")]


def test_tensor_inside_container_reported_by_its_own_repr(rec):
    text = repr([T, Z])
    assert rec.reads() == [(T, "print"), (Z, "print")]
    assert text == f"[{T!r}, {Z!r}]"


def test_subclass_reported(rec):
    p = torch.nn.Parameter(T.clone())
    text = repr(p)
    f"{torch.nn.Parameter(Z.clone())}"
    p.detach().numpy()
    assert text.startswith("Parameter containing:")
    assert rec.kinds() == ["print", "format", "numpy"]
    assert rec.reads()[0][0] is p


def test_torch_function_subclass_sees_the_original_function(rec):
    seen = []

    class Logged(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            seen.append(func)
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **(kwargs or {}))

    x = T.clone().as_subclass(Logged)
    expected = T.tolist()
    rec.log.clear()
    assert x.tolist() == expected
    assert seen == [torch._C.TensorBase.tolist]
    assert rec.reads() == [(x, "tolist")]

    # torch's own export-only subclass checks func against the unpatched __dlpack__.
    ro = torch.utils.dlpack.ReadOnlyTensorWrapper(T)
    assert torch.equal(torch.from_dlpack(ro.__dlpack__(max_version=(1, 0))), T)
    assert rec.kinds() == ["tolist", "dlpack"]


def test_nested_calls_do_not_double_report(rec):
    np.asarray(T)  # __array__ -> numpy()
    f"{T}"  # __format__ -> object.__format__ -> str -> __repr__ (-> tolist)
    f"{Z:.2f}"  # __format__ -> item()
    str(T)  # __repr__ -> tolist() inside _tensor_str
    with pytest.warns(UserWarning, match="TypedStorage is deprecated"):
        T.storage()  # storage -> _typed_storage -> untyped_storage
    assert rec.kinds() == ["__array__", "format", "format", "print", "untyped_storage"]
    assert rec.log.count("enter") == 5


def test_calls_from_on_read_are_not_reported():
    log = []

    def on_read(tensor, kind):
        log.append(kind)
        tensor.numpy()
        repr(tensor)

    sync.install(on_read, contextlib.nullcontext)
    T.tolist()
    assert log == ["tolist"]


def test_original_runs_inside_suspend(rec, spies):
    def spy_tolist(self):
        rec.log.append("tolist")
        return []

    def spy_save(obj, f):
        rec.log.append("save")

    sync.uninstall()
    spies.setattr(torch.Tensor, "tolist", spy_tolist)
    spies.setattr(torch, "save", spy_save)
    spies.setattr(torch.serialization, "save", spy_save)
    sync.install(rec.on_read, rec.suspend)

    T.tolist()
    assert rec.log == [("read", T, "tolist"), "enter", "tolist", "exit"]
    rec.log.clear()
    torch.save({"a": T, "b": Z}, None)
    assert rec.log == [("read", T, "save"), ("read", Z, "save"), "enter", "save", "exit"]
    sync.uninstall()
    assert torch.Tensor.__dict__["tolist"] is spy_tolist
    assert torch.save is spy_save and torch.serialization.save is spy_save


def test_uninstall_restores_the_original_objects():
    before = snapshot()
    originals = [getattr(torch.Tensor, name) for name in PATCHED_METHODS]
    sync.install(lambda t, k: None, contextlib.nullcontext)
    assert sync.installed()
    for name, original in zip(PATCHED_METHODS, originals):
        wrapper = torch.Tensor.__dict__[name]
        assert wrapper is not original
        assert wrapper.__wrapped__ is original and wrapper.__name__ == name
    assert torch.save is torch.serialization.save
    assert torch.save.__wrapped__ is before[1][("torch", "save")]
    assert torch.to_dlpack is torch.utils.dlpack.to_dlpack
    assert torch.Tensor.__dict__["__repr__"].__doc__ == before[0]["__repr__"].__doc__

    sync.uninstall()
    assert not sync.installed()
    assert snapshot() == before
    for name, original in zip(PATCHED_METHODS, originals):
        assert getattr(torch.Tensor, name) is original
    assert "numpy" not in torch.Tensor.__dict__
    assert torch.Tensor.numpy is torch._C.TensorBase.numpy
    sync.uninstall()  # a second uninstall is a no-op
    assert snapshot() == before


def test_wrapper_held_after_uninstall_passes_through(rec):
    held_save = torch.save
    held_repr = torch.Tensor.__repr__
    sync.uninstall()
    buf = io.BytesIO()
    held_save(T, buf)
    assert held_repr(T) == repr(T)
    assert rec.log == []
    buf.seek(0)
    assert torch.equal(torch.load(buf), T)


@pytest.mark.parametrize("name", ["torch.save", "torch.serialization.save", "obj="])
def test_save_reports_each_tensor_and_round_trips(rec, tmp_path, name):
    a, b, c, d = T.clone(), Z.clone(), torch.ones(4, dtype=torch.int64), torch.zeros(2, 2)
    obj = {
        "a": a,
        "nested": {"list": [b, (c, a)], "od": collections.OrderedDict(d=d, n=3)},
        "s": "text",
    }
    obj["nested"]["self"] = obj  # a cycle: walked once
    path = tmp_path / "obj.pt"
    if name == "torch.save":
        torch.save(obj, path)
    elif name == "torch.serialization.save":
        torch.serialization.save(obj, path)
    else:
        torch.save(obj=obj, f=path)

    assert rec.reads() == [(a, "save"), (b, "save"), (c, "save"), (d, "save")]
    assert rec.log[-2:] == ["enter", "exit"]  # untyped_storage() inside save: not reported
    loaded = torch.load(path)
    assert torch.equal(loaded["a"], a)
    assert torch.equal(loaded["nested"]["list"][0], b)
    assert torch.equal(loaded["nested"]["list"][1][0], c)
    assert loaded["nested"]["list"][1][1] is loaded["a"]
    assert torch.equal(loaded["nested"]["od"]["d"], d)
    assert loaded["nested"]["self"] is loaded


def test_save_of_a_bare_tensor_and_of_no_tensor(rec):
    buf = io.BytesIO()
    torch.save(T, buf)
    torch.save({"x": 1}, io.BytesIO())
    assert rec.reads() == [(T, "save")]
    assert rec.log.count("enter") == 2
    buf.seek(0)
    assert torch.equal(torch.load(buf), T)


Pair = collections.namedtuple("Pair", "x y")


def test_save_walks_sets_tuples_and_shared_tensors_once(rec):
    a, b = T.clone(), Z.clone()
    torch.save([{a}, Pair(a, b), (b,), {"k": [a]}], io.BytesIO())
    assert rec.reads() == [(a, "save"), (b, "save")]


def test_save_of_an_object_the_walk_cannot_see_into_reports_none_last(rec):
    # A module's parameters are pickled nested, unreported: None asks for everything.
    model = torch.nn.Linear(2, 1)
    torch.save({"model": model, "t": T, "dtype": torch.float32, "n": None}, io.BytesIO())
    assert rec.reads() == [(T, "save"), (None, "save")]


class Unavailable(Exception):
    pass


def test_on_read_exception_propagates_and_original_does_not_run(spies, tmp_path):
    ran = []

    def spy_numpy(self):
        ran.append(self)

    def on_read(tensor, kind):
        raise Unavailable(kind)

    entered = []
    spies.setattr(torch.Tensor, "numpy", spy_numpy)
    sync.install(on_read, lambda: contextlib.nullcontext(entered.append(1)))
    with pytest.raises(Unavailable, match="numpy"):
        T.numpy()
    with pytest.raises(Unavailable, match="print"):
        repr(T)
    path = tmp_path / "never.pt"
    with pytest.raises(Unavailable, match="save"):
        torch.save({"t": T}, path)
    assert ran == [] and entered == []
    assert not path.exists()

    # The per-thread state is reset: the next call reports again.
    log = []
    sync.install(lambda t, k: log.append(k), contextlib.nullcontext)
    T.numpy()
    assert log == ["numpy"] and ran == [T]


def test_original_exception_propagates_unchanged(rec):
    x = T.clone().requires_grad_()
    sync.uninstall()
    with pytest.raises(RuntimeError) as unpatched:
        x.numpy()
    with pytest.raises(BufferError) as unpatched_dlpack:
        x.__dlpack__()
    sync.install(rec.on_read, rec.suspend)
    with pytest.raises(RuntimeError) as patched:
        x.numpy()
    with pytest.raises(BufferError) as patched_dlpack:
        x.__dlpack__()
    assert str(patched.value) == str(unpatched.value)
    assert str(patched_dlpack.value) == str(unpatched_dlpack.value)
    assert rec.log == [("read", x, "numpy"), "enter", "exit", ("read", x, "dlpack"), "enter", "exit"]
    x.detach().tolist()
    assert rec.kinds()[-1] == "tolist"


def test_unknown_keyword_rejected_without_report(rec):
    with pytest.raises(TypeError, match="copy"):
        T.__array__(copy=True)
    assert rec.log == []


def test_install_is_idempotent():
    first, second = [], []
    sync.install(lambda t, k: first.append(k), contextlib.nullcontext)
    wrappers = snapshot()
    sync.install(lambda t, k: second.append(k), contextlib.nullcontext)
    assert snapshot() == wrappers  # not wrapped twice
    T.tolist()
    assert first == [] and second == ["tolist"]
    sync.uninstall()
    assert torch.Tensor.tolist is torch._C.TensorBase.tolist


def test_nesting_state_is_per_thread():
    inside = threading.Event()
    release = threading.Event()
    log = []
    lock = threading.Lock()

    def on_read(tensor, kind):
        with lock:
            log.append((threading.current_thread().name, kind))

    @contextlib.contextmanager
    def suspend():
        if threading.current_thread().name == "blocked":
            inside.set()
            release.wait(10)
        yield

    sync.install(on_read, suspend)
    blocked = threading.Thread(target=T.tolist, name="blocked")
    blocked.start()
    assert inside.wait(10)
    other = threading.Thread(target=T.numpy, name="other")
    other.start()
    other.join(10)
    release.set()
    blocked.join(10)
    assert sorted(log) == [("blocked", "tolist"), ("other", "numpy")]


def test_deepcopy_and_state_dict_save(rec):
    p = torch.nn.Parameter(T.clone())
    q = copy.deepcopy(p)
    assert torch.equal(q, p) and type(q) is torch.nn.Parameter
    buf = io.BytesIO()
    torch.save(torch.nn.Linear(2, 2).state_dict(), buf)
    assert rec.kinds() == ["save", "save"]
