"""serving/: the TF Serving configs parse as the protos the server reads, and every image reference
uses the tensorflow-serving-api version pinned in requirements/constraints.txt (one source of truth)."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from tensorflow_serving.config import model_server_config_pb2

from cxr_tfp import client

REPO = Path(__file__).resolve().parents[2]
SERVING = REPO / "serving"
IMAGE_RE = re.compile(r"tensorflow/serving:([0-9A-Za-z.\-]+)")


def _pinned_serving_api() -> str:
    text = (REPO / "requirements" / "constraints.txt").read_text()
    m = re.search(r"^tensorflow-serving-api==([0-9.]+)\s*$", text, re.M)
    assert m, "tensorflow-serving-api must be pinned in requirements/constraints.txt"
    return m.group(1)


def _serving_files():
    return [p for p in SERVING.rglob("*") if p.is_file() and p.suffix in
            {".yml", ".yaml", ".sh", ".md", ".config", ".txt", ".py"}]


def test_every_image_reference_uses_the_pinned_version():
    pin = _pinned_serving_api()
    refs = {str(p.relative_to(REPO)): IMAGE_RE.findall(p.read_text()) for p in _serving_files()}
    found = [(f, v) for f, vs in refs.items() for v in vs]
    files = {f for f, _ in found}
    assert {"serving/docker-compose.yml", "serving/run_tf_serving.sh",
            "serving/k8s/deployment.yaml"} <= files
    wrong = [(f, v) for f, v in found if v != pin]
    assert not wrong, f"tensorflow/serving tags differ from the pin {pin}: {wrong}"


def _model_server_config(text: str):
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def test_models_config_parses_with_labels_and_policy():
    cfg = _model_server_config((SERVING / "models.config").read_text())
    (model,) = cfg.model_config_list.config
    assert model.name == client.DEFAULT_MODEL
    assert model.base_path == f"/models/{model.name}"
    assert model.model_platform == "tensorflow"
    assert model.model_version_policy.latest.num_versions == 2
    assert set(model.version_labels) == {"stable", "canary"}


def test_model_name_matches_pipeline_push_name():
    from cxr_tfp import model_dir
    from pipeline import configs

    assert configs.SERVING_MODEL_NAME == client.DEFAULT_MODEL == model_dir.MODEL_NAME
    for manifest in ("models.config", "docker-compose.yml", "k8s/deployment.yaml"):
        assert model_dir.MODEL_NAME in (SERVING / manifest).read_text(), manifest


def test_render_models_config_from_pushed_versions(tmp_path):
    spec = importlib.util.spec_from_file_location("_render", SERVING / "render_models_config.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    base = tmp_path / "cxr_tfp"
    for v in (1700000000, 1700000500, 1700000900):
        (base / str(v)).mkdir(parents=True)
        (base / str(v) / "saved_model.pb").write_bytes(b"")
    (base / "1700009999").mkdir()          # an unfinished push: no saved_model.pb yet
    (model,) = _model_server_config(render.render(str(base))).model_config_list.config
    assert dict(model.version_labels) == {"stable": 1700000500, "canary": 1700000900}
    (model,) = _model_server_config(render.render(str(base), stable=1700000900))\
        .model_config_list.config
    assert model.version_labels["stable"] == 1700000900
    from cxr_tfp.cli import UsageError

    with pytest.raises(UsageError, match="no pushed versions"):  # one line, exit 2, through cli_main
        render.render(str(tmp_path / "empty"))


def _dynamic_messages():
    """BatchingParameters / MonitoringConfig as in TF Serving's protos (not shipped in the pip wheel)."""
    fdp = descriptor_pb2.FileDescriptorProto(name="cxr_tfp_test_serving_cfg.proto",
                                             package="cxr_tfp_test", syntax="proto3",
                                             dependency=["google/protobuf/wrappers.proto"])
    F = descriptor_pb2.FieldDescriptorProto
    bp = fdp.message_type.add(name="BatchingParameters")
    for i, (name, typ) in enumerate([("max_batch_size", "Int64Value"),
                                     ("batch_timeout_micros", "Int64Value"),
                                     ("max_enqueued_batches", "Int64Value"),
                                     ("num_batch_threads", "Int64Value"),
                                     ("thread_pool_name", "StringValue")], start=1):
        bp.field.add(name=name, number=i, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                     type_name=f".google.protobuf.{typ}")
    bp.field.add(name="allowed_batch_sizes", number=6, type=F.TYPE_INT64, label=F.LABEL_REPEATED)
    bp.field.add(name="pad_variable_length_inputs", number=7, type=F.TYPE_BOOL,
                 label=F.LABEL_OPTIONAL)
    pc = fdp.message_type.add(name="PrometheusConfig")
    pc.field.add(name="enable", number=1, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    pc.field.add(name="path", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    mc = fdp.message_type.add(name="MonitoringConfig")
    mc.field.add(name="prometheus_config", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                 type_name=".cxr_tfp_test.PrometheusConfig")
    pool = descriptor_pool.DescriptorPool()
    from google.protobuf import wrappers_pb2

    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(fdp)
    get = message_factory.GetMessageClass
    return (get(pool.FindMessageTypeByName("cxr_tfp_test.BatchingParameters")),
            get(pool.FindMessageTypeByName("cxr_tfp_test.MonitoringConfig")))


def test_batching_parameters_are_valid():
    batching_cls, _ = _dynamic_messages()
    bp = text_format.Parse((SERVING / "batching_parameters.txt").read_text(), batching_cls())
    sizes = list(bp.allowed_batch_sizes)
    # TF Serving refuses to start unless allowed sizes increase and end at max_batch_size.
    assert sizes == sorted(set(sizes)) and sizes[-1] == bp.max_batch_size.value
    assert bp.max_batch_size.value >= 16  # the benchmark's batch fits one server batch
    assert 0 < bp.batch_timeout_micros.value <= 10_000  # batching may add at most 10 ms


def test_monitoring_config_and_prometheus_annotations_agree():
    _, monitoring_cls = _dynamic_messages()
    mc = text_format.Parse((SERVING / "monitoring.config").read_text(), monitoring_cls())
    assert mc.prometheus_config.enable
    dep = yaml.safe_load((SERVING / "k8s" / "deployment.yaml").read_text())
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/path"] == mc.prometheus_config.path
    assert ann["prometheus.io/port"] == "8501"


def _flags(args):
    return dict(a[2:].split("=", 1) for a in args)


def test_compose_and_k8s_run_the_same_server():
    compose = yaml.safe_load((SERVING / "docker-compose.yml").read_text())["services"]["tfserving"]
    assert set(compose["ports"]) == {"8500:8500", "8501:8501"}
    flags = _flags(compose["command"])
    mounts = [v.removesuffix(":ro").rsplit(":", 1) for v in compose["volumes"]]
    mounted = {dst: src for src, dst in mounts}
    for key in ("model_config_file", "batching_parameters_file", "monitoring_config_file"):
        src = mounted[flags[key]]   # each config flag points at a mounted file of serving/
        assert (SERVING / src).is_file(), src
    assert mounted["/models"] == "${CXR_TFP_SERVING_ROOT:-../tfx_out/serving}"
    docs = list(yaml.safe_load_all((SERVING / "k8s" / "deployment.yaml").read_text()))
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    (ctr,) = dep["spec"]["template"]["spec"]["containers"]
    assert _flags(ctr["args"]) == flags
    assert {p["containerPort"] for p in ctr["ports"]} == {8500, 8501}
    svc = yaml.safe_load((SERVING / "k8s" / "service.yaml").read_text())
    assert svc["kind"] == "Service"
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert {p["port"] for p in svc["spec"]["ports"]} == {8500, 8501}
    script = (SERVING / "run_tf_serving.sh").read_text()
    for k, v in flags.items():
        assert f"--{k}={v}" in script
