"""The TFX pipeline of cxr-tfp (see pipeline/README.md).

Importing tfx imports tensorflow_transform, which sets ``TF_USE_LEGACY_KERAS=1`` unless it is
already set; ``tf.keras`` then resolves to Keras 2 and TensorFlow Probability (used by the model's
latent head) fails to import. This pipeline does not use Transform, so pin Keras 3 before any tfx
import. Every entry point (runners, demo, tests) imports this package first. The value is forced,
not defaulted: ``tfx run create`` starts the runner from a CLI process that already imported tfx,
so the inherited environment says 1.
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "0"
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
