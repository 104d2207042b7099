"""The foundation: the stack imports, a tiny TFX pipeline runs locally, and the install has one source of pins."""
import importlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
REQ = REPO / "requirements"


def _names(req_file: Path):
    out = []
    for line in req_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(re.split(r"[<>=!\[;~ ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return out


def _pins(req_file: Path):
    pins = {}
    for line in req_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, ver = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = ver.strip()
    return pins


@pytest.mark.parametrize("module, attribute", [
    ("cxr_tfp", "__version__"), ("tensorflow_probability", "distributions"), ("keras_cv", "layers"),
    ("keras_hub", "models"), ("apache_beam", "Pipeline"), ("pydicom", "dcmread"),
    ("tensorflow_serving.apis.prediction_service_pb2_grpc", "PredictionServiceStub"),
    ("tensorflow_model_analysis.proto.config_pb2", "EvalConfig"),
])
def test_stack_imports(module, attribute):
    """Each stack module imports (a missing one fails here) and is the package we use, not a stub."""
    assert getattr(importlib.import_module(module), attribute) is not None


def test_tfx_v1_and_kubeflow_runner_import():
    from tfx import v1 as tfx

    assert hasattr(tfx.dsl.Pipeline, "__init__")
    # kfp is part of the default install, so the Kubeflow V2 runner exists.
    assert hasattr(tfx.orchestration.experimental, "KubeflowV2DagRunner")


def test_installed_versions_match_pins():
    from importlib.metadata import version

    pins = {**_pins(REQ / "constraints.txt"), **_pins(REQ / "nodeps.txt")}
    for pkg in ["tensorflow", "tensorflow-probability", "keras-cv", "keras", "apache-beam", "tfx",
                "ml-metadata", "tensorflow-data-validation", "tensorflow-model-analysis",
                "tensorflow-serving-api", "protobuf", "kfp"]:
        assert version(pkg) == pins[pkg], f"{pkg}: installed {version(pkg)} but pinned {pins[pkg]}"


def test_every_requirement_is_pinned_once():
    lock = _pins(REQ / "constraints.txt")
    for f in ("base.txt", "beam.txt", "tfx.txt", "serving.txt", "kfp.txt", "dev.txt"):
        for name in _names(REQ / f):
            assert name in lock, f"{f}: {name} has no exact pin in constraints.txt"
    nodeps = _pins(REQ / "nodeps.txt")
    assert set(nodeps) == {"tfx", "ml-pipelines-sdk", "ml-metadata", "tensorflow-data-validation"}
    # The --no-deps packages must not also be resolved in step 1 (their pins would break resolution).
    assert not set(nodeps) & set(lock)


def test_dockerfile_and_local_install_share_the_same_pin_files():
    docker = (REPO / "Dockerfile").read_text()
    install = (REPO / "scripts" / "install.sh").read_text()
    for f in ("constraints.txt", "base.txt", "beam.txt", "tfx.txt", "serving.txt", "nodeps.txt", "kfp.txt"):
        assert f in docker, f"Dockerfile does not install from requirements/{f}"
        assert f in install, f"scripts/install.sh does not install from requirements/{f}"
    assert re.search(r"^FROM python:3\.11", docker, re.M), "pipeline image must be Python 3.11"
    # No package version may be restated in the Dockerfile except pip itself.
    inline = [m for m in re.findall(r"([A-Za-z0-9_.\-]+)==[0-9]", docker) if m.lower() != "pip"]
    assert not inline, f"Dockerfile restates pins {inline}: keep them in requirements/"
    pip_docker = re.search(r"pip==([0-9.]+)", docker).group(1)
    pip_local = re.search(r"pip==([0-9.]+)", install).group(1)
    assert pip_docker == pip_local
    assert "--no-deps -r requirements/nodeps.txt" in docker
    assert '--no-deps -r "$REQ/nodeps.txt"' in install


def test_setup_reads_requirements_and_entry_points_resolve():
    setup_py = (REPO / "setup.py").read_text()
    assert '_reqs("base.txt")' in setup_py
    eps = re.findall(r'"[\w-]+=([\w.]+):(\w+)"', setup_py)
    assert len(eps) >= 4
    for module, func in eps:
        mod = importlib.import_module(module)
        assert callable(getattr(mod, func)), f"{module}:{func} is not callable"


def test_ci_runs_exactly_make_test():
    lines = [l.strip() for l in (REPO / ".ci" / "run").read_text().splitlines()
             if l.strip() and not l.strip().startswith("#")]
    assert lines[-1] == "make test"


@pytest.mark.slow  # runs scripts/install.sh and pip freeze twice (~1 min)
def test_install_is_idempotent():
    """A second install run on an up-to-date venv changes nothing and only checks imports."""
    freeze = [sys.executable, "-m", "pip", "freeze", "--disable-pip-version-check"]
    before = subprocess.run(freeze, capture_output=True, text=True, check=True).stdout
    res = subprocess.run(["bash", str(REPO / "scripts" / "install.sh")], capture_output=True,
                         text=True, cwd=REPO, env={"PATH": "/usr/bin:/bin", "VENV": str(Path(sys.prefix)),
                                                   "PYTHON": sys.executable, "HOME": str(Path.home())})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "up to date" in res.stdout
    assert "step 1/3" not in res.stdout
    after = subprocess.run(freeze, capture_output=True, text=True, check=True).stdout
    assert before == after


def _write_examples(path: Path, n: int) -> None:
    import tensorflow as tf

    from cxr_tfp import features as F

    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path), options="GZIP") as w:
        for i in range(n):
            labels = (rng.random(F.NUM_FINDINGS) < 0.3).astype(np.float32)
            rec = F.ExampleRecord(image=rng.integers(0, 255, (16, 16), dtype=np.uint8), labels=labels,
                                  label_mask=np.ones(F.NUM_FINDINGS, np.float32), patient_key=f"p{i}",
                                  example_key=f"e{i}", dataset="synthetic", view="PA")
            w.write(F.to_example(rec).SerializeToString())


