"""Compare the converted torchxrayvision classifier with the numbers torch computed.

    python scripts/check_txrv_conversion.py tests/fixtures/txrv            # the committed tiny fixture
    python scripts/check_txrv_conversion.py /tmp/txrv_full                 # full size: made by
        /tmp/torchenv/bin/python scripts/make_txrv_fixture.py --full /tmp/txrv_full   (torch side, own venv)

Prints the max absolute and relative differences of ``features2`` and of the 18 outputs for every
checkpoint file in the folder (TensorFlow only: no torch in this process).
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder")
    a = p.parse_args()
    from cxr_tfp.weights.torchxrayvision import build_classifier

    exp = np.load(os.path.join(a.folder, "expected.npz"))
    x01 = ((exp["input"] + 1024.0) / 2048.0).transpose(0, 2, 3, 1)
    worst = 0.0
    for path in sorted(glob.glob(os.path.join(a.folder, "*.pt"))):
        model, ckpt = build_classifier(path, x01.shape[1])
        out = model(x01)
        f, o = out["features2"].numpy(), out["outputs"].numpy()
        fa = float(np.abs(f - exp["features2"]).max())
        fr = fa / float(np.abs(exp["features2"]).max())
        oa = float(np.abs(o - exp["outputs"]).max())
        worst = max(worst, fa, oa)
        print(f"{os.path.basename(path)}: blocks {ckpt.repeats} growth {ckpt.growth_rate}: features2 max abs "
              f"{fa:.2e} (relative to max {fr:.2e}), outputs max abs {oa:.2e}")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
