"""DEVELOPMENT STAND-IN for TensorFlow Serving: a gRPC ``PredictionService`` over a SavedModel.

This is NOT production serving. Production runs the official ``tensorflow/serving`` image (see
``serving/``). No ``tensorflow_model_server`` binary can be installed in this development
environment, so this module answers the same RPCs with the same protos
(``tensorflow_serving.apis``) so that the real client, tests and the demo can do genuine gRPC round
trips. It mimics the parts of TF Serving the project relies on:

- model discovery under a base path: integer-named version sub-folders holding ``saved_model.pb``
  (others, such as a push still being written, are ignored); a SavedModel placed directly in the base
  path is refused, as TF Serving finds no version there (export to ``<base>/<model>/<version>``);
- ``--model_config_file`` (a ``ModelServerConfig`` in text format, such as ``serving/models.config``):
  each model's name, base path, ``model_version_policy`` (``latest {num_versions}``, the default
  ``latest 1``; ``all``; ``specific {versions}``) and ``version_labels``. A label must name a version
  the policy loads, and a ``specific`` version must exist, or the server does not start (TF Serving
  without ``--allow_version_labels_for_unavailable_models`` refuses such labels too);
- ``model_spec``: model name (``NOT_FOUND`` naming the served models when wrong), a version that is
  not loaded (``NOT_FOUND`` that names the loaded versions, not the model), an unknown version label
  (``INVALID_ARGUMENT`` naming the labels defined), signature name (``FAILED_PRECONDITION`` when
  absent, as TF Serving);
- input validation: input names, dtype and shape against the signature, and empty batches, each a
  clear ``INVALID_ARGUMENT``; a model error on bad bytes (not an image) is ``INVALID_ARGUMENT`` too,
  and the server goes on serving;
- ``output_filter``; ``GetModelMetadata`` with ``signature_def`` (the SignatureDefMap from
  ``saved_model.pb``);
- SavedModel warm-up: ``assets.extra/tf_serving_warmup_requests`` is replayed at load; a failing
  warm-up request fails the load, as in TF Serving.

Not mimicked: server-side batching, Classify/Regress/MultiInference (UNIMPLEMENTED), model
reloading when a new version appears, the REST API.

It lives in ``serving/``, beside the real server's configs, and the library never imports it. Run
one by hand from the repository root (e.g. for ``python -m cxr_tfp.client``)::

    python -m serving.standin --model_base_path /path/to/serving_model/cxr_tfp \
        --model_name cxr_tfp --port 8500
    python -m serving.standin --model_config_file models.config --port 8500   # labels, version policy
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import re
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import grpc
import numpy as np

from cxr_tfp.cli import UsageError, cli_main
from cxr_tfp.model_dir import (MAX_MESSAGE_BYTES, MODEL_NAME, SAVED_MODEL_FILE, SERVING_SIGNATURE,
                               WARMUP_FILE, find_versions, is_saved_model)

__all__ = ["find_versions", "serving_versions", "VersionPolicy", "ModelConfig", "read_model_config_file",
           "start_server", "start_from_config", "run_program", "main"]

log = logging.getLogger(__name__)

# TF Serving's default when a request names no signature.
DEFAULT_SIGNATURE = SERVING_SIGNATURE


class RpcError(Exception):
    """An error to return to the caller with a gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def tf_error_message(err: Exception) -> str:
    """The useful line(s) of a TensorFlow runtime error, without the graph stack trace."""
    text = getattr(err, "message", None) or str(err)
    keep = []
    for line in text.splitlines():
        s = line.strip()
        if not s or line[:1] in (" ", "\t"):
            continue  # indented lines are the "defined at" Python stack
        if s.startswith(("Graph execution error", "Detected at node", "[[", "Detected unsupported")):
            continue
        keep.append(s)
    msg = " ".join(keep) or text.strip()
    msg = re.sub(r"\s*\[\[\{\{node [^]]*\]\]", "", msg)
    msg = re.sub(r"\s*\[Op:[^\]]*\]", "", msg)
    msg = msg.replace("<stack traces unavailable>", "")
    return msg.strip()


