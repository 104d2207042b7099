"""Every setting of the TFX pipeline in one place: name, roots, thresholds, training options, image.

The local runner, the Kubeflow runner, the demo and the tests all build a :class:`PipelineSettings`
(defaults below, environment overrides via :meth:`PipelineSettings.from_env`) and hand it to
:func:`pipeline.dag.create_pipeline`. Nothing else in ``pipeline/`` hard-codes a path or a number.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from cxr_tfp import __version__
from cxr_tfp.features import EVAL_SPLIT, SPLITS, TEST_SPLIT, TRAIN_SPLIT  # noqa: F401 (re-exported to the DAG)
from cxr_tfp.model_dir import MODEL_NAME

REPO_ROOT = Path(__file__).resolve().parents[1]

PIPELINE_NAME = "cxr-tfp"
# The served model's name: TF Serving's ``--model_name`` and the top folder of the push base path.
SERVING_MODEL_NAME = MODEL_NAME

# The container image the components run in on Kubeflow / Vertex (built from the repo's Dockerfile).
PIPELINE_IMAGE = os.environ.get("CXR_TFP_PIPELINE_IMAGE", f"cxr-tfp-pipeline:{__version__}")

# Training: a config file of the training package plus overrides (both resolved at pipeline build
# time into Trainer.custom_config, so a change of any option invalidates the TFX cache).
DEFAULT_TRAIN_CONFIG = str(REPO_ROOT / "configs" / "smoke.yaml")

# The curated schema (generated from the feature contract by ``python -m pipeline.schema_tools``).
CURATED_SCHEMA_DIR = str(REPO_ROOT / "pipeline" / "schema")

# Splits of the records (cxr_tfp.features.SPLITS): <data_root>/{train,eval,test}/*.tfrecord.gz;
# TRAIN_SPLIT, EVAL_SPLIT and SPLITS are imported above. The Evaluator measures the test split.
EVALUATOR_SPLIT = TEST_SPLIT

# Where the pipeline starts: "raw" (the chest X-ray ExampleGen reads the dataset folder: the default)
# or "tfrecords" (ImportExampleGen over a finished build, for users who already have TFRecords).
INPUTS = ("raw", "tfrecords")
# One span per sub-folder of the raw root, TFX's {SPAN} input pattern: 1/, 2/, ... ({YYYY}-{MM}-{DD}
# for dated folders). Each span folder is a whole dataset in its published layout; a run builds the
# latest span.
SPAN_FOLDER = "{SPAN}"

# Evaluator slices (feature keys of the contract; overall is always included).
SLICE_FEATURES: Tuple[str, ...] = ("view", "dataset")

# Blessing: macro AUROC over the predicted findings must reach an absolute floor and must not drop
# by more than MAX_DROP against the latest blessed model (when one exists).
MACRO_AUC_LOWER_BOUND = 0.6
MACRO_AUC_MAX_DROP = 0.01

# Training options on top of the config file. The smoke config's 4 epochs with augmentation stay
# near chance on the synthetic lesions within minutes; 25 epochs without augmentation clear the
# blessing floor in about a minute on 2 cores (demo data: see below).
TRAIN_OVERRIDES: Dict[str, Any] = {"stage1_epochs": 25, "augment": False}

# The demo (make demo) writes under DEMO_OUT; a plain local run reads the demo's raw folder
# (DEMO_OUT/raw/<span>/) and writes under OUTPUT_ROOT (serving/README.md serves OUTPUT_ROOT/serving by default).
DEMO_OUT = str(REPO_ROOT / "demo_out")
OUTPUT_ROOT = str(REPO_ROOT / "tfx_out")
DEMO_PATIENTS = 500
DEMO_IMAGE_SIZE = 64
# The embedded synthetic dataset with clearly visible lesions: at the dataset's default contrast 1
# the smoke-size CNN stays near chance (macro AUROC ~0.5) within the demo's time budget.
DEMO_SYNTHETIC_CONTRAST = 4.0


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclasses.dataclass
class PipelineSettings:
    """All knobs of one pipeline instance (JSON-friendly values only)."""

    pipeline_name: str = PIPELINE_NAME
    # Everything TFX writes (artifacts, metadata) lives under output_root unless overridden.
    output_root: str = OUTPUT_ROOT
    input: str = "raw"                           # one of INPUTS
    raw_root: str = os.path.join(DEMO_OUT, "raw")  # the raw dataset (span sub-folders), input="raw"
    dataset: str = "synthetic"                   # the adapter: nih, mimic, egd, reflacx, dicom, synthetic
    span_folder: Optional[str] = SPAN_FOLDER     # None: raw_root itself is the dataset (span 0)
    adapter_options: Dict[str, Any] = dataclasses.field(default_factory=dict)  # build options
    # Expected fingerprint of the salt (cxr_tfp.privacy.salt_fingerprint): the ExampleGen refuses to
    # run with another salt. The salt itself is a secret of the runtime environment, never a setting.
    salt_fingerprint: Optional[str] = None
    data_root: str = os.path.join(DEMO_OUT, "tfrecords")  # finished TFRecords (input="tfrecords";
    #                                                        python -m cxr_tfp.records.build --out ...)
    pipeline_root: Optional[str] = None          # default <output_root>/pipelines/<name>
    metadata_path: Optional[str] = None          # default <output_root>/metadata/<name>/metadata.db
    serving_root: Optional[str] = None           # default <output_root>/serving
    model_name: str = SERVING_MODEL_NAME
    train_config_path: Optional[str] = DEFAULT_TRAIN_CONFIG
    train_overrides: Dict[str, Any] = dataclasses.field(default_factory=lambda: dict(TRAIN_OVERRIDES))
    use_curated_schema: bool = True
    macro_auc_lower_bound: float = MACRO_AUC_LOWER_BOUND
    macro_auc_max_drop: float = MACRO_AUC_MAX_DROP
    slice_features: Tuple[str, ...] = SLICE_FEATURES
    evaluator_split: str = EVALUATOR_SPLIT
    enable_cache: bool = True
    # Train on Vertex AI Training instead of inside the Trainer's own container, e.g.
    # {"project": "P", "region": "europe-west4", "machine_type": "n1-standard-8",
    #  "accelerator_type": "NVIDIA_TESLA_T4", "accelerator_count": 1, "workers": 2}:
    # a chief plus ``workers`` worker replicas (TF_CONFIG set by Vertex; distribute: multi_worker).
    vertex_training: Optional[Dict[str, Any]] = None
    beam_args: List[str] = dataclasses.field(
        default_factory=lambda: ["--direct_running_mode=in_memory", "--direct_num_workers=1"])

    # Resolved locations -------------------------------------------------------------------------
    @property
    def resolved_pipeline_root(self) -> str:
        return self.pipeline_root or os.path.join(self.output_root, "pipelines", self.pipeline_name)

    @property
    def resolved_metadata_path(self) -> str:
        return self.metadata_path or os.path.join(
            self.output_root, "metadata", self.pipeline_name, "metadata.db")

    @property
    def push_base(self) -> str:
        """TF Serving's model base path: the Pusher writes ``<push_base>/<version>/saved_model.pb``."""
        return os.path.join(self.serving_root or os.path.join(self.output_root, "serving"),
                            self.model_name)

    def train_config_dict(self) -> Dict[str, Any]:
        """The full training config (file + overrides) as a plain dict for ``custom_config``."""
        from cxr_tfp.config import load_config

        return load_config(self.train_config_path, overrides=dict(self.train_overrides)).to_dict()

    def findings(self) -> Tuple[str, ...]:
        """The findings the trained model predicts (from the training config)."""
        from cxr_tfp.labels import resolve_vocabulary

        return tuple(resolve_vocabulary(self.train_config_dict()["findings"]))

    @classmethod
    def from_env(cls, **overrides: Any) -> "PipelineSettings":
        """Defaults, then ``CXR_TFP_*`` environment variables, then keyword overrides.

        The ``tfx`` CLI runs ``local_runner.py`` without arguments, so the environment is how a
        user points it at their data and outputs (see ``pipeline/README.md``).
        """
        s = cls()
        s.pipeline_name = _env("CXR_TFP_PIPELINE_NAME", s.pipeline_name)
        s.output_root = _env("CXR_TFP_OUTPUT_ROOT", s.output_root)
        s.data_root = _env("CXR_TFP_DATA_ROOT", s.data_root)
        s.input = _env("CXR_TFP_INPUT", s.input)
        s.raw_root = _env("CXR_TFP_RAW_ROOT", s.raw_root)
        s.dataset = _env("CXR_TFP_DATASET", s.dataset)
        if "CXR_TFP_SPAN_FOLDER" in os.environ:
            s.span_folder = os.environ["CXR_TFP_SPAN_FOLDER"] or None
        s.salt_fingerprint = os.environ.get("CXR_TFP_SALT_FINGERPRINT", s.salt_fingerprint)
        if os.environ.get("CXR_TFP_VERTEX_TRAINING"):
            s.vertex_training = json.loads(os.environ["CXR_TFP_VERTEX_TRAINING"])
        if os.environ.get("CXR_TFP_BEAM_ARGS"):
            # e.g. "--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp"
            s.beam_args = shlex.split(os.environ["CXR_TFP_BEAM_ARGS"])
        s.serving_root = os.environ.get("CXR_TFP_SERVING_ROOT", s.serving_root)
        s.train_config_path = _env("CXR_TFP_TRAIN_CONFIG", s.train_config_path or "")
        if "CXR_TFP_MACRO_AUC_LOWER_BOUND" in os.environ:
            s.macro_auc_lower_bound = float(os.environ["CXR_TFP_MACRO_AUC_LOWER_BOUND"])
        if "CXR_TFP_MACRO_AUC_MAX_DROP" in os.environ:
            s.macro_auc_max_drop = float(os.environ["CXR_TFP_MACRO_AUC_MAX_DROP"])
        for key, value in overrides.items():
            if not hasattr(s, key):
                raise AttributeError(f"unknown pipeline setting {key!r}")
            setattr(s, key, value)
        if s.input not in INPUTS:
            raise ValueError(f"pipeline setting input={s.input!r} is not one of {list(INPUTS)} "
                             f"(CXR_TFP_INPUT)")
        return s


def summary_lines(s: PipelineSettings) -> Sequence[str]:
    """Where everything lives, for logs and the demo."""
    return (
        f"pipeline name   : {s.pipeline_name}",
        (f"raw dataset     : {s.raw_root}/{s.span_folder or ''} ({s.dataset}; chest X-ray ExampleGen)"
         if s.input == "raw" else
         f"input TFRecords : {s.data_root}/{{{','.join(SPLITS)}}}/*.tfrecord.gz (ImportExampleGen)"),
        f"pipeline root   : {s.resolved_pipeline_root}",
        f"metadata (MLMD) : {s.resolved_metadata_path}",
        f"push base path  : {s.push_base}   (TF Serving --model_base_path)",
        f"blessing        : macro AUROC >= {s.macro_auc_lower_bound}, "
        f"drop vs last blessed <= {s.macro_auc_max_drop}",
    )
