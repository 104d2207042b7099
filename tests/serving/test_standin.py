"""The development stand-in's TF Serving behaviours: version discovery and labels, warm-up replay,
metadata. (It stands in for tensorflow_model_server, which cannot be installed here.)"""
from __future__ import annotations

import shutil

import grpc
import pytest
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

from cxr_tfp import client
from cxr_tfp import model_dir
from serving.standin import (VersionPolicy, find_versions, read_model_config_file, serving_versions,
                             start_from_config, start_server)
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
    assert sorted(serving_versions(two_versions)) == [1700000000, 1700000500]
    assert find_versions(f"{tiny_base}/1") == {1: f"{tiny_base}/1"}   # the library still reads a bare export
    with pytest.raises(FileNotFoundError, match="no SavedModel"):
        start_server(f"{two_versions}/1700000900")


def test_an_unversioned_model_folder_is_refused_as_tf_serving_does(tiny_base):
    # TF Serving finds no version in <base>/saved_model.pb; the stand-in used to serve it as "version 1"
    with pytest.raises(ValueError, match="holds a SavedModel itself, not in a version folder.*/1"):
        start_server(f"{tiny_base}/1", MODEL_NAME)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        start_server(f"{tiny_base}/nowhere", MODEL_NAME)


def _config(tmp_path, base, policy: str, labels: dict) -> str:
    text = (f'model_config_list {{ config {{ name: "{MODEL_NAME}" base_path: "{base}" '
            f'model_platform: "tensorflow" model_version_policy {{ {policy} }} '
            + "".join(f'version_labels {{ key: "{k}" value: {v} }} ' for k, v in labels.items()) + "} }")
    path = tmp_path / "models.config"
    path.write_text(text)
    return str(path)


def test_models_config_labels_and_version_policy_are_honoured(two_versions, images, tmp_path):
    cfg = _config(tmp_path, two_versions, "latest { num_versions: 2 }",
                  {"stable": 1700000000, "canary": 1700000500})
    (m,) = read_model_config_file(cfg)
    assert m.policy == VersionPolicy("latest", 2) and m.version_labels["canary"] == 1700000500
    with start_from_config(cfg) as srv:
        (canary,) = client.predict_files(srv.address, [images["white"]], version_label="canary")
        (stable,) = client.predict_files(srv.address, [images["white"]], version_label="stable")
        (latest,) = client.predict_files(srv.address, [images["white"]])
        assert (canary["version"], stable["version"], latest["version"]) == (1700000500, 1700000000, 1700000500)
        with pytest.raises(client.ServingError, match="no such version label.*beta"):
            client.predict_files(srv.address, [images["white"]], version_label="beta")


def test_default_policy_serves_the_latest_only_and_says_which_version_is_missing(two_versions, images):
    with start_server(two_versions, MODEL_NAME) as srv:
        assert sorted(srv.servicer.models[MODEL_NAME]) == [1700000500]
        with pytest.raises(client.ServingError) as ei:
            client.predict_files(srv.address, [images["white"]], version=1700000000)
        msg = str(ei.value)
        assert "is served at" in msg and "not the version asked for" in msg and "check --model" not in msg
        assert "loaded versions: [1700000500]" in msg and "latest 1" in msg
        with pytest.raises(client.ServingError, match="is not served.*check --model"):
            client.predict_files(srv.address, [images["white"]], model="other")


def test_a_label_the_policy_does_not_load_or_a_missing_specific_version_is_refused(two_versions, tmp_path):
    cfg = _config(tmp_path, two_versions, "latest { num_versions: 1 }", {"stable": 1700000000})
    with pytest.raises(ValueError, match="stable.*does not load"):
        start_from_config(cfg)
    cfg = _config(tmp_path, two_versions, "specific { versions: 7 }", {})
    with pytest.raises(ValueError, match=r"version\(s\) \[7\] not found"):
        start_from_config(cfg)


def test_latest_version_and_labels(two_versions, images):
    with start_server(two_versions, MODEL_NAME, version_policy=VersionPolicy("all"),
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
