"""Fail loudly unless every layer of the stack imports (run by the installer)."""
import importlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
MODULES = [
    "cxr_tfp", "tensorflow", "tensorflow_probability", "keras", "keras_cv", "apache_beam",
    "pydicom", "tensorflow_model_analysis",
    # tfx before TFDV: TFDV 1.16 imported on its own misses tfx_bsl.arrow.sql_util; through tfx it works.
    "tfx.v1", "tensorflow_data_validation", "ml_metadata",
    "tensorflow_serving.apis.prediction_service_pb2_grpc", "kfp", "matplotlib", "pytest",
]
failed = []
for name in MODULES:
    try:
        importlib.import_module(name)
    except Exception as exc:  # report every failure, not just the first
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
if failed:
    print("[install] ERROR: these imports fail:\n  " + "\n  ".join(failed), file=sys.stderr)
    sys.exit(1)
print(f"[install] all {len(MODULES)} imports OK")
