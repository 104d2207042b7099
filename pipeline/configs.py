"""Every setting of the TFX pipeline in one place: name, roots, thresholds, training options, image.

The local runner, the Kubeflow runner, the demo and the tests all build a :class:`PipelineSettings`
and hand it to :func:`pipeline.dag.create_pipeline`. Nothing else in ``pipeline/`` hard-codes a path
or a number.

Where a value comes from, weakest first: the defaults below; the settings file beside the runner
(``pipeline/settings.json``: written by ``tfx pipeline create`` from the ``CXR_TFP_*`` variables it
was given, or written / edited by the user before ``create``); then ``CXR_TFP_*`` variables of the
run itself, only for settings the file does not hold (one-off, never saved by a run; a variable for
a saved setting is ignored and listed, so a shell's leftovers cannot move a pipeline to other data). ``tfx run create`` runs the runner afresh
with whatever environment that shell has, so the file is what makes a pipeline's settings persist
(as the TFX templates' ``configs.py`` does). :func:`summary_lines` says where each value came from.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

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
# The smoke config (tiny CNN, 64 px, synthetic findings) is the synthetic demo's only.
DEFAULT_TRAIN_CONFIG = str(REPO_ROOT / "configs" / "smoke.yaml")
# Without a training config of the user's, a real dataset trains the paper setting (DenseNet-121,
# 224 px) over the dataset's own finding vocabulary (the one value the pipeline then sets itself).
REAL_DATA_TRAIN_CONFIG = str(REPO_ROOT / "configs" / "default.yaml")
DATASET_FINDINGS: Dict[str, str] = {"synthetic": "synthetic", "nih": "nih", "mimic": "mimic",
                                    "egd": "mimic", "reflacx": "nih", "dicom": "nih"}

# Where the settings persist between ``tfx pipeline create`` and every ``tfx run create``: a JSON
# file beside the runner that is executed (pipeline/settings.json for pipeline/local_runner.py).
SETTINGS_FILE_NAME = "settings.json"
SETTINGS_FILE = str(REPO_ROOT / "pipeline" / SETTINGS_FILE_NAME)

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

# Blessing (pipeline/blessing_gate.py): the lower end of the 95% patient-bootstrap interval of the
# macro AUROC, over the findings with enough positives and negatives in the evaluation split, must
# reach the floor, and the macro AUROC on the same findings must not drop by more than MAX_DROP
# against the latest blessed model (when one exists).
MACRO_AUC_LOWER_BOUND = 0.6
MACRO_AUC_MAX_DROP = 0.01
GATE_MIN_POSITIVES = 10          # a finding counts in the macro with >= this many positives ...
GATE_MIN_NEGATIVES = 10          # ... and negatives in the evaluation split
GATE_MIN_FINDINGS_FRACTION = 0.5  # refuse when fewer than this share of the findings can be counted
GATE_BOOTSTRAP = 1000            # patient resamples (cxr_tfp.metrics.auroc_with_ci)

# The synthetic demo's training options on top of the smoke config (set by pipeline/demo.py and
# the tests, never on a user's config). The smoke config's 4 epochs with augmentation stay near
# chance on the synthetic lesions within minutes; 25 epochs without augmentation clear the
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
    # None: chosen by dataset (train_config_source); a user's YAML is used as written.
    train_config_path: Optional[str] = None
    train_overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)
    use_curated_schema: bool = True
    macro_auc_lower_bound: float = MACRO_AUC_LOWER_BOUND
    macro_auc_max_drop: float = MACRO_AUC_MAX_DROP
    gate_min_positives: int = GATE_MIN_POSITIVES
    gate_min_negatives: int = GATE_MIN_NEGATIVES
    gate_min_findings_fraction: float = GATE_MIN_FINDINGS_FRACTION
    gate_bootstrap: int = GATE_BOOTSTRAP
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

    def train_config_source(self) -> Tuple[str, Dict[str, Any], str]:
        """``(config file, overrides, note)``: the user's YAML as written, or the dataset's default.

        The note says which values the pipeline sets itself (printed at every run).
        """
        overrides = dict(self.train_overrides)
        if self.train_config_path:
            note = "as written" if not overrides else "with overrides " + json.dumps(overrides)
            return self.train_config_path, overrides, note
        if self.dataset == "synthetic":
            note = ("smoke config for the synthetic demo"
                    + (f", with overrides {json.dumps(overrides)}" if overrides else ""))
            return DEFAULT_TRAIN_CONFIG, overrides, note
        vocabulary = self.adapter_options.get("label_vocabulary") or DATASET_FINDINGS.get(self.dataset, "nih")
        overrides = dict({"findings": vocabulary}, **overrides)
        return (REAL_DATA_TRAIN_CONFIG, overrides,
                f"paper setting for real data; the pipeline sets {json.dumps(overrides)} "
                f"(dataset {self.dataset})")

    def train_config_dict(self) -> Dict[str, Any]:
        """The full training config (file + overrides) as a plain dict for ``custom_config``."""
        from cxr_tfp.config import load_config

        path, overrides, _ = self.train_config_source()
        return load_config(path, overrides=overrides).to_dict()

    def findings(self) -> Tuple[str, ...]:
        """The findings the trained model predicts (from the training config)."""
        from cxr_tfp.labels import resolve_vocabulary

        return tuple(resolve_vocabulary(self.train_config_dict()["findings"]))

    # Where each value came from (setting -> "default" / "settings file F" / "environment VAR" ...);
    # not a setting itself.
    sources: Dict[str, str] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    ignored: List[str] = dataclasses.field(default_factory=list, repr=False, compare=False)

    def source(self, name: str) -> str:
        return self.sources.get(name, "default")

    @classmethod
    def from_env(cls, **overrides: Any) -> "PipelineSettings":
        """Defaults, then ``CXR_TFP_*`` environment variables, then keyword overrides."""
        return cls.load(None, **overrides)

    @classmethod
    def load(cls, path: Optional[str] = None, *, environ: Optional[Mapping[str, str]] = None,
             saving: bool = False, **overrides: Any) -> "PipelineSettings":
        """Defaults, then the settings file at ``path`` (when it exists), then ``CXR_TFP_*``
        variables of ``environ`` (default ``os.environ``), then keyword overrides.

        A value the settings file holds is what every run uses, whatever the run's environment
        holds: a ``CXR_TFP_*`` variable for it is ignored and listed in :attr:`ignored` (a variable
        left over in a shell must not move a hospital's pipeline to other data). Only ``saving``
        (``tfx pipeline create`` / ``update``) lets the environment replace saved values. Variables
        for settings the file does not hold apply to that run only, and are labelled so."""
        environ = os.environ if environ is None else environ
        s = cls()
        saved: Dict[str, Any] = {}
        if path and os.path.isfile(path):
            saved = read_settings_file(path)
            s._apply(saved, f"settings file {path}")
        for name, (var, parse) in ENV_VARS.items():
            if var in environ and name in saved and not saving:
                if str(environ[var]) != _as_env_text(saved[name]):
                    s.ignored.append(var)
                continue
            if var in environ:
                try:
                    value = parse(environ[var])
                except ValueError as exc:
                    raise ValueError(f"{var}={environ[var]!r}: {exc}") from None
                s._apply({name: value}, f"environment {var}")
        for key, value in overrides.items():
            if key not in SETTING_NAMES:
                raise AttributeError(f"unknown pipeline setting {key!r}")
        s._apply(overrides, "given")
        if s.input not in INPUTS:
            raise ValueError(f"pipeline setting input={s.input!r} is not one of {list(INPUTS)} "
                             f"(CXR_TFP_INPUT)")
        return s

    def _apply(self, values: Mapping[str, Any], source: str) -> None:
        for key, value in values.items():
            setattr(self, key, tuple(value) if key == "slice_features" else value)
            self.sources[key] = source

    def given(self) -> Dict[str, Any]:
        """The values that are not defaults (what a settings file must keep), JSON-ready."""
        return {name: getattr(self, name) for name in SETTING_NAMES
                if self.source(name) != "default"}

    def save(self, path: str) -> str:
        """Write :meth:`given` to ``path`` (relative paths made absolute), swapped in complete."""
        from cxr_tfp.staging import replace_file

        values = self.given()
        for key in _PATH_SETTINGS:
            if values.get(key) and "://" not in str(values[key]):
                values[key] = os.path.abspath(values[key])
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.partial"
        with open(tmp, "w") as fh:
            json.dump(values, fh, indent=2, sort_keys=True, default=list)
            fh.write("\n")
        replace_file(tmp, path)
        for key, value in values.items():
            setattr(self, key, value)
            self.sources[key] = f"settings file {path}"
        return path


def _as_env_text(value: Any) -> str:
    """A saved value as the variable would spell it (to tell a repeated variable from a changed one)."""
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _optional(v: str) -> Optional[str]:
    return v or None


# setting -> (environment variable, parser). Also the list of what a settings file may hold.
ENV_VARS: Dict[str, Tuple[str, Callable[[str], Any]]] = {
    "pipeline_name": ("CXR_TFP_PIPELINE_NAME", str),
    "output_root": ("CXR_TFP_OUTPUT_ROOT", str),
    "data_root": ("CXR_TFP_DATA_ROOT", str),
    "input": ("CXR_TFP_INPUT", str),
    "raw_root": ("CXR_TFP_RAW_ROOT", str),
    "dataset": ("CXR_TFP_DATASET", str),
    "span_folder": ("CXR_TFP_SPAN_FOLDER", _optional),    # empty: the raw root is the dataset
    # build options of the adapter, e.g. '{"labels_csv": "labels.csv"}' for a DICOM folder
    "adapter_options": ("CXR_TFP_ADAPTER_OPTIONS", lambda v: json.loads(v) if v else {}),
    "salt_fingerprint": ("CXR_TFP_SALT_FINGERPRINT", _optional),
    "vertex_training": ("CXR_TFP_VERTEX_TRAINING", lambda v: json.loads(v) if v else None),
    # e.g. "--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp"
    "beam_args": ("CXR_TFP_BEAM_ARGS", shlex.split),
    "serving_root": ("CXR_TFP_SERVING_ROOT", _optional),
    "train_config_path": ("CXR_TFP_TRAIN_CONFIG", _optional),
    "train_overrides": ("CXR_TFP_TRAIN_OVERRIDES", lambda v: json.loads(v) if v else {}),
    "macro_auc_lower_bound": ("CXR_TFP_MACRO_AUC_LOWER_BOUND", float),
    "macro_auc_max_drop": ("CXR_TFP_MACRO_AUC_MAX_DROP", float),
    "gate_min_positives": ("CXR_TFP_GATE_MIN_POSITIVES", int),
    "gate_min_negatives": ("CXR_TFP_GATE_MIN_NEGATIVES", int),
    "gate_min_findings_fraction": ("CXR_TFP_GATE_MIN_FINDINGS_FRACTION", float),
}
SETTING_NAMES = tuple(f.name for f in dataclasses.fields(PipelineSettings) if f.name not in ("sources", "ignored"))
_PATH_SETTINGS = ("output_root", "raw_root", "data_root", "pipeline_root", "metadata_path",
                  "serving_root", "train_config_path")


def read_settings_file(path: str) -> Dict[str, Any]:
    """The settings a file holds; an unknown key or bad JSON is a one-line error naming the file."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must hold one JSON object of setting: value")
    unknown = sorted(set(data) - set(SETTING_NAMES))
    if unknown:
        raise ValueError(f"{path}: unknown setting {unknown[0]!r} (known: {', '.join(SETTING_NAMES)})")
    return data


