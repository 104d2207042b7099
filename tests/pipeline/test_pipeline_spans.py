"""Spans (slow: three pipeline runs): a new raw sub-folder is a new span that the pipeline picks up.

1. span 1 only: built, trained, blessed, pushed;
2. the same folder again: the ExampleGen and the Trainer come from the TFX cache, nothing is pushed;
3. a second span dropped beside the first: the ExampleGen builds span 2, the Trainer trains on it,
   the Evaluator compares the new model with the blessed one, and the pushed version's lineage
   names span 2.
"""
import json
import os

import pytest

import pipeline  # noqa: F401  (Keras 3 pin before tfx)
from pipeline import dag as P
from pipeline import run_report as R
from tests.pipeline.test_pipeline_e2e import GOOD, _run, raw_settings, write_raw_span

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfx_spans")
    write_raw_span(root, 1, seed=0)
    # a generous drop allowance: the span-2 model is pushed whatever its AUROC on the small test split
    settings = raw_settings(root, macro_auc_lower_bound=0.0, macro_auc_max_drop=1.0,
                            gate_min_positives=3, gate_min_negatives=3, gate_bootstrap=200)
    out = {"settings": settings, "root": root}
    out["first"] = _run(settings, GOOD)
    out["v1"] = R.pushed_versions(settings.push_base)
    out["again"] = _run(settings, GOOD)
    out["v2"] = R.pushed_versions(settings.push_base)
    write_raw_span(root, 2, seed=1)
    out["span2"] = _run(settings, GOOD)
    out["v3"] = R.pushed_versions(settings.push_base)
    return out


def _summary(run):
    return json.load(open(os.path.join(run.uri(P.EXAMPLE_GEN, "examples"), "summary.json")))


def test_unchanged_folder_is_served_from_the_cache_and_not_pushed_again(runs):
    assert runs["first"].pushed is True and len(runs["v1"]) == 1
    again = runs["again"]
    assert again.states[P.EXAMPLE_GEN] == "CACHED" and again.states[P.TRAINER] == "CACHED"
    assert again.pushed is False and runs["v2"] == runs["v1"]


def test_a_new_span_is_built_trained_compared_and_pushed(runs):
    from pipeline import lineage as L

    s, new = runs["settings"], runs["span2"]
    assert new.states[P.EXAMPLE_GEN] == "COMPLETE" and new.states[P.TRAINER] == "COMPLETE"
    summary = _summary(new)
    assert summary["span"] == 2 and summary["root"] == os.path.join(s.raw_root, "2")
    assert _summary(runs["first"])["span"] == 1
    # the Evaluator had the span-1 model as its baseline
    overall = R.read_metrics(new.uri(P.EVALUATOR, "evaluation"))["overall"]
    assert "macro_auc_diff" in overall
    assert new.pushed is True and len(runs["v3"]) == 2
    info = L.lineage(R._store(s.resolved_metadata_path), runs["v3"][-1])
    assert info["span"] == 2 and info["raw_root"] == os.path.join(s.raw_root, "2")
    assert info["blessing"]["baseline_model"] == runs["first"].uri(P.TRAINER, "model")
    old = L.lineage(R._store(s.resolved_metadata_path), runs["v1"][0])
    assert old["span"] == 1 and old["label_tables_sha256"] != info["label_tables_sha256"]
