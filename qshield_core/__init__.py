"""QShield: hybrid quantum-classical classifiers and their adversarial robustness."""

import contextlib

from .deferred import defer_import

__version__ = "0.1.0"

# torchattacks' package __init__ imports scipy.stats for TI-FGSM alone, which no attack here uses: imported on
# first use instead (qshield_core.deferred). That is about 1.2 s of imports here (scipy.stats beyond the part of
# scipy that torchattacks' One Pixel needs anyway) off the app's start.
defer_import("scipy.stats")
# Its One Pixel attack imports differential_evolution from a module that imports scipy.optimize (0.5-0.6 s more):
# a forwarding function stands in for it until One Pixel first runs. (Another torchattacks without that module
# is imported as it is.)
# numba, loading the hybrid head's kernels, checks for a BLAS with `import scipy.linalg.cython_blas`: with
# scipy.linalg deferred that imports the one submodule, not the package (about 0.5 s).
defer_import("scipy.linalg")
with contextlib.suppress(ModuleNotFoundError):
    defer_import("torchattacks.attacks._differential_evolution", functions=("differential_evolution",))