def settings_path(runner_file: str) -> str:
    """The settings file beside a runner script (``pipeline/settings.json``)."""
    return os.path.join(os.path.dirname(os.path.abspath(runner_file)), SETTINGS_FILE_NAME)


def summary_lines(s: PipelineSettings) -> Sequence[str]:
    """The run's settings, each with where it came from, for the start of every run and the demo."""
    def src(*names: str) -> str:
        found = sorted({s.source(n) for n in names if s.source(n) != "default"})
        return f"   [{'; '.join(found)}]" if found else ""

    train_path, _, train_note = s.train_config_source()
    return (
        f"pipeline name   : {s.pipeline_name}{src('pipeline_name')}",
        (f"raw dataset     : {s.raw_root}/{s.span_folder or ''} ({s.dataset}; chest X-ray ExampleGen)"
         f"{src('raw_root', 'dataset', 'span_folder', 'input')}"
         if s.input == "raw" else
         f"input TFRecords : {s.data_root}/{{{','.join(SPLITS)}}}/*.tfrecord.gz (ImportExampleGen)"
         f"{src('data_root', 'input')}"),
        f"training config : {train_path} ({train_note}){src('train_config_path', 'train_overrides')}",
        f"pipeline root   : {s.resolved_pipeline_root}{src('output_root', 'pipeline_root')}",
        f"metadata (MLMD) : {s.resolved_metadata_path}{src('metadata_path')}",
        f"push base path  : {s.push_base}   (TF Serving --model_base_path){src('serving_root')}",
        f"blessing gate   : lower 95% bound of macro AUROC >= {s.macro_auc_lower_bound} over findings "
        f"with >= {s.gate_min_positives} positives and >= {s.gate_min_negatives} negatives in "
        f"{s.evaluator_split} (at least {s.gate_min_findings_fraction:.0%} of them), drop vs last "
        f"blessed <= {s.macro_auc_max_drop}"
        f"{src('macro_auc_lower_bound', 'macro_auc_max_drop', 'gate_min_positives', 'gate_min_negatives', 'gate_min_findings_fraction')}",
        f"beam args       : {' '.join(s.beam_args)}{src('beam_args')}",
    ) + ((f"ignored         : {', '.join(s.ignored)} (the saved settings win at run time; change them "
          f"with `tfx pipeline update` or by editing the settings file)",) if s.ignored else ())


