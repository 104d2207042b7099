"""The blessing gate beside the Evaluator: bless only what the evaluation split's evidence supports.

TFMA (the Evaluator) reports AUROC per finding and slice; it no longer decides. This component
decides, on the same split, with the patient-level bootstrap of ``python -m cxr_tfp.evaluate``
(:func:`cxr_tfp.metrics.auroc_with_ci`, :func:`cxr_tfp.metrics.paired_auroc_difference`):

* a finding counts in the macro AUROC only with at least ``min_positives`` positives and
  ``min_negatives`` negatives in the split; those left out are listed with their counts;
* fewer countable findings than ``min_findings_fraction`` of the model's findings: refused
  ("too few positives to judge");
* blessed when the lower end of the 95% interval of that macro AUROC reaches ``lower_bound`` and,
  when a blessed model exists, the macro AUROC on the same findings has not dropped by more than
  ``max_drop`` against it (both models scored on the same images).

The decision is a ``ModelBlessing`` (``blessed`` 1/0 and the model ids TFX's
``LatestBlessedModelStrategy`` reads), which the Pusher checks, plus ``gate.json`` (every number
and the one-line reason) in the artifact folder. :func:`judge` is the whole rule, without TFX.
"""


import dataclasses
import glob
import json
import math
import os
from typing import Any, Dict, Optional, Sequence

import numpy as np

from cxr_tfp.features import TEST_SPLIT

GATE_FILE = "gate.json"


@dataclasses.dataclass
class GateOptions:
    lower_bound: float
    max_drop: float
    min_positives: int = 10
    min_negatives: int = 10
    min_findings_fraction: float = 0.5
    n_resamples: int = 1000
    seed: int = 0
    split: str = TEST_SPLIT


