"""Ingestion benchmark: the Beam build with 2 workers vs a plain single-process loop, same work, same run.

    python benchmarks/bench_ingest.py                      # 2,000 synthetic 1024x1024 PNGs (the default)
    python benchmarks/bench_ingest.py --images 600         # reduced size on a busy machine

Both contenders start cold in their own process (imports included) and do the same work per image:
read the PNG, decode (Pillow), resize to --out-size, draw the gaze heatmap and box mask, hash the ids,
serialise the tf.Example (``cxr_tfp.records.process.process_record``) and write gzip TFRecords. The
loop writes with ``tf.io.TFRecordWriter``; the build is ``python -m cxr_tfp.records.build --workers 2``
(Beam DirectRunner, multi_processing). Prints images/s of each, the ratio (target >= 1.5 on 2 cores),
and the peak resident memory of each process tree (sampled every 0.2 s); the build is also run on half
of the images to show that its peak memory does not grow with the dataset size.

The dataset is generated once into --data-dir (default /tmp/cxr_tfp_bench_<images>) and reused.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LOOP = r"""
import sys, time
from pathlib import Path
import tensorflow as tf
from cxr_tfp.records.process import ProcessConfig, process_record
from cxr_tfp.datasets import get_adapter
from cxr_tfp.datasets.base import SourceRecord
root, out, size = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
items = [i for i in get_adapter("synthetic", root, image_size=size).items() if isinstance(i, SourceRecord)]
cfg = ProcessConfig(image_size=size)
writers = {s: tf.io.TFRecordWriter(str(out / f"{s}.tfrecord.gz"), options="GZIP") for s in ("train", "eval", "test")}
n = 0
for rec in items:
    ok, dead = process_record(rec, cfg)
    if ok is not None:
        writers[ok[0]].write(ok[1]); n += 1
for w in writers.values():
    w.close()
print(n)
"""


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p] + p.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_measured(cmd, env) -> dict:
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.2):
            peak[0] = max(peak[0], _tree_rss(proc.pid))

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    stop.set()
    th.join()
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err[-3000:]}")
    return {"seconds": wall, "peak_rss_mb": peak[0] / 2 ** 20, "stdout": out, "stderr": err}


def ensure_data(data_dir: Path, images: int, size: int) -> Path:
    from cxr_tfp.datasets.synthetic import generate

    marker = data_dir / "synthetic.json"
    if marker.is_file():
        meta = json.loads(marker.read_text())
        if meta.get("n_images") == images and meta.get("image_size") == size:
            return data_dir
        shutil.rmtree(data_dir)
    t0 = time.monotonic()
    print(f"generating {images} synthetic {size}x{size} PNGs into {data_dir} ...", flush=True)
    generate(data_dir, n_patients=images // 2, images_per_patient=2, image_size=size, processes=os.cpu_count() or 2)
    print(f"  generated in {time.monotonic() - t0:.0f} s", flush=True)
    return data_dir


def half_view(root: Path, dest: Path) -> Path:
    """The same dataset with half of the images 'not downloaded' (label rows kept, so they are skipped)."""
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "images").mkdir(parents=True)
    for name in ("Data_Entry_2017.csv", "BBox_List_2017.csv", "synthetic.json"):
        shutil.copy(root / name, dest / name)
    shutil.copytree(root / "egd", dest / "egd")
    imgs = sorted((root / "images").glob("*.png"))
    for p in imgs[: len(imgs) // 2]:
        os.symlink(p, dest / "images" / p.name)
    return dest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=1024, help="side of the generated PNGs")
    ap.add_argument("--out-size", type=int, default=256, help="stored image side")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--skip-half", action="store_true", help="skip the half-size memory run")
    args = ap.parse_args(argv)

    data = ensure_data(Path(args.data_dir or f"/tmp/cxr_tfp_bench_{args.images}_{args.size}"), args.images, args.size)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    work = Path(tempfile.mkdtemp(prefix="cxr_bench_"))
    try:
        (work / "loop").mkdir()
        print(f"single-process loop on {args.images} images ...", flush=True)
        loop = run_measured([sys.executable, "-c", LOOP, str(data), str(work / "loop"), str(args.out_size)], env)
        n_loop = int(loop["stdout"].strip().splitlines()[-1])

        def beam(root: Path, out: Path) -> dict:
            return run_measured([sys.executable, "-m", "cxr_tfp.records.build", "--dataset", "synthetic", "--root",
                                 str(root), "--out", str(out), "--image-size", str(args.out_size), "--workers",
                                 str(args.workers), "--direct_running_mode=multi_processing", "--quiet"], env)

        print(f"Beam build, {args.workers} workers, on {args.images} images ...", flush=True)
        full = beam(data, work / "beam")
        summary = json.loads((work / "beam" / "summary.json").read_text())
        n_beam = summary["examples"]["written"]
        half = None
        if not args.skip_half:
            print(f"Beam build on half of the images (memory check) ...", flush=True)
            half = beam(half_view(data, work / "half"), work / "beam_half")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    loop_ips = n_loop / loop["seconds"]
    beam_ips = n_beam / full["seconds"]
    print()
    print(f"images: {args.images} x {args.size}x{args.size} PNG -> {args.out_size}x{args.out_size} TFRecords; "
          f"{os.cpu_count()} CPU cores")
    print(f"single-process loop : {n_loop:5d} images in {loop['seconds']:7.1f} s = {loop_ips:6.1f} images/s, "
          f"peak RSS {loop['peak_rss_mb']:7.0f} MB")
    print(f"Beam, {args.workers} workers      : {n_beam:5d} images in {full['seconds']:7.1f} s = {beam_ips:6.1f} images/s, "
          f"peak RSS {full['peak_rss_mb']:7.0f} MB (all processes)")
    if half is not None:
        print(f"Beam on half the data: peak RSS {half['peak_rss_mb']:7.0f} MB "
              f"(full/half = {full['peak_rss_mb'] / max(half['peak_rss_mb'], 1):.2f})")
    print(f"speed-up (Beam / loop): {beam_ips / loop_ips:.2f}x  (target >= 1.5x on 2 cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