# --------------------------------------------------------------------------------- raw root checks
# What a span folder holds, per dataset (for the one-line refusal; docs/data.md has the detail).
DATASET_LAYOUTS: Dict[str, str] = {
    "nih": "Data_Entry_2017*.csv and images/*.png (optionally BBox_List_2017.csv)",
    "synthetic": "the layout python -m cxr_tfp.datasets.synthetic writes",
    "dicom": "*.dcm files (optionally a label table)",
    "mimic": "files/ and the MIMIC-CXR-JPG tables",
    "egd": "the EGD-CXR tables and MIMIC-CXR files/",
    "reflacx": "main_data/ and the MIMIC-CXR files/",
}
_SPAN_TOKENS = {"{SPAN}": r"\d+", "{VERSION}": r"\d+", "{YYYY}": r"\d{4}", "{MM}": r"\d{2}",
                "{DD}": r"\d{2}"}


def _span_regex(folder: str) -> "re.Pattern[str]":
    out = ""
    for part in re.split(r"(\{[A-Z]+\})", folder):
        out += _SPAN_TOKENS.get(part, re.escape(part))
    return re.compile(out + r"\Z")


def check_raw_root(s: PipelineSettings) -> Optional[str]:
    """One line saying why the raw input cannot be read (None when it can): checked before any
    component starts. Only local paths are checked (a ``gs://`` root is the cluster's to read)."""
    if s.input == "tfrecords":
        if "://" in s.data_root or os.path.isdir(os.path.join(s.data_root, TRAIN_SPLIT)):
            return None
        return (f"no {TRAIN_SPLIT}/ split under the TFRecords root {s.data_root}: expected "
                f"{s.data_root}/{{{','.join(SPLITS)}}}/*.tfrecord.gz (python -m cxr_tfp.records.build)")
    root = s.raw_root
    if "://" in root:
        return None
    layout = DATASET_LAYOUTS.get(s.dataset, f"the {s.dataset} dataset's published layout")
    top = (s.span_folder or "").split("/")[0]
    expected = (f"expected one folder per span ({root}/1/, {root}/2/, ...; pattern {s.span_folder}), "
                f"each holding {layout}" if top else f"expected {layout} directly in it (no spans)")
    if not os.path.isdir(root):
        return f"raw root {root} does not exist ({s.dataset}): {expected}"
    entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
    if not entries:
        return f"raw root {root} is empty ({s.dataset}): {expected}"
    if not top:
        return None
    rx = _span_regex(top)
    spans = [e for e in entries if rx.match(e) and os.path.isdir(os.path.join(root, e))]
    if not spans:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        return f"raw root {root} has no span folder matching {top} (it holds {shown}): {expected}"
    latest = max(spans, key=lambda e: [int(x) for x in re.findall(r"\d+", e)] or [0])
    inside = [e for e in os.listdir(os.path.join(root, latest)) if not e.startswith(".")]
    if not inside:
        return f"span folder {os.path.join(root, latest)} is empty: expected {layout} in it"
    return None
