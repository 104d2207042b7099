"""Lineage of a pushed model: from the served version back to the raw image folder, through ML Metadata.

    python -m pipeline.lineage VERSION [--metadata PATH] [--json]

``VERSION`` is the served version (the folder name under the push base, e.g. ``1796230000``) or the
pushed folder's path. Prints the raw root and span the examples were built from, the label-table
checksum, the salt fingerprint (never the salt), the ExampleGen / Trainer / Evaluator / Pusher
executions and the blessing. ``--metadata`` defaults to the local pipeline's SQLite store (settings
from ``CXR_TFP_*``, see pipeline/README.md); on Kubeflow / Vertex, read the same graph from their
ML Metadata (the function :func:`lineage` takes any ``MetadataStore``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional

from cxr_tfp.cli import UsageError, cli_main
from pipeline.run_report import STATE_NAMES, _store

_SQLITE_MAGIC = b"SQLite format 3\x00"
_MLMD_TABLES = {"Type", "Artifact", "Execution", "Event", "Context"}

_INPUT, _OUTPUT = (3, 1), (4, 2)   # Event.INPUT / DECLARED_INPUT, Event.OUTPUT / DECLARED_OUTPUT
_DONE = {"COMPLETE": 0, "CACHED": 1}


def _prop(artifact, key: str):
    if key not in artifact.custom_properties:
        return None
    v = artifact.custom_properties[key]
    which = v.WhichOneof("value")
    return getattr(v, which) if which else None


def _node(store, execution) -> str:
    node_type = store.get_context_type("node").id
    names = [c.name for c in store.get_contexts_by_execution(execution.id) if c.type_id == node_type]
    return names[0].split(".", 1)[-1] if names else execution.type


def _run(store, execution) -> Optional[str]:
    run_type = store.get_context_type("pipeline_run").id
    runs = [c.name for c in store.get_contexts_by_execution(execution.id) if c.type_id == run_type]
    return runs[0] if runs else None


def _producer(store, artifact_id: int):
    """The execution that made the artifact: the one that really ran, not a cache hit that reused it."""
    events = [e for e in store.get_events_by_artifact_ids([artifact_id]) if e.type in _OUTPUT]
    execs = store.get_executions_by_id([e.execution_id for e in events])
    if not execs:
        raise LookupError(f"no execution produced artifact {artifact_id}")
    return min(execs, key=lambda x: (_DONE.get(STATE_NAMES.get(x.last_known_state), 2), x.id))


def _inputs(store, execution) -> Dict[str, List[Any]]:
    events = [e for e in store.get_events_by_execution_ids([execution.id]) if e.type in _INPUT]
    arts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    out: Dict[str, List[Any]] = {}
    for e in events:
        key = e.path.steps[0].key if e.path.steps else "?"
        out.setdefault(key, []).append(arts[e.artifact_id])
    return out


def _execution(store, execution) -> Dict[str, Any]:
    return {"node": _node(store, execution), "id": execution.id,
            "state": STATE_NAMES.get(execution.last_known_state, str(execution.last_known_state)),
            "run": _run(store, execution)}


def lineage(store, version: str) -> Dict[str, Any]:
    """The lineage of the pushed model ``version`` (a version folder name or the pushed path).

    Raises LookupError when no push of that version is recorded.
    """
    version = os.path.basename(os.path.normpath(str(version)))
    pushes = [a for a in store.get_artifacts_by_type("PushedModel")
              if str(_prop(a, "pushed_version") or "") == version and _prop(a, "pushed") == 1]
    if not pushes:
        raise LookupError(f"no pushed model with version {version!r} in this ML Metadata store")
    pushed = pushes[0]
    pusher = _producer(store, pushed.id)
    pusher_in = _inputs(store, pusher)
    model, blessing = pusher_in["model"][0], pusher_in["model_blessing"][0]
    trainer = _producer(store, model.id)
    evaluator = _producer(store, blessing.id)
    examples = _inputs(store, trainer)["examples"][0]
    example_gen = _producer(store, examples.id)
    baseline = _inputs(store, evaluator).get("baseline_model") or []
    span = examples.properties["span"].int_value if "span" in examples.properties else _prop(examples, "span")
    return {
        "version": version,
        "pushed_destination": _prop(pushed, "pushed_destination"),
        "model": model.uri,
        "raw_root": _prop(examples, "raw_root"),
        "dataset": _prop(examples, "dataset"),
        "span": span,
        "label_tables_sha256": _prop(examples, "label_tables_sha256"),
        "salt_fingerprint": _prop(examples, "salt_fingerprint"),
        "examples": {"uri": examples.uri, "written": _prop(examples, "examples_written"),
                     "rejected": _prop(examples, "rejected"),
                     "dead_letters": _prop(examples, "dead_letters_uri"),
                     "summary": _prop(examples, "summary_uri")},
        "blessing": {"blessed": _prop(blessing, "blessed") == 1, "uri": blessing.uri,
                     "baseline_model": baseline[0].uri if baseline else None},
        "executions": [_execution(store, e) for e in (example_gen, trainer, evaluator, pusher)],
    }


def format_lineage(info: Dict[str, Any]) -> str:
    """The lineage as aligned text lines."""
    ex = info["examples"]
    rows = [
        ("pushed version", f"{info['version']}  ({info['pushed_destination']})"),
        ("raw root", f"{info['raw_root']}  (dataset {info['dataset']})"),
        ("span", str(info["span"])),
        ("label tables sha256", str(info["label_tables_sha256"])),
        ("salt fingerprint", str(info["salt_fingerprint"])),
        ("examples", f"{ex['uri']}  ({ex['written']} written, {ex['rejected']} rejected; "
                     f"dead letters {ex['dead_letters']})"),
        ("model", info["model"]),
        ("blessing", f"{'blessed' if info['blessing']['blessed'] else 'NOT blessed'}  "
                     f"(baseline: {info['blessing']['baseline_model'] or 'none'})"),
    ]
    rows += [(f"execution {e['node']}", f"#{e['id']} {e['state']}  run {e['run']}")
             for e in info["executions"]]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def open_store(metadata_path: str):
    """The read-only ML Metadata store at ``metadata_path``; :class:`UsageError` naming the file when it
    is missing, a folder, empty, not SQLite, or an SQLite file without ML Metadata's tables (checked
    with sqlite3 before ML Metadata opens it: its own errors are multi-line SQL)."""
    import sqlite3

    what = f"--metadata {metadata_path}"
    if os.path.isdir(metadata_path):
        raise UsageError(f"{what}: is a folder, not an ML Metadata store (an SQLite file, e.g. "
                         f"PIPELINE_ROOT/metadata.sqlite)")
    if not os.path.isfile(metadata_path):
        raise UsageError(f"{what}: no such file (no ML Metadata store there)")
    with open(metadata_path, "rb") as fh:
        head = fh.read(len(_SQLITE_MAGIC))
    if not head:
        raise UsageError(f"{what}: empty file, not an ML Metadata store")
    if head != _SQLITE_MAGIC:
        raise UsageError(f"{what}: not an ML Metadata store (not an SQLite file)")
    try:
        con = sqlite3.connect(f"file:{metadata_path}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise UsageError(f"{what}: not a readable ML Metadata store (SQLite: {exc})") from None
    missing = sorted(_MLMD_TABLES - tables)
    if missing:
        raise UsageError(f"{what}: an SQLite file but not an ML Metadata store (no {', '.join(missing)} "
                         f"table{'s' if len(missing) > 1 else ''})")
    try:
        return _store(metadata_path)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{what}: ML Metadata cannot open it ({first[:160]})") from None


@cli_main
def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.lineage", description=__doc__.split("\n\n")[0])
    p.add_argument("version", help="served version (folder name under the push base) or its path")
    p.add_argument("--metadata", default=None,
                   help="ML Metadata SQLite file (default: the local pipeline's, from CXR_TFP_* settings)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    a = p.parse_args(argv)
    if a.metadata is None:
        from pipeline import configs

        a.metadata = configs.PipelineSettings.load(configs.SETTINGS_FILE).resolved_metadata_path
    try:
        info = lineage(open_store(a.metadata), a.version)
    except (LookupError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2) if a.json else format_lineage(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
