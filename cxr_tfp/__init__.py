"""cxr-tfp: probabilistic integration of expert annotations in chest X-ray classification."""
__version__ = "0.1.0"


def load(path):
    """Load a trained model for prediction: ``cxr_tfp.load(PATH).predict(["a.png", "b.dcm"])``.

    See :mod:`cxr_tfp.predictor` (imported here lazily: ``import cxr_tfp`` stays light).
    """
    from cxr_tfp.predictor import load as _load

    return _load(path)
