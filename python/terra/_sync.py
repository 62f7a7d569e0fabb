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
    "dlpack"           torch.Tensor.__dlpack__, torch.utils.dlpack.to_dlpack and
                       torch.to_dlpack (one builtin under two names)
    "save"             torch.save and torch.serialization.save (one function under two
                       names): every tensor found by walking the saved object through
                       dicts (OrderedDict included), lists, tuples and sets, each distinct
                       tensor once; tensors inside other objects (an nn.Module, a
                       dataclass) are not found.
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

``.item()``, ``bool(t)``, ``int(t)`` and ``float(t)`` are dispatched (_local_scalar_dense)
and are seen by the C++ interception, so they are not patched here. Not coverable from
Python: ``Tensor.__dlpack_c_exchange_api__``, a capsule of C function pointers through
which consumers such as tvm-ffi export a tensor without calling any Python; the storage
"throw on access" flags are the safety net there. Nor are a ``torch.Generator``'s own
methods (``g.get_state()``, ``torch.default_generator.manual_seed(s)``): the type is
immutable, and no flag guards a generator.

Contract of the callbacks given to ``install``:
- ``on_read(tensor, kind)`` runs before the read, once per call the program makes (for
  "save", once per tensor found, all before the save starts). Its exceptions propagate
  to the caller and the original is then not run: Terra raises there when a value cannot
  be produced.
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
)

# (on_read, suspend) while installed, else None. Replaced whole, so that a wrapper
# reading it once sees a consistent pair.
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
                    return _handle_torch_function(original, (self,), self, *args, **kwargs)
                return original(self, *args, **kwargs)
        finally:
            state.active = False

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


def _saved_tensors(args, kwargs):
    """Each distinct tensor in torch.save's obj, depth first in container order."""
    found = []
    seen = set()
    stack = [args[0] if args else kwargs.get("obj")]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
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
    return found


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
    # Each function is wrapped once and the wrapper set under all its names, so that
    # whichever name the program calls reports once, and uninstall restores each name.
    for original, owners, name, kind, find_tensors in (
        (torch.utils.dlpack.to_dlpack, (torch.utils.dlpack, torch), "to_dlpack", "dlpack",
         _first_tensor),
        (torch.serialization.save, (torch.serialization, torch), "save", "save",
         _saved_tensors),
        *((getattr(torch.random, name), (torch.random, torch), name, "rng", _no_tensor)
          for name in ("get_rng_state", "set_rng_state", "manual_seed", "seed")),
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


def install(on_read, suspend):
    """Patches the entry points (see the module docstring) to call on_read and suspend.

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
        _hooks = (on_read, suspend)


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
