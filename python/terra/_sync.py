"""Sync points: the Python entry points that read a tensor's data without the dispatcher.

Terra intercepts ATen ops in C++ (design.md §3), but a few Python entry points reach a
tensor's memory directly, so the interception never sees them. ``install`` wraps each of
them so that Terra hears of the read before it happens and can wait for the value:

    kind               patched names
    "numpy"            torch.Tensor.numpy
    "__array__"        torch.Tensor.__array__ (numpy.asarray(t), numpy.array(t), ufuncs)
    "tolist"           torch.Tensor.tolist
    "data_ptr"         torch.Tensor.data_ptr, torch.Tensor.const_data_ptr
    "untyped_storage"  torch.Tensor.untyped_storage (also reached by Tensor.storage(),
                       _typed_storage(), share_memory_() and pickling a tensor)
    "print"            torch.Tensor.__repr__ (repr, str, print: Tensor defines no
                       __str__, object.__str__ calls __repr__), and Tensor.__str__ too on
                       a torch that defines one
    "format"           torch.Tensor.__format__ (f"{t}", f"{t:.3f}", format(t, spec))
    "apply"            torch.Tensor.apply_, map_ and map2_: C++ loops that call a Python
                       callable per element, reading and writing the memory directly
                       (the other tensors of map_ and map2_ too: the read drains)
    "set_data"         the torch.Tensor.data setter (``p.data = x``, vector_to_parameters)
                       and torch.utils.swap_tensors (both tensors): they point the
                       tensor at other memory without an ATen op the interception sees,
                       behind queued ops that hold the tensor itself. The getter is not
                       reported.
    "dlpack"           torch.Tensor.__dlpack__, torch.utils.dlpack.to_dlpack and
                       torch.to_dlpack (one builtin under two names)
    "save"             torch.save and torch.serialization.save (one function under two
                       names): every tensor found by walking the saved object through
                       dicts (OrderedDict included), lists, tuples and sets, each distinct
                       tensor once. Another object in it (an nn.Module, a dataclass) may
                       hold tensors the walk cannot see, and the pickler reads them
                       nested, unreported: such a save reports None once, after the
                       tensors found (Terra then waits for everything queued).
    "compiled"         torch._inductor.output_code.CompiledFxGraph.__call__ and
                       CompiledAOTI.__call__: code torch.compile generated, whose kernels
                       read and write tensor memory directly. Patched when that module is
                       imported (a post-import hook; importing it costs a second), and run
                       with interception suspended, so the ATen ops it calls run at once
                       on real values. Reported with no tensor.
    "rng"              torch.get_rng_state, torch.set_rng_state, torch.manual_seed and
                       torch.seed (each also under torch.random; torch.random.fork_rng
                       calls them): they read or replace the default CPU generator's
                       state, which queued random ops have yet to consume. Reported
                       with no tensor (on_read(None, "rng")).

``.item()``, ``bool(t)``, ``int(t)``, ``float(t)``, ``operator.index(t)`` and ``complex(t)``
are dispatched (_local_scalar_dense) and are seen by the C++ interception on the thread it
watches. They are patched for ``on_scalar`` alone, which hears of them on every thread:
Terra makes a read on another thread wait for the value. Not coverable from
Python: ``Tensor.__dlpack_c_exchange_api__``, a capsule of C function pointers through
which consumers such as tvm-ffi export a tensor without calling any Python; the storage
"throw on access" flags are the safety net there. Nor are the default generator's own
methods (``torch.default_generator.manual_seed(s)``, ``.get_state()``): the type is
immutable, and no flag guards a generator. A generator the program made needs no report:
the ops drawing from it run at once, on the program's thread.

Contract of the callbacks given to ``install``:
- ``on_read(tensor, kind)`` runs before the read, once per call the program makes (for
  "save", once per tensor found, all before the save starts). Its exceptions propagate
  to the caller and the original is then not run: Terra raises there when a value cannot
  be produced.
- ``on_handout(tensor, array)``, optional, runs after a reported "numpy" or "__array__"
  call returned ``array``: the program may now read and write the tensor's memory through
  it, behind the dispatcher, for as long as the array lives. Terra notes that memory
  (ops then read it when queued and write it at once) until the array dies.
- ``on_scalar(tensor)``, optional, runs before each scalar read (above), nested or not,
  without ``suspend``: the read itself must still reach the C++ interception.
- ``suspend()`` returns a context manager; the original implementation runs inside it.
  Terra's one switches its op interception off, so that the ATen ops an entry point
  issues internally (printing runs dozens) are not recorded.
- Calls nested inside a reported call (``__array__`` calling ``numpy()``, ``__format__``
  calling ``__repr__`` or ``item()``, ``torch.save`` calling ``untyped_storage()``), and
  calls made from inside ``on_read`` itself, run the original directly and report
  nothing. A call the original rejects for an unknown keyword runs the original (which
  raises TypeError) without a report: numpy 2 first tries ``__array__(copy=...)`` and
  retries without it, and the retry is the one reported.
- A tensor subclass or mode with ``__torch_function__`` receives the original function
  as ``func``, as without Terra, so identity checks such as ``func in
  {torch.Tensor.__dlpack__}`` written before ``install`` keep working.

Threading: the patches are process-global; ``install`` and ``uninstall`` are serialized
by a lock and may run on any thread. Whether a call is nested is tracked per thread, so
each thread reports its own outermost calls. Cost: a patched call takes about 0.6 µs
more than the original with no-op callbacks (data_ptr: 0.08 µs unpatched).
"""