class ServedModel:
    """One loaded SavedModel version: its signature functions and SignatureDef protos."""

    def __init__(self, name: str, version: int, path: str, warmup: bool = True):
        import tensorflow as tf
        from tensorflow.core.protobuf import saved_model_pb2

        self.name, self.version, self.path = name, version, path
        self._loaded = tf.saved_model.load(path)
        self.signatures = dict(self._loaded.signatures)
        sm = saved_model_pb2.SavedModel()
        sm.ParseFromString(Path(path, SAVED_MODEL_FILE).read_bytes())
        self.signature_defs = {k: v for k, v in sm.meta_graphs[0].signature_def.items()
                               if k != "__saved_model_init_op"}
        self.warmup_count = self._warmup() if warmup else 0

    def _warmup(self) -> int:
        """Replay the warm-up PredictionLogs, as TF Serving does at load; any failure fails the load."""
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        path = os.path.join(self.path, WARMUP_FILE)
        if not os.path.isfile(path):
            return 0
        n = 0
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
            entry = prediction_log_pb2.PredictionLog.FromString(raw)
            if not entry.HasField("predict_log"):
                raise RpcError(grpc.StatusCode.UNIMPLEMENTED,
                               f"{path}: only predict_log warm-up records are supported")
            req = entry.predict_log.request
            try:
                self.predict(req.model_spec.signature_name or DEFAULT_SIGNATURE, req.inputs,
                             req.output_filter)
            except RpcError as e:
                raise RpcError(e.code, f"warm-up request {n} in {path} failed: {e.message}") from e
            n += 1
        return n

    def predict(self, signature_name: str, inputs: Mapping[str, object],
                output_filter: Iterable[str] = ()) -> Dict[str, np.ndarray]:
        """Validate ``inputs`` (name -> TensorProto) against the signature, run it, return numpy outputs."""
        import tensorflow as tf

        fn = self.signatures.get(signature_name)
        if fn is None:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION,
                           f'Serving signature key "{signature_name}" not found. '
                           f"Available: {sorted(self.signatures)}")
        spec = fn.structured_input_signature[1]
        sent, wanted = set(inputs), set(spec)
        if sent != wanted:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input size does not match signature {signature_name!r}: "
                           f"{len(sent)}!={len(wanted)} Sent extra: {sorted(sent - wanted)} "
                           f"Missing but required: {sorted(wanted - sent)}")
        args = {}
        for key, tspec in spec.items():
            proto = inputs[key]
            if proto.dtype != tspec.dtype.as_datatype_enum:
                got = tf.dtypes.as_dtype(proto.dtype).name if proto.dtype else "invalid"
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {key!r} of signature {signature_name!r}: expects dtype "
                               f"{tspec.dtype.name} but {got} was provided")
            try:
                value = tf.make_ndarray(proto)
            except Exception as e:  # malformed TensorProto (content does not match shape)
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {key!r}: malformed tensor: {e}") from e
            if not tspec.shape.is_compatible_with(value.shape):
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {key!r} of signature {signature_name!r}: expects shape "
                               f"{tspec.shape.as_list()} but {list(value.shape)} was provided")
            if value.ndim and value.shape[0] == 0:
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {key!r} of signature {signature_name!r}: empty batch "
                               f"(0 elements); send at least one")
            args[key] = tf.constant(value, dtype=tspec.dtype)
        wanted_out = list(output_filter)
        unknown = [k for k in wanted_out if k not in fn.structured_outputs]
        if unknown:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"output_filter names {unknown} not in signature {signature_name!r} "
                           f"outputs {sorted(fn.structured_outputs)}")
        try:
            out = fn(**args)
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as e:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"signature {signature_name!r}: {tf_error_message(e)}") from e
        except tf.errors.OpError as e:
            raise RpcError(grpc.StatusCode.INTERNAL,
                           f"signature {signature_name!r}: {tf_error_message(e)}") from e
        except UnicodeDecodeError as e:  # a TF error quoting raw request bytes (older exports)
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"signature {signature_name!r}: the input could not be parsed") from e
        keys = wanted_out or list(out)
        return {k: out[k].numpy() for k in keys}


