"""Does the saliency point at the lesion? Pointing game and top-10% share, before and after the
receptive-field placement fix, on a demo-like model: the synthetic test split and the real NIH sample.

1. Builds the embedded synthetic set as ``make demo`` does (500 patients, 64 px, contrast 4) and
   trains the smoke config as the demo's trainer does (25 stage-1 epochs, no augmentation; op
   determinism on), unless ``--model`` is given.
2. Builds the 24 real NIH sample images (12 with expert boxes) at the model's input size.
3. Scores every annotated image with a known positive finding the model predicts: Grad-CAM with the
   old placement ("before": feature cells tiled evenly over the image, plain clamp at the border),
   Grad-CAM with cells at their traced receptive-field centres ("after"), occlusion sensitivity and
   the prior's attention map. Chance = the region's share of the image.

    .venv/bin/python benchmarks/bench_saliency.py [--work DIR] [--model model.keras]

Prints a markdown table (also written to WORK/saliency.md and WORK/saliency.json).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
BUILD_MODULE = "cxr_tfp.records.build"


def run_build(args_list, out: Path) -> Path:
    if (out / "summary.json").exists():
        return out
    subprocess.run([sys.executable, "-m", BUILD_MODULE, *args_list, "--out", str(out), "--quiet", "--workers", "1"],
                   check=True, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")})
    return out


def all_split(data: Path) -> Path:
    """``data/all``: links to every shard of every split (the NIH sample's 12 boxed images are spread
    over the patient-hash splits; here all of them are scored)."""
    d = data / "all"
    d.mkdir(exist_ok=True)
    for sp in ("train", "eval", "test"):
        for f in sorted((data / sp).glob("*.tfrecord.gz")):
            link = d / f"{sp}-{f.name}"
            if not link.exists():
                link.symlink_to(f)
    return data


def score(adapter, files, variant: str, k: float):
    from cxr_tfp import evaluate as E
    from cxr_tfp.model import saliency as S
    from cxr_tfp.report.saliency import agreement_summary

    model = adapter.model
    if variant == "before":
        saved = S.EDGE_FALLOFF
        S.EDGE_FALLOFF = 0.0
        model.__dict__["_saliency_geometry"] = {"g": S.Geometry.naive(*model.grid_hw, model.image_size)}
        try:
            pred = E.collect(adapter, files, saliency_methods=["gradcam"], n_examples=0, top_k=k)
        finally:
            S.EDGE_FALLOFF = saved
            model.__dict__.pop("_saliency_geometry", None)
        return {"gradcam_before": agreement_summary(pred.agreement, k, 1000)}
    pred = E.collect(adapter, files, saliency_methods=["gradcam", "occlusion", "attention"], n_examples=0,
                     top_k=k)
    s = agreement_summary(pred.agreement, k, 1000)
    return {f"{m}_after" if m == "gradcam" else m: {**s["by_method"][m], "k": k} for m in s["methods"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/bench_saliency")
    p.add_argument("--model", default=None, help="a trained .keras model (default: train the demo-like one)")
    p.add_argument("--nih", default=os.path.join(os.path.dirname(REPO), "shared", "data", "nih-sample"))
    p.add_argument("--stage1-epochs", type=int, default=25)
    p.add_argument("--top-k", type=float, default=0.1)
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    from cxr_tfp import evaluate as E
    from cxr_tfp.config import load_config
    from cxr_tfp.train import train_model

    synth = run_build(["--dataset", "synthetic", "--root", str(work / "synth_raw"), "--image-size", "64",
                       "--synthetic-patients", "500", "--synthetic-contrast", "4"], work / "synth")
    model_path = args.model
    if model_path is None:
        run = work / "run"
        model_path = str(run / "model.keras")
        if not os.path.exists(model_path):
            cfg = load_config(os.path.join(REPO, "configs", "smoke.yaml"),
                              {"stage1_epochs": args.stage1_epochs, "augment": False, "verbose": 0})
            m = train_model(cfg, str(synth / "train"), str(synth / "eval"), str(run))
            print(f"trained: stage 1 {m['stage1']['macro_auroc']:.3f}, stage 2 {m['stage2']['macro_auroc']:.3f} "
                  "eval macro AUROC", flush=True)
    adapter = E.load_adapter(model_path)
    nih = all_split(run_build(["--dataset", "nih", "--root", args.nih, "--image-size", str(adapter.image_size)],
                              work / "nih"))
    results = {}
    for name, files in (("synthetic test split", E.split_files(str(synth), "test")),
                        ("NIH sample (all 24 images)", E.split_files(str(nih), "all"))):
        res = {}
        for variant in ("before", "after"):
            res.update(score(adapter, files, variant, args.top_k))
        results[name] = res
    lines = [f"| data | method | images (patients) | pointing-game hits (95% CI) | top-{100 * args.top_k:g}% "
             "inside (95% CI) | chance |", "|---|---|---|---|---|---|"]
    labels = {"gradcam_before": "Grad-CAM, even tiling (before)", "gradcam_after": "Grad-CAM, RF centres (after)",
              "occlusion": "occlusion sensitivity", "attention": "prior attention"}
    for name, res in results.items():
        for key in ("gradcam_before", "gradcam_after", "occlusion", "attention"):
            a = res[key]["boxes"]
            if not a["n"]:
                lines.append(f"| {name} | {labels[key]} | 0 | n/a | n/a | n/a |")
                continue
            lines.append(f"| {name} | {labels[key]} | {a['n']} ({a['n_patients']}) | {a['hits']}/{a['n']} = "
                         f"{a['pointing_hit_rate']:.2f} ({a['hit_ci_low']:.2f}-{a['hit_ci_high']:.2f}) | "
                         f"{a['topk_precision']:.2f} ({a['topk_ci_low']:.2f}-{a['topk_ci_high']:.2f}) | "
                         f"{a['topk_chance']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    (work / "saliency.md").write_text(text)
    (work / "saliency.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
