"""gRPC round trips of the real client (cxr_tfp.client) against a PredictionService server.

Every test runs against the development stand-in (serving.standin, standing in for TF
Serving) and again against a real tensorflow_model_server when one is available (see conftest).
"""
from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from cxr_tfp import client, features
from cxr_tfp import model_dir
from tests.serving import tiny_model
from tests.serving.conftest import MODEL_NAME, image_request


def _by_name(result):
    return {f["finding"]: f for f in result["findings"]}


@pytest.mark.parametrize("signature", [model_dir.IMAGE_SIGNATURE, model_dir.SERVING_SIGNATURE])
def test_predict_files_values_thresholds_and_local_agree(grpc_server, images, tiny_base, signature):
    _, address = grpc_server
    files = [images["black"], images["white"], images["white_jpeg"]]
    remote = client.predict_files(address, files, signature=signature, model_dir=tiny_base)
    local = client.predict_files_local(tiny_base, files, signature=signature)
    assert [r["file"] for r in remote] == files
    for r, grey in zip(remote, (0.0, 1.0, 1.0)):
        assert r["version"] == 1 and r["signature"] == signature and r["model"] == MODEL_NAME
        assert r["threshold_source"] == "model"
        p, u = tiny_model.expected(grey)
        got = _by_name(r)
        assert list(got) == list(tiny_model.LABELS)
        for j, name in enumerate(tiny_model.LABELS):
            assert got[name]["probability"] == pytest.approx(p[j], abs=2e-3)
            assert got[name]["uncertainty"] == pytest.approx(u[j], abs=2e-3)
            assert got[name]["threshold"] == tiny_model.THRESHOLDS[name]
            assert got[name]["above_threshold"] == (p[j] >= tiny_model.THRESHOLDS[name])
    # white: Atelectasis sigmoid(2)=0.88 > 0.5 above; Cardiomegaly sigmoid(-2)=0.12 < 0.6 below
    assert _by_name(remote[1])["Atelectasis"]["above_threshold"] is True
    assert _by_name(remote[1])["Cardiomegaly"]["above_threshold"] is False
    for r, l in zip(remote, local):
        np.testing.assert_allclose([f["probability"] for f in r["findings"]],
                                   [f["probability"] for f in l["findings"]], atol=1e-6)


def test_batches_split_across_calls_keep_order(grpc_server, images):
    _, address = grpc_server
    files = [images["white"], images["black"], images["mid"], images["white"], images["black"]]
    res = client.predict_files(address, files, batch_size=2,
                               labels=list(tiny_model.LABELS), thresholds=tiny_model.THRESHOLDS)
    atel = [_by_name(r)["Atelectasis"]["probability"] for r in res]
    assert atel[0] == pytest.approx(atel[3]) and atel[1] == pytest.approx(atel[4])
    assert atel[1] < atel[2] < atel[0]


def test_without_assets_names_are_generic_and_flagged(grpc_server, images):
    _, address = grpc_server
    (res,) = client.predict_files(address, [images["white"]])
    assert [f["finding"] for f in res["findings"]] == ["finding_0", "finding_1", "finding_2"]
    assert res["threshold_source"] == "default"
    assert "no operating thresholds known" in client.format_table([res])


def test_wrong_labels_file_length_is_reported(grpc_server, images):
    _, address = grpc_server
    with pytest.raises(client.ServingError, match="3 findings but 2 label names"):
        client.predict_files(address, [images["white"]], labels=["a", "b"])


def test_dicom_round_trip_uses_project_reader(grpc_server, shared_data, tiny_base):
    from cxr_tfp.io import prepare_image

    _, address = grpc_server
    normal = shared_data / "dicom" / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
    mono1 = shared_data / "dicom" / "Fake_MONOHR1.dcm"
    files = [str(normal), str(mono1)]
    # At the model's own size the served pixels are exactly the ingestion's stored image.
    remote = client.predict_files(address, files, model_dir=tiny_base, image_size=tiny_model.SIZE)
    means = []
    for f, r in zip(files, remote):
        stored = prepare_image(f, tiny_model.SIZE)
        means.append(float(stored.mean()) / 255.0)
        p, u = tiny_model.expected(means[-1])
        np.testing.assert_allclose([x["probability"] for x in r["findings"]], p, atol=1e-4)
        np.testing.assert_allclose([x["uncertainty"] for x in r["findings"]], u, atol=1e-4)
    # MONOCHROME1 is inverted by the reader: same radiograph, complementary grey levels.
    assert means[0] + means[1] == pytest.approx(1.0, abs=0.01)
    # Full-size DICOM (default): decoded by the reader, resized inside the model; close to stored.
    full = client.predict_files(address, files[:1], model_dir=tiny_base)
    p, _ = tiny_model.expected(means[0])
    np.testing.assert_allclose([x["probability"] for x in full[0]["findings"]], p, atol=5e-3)


