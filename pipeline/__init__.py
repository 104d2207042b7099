"""The TFX pipeline of cxr-tfp (see pipeline/README.md).

Importing tfx imports tensorflow_transform, which sets ``TF_USE_LEGACY_KERAS=1`` unless it is
already set; ``tf.keras`` then resolves to Keras 2 and TensorFlow Probability (used by the model's
latent head) fails to import. This pipeline does not use Transform, so pin Keras 3 before any tfx
import. Every entry point (runners, demo, tests) imports this package first. The value is forced,
not defaulted: ``tfx run create`` starts the runner from a CLI process that already imported tfx,
so the inherited environment says 1.

With 0 set, ``tensorflow_transform/keras_lib.py`` (imported by tfx) logs through absl
"TF_USE_LEGACY_KERAS is set to 0, which will not use Keras 2 ... Please set TF_USE_LEGACY_KERAS=1".
That advice is for pipelines with a Transform component; this one has none, and 1 would break the
model (above). The warning is dropped here by a filter on the ``absl`` logger so that the start-up
no longer contradicts pipeline/README.md; every other absl message passes.
"""
import logging
import os

os.environ["TF_USE_LEGACY_KERAS"] = "0"
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

LEGACY_KERAS_WARNING = "TF_USE_LEGACY_KERAS is set to"


class _NoTransformKerasAdvice(logging.Filter):
    """Drops tensorflow_transform's "Please set TF_USE_LEGACY_KERAS=1" (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return LEGACY_KERAS_WARNING not in str(record.msg)


def _install_filter() -> None:
    from absl import logging as absl_logging  # absl's own logger class, not a plain one made first

    logger = absl_logging.get_absl_logger()
    if not any(isinstance(f, _NoTransformKerasAdvice) for f in logger.filters):
        logger.addFilter(_NoTransformKerasAdvice())


_install_filter()

import cxr_tfp  # noqa: E402,F401  (hides TensorFlow's start-up noise for the pipeline's entry points)
