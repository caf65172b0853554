"""QShield: hybrid quantum-classical classifiers and their adversarial robustness."""

from .deferred import defer_import

__version__ = "0.1.0"

# torchattacks' package __init__ imports scipy.stats for TI-FGSM alone, which no attack here uses: imported on
# first use instead (qshield_core.deferred). That is about 1.2 s of imports here (scipy.stats beyond the part of
# scipy that torchattacks' One Pixel needs anyway) off the app's start.
defer_import("scipy.stats")