def test_real_nih_pngs(grpc_server, shared_data, tiny_base):
    _, address = grpc_server
    files = [str(p) for p in sorted((shared_data / "nih-sample" / "images").glob("*.png"))[:3]]
    remote = client.predict_files(address, files, model_dir=tiny_base)
    local = client.predict_files_local(tiny_base, files)
    for r, l in zip(remote, local):
        np.testing.assert_allclose([f["probability"] for f in r["findings"]],
                                   [f["probability"] for f in l["findings"]], atol=1e-6)


# -- bad requests: clear INVALID_ARGUMENT, and the server keeps serving ------------------------------
def _stub(address):
    return prediction_service_pb2_grpc.PredictionServiceStub(client.make_channel(address))


def _raw(sig=model_dir.IMAGE_SIGNATURE, key=model_dir.IMAGES_INPUT, proto=None):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = MODEL_NAME
    req.model_spec.signature_name = sig
    req.inputs[key].CopyFrom(proto)
    return req


BAD_REQUESTS = {
    "wrong_dtype": (lambda imgs: _raw(proto=tf.make_tensor_proto([1.0, 2.0], tf.float32)),
                    "string"),
    "wrong_shape": (lambda imgs: _raw(proto=tf.make_tensor_proto(
        [[b"a", b"b"], [b"c", b"d"]], tf.string)), "shape"),
    "not_an_image": (lambda imgs: _raw(proto=tf.make_tensor_proto(
        [Path(imgs["white"]).read_bytes(), b"definitely not a PNG"], tf.string)), "image"),
    "empty_batch": (lambda imgs: _raw(proto=tf.make_tensor_proto([], tf.string, shape=[0])),
                    "empty batch"),
    "wrong_input_name": (lambda imgs: _raw(key="pixels", proto=tf.make_tensor_proto(
        [b"x"], tf.string)), "pixels"),
    "bad_tf_example": (lambda imgs: _raw(sig=model_dir.SERVING_SIGNATURE,
                                         key=model_dir.EXAMPLES_INPUT,
                                         proto=tf.make_tensor_proto([b"\x01garbage"], tf.string)),
                       ""),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_is_invalid_argument_and_server_recovers(grpc_server, images, case):
    backend, address = grpc_server
    make, needle = BAD_REQUESTS[case]
    stub = _stub(address)
    with pytest.raises(grpc.RpcError) as ei:
        stub.Predict(make(images), timeout=10)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    if backend == "standin":  # the real server's wording is its own
        assert needle.lower() in ei.value.details().lower()
        assert "Detected at node" not in ei.value.details()  # no graph stack trace in the message
    ok = stub.Predict(image_request([images["white"]]), timeout=10)
    assert tf.make_ndarray(ok.outputs[model_dir.PROBABILITIES]).shape == (1, 3)


def test_client_surfaces_invalid_argument_message(grpc_server, images):
    _, address = grpc_server
    with client.PredictClient(address) as c:
        with pytest.raises(client.ServingError) as ei:
            c.predict_encoded([b"not an image"])
    assert ei.value.code == "INVALID_ARGUMENT"
    assert "rejected the request" in str(ei.value)


def test_client_rejects_non_image_file_before_sending(images):
    # Port 9 (discard) is never a server here: the file check must fail before any connection.
    with pytest.raises(client.InputFileError, match="notes.png: not a PNG, JPEG or DICOM"):
        client.predict_files("127.0.0.1:9", [images["white"], images["not_image"]])


# -- names: wrong model / signature -----------------------------------------------------------------
def test_wrong_model_name_is_clear(grpc_server, images):
    _, address = grpc_server
    with pytest.raises(client.ServingError) as ei:
        client.predict_files(address, [images["white"]], model="no_such_model")
    assert ei.value.code == "NOT_FOUND"
    assert "'no_such_model' is not served" in str(ei.value) and "--model" in str(ei.value)


def test_wrong_signature_lists_available(grpc_server, images):
    _, address = grpc_server
    with client.PredictClient(address, signature="predict_everything") as c:
        with pytest.raises(client.ServingError) as ei:
            c.predict_encoded([Path(images["white"]).read_bytes()])
    assert ei.value.code == "FAILED_PRECONDITION"
    msg = str(ei.value)
    assert "no signature 'predict_everything'" in msg
    assert model_dir.IMAGE_SIGNATURE in msg and model_dir.SERVING_SIGNATURE in msg


def test_model_metadata_signatures_match_contract(grpc_server):
    _, address = grpc_server
    defs = client.get_signature_defs(_stub(address), MODEL_NAME)
    assert set(defs) >= {model_dir.IMAGE_SIGNATURE, model_dir.SERVING_SIGNATURE}
    img = defs[model_dir.IMAGE_SIGNATURE]
    assert list(img.inputs) == [model_dir.IMAGES_INPUT]
    assert img.inputs[model_dir.IMAGES_INPUT].dtype == tf.string.as_datatype_enum
    assert set(img.outputs) == {model_dir.PROBABILITIES, model_dir.UNCERTAINTY}
    assert list(defs[model_dir.SERVING_SIGNATURE].inputs) == [model_dir.EXAMPLES_INPUT]


# -- CLI --------------------------------------------------------------------------------------------
def test_cli_json_and_table(grpc_server, images, tiny_base, capsys):
    _, address = grpc_server
    rc = client.main(["--server", address, "--model-dir", tiny_base, "--json",
                      images["white"], images["black"]])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in out] == [images["white"], images["black"]]
    assert _by_name(out[0])["Atelectasis"]["above_threshold"] is True
    rc = client.main(["--server", address, "--model-dir", tiny_base, images["white"]])
    table = capsys.readouterr().out
    assert rc == 0
    lines = [ln for ln in table.splitlines() if "Atelectasis" in ln]
    assert len(lines) == 1 and "ABOVE" in lines[0] and "0.881" in lines[0]
    assert any("Cardiomegaly" in ln and "below" in ln for ln in table.splitlines())


