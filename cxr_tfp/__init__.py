"""cxr-tfp: probabilistic integration of expert annotations in chest X-ray classification."""
__version__ = "0.1.0"


def _quiet_entry_points() -> None:
    # A command of the project (python -m cxr_tfp.X, serving.standin, pipeline runners): hide
    # TensorFlow's start-up noise unless --debug. A notebook or another program importing the
    # library keeps TensorFlow's own logging (see cxr_tfp.cli.quiet_tensorflow).
    from cxr_tfp import cli

    if cli.entry_point() is not None:
        cli.quiet_tensorflow()


_quiet_entry_points()


def load(path):
    """Load a trained model for prediction: ``cxr_tfp.load(PATH).predict(["a.png", "b.dcm"])``.

    See :mod:`cxr_tfp.predictor` (imported here lazily: ``import cxr_tfp`` stays light).
    """
    from cxr_tfp.predictor import load as _load

    return _load(path)