import functools
import importlib.abc
import importlib.machinery
import inspect
import sys
import threading

import torch

__all__ = ["install", "uninstall", "installed"]

# (name on torch.Tensor, kind). A name this torch lacks is skipped.
_TENSOR_METHODS = (
    ("numpy", "numpy"),
    ("__array__", "__array__"),
    ("tolist", "tolist"),
    ("data_ptr", "data_ptr"),
    ("const_data_ptr", "data_ptr"),
    ("untyped_storage", "untyped_storage"),
    ("__repr__", "print"),
    ("__format__", "format"),
    ("__dlpack__", "dlpack"),
    ("apply_", "apply"),
    ("map_", "apply"),
    ("map2_", "apply"),
)

# Scalar reads: dispatched (_local_scalar_dense), so the C++ interception sees them on the
# thread it watches; patched only for on_scalar, which hears of them on other threads.
_SCALAR_METHODS = ("item", "__float__", "__int__", "__bool__", "__index__", "__complex__")

# The kinds whose result hands the tensor's memory to the program (on_handout).
_HANDOUT_KINDS = frozenset(("numpy", "__array__"))

# (on_read, suspend, on_handout, on_scalar) while installed, else None. Replaced whole,
# so that a wrapper reading it once sees a consistent set.
_hooks = None
# Each entry: (owner, name, the raw attribute in owner.__dict__, or _ABSENT).
_saved = []
_ABSENT = object()
_lock = threading.Lock()


class _ThreadState(threading.local):
    # True while this thread is inside a reported call, its on_read included. A flag is
    # enough for a depth counter: only the outermost call sets and clears it.
    active = False


_state = _ThreadState()
_has_torch_function_unary = torch._C._has_torch_function_unary
_handle_torch_function = torch.overrides.handle_torch_function


def _keyword_names(fn):
    """The keywords fn accepts, or None when it takes **kwargs or cannot be inspected."""
    code = getattr(fn, "__code__", None)
    if code is None or code.co_flags & inspect.CO_VARKEYWORDS:
        return None
    return frozenset(
        code.co_varnames[code.co_posonlyargcount : code.co_argcount + code.co_kwonlyargcount]
    )