def test_cli_bad_file_exit_code(images, capsys):
    assert client.main(["--server", "127.0.0.1:9", images["not_image"]]) == 2
    assert "notes.png" in capsys.readouterr().err
    assert client.main(["--server", "127.0.0.1:9", "/no/such/file.png"]) == 2


def test_client_names_file_for_truncated_or_colour_images(tmp_path, images):
    from PIL import Image

    whole = Path(images["mid"]).read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "red.png")
    with pytest.raises(client.InputFileError, match=r"cut\.png: .*truncated"):
        client.encode_file(str(tmp_path / "cut.png"))
    with pytest.raises(client.InputFileError, match=r"red\.png: colour image"):
        client.encode_file(str(tmp_path / "red.png"))
    # A good PNG is sent byte for byte; with image_size it is the ingestion's stored image.
    assert client.encode_file(images["mid"]) == (whole, "png")
    from cxr_tfp.io import prepare_image

    resized, _ = client.encode_file(images["mid"], image_size=16)
    assert resized == features.encode_png(prepare_image(images["mid"], 16))


def test_concurrent_clients_get_their_own_answers(grpc_server, images):
    from concurrent.futures import ThreadPoolExecutor

    _, address = grpc_server
    order = ["white", "black", "mid", "white_jpeg"] * 3

    def one(name):
        (r,) = client.predict_files(address, [images[name]], labels=list(tiny_model.LABELS),
                                    thresholds=tiny_model.THRESHOLDS)
        return name, _by_name(r)["Atelectasis"]["probability"]

    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(one, order))
    by = {}
    for name, p in got:
        by.setdefault(name, set()).add(round(p, 6))
    assert all(len(v) == 1 for v in by.values()), by   # no cross-talk between requests
    assert by["white"] == by["white_jpeg"]
    assert next(iter(by["black"])) < next(iter(by["mid"])) < next(iter(by["white"]))
