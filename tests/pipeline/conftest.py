"""Pipeline tests: pin Keras 3 for the in-process Trainer before anything imports tfx.

(tensorflow_transform, imported by tfx, sets TF_USE_LEGACY_KERAS=1 when unset, which breaks
TensorFlow Probability in the model; see pipeline/__init__.py.)
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "0"