class PredictionServicer:
    """``tensorflow.serving.PredictionService`` over :class:`ServedModel` s (development stand-in)."""

    def __init__(self, models: Mapping[str, Mapping[int, ServedModel]],
                 version_labels: Optional[Mapping[str, Mapping[str, int]]] = None,
                 policies: Optional[Mapping[str, "VersionPolicy"]] = None):
        self.models = models
        self.version_labels = version_labels or {}
        self.policies = dict(policies or {})
        self.requests_served = 0
        self._lock = threading.Lock()

    def _resolve(self, spec) -> ServedModel:
        versions = self.models.get(spec.name)
        if not versions:
            # TF Serving's words first (clients match on them), then the real cause.
            raise RpcError(grpc.StatusCode.NOT_FOUND,
                           f"Servable not found for request: Latest({spec.name}): no model named "
                           f"{spec.name!r} is served; served models: {sorted(self.models)}")
        if spec.HasField("version"):
            v = spec.version.value
            if v not in versions:
                raise RpcError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Specific({spec.name}, {v}): model "
                               f"{spec.name!r} is served, but version {v} is not loaded; loaded versions: "
                               f"{sorted(versions)} ({self._policy_text(spec.name)})")
            return versions[v]
        if spec.version_label:
            labels = self.version_labels.get(spec.name, {})
            v = labels.get(spec.version_label)
            if v is None or v not in versions:
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Unrecognized servable version label: {spec.version_label} (model "
                               f"{spec.name!r} defines labels {sorted(labels) or 'none'}; labels come from "
                               f"version_labels in the models.config given by --model_config_file)")
            return versions[v]
        return versions[max(versions)]

    def _policy_text(self, name: str) -> str:
        policy = self.policies.get(name)
        return f"version policy {policy.describe()}" if policy else "version policy latest 1"

    @staticmethod
    def _abort(context, err: RpcError):
        context.abort(err.code, err.message)

    def Predict(self, request, context):  # noqa: N802 (gRPC method name)
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        try:
            served = self._resolve(request.model_spec)
            sig = request.model_spec.signature_name or DEFAULT_SIGNATURE
            outputs = served.predict(sig, request.inputs, request.output_filter)
        except RpcError as e:
            log.info("Predict rejected (%s): %s", e.code.name, e.message)
            self._abort(context, e)
        resp = predict_pb2.PredictResponse()
        resp.model_spec.name = served.name
        resp.model_spec.version.value = served.version
        resp.model_spec.signature_name = sig
        for k, v in outputs.items():
            resp.outputs[k].CopyFrom(tf.make_tensor_proto(v))
        with self._lock:
            self.requests_served += 1
        return resp

    def GetModelMetadata(self, request, context):  # noqa: N802
        from tensorflow_serving.apis import get_model_metadata_pb2

        try:
            served = self._resolve(request.model_spec)
            fields = list(request.metadata_field)
            if fields != ["signature_def"]:
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Metadata field(s) {fields} not supported; use ['signature_def']")
        except RpcError as e:
            self._abort(context, e)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for k, v in served.signature_defs.items():
            sig_map.signature_def[k].CopyFrom(v)
        resp = get_model_metadata_pb2.GetModelMetadataResponse()
        resp.model_spec.name = served.name
        resp.model_spec.version.value = served.version
        resp.metadata["signature_def"].Pack(sig_map)
        return resp

    def Classify(self, request, context):  # noqa: N802
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "stand-in serves Predict only")

    def Regress(self, request, context):  # noqa: N802
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "stand-in serves Predict only")

    def MultiInference(self, request, context):  # noqa: N802
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "stand-in serves Predict only")


