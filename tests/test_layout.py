"""The package's shape: library imports, one home per fact (checked on the source, no TensorFlow)."""
import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY = sorted((REPO / "cxr_tfp").rglob("*.py"))


def _imports(path: Path):
    """Top-level module names (and full dotted names) imported anywhere in ``path``."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


def test_library_never_imports_pipeline_or_serving():
    offenders = {str(p.relative_to(REPO)): sorted(m for m in _imports(p)
                                                 if m.split(".")[0] in ("pipeline", "serving", "tests"))
                 for p in LIBRARY}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_io_decoders_do_not_import_each_other_in_a_cycle():
    images = _imports(REPO / "cxr_tfp" / "io" / "images.py")
    dicom = _imports(REPO / "cxr_tfp" / "io" / "dicom.py")
    assert "cxr_tfp.io.dicom" in images          # images dispatches DICOM bytes to dicom.py
    assert "cxr_tfp.io.images" not in dicom      # and dicom.py does not import images.py back


def test_no_module_shadows_its_package():
    """A module named like its own package (pipeline/pipeline.py) forced sys.path edits in runners."""
    for pkg in ("cxr_tfp", "pipeline", "serving"):
        for p in (REPO / pkg).rglob("*.py"):
            assert p.stem != p.parent.name, p
    for runner in ("local_runner.py", "kubeflow_v2_runner.py"):
        assert "sys.path" not in (REPO / "pipeline" / runner).read_text()


@pytest.mark.parametrize("literal", ['"saved_model.pb"', '"labels.txt"', '"thresholds.json"',
                                     '"tf_serving_warmup_requests"', "256 * 1024 * 1024",
                                     '"serving_default"', '"predict_images"'])
def test_model_directory_facts_live_only_in_model_dir(literal):
    homes = [str(p.relative_to(REPO)) for p in LIBRARY + sorted((REPO / "serving").glob("*.py"))
             + sorted((REPO / "pipeline").glob("*.py")) if literal in p.read_text()]
    assert homes == ["cxr_tfp/model_dir.py"]


def test_split_and_dataset_names_have_one_home():
    for p in LIBRARY:
        text = p.read_text()
        if p.name != "features.py":
            assert not re.search(r'\(\s*"train",\s*"eval",\s*"test"\s*\)', text), p
            assert '"nih", "mimic", "egd"' not in text, p


def test_package_version_has_one_home():
    init = (REPO / "cxr_tfp" / "__init__.py").read_text()
    assert re.search(r'^__version__ = "[0-9][^"]*"$', init, re.M)
    for f in ("setup.py", "pipeline/configs.py"):
        assert not re.search(r"\b\d+\.\d+\.\d+\b", (REPO / f).read_text()), f


CORE_IMPORTS = {"cxr_tfp", "numpy", "tensorflow", "keras", "keras_cv", "keras_hub", "kagglehub",
                "tensorflow_probability", "pydicom", "PIL", "yaml", "matplotlib", "pandas", "scipy",
                "cryptography", "tf_keras"}


def test_library_modules_import_only_the_core_at_module_level():
    """`pip install .` (requirements/base.txt) must import every library module; Beam, TFX, gRPC and
    TF Serving (the extras) are imported inside the functions that need them."""
    import sys

    bad = {}
    for p in LIBRARY:
        for node in ast.parse(p.read_text()).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for n in names:
                top = n.split(".")[0]
                if top not in sys.stdlib_module_names and top not in CORE_IMPORTS:
                    bad.setdefault(str(p.relative_to(REPO)), []).append(n)
    assert bad == {}


def test_core_requirements_leave_the_extras_out():
    core = (REPO / "requirements" / "base.txt").read_text()
    for extra_pkg in ("apache-beam", "tfx", "tensorflow-serving-api", "grpcio", "kubernetes", "docker",
                      "keras-tuner", "tensorflow-model-analysis"):
        assert not re.search(rf"^{re.escape(extra_pkg)}\b", core, re.M), extra_pkg
    setup_py = (REPO / "setup.py").read_text()
    for extra in ("beam", "tfx", "serving", "kfp", "dev", "all"):
        assert f'"{extra}":' in setup_py, extra