@pytest.mark.slow  # a LocalDagRunner run; the default set keeps one (tests/pipeline/test_pipeline_e2e.py)
def test_tiny_tfx_pipeline_runs_locally_with_sqlite(tmp_path):
    """ImportExampleGen -> StatisticsGen -> SchemaGen on LocalDagRunner with an SQLite MLMD store."""
    from ml_metadata.metadata_store import metadata_store
    from tfx import v1 as tfx

    from cxr_tfp import features as F

    data = tmp_path / "data"
    _write_examples(data / "train" / "a.tfrecord.gz", 12)
    _write_examples(data / "eval" / "a.tfrecord.gz", 6)
    example_gen = tfx.components.ImportExampleGen(
        input_base=str(data),
        input_config=tfx.proto.Input(splits=[
            tfx.proto.Input.Split(name="train", pattern="train/*"),
            tfx.proto.Input.Split(name="eval", pattern="eval/*")]))
    stats = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema = tfx.components.SchemaGen(statistics=stats.outputs["statistics"])
    db = tmp_path / "mlmd.sqlite"
    pipe = tfx.dsl.Pipeline(
        pipeline_name="foundation-smoke", pipeline_root=str(tmp_path / "root"),
        components=[example_gen, stats, schema],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(str(db)))
    tfx.orchestration.LocalDagRunner().run(pipe)

    assert db.is_file()
    store = metadata_store.MetadataStore(
        tfx.orchestration.metadata.sqlite_metadata_connection_config(str(db)))
    executions = store.get_executions()
    assert len(executions) == 3
    schema_files = list((tmp_path / "root").glob("SchemaGen/schema/*/schema.pbtxt"))
    assert len(schema_files) == 1
    text = schema_files[0].read_text()
    for key in (F.IMAGE, F.LABELS, F.VIEW, F.PATIENT_KEY):
        assert f'name: "{key}"' in text
