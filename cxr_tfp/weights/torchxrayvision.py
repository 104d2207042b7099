"""torchxrayvision DenseNet checkpoints -> cxr_tfp's DenseNet (keras-hub layers, torch-style stem).

torchxrayvision's DenseNet is torchvision's (features.conv0/norm0, denseblockN.denselayerM.
norm1/conv1/norm2/conv2, transitionN.norm/conv, norm5, classifier) with 1-channel input scaled to
[-1024, 1024]; its ``forward`` applies a sigmoid and, when the model carries ``op_threshs``, the
operating-point normalisation :func:`op_norm` (each threshold maps to 0.5). The checkpoint is read
by :mod:`cxr_tfp.weights.torch_file` (no torch, no code from the file).

Mapping (torch -> Keras): conv ``[out, in, kh, kw]`` -> ``[kh, kw, in, out]``; BatchNorm weight,
bias, running_mean, running_var -> gamma, beta, moving_mean, moving_variance.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from cxr_tfp.weights.torch_file import CheckpointFormatError, load_checkpoint, not_readable, state_dict_of

# torchxrayvision.datasets.default_pathologies: the 18 outputs of its DenseNet, in order.
DEFAULT_PATHOLOGIES: Tuple[str, ...] = (
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema", "Fibrosis",
    "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass", "Hernia",
    "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum",
)

_OLD_NAMES = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


@dataclasses.dataclass
class TxrvCheckpoint:
    """A torchxrayvision DenseNet checkpoint as numpy arrays."""

    state: Dict[str, np.ndarray]
    pathologies: Tuple[str, ...]
    op_threshs: Optional[np.ndarray]
    repeats: Tuple[int, ...]
    growth_rate: int
    stem_filters: int
    in_channels: int
    path: str = ""

    @property
    def num_features(self) -> int:
        return int(self.state["features.norm5.weight"].shape[0])


def _normalise_keys(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    out = {}
    for k, v in state.items():
        k = k[len("module."):] if k.startswith("module.") else k   # DataParallel
        m = _OLD_NAMES.match(k)                                      # old torchvision: norm.1 -> norm1
        if m:
            k = m.group(1) + m.group(2)
        out[k] = v
    return out


def read_txrv(path: str, max_bytes: Optional[int] = None) -> TxrvCheckpoint:
    """Read and check a torchxrayvision DenseNet checkpoint (whole model or state dict, any format).

    Anything but a usable DenseNet checkpoint raises :class:`CheckpointFormatError` with one line
    naming the file (``FileNotFoundError`` for a missing path)."""
    obj = load_checkpoint(path, max_bytes)
    try:
        return _read_txrv(obj, path)
    except RecursionError:
        raise CheckpointFormatError(not_readable(path, "nested too deeply")) from None
    except Exception as exc:  # noqa: BLE001  (a hostile structure: one named line, never a traceback)
        reason = str(exc) if isinstance(exc, CheckpointFormatError) else f"{type(exc).__name__}: {exc}"
        raise CheckpointFormatError(not_readable(path, reason)) from None


def _read_txrv(obj, path: str) -> TxrvCheckpoint:
    what = f"torchxrayvision checkpoint {path}"
    state, attrs = state_dict_of(obj, what)
    state = _normalise_keys(state)
    if "features.conv0.weight" not in state or "features.norm5.weight" not in state:
        raise CheckpointFormatError(f"{what}: not a torchxrayvision DenseNet (no features.conv0 / "
                                    f"features.norm5 weights)")
    repeats: List[int] = []
    block = 1
    while any(k.startswith(f"features.denseblock{block}.") for k in state):
        layers = {int(m.group(1)) for k in state
                  for m in [re.match(rf"features\.denseblock{block}\.denselayer(\d+)\.", k)] if m}
        if layers != set(range(1, len(layers) + 1)):
            raise CheckpointFormatError(f"{what}: dense block {block} has layers {sorted(layers)}")
        repeats.append(len(layers))
        block += 1
    if not repeats:
        raise CheckpointFormatError(f"{what}: no dense blocks")
    conv0 = state["features.conv0.weight"]
    growth = int(state["features.denseblock1.denselayer1.conv2.weight"].shape[0])
    op = state.pop("op_threshs", None)
    if op is None and isinstance(attrs.get("op_threshs"), np.ndarray):
        op = attrs["op_threshs"]
    names = attrs.get("targets") or attrs.get("pathologies")
    n_out = int(state["classifier.weight"].shape[0]) if "classifier.weight" in state else len(DEFAULT_PATHOLOGIES)
    if not names:
        names = DEFAULT_PATHOLOGIES if n_out == len(DEFAULT_PATHOLOGIES) else tuple(f"output_{i}" for i in range(n_out))
    if len(names) != n_out:
        raise CheckpointFormatError(f"{what}: {len(names)} pathology names for {n_out} outputs")
    if op is not None:
        op = np.asarray(op, np.float32).reshape(-1)
        if op.shape[0] != n_out:
            raise CheckpointFormatError(f"{what}: {op.shape[0]} operating points for {n_out} outputs")
    return TxrvCheckpoint(state=state, pathologies=tuple(str(n) for n in names), op_threshs=op,
                          repeats=tuple(repeats), growth_rate=growth, stem_filters=int(conv0.shape[0]),
                          in_channels=int(conv0.shape[1]), path=path)


def keras_layer_map(repeats: Sequence[int]) -> Dict[str, str]:
    """Keras layer name -> torch module prefix."""
    m = {"conv1_conv": "features.conv0", "conv1_bn": "features.norm0", "bn": "features.norm5"}
    for b, n in enumerate(repeats, start=1):
        for i in range(1, n + 1):
            t = f"features.denseblock{b}.denselayer{i}"
            k = f"stack{b}_block{i}"
            m.update({f"{k}_1_bn": f"{t}.norm1", f"{k}_1_conv": f"{t}.conv1",
                      f"{k}_2_bn": f"{t}.norm2", f"{k}_2_conv": f"{t}.conv2"})
        if b < len(repeats):
            m.update({f"transition{b}_bn": f"features.transition{b}.norm",
                      f"transition{b}_conv": f"features.transition{b}.conv"})
    return m


def convert_into(backbone, ckpt: TxrvCheckpoint) -> None:
    """Assign the checkpoint's features to a :class:`CxrDenseNetBackbone` of the same configuration."""
    import keras

    from cxr_tfp.model.backbones.densenet import CxrDenseNetBackbone
    from cxr_tfp.weights import WeightsError, adapt_kernel

    what = f"torchxrayvision checkpoint {ckpt.path}"
    if not isinstance(backbone, CxrDenseNetBackbone):
        raise WeightsError(f"{what}: torchxrayvision weights need a DenseNet backbone "
                           f"(densenet121 or densenet_tiny), not {backbone.name}")
    ours = (tuple(backbone.stackwise_num_repeats), backbone.growth_rate, backbone.stem_filters)
    theirs = (ckpt.repeats, ckpt.growth_rate, ckpt.stem_filters)
    if ours != theirs:
        raise WeightsError(f"{what}: DenseNet blocks/growth/stem {theirs} do not match backbone "
                           f"{backbone.name} {ours}")
    in_channels = int(backbone.input_shape[-1])
    mapping = keras_layer_map(ckpt.repeats)
    used = set()
    for layer in backbone.layers:
        if not layer.weights:
            continue
        if layer.name not in mapping:
            raise WeightsError(f"{what}: no torch counterpart for layer {layer.name}")
        t = mapping[layer.name]
        if isinstance(layer, keras.layers.Conv2D):
            k = ckpt.state[f"{t}.weight"].astype(np.float32).transpose(2, 3, 1, 0)
            values = [adapt_kernel(k, in_channels, f"{what}: {t}") if layer.name == "conv1_conv" else k]
            used.add(f"{t}.weight")
        else:
            keys = [f"{t}.weight", f"{t}.bias", f"{t}.running_mean", f"{t}.running_var"]
            missing = [k for k in keys if k not in ckpt.state]
            if missing:
                raise WeightsError(f"{what}: missing {missing[0]}")
            values = [ckpt.state[k].astype(np.float32) for k in keys]
            used.update(keys + [f"{t}.num_batches_tracked"])
        expected = [tuple(w.shape) for w in layer.weights]
        if [v.shape for v in values] != expected:
            raise WeightsError(f"{what}: {t} has shapes {[v.shape for v in values]}, layer {layer.name} "
                               f"needs {expected}")
        layer.set_weights(values)
    left = sorted(k for k in ckpt.state if k.startswith("features.") and k not in used)
    if left:
        raise WeightsError(f"{what}: {len(left)} feature weights were not used (first: {left[0]})")


