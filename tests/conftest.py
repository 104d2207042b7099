"""Shared fixtures. Real sample data lives in ../shared/data beside the checkout (tests only)."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# importing tfx would otherwise switch tf.keras to legacy Keras 2 for the whole session.
os.environ["TF_USE_LEGACY_KERAS"] = "0"

REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    env = os.environ.get("CXR_TFP_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Real NIH sample files and DICOMs (a missing folder fails the run; set CXR_TFP_SHARED_DATA)."""
    path = _shared_data()
    if not path.is_dir():
        pytest.fail(f"real sample data not found at {path} (set CXR_TFP_SHARED_DATA)")
    return path
