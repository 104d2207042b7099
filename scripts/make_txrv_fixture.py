"""Make the torchxrayvision conversion fixture (tests/fixtures/txrv/). Run ONCE, by hand.

NEEDS torch and torchxrayvision, in a SEPARATE virtualenv (never the project's: importing TensorFlow
and torch in one process crashes in this stack, and torch is not a project dependency):

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch torchvision torchxrayvision
    /tmp/torchenv/bin/python scripts/make_txrv_fixture.py tests/fixtures/txrv

It builds a randomly initialised torchxrayvision DenseNet with a tiny block configuration (the same
code paths as DenseNet-121: stem, dense layers, transitions, final norm; sizes = cxr_tfp's
``densenet_tiny``), randomises every BatchNorm's affine parameters and then recalibrates its running
statistics on random images (random statistics blow activations up over the layers), sets random
operating-point thresholds, and writes:

- ``model_zip.pt`` / ``model_legacy.pt``: the whole pickled model (how torchxrayvision releases
  weights), in the zip and the legacy torch serialisation formats;
- ``state_zip.pt`` / ``state_legacy.pt``: its plain state dict, in both formats;
- ``expected.npz``: ``input`` [2, 1, 224, 224] in [-1024, 1024], torch's ``features2`` output and
  the 18 ``outputs`` of ``forward`` (sigmoid + operating-point normalisation), plus ``op_threshs``.
With ``--full DIR`` it instead writes a randomly initialised, recalibrated full-size DenseNet-121
(whole model, zip) and its expected outputs, for the one-off full-size check in docs/weights.md.
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch


def _import_torchxrayvision():
    """Import torchxrayvision. PyPI's torchvision wheels are CUDA builds whose C extension does not
    load beside a CPU-only torch; torchvision then fails registering meta kernels for its missing
    detection ops. Only DenseNet (pure python + torch) is used here, so those registrations are
    skipped while torchvision imports."""
    real = torch.library.register_fake
    torch.library.register_fake = lambda *a, **k: (lambda fn: fn)
    try:
        import torchvision  # noqa: F401
    finally:
        torch.library.register_fake = real
    import torchxrayvision

    return torchxrayvision


xrv = _import_torchxrayvision()

TINY = dict(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16)
FULL = dict(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64)


def smooth_images(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Chest-X-ray-like smooth random images in torchxrayvision's [-1024, 1024] scale."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        img = np.zeros((size, size))
        for _ in range(6):
            cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.3)
            img += rng.uniform(-1, 1) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        img += 0.05 * rng.standard_normal((size, size))
        img = (img - img.min()) / (img.max() - img.min() + 1e-8)
        out.append(img * 2048.0 - 1024.0)
    return np.stack(out)[:, None].astype(np.float32)


def make_model(arch: dict, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    op = torch.tensor(rng.uniform(0.2, 0.8, 18).astype(np.float32))
    model = xrv.models.DenseNet(num_classes=18, in_channels=1, op_threshs=op, **arch)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            m.reset_running_stats()
            m.momentum = None          # cumulative average over the calibration batches
    torch.nn.init.normal_(model.classifier.weight, std=0.1)
    model.train()
    with torch.no_grad():             # recalibrate the running statistics on random images
        for i in range(4):
            model.features(torch.from_numpy(smooth_images(rng, 8, 224)))
    model.eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.1
    return model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--full", action="store_true", help="full-size DenseNet-121 (not committed)")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    model = make_model(FULL if a.full else TINY, seed=13)
    x = torch.from_numpy(smooth_images(np.random.default_rng(1), 2, 224))
    with torch.no_grad():
        feats = model.features2(x).numpy()
        outs = model(x).numpy()
    np.savez_compressed(os.path.join(a.out, "expected.npz"), input=x.numpy(), features2=feats,
                        outputs=outs, op_threshs=model.op_threshs.numpy())
    torch.save(model, os.path.join(a.out, "model_zip.pt"))
    if not a.full:
        torch.save(model, os.path.join(a.out, "model_legacy.pt"), _use_new_zipfile_serialization=False)
        torch.save(model.state_dict(), os.path.join(a.out, "state_zip.pt"))
        torch.save(model.state_dict(), os.path.join(a.out, "state_legacy.pt"),
                   _use_new_zipfile_serialization=False)
    print("features2", feats.shape, "abs mean", float(np.abs(feats).mean()), "outputs", outs.shape,
          "range", float(outs.min()), float(outs.max()))
    for f in sorted(os.listdir(a.out)):
        print(f, os.path.getsize(os.path.join(a.out, f)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
