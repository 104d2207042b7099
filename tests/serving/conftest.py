"""Fixtures for the serving tests.

``grpc_server`` is parametrised over two back ends serving the same tiny SavedModel:
- ``standin``: :mod:`serving.standin`, a PredictionService written in Python that STANDS IN
  for TensorFlow Serving (no ``tensorflow_model_server`` binary can be installed here);
- ``tf_serving``: a real ``tensorflow_model_server`` on loopback, found on PATH or named by
  ``$TENSORFLOW_MODEL_SERVER``. These cases carry the ``tf_serving`` marker: ``make test`` deselects
  them (no binary can be installed on a plain CI machine), ``make test-tf-serving`` runs them and
  FAILS when the binary is missing, so a missing server is never a silent skip.
Both listen on 127.0.0.1 on a free port and are stopped at teardown.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from cxr_tfp import features
from cxr_tfp import model_dir
from tests.serving import tiny_model

MODEL_NAME = "cxr_tfp"


def _png(path: Path, value: int, size=(40, 48)) -> str:
    path.write_bytes(features.encode_png(np.full(size, value, np.uint8)))
    return str(path)


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> dict:
    """Constant grey images {name: path}: black/white/mid PNGs, a JPEG, and a non-image file."""
    from PIL import Image

    d = tmp_path_factory.mktemp("images")
    out = {"black": _png(d / "black.png", 0), "white": _png(d / "white.png", 255),
           "mid": _png(d / "mid.png", 128, size=(64, 64))}
    Image.fromarray(np.full((30, 30), 255, np.uint8), mode="L").save(d / "white.jpg", quality=95)
    out["white_jpeg"] = str(d / "white.jpg")
    (d / "notes.png").write_bytes(b"this is not an image at all")
    out["not_image"] = str(d / "notes.png")
    return out


def image_request(paths, signature=model_dir.IMAGE_SIGNATURE, model=MODEL_NAME):
    """A PredictRequest for image files exactly as the client builds it."""
    from cxr_tfp.client import _make_request

    return _make_request([Path(p).read_bytes() for p in paths], model, signature)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, images) -> str:
    """TF Serving base path ``<tmp>/cxr_tfp`` holding version 1 of the tiny model (+ warm-up file)."""
    base = tmp_path_factory.mktemp("serving") / MODEL_NAME
    tiny_model.build(str(base / "1"), warmup_requests=[
        image_request([images["black"], images["white"]]),
        image_request([images["mid"]], signature=model_dir.SERVING_SIGNATURE)])
    return str(base)


def _model_server_binary():
    return os.environ.get("TENSORFLOW_MODEL_SERVER") or shutil.which("tensorflow_model_server")


class _RealServer:
    def __init__(self, binary: str, base: str):
        import portpicker

        self.port = portpicker.pick_unused_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [binary, f"--port={self.port}", "--rest_api_port=0", f"--model_name={MODEL_NAME}",
             f"--model_base_path={os.path.abspath(base)}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 60.0) -> None:
        import grpc

        from cxr_tfp.client import get_signature_defs, make_channel
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        stub = prediction_service_pb2_grpc.PredictionServiceStub(make_channel(self.address))
        end = time.time() + timeout_s
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tensorflow_model_server exited: {self.proc.stderr.read()[-2000:]}")
            try:
                get_signature_defs(stub, MODEL_NAME, 2.0)
                return
            except grpc.RpcError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError("tensorflow_model_server did not become ready in time")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


BACKENDS = ["standin", pytest.param("tf_serving", marks=pytest.mark.tf_serving)]


def serve(backend: str, base: str):
    """Start ``backend`` over the base path; returns (address, stop); fails when tf_serving is absent."""
    if backend == "standin":
        from serving.standin import start_server

        srv = start_server(base, MODEL_NAME)
        return srv.address, srv.stop
    binary = _model_server_binary()
    if not binary:
        pytest.fail("no tensorflow_model_server binary on PATH and $TENSORFLOW_MODEL_SERVER unset "
                    "(cannot be installed here, see ../shared/STACK.md)")
    srv = _RealServer(binary, base)
    return srv.address, srv.stop


@pytest.fixture(scope="module", params=BACKENDS)
def grpc_server(request, tiny_base):
    """(backend name, "127.0.0.1:PORT") of a server serving the tiny model as ``cxr_tfp``."""
    address, stop = serve(request.param, tiny_base)
    yield request.param, address
    stop()


@pytest.fixture(scope="session")
def export_base(tmp_path_factory) -> str:
    """TF Serving base path holding version 1 of the REAL export (tiny backbone, 64 px, synthetic)."""
    from cxr_tfp.config import load_config
    from cxr_tfp.export import export_saved_model
    from cxr_tfp.model import build_model

    cfg = load_config(overrides={"backbone": "tiny", "image_size": 64, "findings": "synthetic",
                                 "num_samples": 4})
    base = tmp_path_factory.mktemp("export") / MODEL_NAME
    export_saved_model(build_model(cfg), str(base / "1"), model_name=MODEL_NAME)
    return str(base)


@pytest.fixture(scope="module", params=BACKENDS)
def export_server(request, export_base):
    """(backend name, address) of a server serving the real export as ``cxr_tfp``."""
    address, stop = serve(request.param, export_base)
    yield request.param, address
    stop()
