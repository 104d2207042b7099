"""cxr-tfp: probabilistic integration of expert annotations in chest X-ray classification.

Install with ``make install`` (see README: the TFX stack needs a two-step install on Python 3.11,
so the exact pins live in ``requirements/`` and are shared with the Dockerfile).
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
# The version's one home is cxr_tfp/__init__.py (read, not imported: setup must not need the deps).
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "cxr_tfp" / "__init__.py").read_text(), re.M).group(1)


def _reqs(name: str):
    lines = (HERE / "requirements" / name).read_text().splitlines()
    return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


setup(
    name="cxr-tfp",
    version=VERSION,
    description="Chest X-ray multi-label classification with a TFP latent head that integrates "
                "expert gaze and box annotations (van Sonsbeek et al., WACV 2023).",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["cxr_tfp", "cxr_tfp.*"]),
    # Core: train, evaluate, export, predict (`pip install .`). Extras: `pip install .[beam,serving]`.
    install_requires=_reqs("base.txt"),
    extras_require={
        "beam": _reqs("beam.txt"),                       # python -m cxr_tfp.records.build
        # The TFX pipeline. tfx, ml-pipelines-sdk, ml-metadata and TFDV are NOT listed: their pins do
        # not resolve on Python 3.11; install them after this extra with
        # `pip install --no-deps -r requirements/nodeps.txt` (scripts/install.sh step 2).
        "tfx": _reqs("beam.txt") + _reqs("tfx.txt"),
        "serving": _reqs("serving.txt"),                 # client, warm-up records, stand-in server
        "kfp": _reqs("kfp.txt"),                         # KubeflowV2DagRunner
        "dev": _reqs("dev.txt"),
        "all": sorted(set(sum((_reqs(f) for f in ("beam.txt", "tfx.txt", "serving.txt", "kfp.txt",
                                                   "dev.txt")), []))),
    },
    entry_points={
        "console_scripts": [
            "cxr-build=cxr_tfp.records.build:main",
            "cxr-train=cxr_tfp.train:main",
            "cxr-evaluate=cxr_tfp.evaluate:main",
            "cxr-client=cxr_tfp.client:main",
        ],
    },
)
