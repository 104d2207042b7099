"""The outcome of a pipeline run, in a dozen lines: ``python -m pipeline.report [--run RUN_ID]``.

    python -m pipeline.report                      # the last run of the pipeline in pipeline/settings.json
    python -m pipeline.report --run RUN_ID         # a given run (ids: --list)
    python -m pipeline.report --metadata tfx_out/metadata/cxr-tfp/metadata.db --json

Read back from ML Metadata and the artifacts: the data (span, examples per split, annotated
examples per kind, rejected inputs), the training (stage 1 / stage 2 eval macro AUROC, or why stage
2 was skipped), the evaluation (the gate's macro AUROC with its interval, findings counted and left
out), the blessing and its reason, and the pushed version (or why nothing was pushed). The lines
``blessed: yes|no`` and ``pushed: VERSION|no`` stand on their own. Every local run prints it at the
end and saves it in the pipeline root (``outcome/<run id>.txt``, ``.json`` and ``outcome.txt``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional

from cxr_tfp.cli import cli_main

OUTCOME_DIR = "outcome"
# Trainer output key of the run folder (metrics.json); TFX's Trainer names it so.
MODEL_RUN_KEY = "model_run"


def _read_json(path: Optional[str]) -> Optional[Dict[str, Any]]:
    if not path or not os.path.isfile(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def outcome(metadata_path: str, run_id: Optional[str] = None) -> Dict[str, Any]:
    """What the run did, as a JSON-ready dict (see :func:`format_outcome`)."""
    from pipeline import run_report as R
    from pipeline.blessing_gate import read_gate

    run = R.latest_run(metadata_path, run_id)
    out: Dict[str, Any] = {"run_id": run.run_id, "states": run.states, "data": None,
                           "training": None, "gate": None, "blessed": bool(run.blessed),
                           "pushed": None, "why_not_pushed": None}
    examples = run.uri("ExampleGen", "examples")
    summary = _read_json(os.path.join(examples, "summary.json")) if examples else None
    if summary:
        out["data"] = {"span": summary.get("span"), "root": summary.get("root"),
                       "dataset": summary.get("dataset"),
                       "examples": summary.get("written_per_split"),
                       "annotated": summary.get("annotated"),
                       "inputs": summary.get("in"), "rejected": summary.get("rejected")}
    model_run = run.uri("Trainer", MODEL_RUN_KEY)
    metrics = _read_json(os.path.join(model_run, "metrics.json")) if model_run else None
    if metrics:
        out["training"] = {k: metrics.get(k) for k in ("final_stage", "stage2_skipped",
                                                       "train_examples", "annotated_examples")}
        for stage in ("stage1", "stage2"):
            if stage in metrics:
                out["training"][stage] = {"macro_auroc": metrics[stage].get("macro_auroc"),
                                          "num_eval": metrics[stage].get("num_eval")}
    blessing = run.uri(R.GATE_NODE, "blessing")
    out["gate"] = read_gate(blessing) if blessing else None
    if run.pushed:
        out["pushed"] = os.path.basename(run.pushed_destination.rstrip("/")) \
            if run.pushed_destination else "yes"
    elif run.already_pushed_version:
        out["why_not_pushed"] = f"the same model is already served as version {run.already_pushed_version}"
    elif out["gate"] is not None and not out["gate"]["blessed"]:
        out["why_not_pushed"] = "not blessed"
    else:
        failed = [n for n, st in run.states.items() if st == "FAILED"]
        out["why_not_pushed"] = (f"the run stopped at {', '.join(failed)}" if failed
                                 else "the Pusher did not run")
    return out


def _auc(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def format_outcome(o: Dict[str, Any]) -> str:
    """The outcome as a short text block (the end of every run, and ``python -m pipeline.report``)."""
    lines = [f"=== outcome of run {o['run_id']}"]
    d = o.get("data")
    if d:
        ex = d.get("examples") or {}
        ann = d.get("annotated") or {}
        kinds = {k: sum(int(v.get(k, 0)) for v in ann.values()) for k in ("gaze", "boxes", "any")}
        lines.append(f"data      : span {d.get('span')} of {d.get('dataset')} ({d.get('root')}): "
                     + ", ".join(f"{k} {v}" for k, v in ex.items()) + " examples; "
                     f"annotated: {kinds['any']} (gaze {kinds['gaze']}, boxes {kinds['boxes']}); "
                     f"rejected inputs {d.get('rejected')} of {d.get('inputs')}")
    else:
        lines.append("data      : no build summary (ExampleGen did not finish, or ImportExampleGen)")
    t = o.get("training")
    if t:
        s1 = t.get("stage1") or {}
        stage2 = (f"stage 2 skipped ({t['stage2_skipped']})" if t.get("stage2_skipped") else
                  f"stage 2 eval macro AUROC {_auc((t.get('stage2') or {}).get('macro_auroc'))}"
                  if t.get("stage2") else "stage 2 not run (stage2_epochs 0)")
        lines.append(f"training  : {t.get('train_examples')} examples ({t.get('annotated_examples')} "
                     f"annotated); stage 1 eval macro AUROC {_auc(s1.get('macro_auroc'))} "
                     f"(n={s1.get('num_eval')}); {stage2}; final model: {t.get('final_stage')}")
    else:
        lines.append("training  : no trained model in this run")
    g = o.get("gate")
    if g:
        counted, left = (", ".join(f"{c['finding']} ({c['positives']}+/{c['negatives']}-)" for c in g[key])
                         for key in ("counted", "left_out"))
        macro = ("not computed" if g.get("macro_auroc") is None else
                 f"macro AUROC {_auc(g['macro_auroc'])} (95% CI {_auc(g['ci_low'])}-{_auc(g['ci_high'])}, "
                 f"patient bootstrap)")
        lines.append(f"evaluation: {g['split']} split, {g['images']} images of {g['patients']} patients; "
                     f"{macro}")
        lines.append(f"  counted ({len(g['counted'])}): {counted or 'none'}")
        lines.append(f"  left out, < {g['options']['min_positives']} positives or < "
                     f"{g['options']['min_negatives']} negatives ({len(g['left_out'])}): {left or 'none'}")
        lines.append(f"decision  : {g['reason']}")
    else:
        lines.append("evaluation: the blessing gate did not run")
    lines.append(f"blessed: {'yes' if o.get('blessed') else 'no'}")
    lines.append(f"pushed: {o['pushed']}" if o.get("pushed") else "pushed: no")
    if not o.get("pushed") and o.get("why_not_pushed"):
        lines.append(f"  ({o['why_not_pushed']})")
    return "\n".join(lines)


def save_outcome(o: Dict[str, Any], pipeline_root: str) -> str:
    """Write ``outcome/<run id>.txt`` / ``.json`` and ``outcome.txt`` (the last run) in the pipeline
    root; returns the text file's path."""
    from cxr_tfp.staging import replace_file

    folder = os.path.join(pipeline_root, OUTCOME_DIR)
    os.makedirs(folder, exist_ok=True)
    text = format_outcome(o) + "\n"
    for path, body in ((os.path.join(folder, f"{o['run_id']}.json"), json.dumps(o, indent=2) + "\n"),
                       (os.path.join(folder, f"{o['run_id']}.txt"), text),
                       (os.path.join(pipeline_root, "outcome.txt"), text)):
        with open(path + ".partial", "w") as fh:
            fh.write(body)
        replace_file(path + ".partial", path)
    return os.path.join(folder, f"{o['run_id']}.txt")


