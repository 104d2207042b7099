"""What a local pipeline run did, read back from its ML Metadata store and artifacts.

Used by the demo (progress and the final summary) and by the tests (blessed? pushed? cached?).
"""
from __future__ import annotations

import dataclasses
import glob
import os
from typing import Dict, List, Optional, Sequence

from cxr_tfp import model_dir as MD

# ml_metadata Execution.State values.
STATE_NAMES = {0: "UNKNOWN", 1: "NEW", 2: "RUNNING", 3: "COMPLETE", 4: "FAILED", 5: "CACHED",
               6: "CANCELED"}
_OUTPUT_EVENTS = (4, 2)  # Event.OUTPUT, Event.DECLARED_OUTPUT


@dataclasses.dataclass
class RunSummary:
    """The latest pipeline run: per-node execution state and the artifacts that matter."""

    run_id: str
    states: Dict[str, str]                       # node id -> COMPLETE / CACHED / FAILED ...
    outputs: Dict[str, Dict[str, List[str]]]     # node id -> output key -> artifact URIs
    blessed: Optional[bool] = None
    pushed: Optional[bool] = None
    pushed_destination: Optional[str] = None
    already_pushed_version: Optional[str] = None

    def uri(self, node: str, key: str) -> Optional[str]:
        uris = self.outputs.get(node, {}).get(key) or []
        return uris[0] if uris else None


def _store(metadata_path: str):
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2

    if not os.path.exists(metadata_path):
        raise FileNotFoundError(f"no ML Metadata store at {metadata_path}")
    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = metadata_path
    cfg.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return mlmd.MetadataStore(cfg)


def _int_prop(artifact, key: str) -> Optional[int]:
    if key in artifact.custom_properties:
        return int(artifact.custom_properties[key].int_value)
    return None


def run_count(metadata_path: str) -> int:
    """How many pipeline runs the store has seen."""
    if not os.path.exists(metadata_path):
        return 0
    return len(_store(metadata_path).get_contexts_by_type("pipeline_run"))


# The node whose ModelBlessing the Pusher reads (pipeline.dag.BLESSING_GATE); TFMA's Evaluator
# also writes one (never blessed: it has no thresholds).
GATE_NODE = "BlessingGate"


def run_ids(metadata_path: str) -> List[str]:
    """Every pipeline run id in the store, oldest first."""
    store = _store(metadata_path)
    return [c.name for c in sorted(store.get_contexts_by_type("pipeline_run"), key=lambda c: c.id)]


def latest_run(metadata_path: str, run_id: Optional[str] = None) -> RunSummary:
    """Summarise the most recent pipeline run (or ``run_id``) in the SQLite store at ``metadata_path``."""
    store = _store(metadata_path)
    runs = sorted(store.get_contexts_by_type("pipeline_run"), key=lambda c: c.id)
    if not runs:
        raise LookupError(f"no pipeline run recorded in {metadata_path}")
    if run_id is not None:
        chosen = [c for c in runs if c.name == run_id]
        if not chosen:
            raise LookupError(f"no pipeline run {run_id!r} in {metadata_path} "
                              f"(latest: {runs[-1].name})")
        runs = chosen
    run = runs[-1]
    blessings: Dict[str, Optional[bool]] = {}
    states: Dict[str, str] = {}
    outputs: Dict[str, Dict[str, List[str]]] = {}
    summary = RunSummary(run_id=run.name, states=states, outputs=outputs)
    for ex in sorted(store.get_executions_by_context(run.id), key=lambda e: e.id):
        nodes = [c.name for c in store.get_contexts_by_execution(ex.id)
                 if c.type_id == store.get_context_type("node").id]
        node = nodes[0].split(".", 1)[-1] if nodes else ex.type
        states[node] = STATE_NAMES.get(ex.last_known_state, str(ex.last_known_state))
        events = [e for e in store.get_events_by_execution_ids([ex.id])
                  if e.type in _OUTPUT_EVENTS]
        arts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
        for ev in events:
            key = ev.path.steps[0].key if ev.path.steps else "?"
            art = arts[ev.artifact_id]
            outputs.setdefault(node, {}).setdefault(key, []).append(art.uri)
            if key == "blessing":
                b = _int_prop(art, "blessed")
                blessings[node] = None if b is None else bool(b)
            if key == "pushed_model":
                p = _int_prop(art, "pushed")
                summary.pushed = None if p is None else bool(p)
                dest = art.custom_properties.get("pushed_destination")
                summary.pushed_destination = dest.string_value if dest is not None and \
                    dest.string_value else None
                again = art.custom_properties.get("already_pushed_version")
                summary.already_pushed_version = again.string_value if again is not None and \
                    again.string_value else None
    if blessings:
        summary.blessed = blessings[GATE_NODE] if GATE_NODE in blessings else \
            list(blessings.values())[-1]
    return summary


