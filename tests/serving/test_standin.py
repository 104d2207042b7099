"""The development stand-in's TF Serving behaviours: version discovery and labels, warm-up replay,
metadata. (It stands in for tensorflow_model_server, which cannot be installed here.)"""
from __future__ import annotations

import shutil

import grpc
import pytest
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

from cxr_tfp import client
from cxr_tfp import model_dir
from serving.standin import find_versions, start_server
from tests.serving import tiny_model
from tests.serving.conftest import MODEL_NAME, image_request


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory, tiny_base):
    base = tmp_path_factory.mktemp("versions") / MODEL_NAME
    shutil.copytree(f"{tiny_base}/1", base / "1700000000")
    shutil.copytree(f"{tiny_base}/1", base / "1700000500")
    (base / "1700000900").mkdir()   # a push in progress: no saved_model.pb yet, must be ignored
    return str(base)


def test_find_versions_ignores_unfinished_push(two_versions, tiny_base):
    assert sorted(find_versions(two_versions)) == [1700000000, 1700000500]
    assert find_versions(f"{tiny_base}/1") == {1: f"{tiny_base}/1"}   # a bare SavedModel
    with pytest.raises(FileNotFoundError, match="no SavedModel"):
        start_server(f"{two_versions}/1700000900")


def test_latest_version_and_labels(two_versions, images):
    with start_server(two_versions, MODEL_NAME,
                      version_labels={"stable": 1700000000, "canary": 1700000500}) as srv:
        (latest,) = client.predict_files(srv.address, [images["white"]])
        (stable,) = client.predict_files(srv.address, [images["white"]], version_label="stable")
        (pinned,) = client.predict_files(srv.address, [images["white"]], version=1700000500)
        assert (latest["version"], stable["version"], pinned["version"]) == \
            (1700000500, 1700000000, 1700000500)
        with pytest.raises(client.ServingError, match="Specific\\(cxr_tfp, 42\\)"):
            client.predict_files(srv.address, [images["white"]], version=42)
        with pytest.raises(client.ServingError) as ei:
            client.predict_files(srv.address, [images["white"]], version_label="beta")
        assert ei.value.code == "INVALID_ARGUMENT" and "beta" in str(ei.value)


def test_warmup_replayed_and_a_broken_one_fails_the_load(tmp_path, tiny_base, images):
    with start_server(tiny_base, MODEL_NAME) as srv:
        (served,) = srv.servicer.models[MODEL_NAME].values()
        assert served.warmup_count == 2
    bad = tmp_path / MODEL_NAME / "1"
    shutil.copytree(f"{tiny_base}/1", bad)
    tiny_model.write_warmup(str(bad), [image_request([images["not_image"]])])
    with pytest.raises(Exception, match="warm-up request 0 .* failed: .*image"):
        start_server(str(tmp_path / MODEL_NAME), MODEL_NAME)


def test_metadata_rejects_unknown_field_and_counts_requests(tiny_base, images):
    with start_server(tiny_base, MODEL_NAME) as srv:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(client.make_channel(srv.address))
        req = get_model_metadata_pb2.GetModelMetadataRequest()
        req.model_spec.name = MODEL_NAME
        req.metadata_field.append("labels")
        with pytest.raises(grpc.RpcError) as ei:
            stub.GetModelMetadata(req, timeout=5)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        client.predict_files(srv.address, [images["white"]] * 3, batch_size=2)
        assert srv.servicer.requests_served == 2
        assert set(client.get_signature_defs(stub, MODEL_NAME)) == {
            model_dir.SERVING_SIGNATURE, model_dir.IMAGE_SIGNATURE}


@pytest.mark.slow
def test_started_as_a_program_answers_like_in_process(tiny_base, images, tmp_path):
    """The demo and the serving benchmark start the stand-in as its own program (run_program)."""
    from serving.standin import run_program

    with start_server(tiny_base, MODEL_NAME) as srv:
        (inproc,) = client.predict_files(srv.address, [images["white"]])
    with run_program(tiny_base, MODEL_NAME) as (address, pid):
        assert pid > 0
        (prog,) = client.predict_files(address, [images["white"]])
    probs = [[f["probability"] for f in r["findings"]] for r in (inproc, prog)]
    assert len(probs[0]) > 0 and probs[1] == pytest.approx(probs[0], abs=1e-6)
    with pytest.raises(RuntimeError, match="exited before it was ready"):
        with run_program(str(tmp_path / "nothing_here"), MODEL_NAME, timeout_s=120):
            pass
