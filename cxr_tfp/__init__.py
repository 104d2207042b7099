"""cxr-tfp: probabilistic integration of expert annotations in chest X-ray classification."""
__version__ = "0.1.0"
