"""The chest X-ray ExampleGen: the raw dataset folder -> tf.Examples, as the pipeline's first component.

TFX's custom ExampleGen pattern: a ``FileBasedExampleGen`` (its driver resolves ``{SPAN}`` folders and
fingerprints the input for the cache) with a custom Beam executor. The executor runs the library's
dataset adapter on the launcher, then applies the library's Beam graph
(:func:`cxr_tfp.records.graph.examples_transform`, the one the standalone build runs) on the
pipeline's Beam runner with the pipeline's ``beam_pipeline_args``, and writes TFX's
``Split-{train,eval,test}/`` layout with the standalone build's shard writer. Splits are by patient
(salted hash), as in the standalone build, so the shard files are the same, byte for byte, given the
same inputs, options and salt.

Outputs besides the splits, inside the Examples artifact's folder (so the next components and the
user find them from the artifact): ``dead_letters.jsonl`` and ``summary.json`` (the build's
accounting); and custom properties on the artifact: ``raw_root``, ``dataset``, ``salt_fingerprint``,
``label_tables_sha256``, ``examples_written``, ``inputs``, ``rejected``, ``dead_letters_uri``,
``summary_uri`` (the driver adds ``span``).

The salt is a secret: it is never a parameter. The executor reads it where it runs
(``CXR_TFP_SALT`` or the mounted file named by ``CXR_TFP_SALT_FILE``, see :mod:`cxr_tfp.privacy`);
the component may carry the expected *fingerprint*, and the run fails when the salt in force has
another one (a container without the secret would otherwise build with the public default).

A salt series: every span must be built with the salt of the spans before it, or patients change
split between spans and their keys no longer join. The executor compares the salt in force with the
fingerprint of the latest earlier Examples artifact of this component (its ``salt_fingerprint``
property, mirrored in that artifact's ``summary.json``) and refuses a different one by default,
naming both fingerprints. ``CXR_TFP_NEW_SALT_SERIES=1`` in the component's environment starts a new
series deliberately (recorded as ``salt_series: "new"`` in the summary); the spans after it are
compared with the new salt.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from google.protobuf import any_pb2, json_format, struct_pb2
from tfx.components.example_gen import write_split
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.components.util import examples_utils
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from cxr_tfp.features import SPLITS

# File name suffixes of the tables adapters read (labels, splits, boxes, gaze): what
# ``label_tables_sha256`` covers. Images are left out: they are fingerprinted by TFX's driver.
TABLE_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".json", ".jsonl", ".txt")
DEAD_LETTERS = "dead_letters.jsonl"
SUMMARY = "summary.json"
PARAMS_TYPE = "type.googleapis.com/google.protobuf.Struct"
NEW_SALT_SERIES_ENV = "CXR_TFP_NEW_SALT_SERIES"


def earlier_salt_fingerprint(examples_uri: str) -> Optional[Dict[str, str]]:
    """``{"fingerprint", "uri"}`` of the latest earlier, successful Examples artifact of the component
    that writes ``examples_uri`` (TFX puts each execution's output in a sibling folder named by its
    execution id, each with the ``summary.json`` this executor writes), or None for a first build."""
    here = Path(examples_uri)
    best = None
    try:
        siblings = [d for d in here.parent.iterdir() if d.is_dir() and d.name != here.name]
    except OSError:
        return None
    for d in siblings:
        try:
            summary = json.loads((d / SUMMARY).read_text())
        except (OSError, ValueError):
            continue
        fp = summary.get("salt_fingerprint") if isinstance(summary, dict) else None
        if not fp or summary.get("status", "ok") != "ok":
            continue
        rank = (int(d.name) if d.name.isdigit() else -1, (d / SUMMARY).stat().st_mtime)
        if best is None or rank > best[0]:
            best = (rank, {"fingerprint": str(fp), "uri": str(d)})
    return best[1] if best else None


def check_salt_series(examples_uri: str, fingerprint: str) -> str:
    """Refuse a salt other than the earlier spans' (module doc); returns ``"same"``, ``"first"`` or
    ``"new"`` (a new series started with ``CXR_TFP_NEW_SALT_SERIES=1``)."""
    earlier = earlier_salt_fingerprint(examples_uri)
    if earlier is None:
        return "first"
    if earlier["fingerprint"] == fingerprint:
        return "same"
    if os.environ.get(NEW_SALT_SERIES_ENV, "").strip().lower() in ("1", "true", "yes"):
        return "new"
    raise ValueError(
        f"the salt in force has fingerprint {fingerprint}, the earlier spans were built with fingerprint "
        f"{earlier['fingerprint']} ({earlier['uri']}): patients would change split between spans and "
        f"their keys would no longer join; restore that salt (CXR_TFP_SALT or CXR_TFP_SALT_FILE), or set "
        f"{NEW_SALT_SERIES_ENV}=1 to start a new series deliberately")


# ------------------------------------------------------------------------------------- component
def chest_xray_example_gen(dataset: str, raw_root: str, image_size: int, *,
                           span_folder: Optional[str] = "{SPAN}",
                           split_fractions: Optional[Sequence[float]] = None,
                           adapter_options: Optional[Dict[str, Any]] = None,
                           salt_fingerprint: Optional[str] = None,
                           range_config: Optional[Any] = None) -> FileBasedExampleGen:
    """The ExampleGen over ``raw_root`` for a dataset kind (nih, mimic, egd, reflacx, dicom, synthetic).

    ``span_folder``: the sub-folder pattern holding one span (``{SPAN}``: numbered folders ``1/``,
    ``2/``...; ``{YYYY}-{MM}-{DD}``: dated ones); each span folder is a whole dataset in its published
    layout, and the latest span is built (TFX's default; ``range_config`` picks others). ``None``:
    ``raw_root`` itself is the dataset (span 0). ``split_fractions``: train/eval/test fractions of
    patients (split by salted patient hash; official splits win where the dataset has them).
    ``adapter_options``: the adapter's and the build's options (``max_rejected_fraction``,
    ``resize_mode``, ``views``, ``synthetic_patients``, ...), as for ``cxr_tfp.records.build.build``.
    """
    from cxr_tfp.records.build import parse_options

    options = dict(adapter_options or {})
    if "salt" in options:
        raise ValueError("the salt is a secret, not a component parameter: set CXR_TFP_SALT or "
                         "CXR_TFP_SALT_FILE where the component runs")
    if split_fractions is not None:
        options["split_fractions"] = ",".join(str(float(f)) for f in split_fractions)
    parse_options(dataset, image_size, dict(options))  # fail at pipeline build time, not at run time
    params = {"dataset": dataset, "image_size": int(image_size), "options": options,
              "salt_fingerprint": salt_fingerprint or ""}
    pattern = f"{span_folder}/*" if span_folder else "*"
    # One input split per output split, all over the same folder: the executor builds the three
    # splits at once (by patient) in one Beam graph; the driver resolves {SPAN} once for all.
    input_config = example_gen_pb2.Input(splits=[
        example_gen_pb2.Input.Split(name=s, pattern=pattern) for s in SPLITS])
    struct = struct_pb2.Struct()
    struct.update(params)
    packed = any_pb2.Any()
    packed.Pack(struct)
    return FileBasedExampleGen(
        input_base=raw_root, input_config=input_config,
        custom_config=example_gen_pb2.CustomConfig(custom_config=packed),
        range_config=range_config,
        custom_executor_spec=executor_spec.BeamExecutorSpec(Executor))


def read_params(exec_properties: Dict[str, Any]) -> Dict[str, Any]:
    """The component's parameters from its ``custom_config`` execution property."""
    raw = exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY)
    config = example_gen_pb2.CustomConfig()
    if isinstance(raw, str):
        proto_utils.json_to_proto(raw, config)
    elif raw is not None:
        config.CopyFrom(raw)
    struct = struct_pb2.Struct()
    if not config.custom_config.Unpack(struct):
        raise ValueError("custom_config does not hold the chest X-ray ExampleGen parameters")
    params = json_format.MessageToDict(struct)
    params["image_size"] = int(params["image_size"])
    return params