class StandinServer:
    """A running stand-in: ``address`` ("127.0.0.1:PORT"), ``servicer``, ``stop()``; a context manager."""

    def __init__(self, server: grpc.Server, address: str, servicer: PredictionServicer):
        self._server, self.address, self.servicer = server, address, servicer

    def stop(self, grace: float = 1.0) -> None:
        """Stop accepting requests and wait for in-flight ones (up to ``grace`` seconds)."""
        self._server.stop(grace).wait()

    def __enter__(self) -> "StandinServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """TF Serving's ``model_version_policy``: ``latest`` (the ``num_versions`` highest), ``all``, or
    ``specific`` (the listed ``versions``)."""

    kind: str = "latest"
    num_versions: int = 1
    versions: Tuple[int, ...] = ()

    def describe(self) -> str:
        if self.kind == "latest":
            return f"latest {self.num_versions}"
        if self.kind == "specific":
            return f"specific {list(self.versions)}"
        return "all"

    def select(self, found: Mapping[int, str], where: str) -> List[int]:
        """The versions to load out of ``found`` (those on disk); a missing specific version is an error."""
        if self.kind == "latest":
            return sorted(found)[-max(1, self.num_versions):]
        if self.kind == "all":
            return sorted(found)
        missing = sorted(set(self.versions) - set(found))
        if missing:
            raise UsageError(f"version policy specific {list(self.versions)}: version(s) {missing} not found "
                             f"under {where!r} (present: {sorted(found)})")
        return sorted(self.versions)


@dataclasses.dataclass
class ModelConfig:
    """One ``config`` entry of a ModelServerConfig."""

    name: str
    base_path: str
    policy: VersionPolicy = VersionPolicy()
    version_labels: Dict[str, int] = dataclasses.field(default_factory=dict)


def read_model_config_file(path: str) -> List[ModelConfig]:
    """The models of a TF Serving ``--model_config_file`` (ModelServerConfig, protobuf text format)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"--model_config_file {path}: {e.strerror or e}") from None
    cfg = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as e:
        raise UsageError(f"--model_config_file {path}: not a ModelServerConfig: {e}") from None
    if not cfg.HasField("model_config_list") or not cfg.model_config_list.config:
        raise UsageError(f"--model_config_file {path}: no model_config_list {{ config {{ ... }} }} entry")
    out = []
    for c in cfg.model_config_list.config:
        if not c.name or not c.base_path:
            raise UsageError(f"--model_config_file {path}: every config needs a name and a base_path")
        if c.model_platform and c.model_platform != "tensorflow":
            raise UsageError(f"--model_config_file {path}: model {c.name!r}: model_platform "
                             f"{c.model_platform!r} is not served (tensorflow only)")
        which = c.model_version_policy.WhichOneof("policy_choice") if c.HasField("model_version_policy") else None
        if which == "all":
            policy = VersionPolicy("all")
        elif which == "specific":
            policy = VersionPolicy("specific", versions=tuple(int(v) for v in c.model_version_policy.specific.versions))
        elif which == "latest":
            policy = VersionPolicy("latest", int(c.model_version_policy.latest.num_versions or 1))
        else:
            policy = VersionPolicy()
        out.append(ModelConfig(c.name, c.base_path, policy, {k: int(v) for k, v in c.version_labels.items()}))
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise UsageError(f"--model_config_file {path}: model names repeat: {names}")
    return out


def serving_versions(model_base_path: str) -> Dict[int, str]:
    """``{version: dir}`` as TF Serving discovers them: integer-named sub-folders holding
    ``saved_model.pb`` (a folder still being written is ignored). A SavedModel put directly in the
    base path is refused, as TF Serving would find no version in it."""
    base = Path(model_base_path)
    if not base.is_dir():
        raise FileNotFoundError(f"model base path {str(base)!r} does not exist or is not a folder")
    versions = {int(c.name): str(c) for c in base.iterdir() if c.name.isdigit() and is_saved_model(c)}
    if not versions and is_saved_model(base):
        raise UsageError(f"{str(base)!r} holds a SavedModel itself, not in a version folder: TF Serving serves "
                         f"<base_path>/<version>/saved_model.pb and would find no version here; move it to "
                         f"{str(base / '1')!r} or export there (python -m cxr_tfp.export MODEL.keras "
                         f"{str(base / '1')})")
    if not versions:
        raise FileNotFoundError(f"no SavedModel (saved_model.pb) in an integer version folder under "
                                f"{str(base)!r} (expected {str(base)}/<version>/saved_model.pb)")
    return versions


def _load_model(cfg: ModelConfig, warmup: bool) -> Dict[int, ServedModel]:
    found = serving_versions(cfg.base_path)
    wanted = cfg.policy.select(found, cfg.base_path)
    bad = {k: v for k, v in cfg.version_labels.items() if v not in wanted}
    if bad:
        raise UsageError(f"model {cfg.name!r}: version label(s) {bad} point at version(s) the version policy "
                         f"({cfg.policy.describe()}) does not load; loaded: {wanted}, on disk: {sorted(found)}")
    return {v: ServedModel(cfg.name, v, found[v], warmup=warmup) for v in wanted}


def _serve(configs: Sequence[ModelConfig], port: Optional[int], host: str, warmup: bool,
           max_workers: int) -> StandinServer:
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    loaded = {c.name: _load_model(c, warmup) for c in configs}
    servicer = PredictionServicer(loaded, {c.name: dict(c.version_labels) for c in configs},
                                  {c.name: c.policy for c in configs})
    if port is None:
        import portpicker

        port = portpicker.pick_unused_port()
    # Bounded memory under a burst: at most 4 x max_workers requests are held at once (the rest get
    # RESOURCE_EXHAUSTED at once, which the client retries, instead of queueing payloads in memory).
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                         maximum_concurrent_rpcs=4 * max_workers,
                         options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                  ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    address = f"{host}:{port}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot bind the stand-in server to {address}")
    server.start()
    for c in configs:
        log.info("stand-in PredictionService for %r versions %s (policy %s, labels %s) on %s", c.name,
                 sorted(loaded[c.name]), c.policy.describe(), c.version_labels or "none", address)
    return StandinServer(server, address, servicer)


