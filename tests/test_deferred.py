"""Deferred imports (qshield_core.deferred): loaded once, on first read, from any thread; the app's first page
leaves scipy.stats deferred."""

from __future__ import annotations

import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest

from qshield_core.deferred import DeferredModule, defer_import

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def package(tmp_path, monkeypatch):
    """A package ``dpkg`` whose ``heavy`` submodule is slow, counts its executions and imports itself back (as
    scipy.stats does: ``import scipy.stats._stats_py`` from inside scipy.stats)."""
    root = tmp_path / "dpkg"
    (root / "heavy").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "counter.py").write_text("RUNS = []\n")
    (root / "heavy" / "__init__.py").write_text(
        "import time\nfrom dpkg import counter\ncounter.RUNS.append(1)\ntime.sleep(0.2)\n"
        "import dpkg.heavy.part as part\nVALUE = part.BASE + 1\n")
    (root / "heavy" / "part.py").write_text("BASE = 41\n")
    (root / "holder.py").write_text("REF = None\n")
    (root / "reentrant.py").write_text(
        "from dpkg import holder\nEARLY = 1\nSEEN = holder.REF.EARLY  # the stand-in, read from inside its import\n")
    (root / "broken.py").write_text("raise RuntimeError('cannot load')\n")
    (root / "sub").mkdir()
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "leaf.py").write_text(
        "from dpkg import counter\ncounter.RUNS.append('leaf')\ndef double(x):\n    return 2 * x\n")
    (root / "pack").mkdir()
    (root / "pack" / "__init__.py").write_text("from dpkg import counter\ncounter.RUNS.append('pack')\n")
    (root / "pack" / "leafmod.py").write_text("X = 1\n")
    (root / "sub" / "user.py").write_text("from dpkg.sub.leaf import double  # as torchattacks' One Pixel does\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "dpkg"
    for name in [m for m in sys.modules if m == "dpkg" or m.startswith("dpkg.")]:
        del sys.modules[name]


def test_a_deferred_module_loads_on_its_first_read_only(package):
    stand_in = defer_import("dpkg.heavy")
    from dpkg import counter

    assert isinstance(stand_in, DeferredModule) and counter.RUNS == []
    from dpkg import heavy  # binding it reads nothing

    assert heavy is stand_in and counter.RUNS == []
    assert heavy.VALUE == 42 and counter.RUNS == [1]
    assert type(sys.modules["dpkg.heavy"]) is types.ModuleType  # later imports get the real module
    from dpkg.heavy import VALUE

    assert VALUE == 42 and counter.RUNS == [1]


def test_first_reads_from_many_threads_load_it_once_and_all_see_it_whole(package):
    heavy = defer_import("dpkg.heavy")
    barrier, seen = threading.Barrier(8), []

    def read() -> None:
        barrier.wait()
        seen.append(heavy.VALUE)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    from dpkg import counter

    assert seen == [42] * 8 and counter.RUNS == [1]


def test_a_read_of_the_stand_in_from_inside_its_own_import_gets_the_module_so_far(package):
    from dpkg import holder

    holder.REF = defer_import("dpkg.reentrant")
    assert holder.REF.SEEN == 1 and holder.REF.EARLY == 1


def test_a_module_that_fails_to_load_raises_on_every_read_and_stays_deferred(package):
    broken = defer_import("dpkg.broken")
    for _ in range(2):
        with pytest.raises(RuntimeError, match="cannot load"):
            _ = broken.anything
    assert sys.modules["dpkg.broken"] is broken


def test_an_imported_module_is_returned_as_it_is_and_an_unknown_one_is_refused(package):
    import dpkg.heavy

    assert defer_import("dpkg.heavy") is dpkg.heavy
    with pytest.raises(ModuleNotFoundError, match=r"dpkg\.nothing"):
        defer_import("dpkg.nothing")


def test_a_deferred_function_imports_its_module_on_the_first_call_and_not_before(package):
    stand_in = defer_import("dpkg.sub.leaf", functions=("double",))
    assert "dpkg" not in sys.modules and "dpkg.sub" not in sys.modules  # its parents are not imported either
    from dpkg import counter
    from dpkg.sub import user  # ``from dpkg.sub.leaf import double`` binds the forwarding function

    assert user.double is stand_in.double and counter.RUNS == []
    barrier, seen = threading.Barrier(4), []

    def call() -> None:
        barrier.wait()
        seen.append(user.double(21))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [42] * 4 and counter.RUNS == ["leaf"]
    assert type(sys.modules["dpkg.sub.leaf"]) is types.ModuleType
    assert sys.modules["dpkg.sub"].leaf is sys.modules["dpkg.sub.leaf"]


def test_a_submodule_imported_through_the_stand_in_is_bound_on_the_real_package(package):
    """``import scipy.linalg.cython_blas`` (numba's check for a BLAS) with scipy.linalg deferred."""
    import dpkg  # as scipy is, when scipy.linalg is deferred

    stand_in = defer_import("dpkg.pack")
    import dpkg.pack.leafmod
    from dpkg import counter

    assert counter.RUNS == [] and dpkg.pack is stand_in and stand_in.leafmod.X == 1  # the package did not run
    assert sys.modules["dpkg.pack"] is stand_in
    assert getattr(stand_in, "not_there", None) is None  # a read of a name it lacks imports the package
    assert counter.RUNS == ["pack"] and sys.modules["dpkg.pack"].leafmod is sys.modules["dpkg.pack.leafmod"]


def test_the_first_page_leaves_most_of_scipy_unimported():
    """What the Attack Lab imports (the library, torchattacks, the pages' helpers, the head's kernels) leaves
    scipy.stats, scipy.linalg, scipy.optimize (One Pixel's), scipy.special and scipy.ndimage unimported (what
    that saves of the app's first result: README, "App responsiveness"). (pandas it imports: Plotly needs it
    whole, app.py.) One Pixel still runs."""
    code = ("import sys; import streamlit; import pages._shared, qshield_core.handout, qshield_core.drawing; "
            "import torchattacks, numpy as np; from qshield_core import fusion_jit\n"
            "fusion_jit.precompile((np.float32,))  # numba's check for a BLAS: scipy.linalg.cython_blas alone\n"
            "def state(m): return 'absent' if m not in sys.modules else type(sys.modules[m]).__name__\n"
            "names = ['scipy.stats', 'scipy.ndimage', 'torchattacks.attacks._differential_evolution', "
            "'scipy.linalg', 'scipy.optimize', 'scipy.special']\n"
            "print(*[state(m) for m in names])\n"
            "import torch; model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()\n"
            "attack = torchattacks.OnePixel(model, pixels=1, steps=2, popsize=4)\n"
            "x = attack(torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))\n"
            "print(tuple(x.shape), state('scipy.optimize'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    first_page, after_one_pixel = out.stdout.strip().splitlines()[-2:]
    assert first_page.split() == ["DeferredModule"] * 4 + ["absent"] * 2
    assert after_one_pixel == "(2, 1, 4, 4) module"