def pushed_versions(push_base: str) -> List[str]:
    """Version folders (names) holding a SavedModel under a TF Serving base path, oldest first."""
    return [str(v) for v in MD.pushed_versions(push_base)]


# --------------------------------------------------------------------------------------------------
# Evaluator output
# --------------------------------------------------------------------------------------------------
def _slice_name(slice_key) -> str:
    parts = []
    for k in slice_key.single_slice_keys:
        value = k.bytes_value.decode() if k.HasField("bytes_value") else (
            k.int64_value if k.HasField("int64_value") else k.float_value)
        parts.append(f"{k.column}={value}")
    return ", ".join(parts) or "overall"


def read_metrics(evaluation_uri: str) -> Dict[str, Dict[str, float]]:
    """``{slice: {metric: value}}`` of the candidate model; metric names: ``macro_auc``,
    ``macro_auc_diff`` (vs the baseline, when there was one), ``auc/<class id>``, ``n``."""
    import tensorflow as tf
    from tensorflow_model_analysis.proto import metrics_for_slice_pb2

    files = glob.glob(os.path.join(evaluation_uri, "metrics*"))
    if not files:
        raise FileNotFoundError(f"no TFMA metrics under {evaluation_uri}")
    out: Dict[str, Dict[str, float]] = {}
    for rec in tf.data.TFRecordDataset(files):
        m = metrics_for_slice_pb2.MetricsForSlice.FromString(rec.numpy())
        row = out.setdefault(_slice_name(m.slice_key), {})
        for kv in m.metric_keys_and_values:
            key = kv.key
            if key.model_name not in ("", "candidate"):
                continue
            value = kv.value.double_value.value
            if key.HasField("aggregation_type") and key.name == "auc":
                row["macro_auc_diff" if key.is_diff else "macro_auc"] = value
            elif key.sub_key.HasField("class_id") and not key.is_diff:
                cid = key.sub_key.class_id.value
                if key.name == "auc":
                    row[f"auc/{cid}"] = value
                elif key.name == "example_count":
                    row["n"] = value
    return out


def validation_failures(evaluation_uri: str) -> List[str]:
    """One line per failed threshold (slice, metric, value, threshold); empty when validated."""
    import tensorflow_model_analysis as tfma

    result = tfma.load_validation_result(evaluation_uri)
    lines = []
    for per_slice in result.metric_validations_per_slice:
        for f in per_slice.failures:
            t = f.metric_threshold
            if f.metric_key.is_diff:
                what = (f"change vs baseline {f.metric_value.double_value.value:+.4f}, allowed "
                        f">= {t.change_threshold.absolute.value:+.4f}")
            else:
                what = (f"value {f.metric_value.double_value.value:.4f}, required "
                        f">= {t.value_threshold.lower_bound.value:.4f}")
            agg = " (macro)" if f.metric_key.HasField("aggregation_type") else ""
            lines.append(f"{_slice_name(per_slice.slice_key)}: {f.metric_key.name}{agg} {what}"
                         + (f" [{f.message}]" if f.message else ""))
    return lines


def metrics_table(metrics: Dict[str, Dict[str, float]], findings: Sequence[str]) -> str:
    """A text table: one row per slice, columns n, macro AUROC (diff) and AUROC per finding."""
    from cxr_tfp.labels import indices

    cols = list(zip(findings, indices(findings)))
    heads = ["slice", "n", "macro AUROC", "vs baseline"] + [f for f, _ in cols]
    rows = []
    order = sorted(metrics, key=lambda s: (s != "overall", s))
    for name in order:
        m = metrics[name]
        diff = m.get("macro_auc_diff")
        rows.append([name, f"{m.get('n', float('nan')):.0f}", f"{m.get('macro_auc', float('nan')):.3f}",
                     "-" if diff is None else f"{diff:+.3f}"]
                    + [f"{m.get(f'auc/{c}', float('nan')):.3f}" for _, c in cols])
    widths = [max(len(str(r[i])) for r in [heads] + rows) for i in range(len(heads))]
    fmt = lambda r: "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w)  # noqa: E731
                              for i, (v, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(heads), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])


def check_pushed_model(version_dir: str) -> Dict[str, List[str]]:
    """Load a pushed SavedModel; return ``{signature: sorted output keys}`` (raises if unloadable)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(version_dir)
    return {name: sorted(fn.structured_outputs) for name, fn in loaded.signatures.items()
            if name in (MD.SERVING_SIGNATURE, MD.IMAGE_SIGNATURE)}