def start_server(model_base_path: str, model_name: str = MODEL_NAME, port: Optional[int] = None,
                 host: str = "127.0.0.1", version_labels: Optional[Mapping[str, int]] = None,
                 warmup: bool = True, max_workers: int = 4,
                 version_policy: Optional[VersionPolicy] = None) -> StandinServer:
    """Load the model under ``model_base_path`` and serve it over gRPC on ``host:port``.

    ``port=None`` picks a free port. ``version_policy`` defaults to TF Serving's (the latest version);
    ``version_labels`` (``{"stable": 1, "canary": 2}``) must name versions the policy loads.
    """
    return _serve([ModelConfig(model_name, str(model_base_path), version_policy or VersionPolicy(),
                               dict(version_labels or {}))], port, host, warmup, max_workers)


def start_from_config(model_config_file: str, port: Optional[int] = None, host: str = "127.0.0.1",
                      warmup: bool = True, max_workers: int = 4) -> StandinServer:
    """Serve the models of a TF Serving ``--model_config_file`` (see :func:`read_model_config_file`)."""
    return _serve(read_model_config_file(model_config_file), port, host, warmup, max_workers)


READY_PREFIX = "DEVELOPMENT STAND-IN for TF Serving:"


@contextlib.contextmanager
def run_program(model_base_path: str, model_name: str = MODEL_NAME, port: Optional[int] = None,
                timeout_s: float = 600.0, extra_args: Sequence[str] = ()) -> Iterator[Tuple[str, int]]:
    """Start the stand-in as its own program (``python -m serving.standin``), as an operator would.

    Yields ``(address, pid)`` once the server printed its ready line (model loaded, warm-up
    replayed); stops it on exit. A server that exits first raises RuntimeError with its last line.
    """
    import select
    import subprocess
    import sys
    import tempfile

    if port is None:
        import portpicker

        port = portpicker.pick_unused_port()
    repo = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (repo, env.get("PYTHONPATH")) if x)
    cmd = [sys.executable, "-m", "serving.standin", "--model_base_path", str(model_base_path),
           "--model_name", model_name, "--port", str(port), *extra_args]
    # stderr to a file, not a pipe: a pipe nobody drains would stall a server that logs a lot.
    errors = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=errors, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"the stand-in server did not become ready in {timeout_s:.0f} s")
            ready, _, _ = select.select([proc.stdout], [], [], min(left, 1.0))
            if ready:
                line = proc.stdout.readline()
                if line.startswith(READY_PREFIX):
                    break
                if line:
                    continue
            if proc.poll() is not None:
                errors.seek(0)
                err = errors.read().strip().splitlines()
                raise RuntimeError("the stand-in server exited before it was ready: "
                                   + (err[-1] if err else f"exit code {proc.returncode}"))
        yield f"127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        errors.close()


@cli_main
def main(argv: Optional[List[str]] = None) -> int:
    """CLI: serve a model base path or a models.config until interrupted (flags named as
    tensorflow_model_server's)."""
    p = argparse.ArgumentParser(prog="python -m serving.standin", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model_base_path", help="<serving_root>/<model_name>: integer version folders inside")
    src.add_argument("--model_config_file",
                     help="a ModelServerConfig text file (serving/models.config; render one with "
                          "serving/render_models_config.py): names, base paths, version policy and labels")
    p.add_argument("--model_name", default=MODEL_NAME, help="with --model_base_path")
    p.add_argument("--port", type=int, default=8500)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--no_warmup", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if a.model_config_file:
        srv = start_from_config(a.model_config_file, a.port, a.host, warmup=not a.no_warmup)
    else:
        srv = start_server(a.model_base_path, a.model_name, a.port, a.host, warmup=not a.no_warmup)
    served = ", ".join(f"{name!r} versions {sorted(v)}" for name, v in srv.servicer.models.items())
    print(f"{READY_PREFIX} model {served} on {srv.address} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
