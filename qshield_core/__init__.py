"""QShield: hybrid quantum-classical classifiers and their adversarial robustness."""

import contextlib

from .deferred import defer_import

__version__ = "0.1.0"

# Imports that the app's first page would make and never use, made on first use instead (qshield_core.deferred;
# what each saved is measured in the README, "App responsiveness"):
# - torchattacks' package __init__ imports scipy.stats for TI-FGSM alone, which no attack here uses (about 1.2 s);
defer_import("scipy.stats")
# - numba, loading the hybrid head's kernels, checks for a BLAS with `import scipy.linalg.cython_blas`: with
#   scipy.linalg deferred that imports the one submodule, not the package (about 0.5 s);
defer_import("scipy.linalg")
# - torchattacks' One Pixel imports differential_evolution from a module that imports scipy.optimize: a
#   forwarding function stands in for it until One Pixel first runs (another torchattacks without that module
#   is imported as it is).
with contextlib.suppress(ModuleNotFoundError):
    defer_import("torchattacks.attacks._differential_evolution", functions=("differential_evolution",))