def tables_checksum(root: Path, extra: Sequence[str] = ()) -> str:
    """SHA-256 over the dataset's tables (relative path + content), in a stable order."""
    digest = hashlib.sha256()
    files = [Path(p) for p in extra if p and Path(p).is_file()]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        files.extend(Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(TABLE_SUFFIXES))
    for f in files:
        name = os.path.relpath(f, root) if str(f).startswith(str(root)) else f.name
        digest.update(name.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


# ------------------------------------------------------------------------------------- executor
class Executor(BaseExampleGenExecutor):
    """Builds train/eval/test tf.Examples from a raw chest X-ray folder with the library's Beam graph."""

    def GetInputSourceToExamplePTransform(self):  # noqa: N802  (TFX API)
        # Not used: the three splits come out of one graph (see GenerateExamplesByBeam / Do), because
        # the split is a property of each patient, known only after reading the tables.
        raise NotImplementedError("the chest X-ray ExampleGen builds all splits in Do")

    def Do(self, input_dict: Dict[str, List[Any]], output_dict: Dict[str, List[Any]],  # noqa: N802
           exec_properties: Dict[str, Any]) -> None:
        import apache_beam as beam

        from cxr_tfp.records import accounting as A
        from cxr_tfp.records import build as B
        from cxr_tfp.records.graph import examples_transform, write_work_shards
        from cxr_tfp.records.shards import SHARD_SUFFIX, fill_empty_shards, write_sorted_shards
        from cxr_tfp.privacy import salt_fingerprint
        from cxr_tfp.staging import owner_only_umask

        t0 = time.monotonic()
        self._log_startup(input_dict, output_dict, exec_properties)
        params = read_params(exec_properties)
        input_config = example_gen_pb2.Input()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
        # The driver has put the resolved span into the patterns: the span's folder is the dataset root.
        span_dir = os.path.dirname(input_config.splits[0].pattern)
        root = Path(os.path.normpath(os.path.join(exec_properties[standard_component_specs.INPUT_BASE_KEY],
                                                  span_dir)))
        fingerprint = salt_fingerprint()
        expected = params.get("salt_fingerprint") or ""
        if expected and expected != fingerprint:
            raise ValueError(f"the salt in force has fingerprint {fingerprint}, the pipeline expects "
                             f"{expected}: set CXR_TFP_SALT or CXR_TFP_SALT_FILE in this component's "
                             f"environment")
        examples = artifact_utils.get_single_instance(output_dict[standard_component_specs.EXAMPLES_KEY])
        series = check_salt_series(examples.uri, fingerprint)   # before any input is read
        cfg, opts, extra = B.parse_options(params["dataset"], params["image_size"], dict(params["options"]))
        adapter, records, pre_rejected = B.read_inputs(params["dataset"], root, cfg, opts)

        examples.split_names = artifact_utils.encode_split_names(list(SPLITS))
        uri = examples.uri
        scratch = Path(uri) / ".scratch"
        try:
            with owner_only_umask():
                shards, key = write_work_shards(records, cfg, scratch / "work")
                counts = B.split_shard_counts(len(records), cfg)
                prefixes = {sp: os.path.join(artifact_utils.get_split_uri([examples], sp), "data")
                            for sp in SPLITS}
                with self._make_beam_pipeline() as p:
                    res = p | "ChestXrayExamples" >> examples_transform(shards, key, cfg)
                    # The standalone build's writer (not TFX's WriteSplit): shards by example-key
                    # hash, key-sorted, so the files are the standalone build's, byte for byte.
                    for sp in SPLITS:
                        _ = res[sp] | f"WriteSplit[{sp}]" >> write_sorted_shards(
                            prefixes[sp], counts[sp], SHARD_SUFFIX)
                    _ = res["dead"] | "WriteDead" >> beam.io.WriteToText(
                        str(scratch / "dead" / "dead"), file_name_suffix=".jsonl")
                    _ = (res["stats"] | "StatsJson" >> beam.Map(json.dumps)
                         | "WriteStats" >> beam.io.WriteToText(str(scratch / "stats" / "stats"),
                                                               file_name_suffix=".json", num_shards=1))
                for sp in SPLITS:
                    fill_empty_shards(prefixes[sp], counts[sp], SHARD_SUFFIX)
                worker_dead = [json.loads(ln) for ln in B._read_lines(scratch / "dead" / "dead")]
                stats_lines = B._read_lines(scratch / "stats" / "stats")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        stats = json.loads(stats_lines[0]) if stats_lines else A.empty_stats()
        options = self._beam_pipeline_args or []
        runner = next((a.split("=", 1)[1] for a in options if a.startswith("--runner=")), "DirectRunner")
        summary = A.summarise(params["dataset"], root, Path(uri), cfg, adapter, records, pre_rejected,
                               worker_dead, stats, time.monotonic() - t0,
                               extra["max_rejected_fraction"], runner, None)
        summary["files"] = {sp: sorted(os.listdir(artifact_utils.get_split_uri([examples], sp)))
                            for sp in SPLITS}
        # Which Beam options the component ran with (runner-level ones only: flags can carry
        # project names, never the salt, which is not a flag).
        summary["beam_options"] = [a for a in options if a.split("=", 1)[0] in (
            "--runner", "--direct_running_mode", "--direct_num_workers", "--num_workers",
            "--max_num_workers", "--machine_type", "--worker_machine_type", "--region")]
        summary["span"] = int(exec_properties.get("span") or 0)
        table_sum = tables_checksum(root, [opts.get("label_table") or "", opts.get("labels_csv") or ""])
        summary["label_tables_sha256"] = table_sum
        summary["salt_fingerprint"], summary["salt_series"] = fingerprint, series
        A.write_dead_letters(Path(uri), [A.rejected_line(r, params["dataset"]) for r in pre_rejected]
                              + worker_dead, extra["redact_sources"], cfg.salt)
        assert summary["in"] == summary["written"] + summary["rejected"], "accounting bug"
        msg = A.check_fraction(summary, extra["max_rejected_fraction"])
        if msg:
            summary.update(status="failed", error=msg)
        with open(os.path.join(uri, SUMMARY), "w") as fh:
            fh.write(json.dumps(summary, indent=2) + "\n")
        if msg:
            raise B.RejectedFractionError(f"{msg} (in {uri})", summary)
        from absl import logging

        logging.info("ExampleGen: %s", A.annotation_line(summary))

        examples_utils.set_payload_format(examples, example_gen_pb2.FORMAT_TF_EXAMPLE)
        examples_utils.set_file_format(examples, write_split.to_file_format_str(
            example_gen_pb2.FORMAT_TFRECORDS_GZIP))
        props = {"raw_root": str(root), "dataset": params["dataset"], "salt_fingerprint": fingerprint,
                 "label_tables_sha256": table_sum, "dead_letters_uri": os.path.join(uri, DEAD_LETTERS),
                 "summary_uri": os.path.join(uri, SUMMARY), "beam_runner": runner}
        for k, v in props.items():
            examples.set_string_custom_property(k, v)
        for k, v in {"examples_written": summary["examples"]["written"], "inputs": summary["in"],
                     "rejected": summary["rejected"], "image_size": cfg.image_size,
                     **{f"annotated_{kind}": sum(v.get(kind, 0) for v in summary["annotated"].values())
                        for kind in ("any", "gaze", "boxes")}}.items():
            examples.set_int_custom_property(k, int(v))