def load_txrv_into(backbone, path: str) -> TxrvCheckpoint:
    """Read ``path`` and convert it into ``backbone``; errors are :class:`cxr_tfp.weights.WeightsError`."""
    import pickle

    from cxr_tfp.weights import WeightsError

    try:
        ckpt = read_txrv(path)
    except (FileNotFoundError, CheckpointFormatError, pickle.UnpicklingError) as exc:
        raise WeightsError(f"weights: {exc}") from None
    convert_into(backbone, ckpt)
    return ckpt


# ------------------------------------------------------------------------------ the classifier
def op_norm(probs, op_threshs):
    """torchxrayvision's operating-point normalisation (TF ops): threshold -> 0.5, piecewise linear;
    0.5 where the threshold is NaN (an output the weights were not trained for)."""
    import tensorflow as tf

    t = tf.constant(np.nan_to_num(op_threshs, nan=0.5), tf.float32)[None]
    valid = tf.constant(~np.isnan(op_threshs))[None]
    low = probs / (t * 2.0)
    high = 1.0 - (1.0 - probs) / ((1.0 - t) * 2.0)
    out = tf.where(probs < t, low, high)
    return tf.where(tf.broadcast_to(valid, tf.shape(out)), out, 0.5 * tf.ones_like(out))


def build_classifier(path: str, image_size: int = 224):
    """The converted torchxrayvision classifier as a Keras model: ``[B, S, S, 1]`` in [0, 1] ->
    its outputs (sigmoid, then op_norm when the checkpoint carries operating points).

    Returns ``(model, checkpoint)``; ``checkpoint.pathologies`` names the outputs.
    """
    import keras

    from cxr_tfp.model.backbones.densenet import CxrDenseNetBackbone
    from cxr_tfp.weights import TXRV_SCALING, WeightsError

    try:
        ckpt = read_txrv(path)
    except (FileNotFoundError, CheckpointFormatError) as exc:
        raise WeightsError(f"weights: {exc}") from None
    backbone = CxrDenseNetBackbone(ckpt.repeats, ckpt.growth_rate, ckpt.stem_filters,
                                   image_shape=(image_size, image_size, ckpt.in_channels), name="txrv_densenet")
    convert_into(backbone, ckpt)
    inp = keras.Input((image_size, image_size, 1), name="image")
    x = keras.layers.Rescaling(TXRV_SCALING[0], TXRV_SCALING[1], name="txrv_scaling")(inp)
    if ckpt.in_channels == 3:
        x = keras.layers.Concatenate(name="grey_to_rgb")([x, x, x])
    feats = keras.layers.GlobalAveragePooling2D(name="features2")(backbone(x))
    if "classifier.weight" not in ckpt.state:
        raise WeightsError(f"torchxrayvision checkpoint {path}: no classifier weights")
    dense = keras.layers.Dense(ckpt.state["classifier.weight"].shape[0], name="classifier")
    logits = dense(feats)
    dense.set_weights([ckpt.state["classifier.weight"].T.astype(np.float32),
                       ckpt.state["classifier.bias"].astype(np.float32)])
    probs = keras.layers.Activation("sigmoid", name="sigmoid")(logits)
    if ckpt.op_threshs is not None:
        op = ckpt.op_threshs
        probs = keras.layers.Lambda(lambda p: op_norm(p, op), name="op_norm")(probs)
    model = keras.Model(inp, {"features2": feats, "outputs": probs}, name="txrv_classifier")
    return model, ckpt
