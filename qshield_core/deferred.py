"""Deferred imports: a module that a dependency imports at start-up but uses only in one rarely-run path.

torchattacks 3.5.1 imports ``scipy.stats`` in its package ``__init__`` (for TI-FGSM's Gaussian kernel
only; no attack of this project uses it), and that import was the largest single part of the app's start
after PyTorch's own (about 1.2 s here, beyond the part of scipy torchattacks needs anyway).
:func:`defer_import` puts a stand-in for such a module in ``sys.modules``: the importing library binds it,
and the real module is imported, once, on the first attribute read, from whichever thread reads first,
under the import system's own lock for that module (no lock of ours is held during an import, so none can
deadlock with it). Later imports get the real module. The standard library's ``importlib.util.LazyLoader``
does the same, but on Python 3.11 two threads reading a lazy module at once can see it half-initialised
(CPython gh-114763, fixed in 3.12.3), and the app reads from several threads.

Two cases beyond that: a module that a library imports with ``from module import function`` (which reads
the function at once) is deferred with ``functions=``, and the stand-in has under each of those names a
forwarding function that imports the module on its first call; and a stand-in for a submodule does not
import its parent packages (deferring a submodule of torchattacks must not import torchattacks). A package's
submodules imported through the stand-in (``import scipy.linalg.cython_blas``) are bound on the real package
once it is imported.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import threading
import types
from collections.abc import Callable, Sequence


class DeferredModule(types.ModuleType):
    """Stands in ``sys.modules`` for a module not imported yet; its first attribute read imports it."""

    def __init__(self, spec: importlib.machinery.ModuleSpec) -> None:
        super().__init__(spec.name)
        self.__spec__, self.__loader__ = spec, spec.loader
        self.__package__ = spec.parent if spec.submodule_search_locations is None else spec.name
        if spec.has_location:  # read by scans of sys.modules (inspect.getmodule) without loading the module
            self.__file__, self.__cached__ = spec.origin, spec.cached
        if spec.submodule_search_locations is not None:  # a package: submodules can be found without loading it
            self.__path__ = list(spec.submodule_search_locations)
        self._deferred_swap = threading.Lock()
        self._deferred_module: types.ModuleType | None = None

    def _load(self) -> types.ModuleType:
        module = self._deferred_module
        if module is not None:
            return module
        with self._deferred_swap:  # held only to take the stand-in out, never during the import
            if sys.modules.get(self.__name__) is self:
                _bind(self.__name__, None)
        try:
            # The import system's own per-module lock (with its deadlock detection) makes a second thread wait
            # for the first thread's import, and hands the module so far to a read from inside that import.
            module = importlib.import_module(self.__name__)
        except BaseException:
            with self._deferred_swap:
                if self.__name__ not in sys.modules:  # a failed import leaves nothing: stand in again
                    _bind(self.__name__, self)
            raise
        _adopt_submodules(module)
        self._deferred_module = module
        return module

    def _forward(self, name: str) -> Callable:
        """A function that imports the module on its first call and calls the module's ``name``."""
        module_name = self.__name__

        def forwarding(*args, **kwargs):
            return getattr(self._load(), name)(*args, **kwargs)

        forwarding.__name__ = forwarding.__qualname__ = name
        forwarding.__module__ = module_name
        forwarding.__doc__ = f"{module_name}.{name}, imported on the first call (qshield_core.deferred)."
        return forwarding

    def __getattr__(self, name: str):  # called only for names the stand-in does not have itself
        if name == "__path__":  # a module, not a package (the import system asks at every ``from m import f``)
            raise AttributeError(f"module {self.__name__!r} has no attribute '__path__'")
        return getattr(self._load(), name)

    def __dir__(self) -> list[str]:
        return dir(self._load())


def defer_import(name: str, *, functions: Sequence[str] = ()) -> types.ModuleType:
    """The module ``name`` if it is imported already, else a :class:`DeferredModule` for it (also put in
    ``sys.modules``, and on its parent package when that is imported, so that ``from parent import name`` finds
    it). Each of ``functions`` is, on the stand-in, a function that imports the module on its first call."""
    if name in sys.modules:
        return sys.modules[name]
    spec = _find_spec_without_importing(name)
    if spec is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    stand_in = DeferredModule(spec)
    for function in functions:
        setattr(stand_in, function, stand_in._forward(function))
    _bind(name, stand_in)
    return stand_in


def _find_spec_without_importing(name: str) -> importlib.machinery.ModuleSpec | None:
    """``importlib.util.find_spec``, except that parent packages not imported yet are searched on their
    paths instead of being imported (importing torchattacks to defer one of its submodules would defeat it)."""
    parts = name.split(".")
    imported = next(i for i in range(len(parts), 0, -1) if i == 1 or ".".join(parts[:i - 1]) in sys.modules)
    spec = importlib.util.find_spec(".".join(parts[:imported]))
    for i in range(imported + 1, len(parts) + 1):
        if spec is None or spec.submodule_search_locations is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:i]), spec.submodule_search_locations)
    return spec


def _adopt_submodules(package: types.ModuleType) -> None:
    """Bind on ``package`` its submodules imported while the stand-in held its place (``import
    scipy.linalg.cython_blas`` imports that submodule alone, through the stand-in's ``__path__``, and binds it
    on the stand-in), as the import system binds every submodule on its parent."""
    prefix = package.__name__ + "."
    for name, module in list(sys.modules.items()):
        child = name.removeprefix(prefix)
        if name.startswith(prefix) and "." not in child and child not in vars(package) and module is not None:
            setattr(package, child, module)


def _bind(name: str, module: types.ModuleType | None) -> None:
    """Put ``module`` in ``sys.modules`` and on its parent package under ``name``; None removes both."""
    parent, _, child = name.rpartition(".")
    if module is None:
        sys.modules.pop(name, None)
        if parent and getattr(sys.modules.get(parent), child, None) is not None:
            delattr(sys.modules[parent], child)
    else:
        sys.modules[name] = module
        if parent in sys.modules:
            setattr(sys.modules[parent], child, module)