def _f(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def judge(findings: Sequence[str], labels: np.ndarray, probs: np.ndarray, mask: np.ndarray,
          patient_keys: Sequence[str], opts: GateOptions,
          baseline_probs: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """The gate's decision as a JSON-ready dict: ``blessed``, ``reason`` (one line), the counted and
    left-out findings with their positives / negatives, the macro AUROC with its interval, and the
    change against the baseline (``None`` without one)."""
    from cxr_tfp import metrics as M

    labels, probs, mask = (np.asarray(a, np.float64) for a in (labels, probs, mask))
    known = mask > 0.5
    pos = ((labels > 0.5) & known).sum(axis=0)
    neg = ((labels <= 0.5) & known).sum(axis=0)
    counted = [j for j in range(len(findings))
               if pos[j] >= opts.min_positives and neg[j] >= opts.min_negatives]
    needed = max(1, math.ceil(opts.min_findings_fraction * len(findings)))
    n_images, n_patients = int(labels.shape[0]), int(len(set(patient_keys)))
    out: Dict[str, Any] = {
        "split": opts.split, "images": n_images, "patients": n_patients,
        "options": dataclasses.asdict(opts),
        "counted": [{"finding": findings[j], "positives": int(pos[j]), "negatives": int(neg[j])}
                    for j in counted],
        "left_out": [{"finding": findings[j], "positives": int(pos[j]), "negatives": int(neg[j])}
                     for j in range(len(findings)) if j not in counted],
        "findings_needed": needed, "macro_auroc": None, "ci_low": None, "ci_high": None,
        "per_finding": {}, "baseline": None, "blessed": False,
    }
    where = f"the {n_images} {opts.split} images ({n_patients} patients)"
    if len(counted) < needed:
        out["reason"] = (f"refused: too few positives to judge: {len(counted)} of {len(findings)} "
                         f"findings have >= {opts.min_positives} positives and >= "
                         f"{opts.min_negatives} negatives among {where}; at least {needed} needed")
        return out
    cols = list(counted)
    ci = M.auroc_with_ci(labels[:, cols], probs[:, cols], mask[:, cols], np.asarray(patient_keys),
                         opts.n_resamples, opts.seed)
    macro = ci["macro"]
    out.update(macro_auroc=macro["auroc"], ci_low=macro["ci_low"], ci_high=macro["ci_high"],
               per_finding={findings[j]: e for j, e in zip(cols, ci["per_finding"])})
    what = (f"macro AUROC {_f(macro['auroc'])} (95% CI {_f(macro['ci_low'])}-{_f(macro['ci_high'])}) "
            f"over {len(cols)} of {len(findings)} findings, {where}")
    failures = []
    if macro["ci_low"] is None or macro["ci_low"] < opts.lower_bound:
        failures.append(f"the interval's lower end is below the floor {opts.lower_bound}")
    change = ""
    if baseline_probs is not None:
        d = M.paired_auroc_difference(labels[:, cols], np.asarray(baseline_probs, np.float64)[:, cols],
                                      probs[:, cols], mask[:, cols], np.asarray(patient_keys),
                                      opts.n_resamples, opts.seed)
        out["baseline"] = d
        if d["difference"] is not None:
            change = (f"{d['difference']:+.3f} against the last blessed model on the same findings "
                      f"(95% CI {_f(d['ci_low'])} to {_f(d['ci_high'])})")
            if d["difference"] < -opts.max_drop:
                failures.append(f"{change}, more than the allowed drop {opts.max_drop}")
    if failures:
        out["reason"] = f"refused: {what}: " + "; ".join(failures)
        return out
    out["blessed"] = True
    out["reason"] = (f"blessed: {what}: lower end >= {opts.lower_bound}"
                     + (f"; {change}" if change else "; no blessed model to compare with"))
    return out


def _split_files(examples, split: str):
    from tfx.types import artifact_utils

    d = artifact_utils.get_split_uri([examples], split)
    files = sorted(glob.glob(os.path.join(d, "*.gz")))
    if not files:
        raise FileNotFoundError(f"no {split} records under {d}")
    return files


def _predict(model, files):
    from tfx.utils import path_utils

    from cxr_tfp.evaluate import collect, load_adapter

    return collect(load_adapter(path_utils.serving_model_path(model.uri)), files, saliency=False,
                   progress_every=0)


def read_gate(blessing_uri: str) -> Optional[Dict[str, Any]]:
    """The gate's ``gate.json`` in a blessing artifact folder, or None."""
    path = os.path.join(blessing_uri, GATE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        return json.load(fh)


from tfx import v1 as tfx  # noqa: E402  (the component below; judge() above needs no TFX)
from tfx.types.standard_artifacts import Examples, Model, ModelBlessing  # noqa: E402


@tfx.dsl.components.component
def BlessingGate(  # noqa: N802 (TFX component naming)
    examples: tfx.dsl.components.InputArtifact[Examples],
    model: tfx.dsl.components.InputArtifact[Model],
    blessing: tfx.dsl.components.OutputArtifact[ModelBlessing],
    options: tfx.dsl.components.Parameter[str],
    baseline_model: tfx.dsl.components.InputArtifact[Model] = None,
) -> None:
    """Bless the candidate only on the evaluation split's evidence (module docstring)."""
    from absl import logging

    opts = GateOptions(**json.loads(options))
    files = _split_files(examples, opts.split)
    cand = _predict(model, files)
    base = None
    if baseline_model is not None and baseline_model.uri and baseline_model.uri != model.uri:
        b = _predict(baseline_model, files)
        cols = [b.findings.index(f) if f in b.findings else None for f in cand.findings]
        if None not in cols:   # a baseline with other findings cannot be compared: no change check
            base = b.probs[:, cols]
    elif baseline_model is not None:
        base = cand.probs      # the blessed model itself (an unchanged re-run): no change
    decision = judge(cand.findings, cand.labels, cand.probs, cand.mask, cand.patient_keys, opts, base)
    decision["model"] = model.uri
    decision["baseline_model"] = baseline_model.uri if baseline_model is not None else None
    with open(os.path.join(blessing.uri, GATE_FILE), "w") as fh:
        json.dump(decision, fh, indent=2)
    with open(os.path.join(blessing.uri, "BLESSED" if decision["blessed"] else "NOT_BLESSED"), "w"):
        pass
    blessing.set_int_custom_property("blessed", int(decision["blessed"]))
    blessing.set_string_custom_property("reason", decision["reason"])
    blessing.set_string_custom_property("current_model", model.uri)
    blessing.set_int_custom_property("current_model_id", model.id)
    if baseline_model is not None:
        blessing.set_string_custom_property("baseline_model", baseline_model.uri)
        blessing.set_int_custom_property("baseline_model_id", baseline_model.id)
    logging.info("Blessing gate: %s", decision["reason"])