def _default_settings_file() -> str:
    from pipeline import configs

    here = os.path.join("pipeline", configs.SETTINGS_FILE_NAME)   # where `tfx pipeline create` ran
    return here if os.path.isfile(here) else configs.SETTINGS_FILE


@cli_main
def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.report",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=None, help="a pipeline run id (default: the last run)")
    p.add_argument("--settings", default=None,
                   help="the pipeline's settings file (default ./pipeline/settings.json, else the "
                        "repo's pipeline/settings.json)")
    p.add_argument("--metadata", default=None, help="the ML Metadata SQLite file (default: from the settings)")
    p.add_argument("--list", action="store_true", help="list the run ids, oldest first")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    a = p.parse_args(argv)
    from pipeline import configs
    from pipeline import run_report as R

    metadata = a.metadata
    if metadata is None:
        metadata = configs.PipelineSettings.load(a.settings or _default_settings_file()) \
            .resolved_metadata_path
    if not os.path.isfile(metadata):
        raise FileNotFoundError(f"no ML Metadata store at {metadata}: no run yet "
                                f"(or pass --metadata / --settings)")
    if a.list:
        print("\n".join(R.run_ids(metadata)))
        return 0
    o = outcome(metadata, a.run)
    print(json.dumps(o, indent=2) if a.json else format_outcome(o))
    return 0


if __name__ == "__main__":
    sys.exit(main())
