"""QShield: hybrid quantum-classical classifiers and their adversarial robustness."""

__version__ = "0.1.0"