def _wrap_method(original, kind):
    accepted = _keyword_names(original)
    handout = kind in _HANDOUT_KINDS

    @functools.wraps(original)
    def wrapper(self, *args, **kwargs):
        # Run the original unreported when uninstalled, nested, or bound to raise
        # TypeError for an unknown keyword (the caller may retry without it).
        hooks = _hooks
        state = _state
        if (
            hooks is None
            or state.active
            or (kwargs and accepted is not None and not kwargs.keys() <= accepted)
        ):
            return original(self, *args, **kwargs)
        state.active = True
        try:
            hooks[0](self, kind)
            with hooks[1]():
                # Dispatch __torch_function__ here, as the original would, but with the
                # original as func, so that identity checks against it still hold.
                if _has_torch_function_unary(self):
                    result = _handle_torch_function(original, (self,), self, *args, **kwargs)
                else:
                    result = original(self, *args, **kwargs)
            if handout and hooks[2] is not None:
                hooks[2](self, result)
            return result
        finally:
            state.active = False

    return wrapper


def _wrap_scalar(original):
    # No nesting flag and no suspend: on_scalar only waits, and the op that follows must
    # reach the C++ interception.
    @functools.wraps(original)
    def wrapper(self, *args, **kwargs):
        hooks = _hooks
        if hooks is not None and hooks[3] is not None:
            hooks[3](self)
        return original(self, *args, **kwargs)

    return wrapper


def _wrap_function(original, kind, find_tensors):
    accepted = _keyword_names(original)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        hooks = _hooks
        state = _state
        if (
            hooks is None
            or state.active
            or (kwargs and accepted is not None and not kwargs.keys() <= accepted)
        ):
            return original(*args, **kwargs)
        state.active = True
        try:
            on_read = hooks[0]
            for tensor in find_tensors(args, kwargs):
                on_read(tensor, kind)
            with hooks[1]():
                return original(*args, **kwargs)
        finally:
            state.active = False

    return wrapper


def _no_tensor(args, kwargs):
    return (None,)


def _first_tensor(args, kwargs):
    if args and isinstance(args[0], torch.Tensor):
        return (args[0],)
    return ()


# What torch.save's walk knows holds no tensor. A storage was reported when the program
# got it (untyped_storage, a handout: Terra waited for everything then).
_LEAF_TYPES = (str, bytes, int, float, complex, bool, type(None), torch.dtype, torch.device,
               torch.Size, torch.layout, torch.memory_format, torch.UntypedStorage,
               torch.storage.TypedStorage)


def _saved_tensors(args, kwargs):
    """Each distinct tensor in torch.save's obj, depth first in container order; then
    None if the walk met an object it cannot see into."""
    found = []
    seen = set()
    opaque = False
    stack = [args[0] if args else kwargs.get("obj")]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        if isinstance(obj, _LEAF_TYPES):
            continue
        if isinstance(obj, torch.Tensor):
            seen.add(id(obj))
            found.append(obj)
        elif isinstance(obj, dict):
            seen.add(id(obj))
            items = [x for pair in obj.items() for x in pair]
            stack.extend(reversed(items))
        elif isinstance(obj, (list, tuple)):
            seen.add(id(obj))
            stack.extend(reversed(obj))
        elif isinstance(obj, (set, frozenset)):
            seen.add(id(obj))
            stack.extend(obj)
        else:
            opaque = True
    if opaque:
        found.append(None)
    return found


def _two_tensors(args, kwargs):
    return tuple(t for t in args[:2] if isinstance(t, torch.Tensor))


class _WrappedProperty(property):
    """A property that names what it wraps, as functools.wraps does for the functions."""


def _wrap_data_property(descriptor):
    """torch.Tensor.data with a setter that reports "set_data" (the getter is the C one's)."""
    setter = _wrap_function(descriptor.__set__, "set_data", _first_tensor)
    wrapper = _WrappedProperty(descriptor.__get__, setter, None, descriptor.__doc__)
    wrapper.__wrapped__ = descriptor
    wrapper.__name__ = descriptor.__name__
    return wrapper


def _patch(owner, name, wrapper):
    _saved.append((owner, name, owner.__dict__.get(name, _ABSENT)))
    setattr(owner, name, wrapper)


def _patch_all():
    methods = list(_TENSOR_METHODS)
    if torch.Tensor.__str__ is not object.__str__:
        methods.append(("__str__", "print"))
    for name, kind in methods:
        original = getattr(torch.Tensor, name, None)
        if original is not None:
            _patch(torch.Tensor, name, _wrap_method(original, kind))
    data = torch._C.TensorBase.__dict__.get("data")
    if data is not None and "data" not in torch.Tensor.__dict__:
        _patch(torch.Tensor, "data", _wrap_data_property(data))
    for name in _SCALAR_METHODS:
        original = getattr(torch.Tensor, name, None)
        if original is not None:
            _patch(torch.Tensor, name, _wrap_scalar(original))
    # Each function is wrapped once and the wrapper set under all its names, so that
    # whichever name the program calls reports once, and uninstall restores each name.
    for original, owners, name, kind, find_tensors in (
        (torch.utils.dlpack.to_dlpack, (torch.utils.dlpack, torch), "to_dlpack", "dlpack",
         _first_tensor),
        (torch.serialization.save, (torch.serialization, torch), "save", "save",
         _saved_tensors),
        *((getattr(torch.random, name), (torch.random, torch), name, "rng", _no_tensor)
          for name in ("get_rng_state", "set_rng_state", "manual_seed", "seed")),
        (torch.utils.swap_tensors, (torch.utils,), "swap_tensors", "set_data", _two_tensors),
    ):
        wrapper = _wrap_function(original, kind, find_tensors)
        for owner in owners:
            if getattr(owner, name, None) is original:
                _patch(owner, name, wrapper)
    for module_name, patch in _LAZY.items():
        if module_name in sys.modules:
            patch(sys.modules[module_name])
    if _post_import not in sys.meta_path:
        sys.meta_path.insert(0, _post_import)


def _patch_inductor(module):
    for name in ("CompiledFxGraph", "CompiledAOTI"):
        cls = getattr(module, name, None)
        if cls is not None and "__call__" in cls.__dict__:
            _patch(cls, "__call__", _wrap_function(cls.__dict__["__call__"], "compiled", _no_tensor))


# Modules patched when they are imported, since importing them up front costs too much.
_LAZY = {"torch._inductor.output_code": _patch_inductor}


class _PostImport(importlib.abc.MetaPathFinder):
    """Patches a module of _LAZY right after it is first imported."""

    def find_spec(self, name, path, target=None):
        patch = _LAZY.get(name)
        if patch is None or _hooks is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            with _lock:
                if _hooks is not None:
                    patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


_post_import = _PostImport()


def _restore_all():
    if _post_import in sys.meta_path:
        sys.meta_path.remove(_post_import)
    while _saved:
        owner, name, original = _saved.pop()
        if original is _ABSENT:
            delattr(owner, name)
        else:
            setattr(owner, name, original)


def install(on_read, suspend, on_handout=None, on_scalar=None):
    """Patches the entry points (see the module docstring) to call the callbacks.

    Installing again only replaces the callbacks; the entry points are wrapped once.
    """
    global _hooks
    with _lock:
        if not _saved:
            try:
                _patch_all()
            except BaseException:
                _restore_all()
                raise
        _hooks = (on_read, suspend, on_handout, on_scalar)


def uninstall():
    """Restores every patched name to its original object; a no-op when not installed.

    A wrapper the program still holds (``from torch import save`` run while installed)
    then just calls the original.
    """
    global _hooks
    with _lock:
        _hooks = None
        _restore_all()


def installed():
    return _hooks is not None
