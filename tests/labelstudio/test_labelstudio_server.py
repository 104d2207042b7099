"""The Label Studio round trip against a real server on loopback (``make test-label-studio``).

requests -> ``labelstudio export`` -> ``push`` (project, local-files storage, tasks with pre-annotations)
-> annotations submitted through the API as an annotator's browser does -> the server's JSON export
-> ``labelstudio import`` (span 2) -> ``python -m cxr_tfp.records.build --dataset nih`` on span 2 ->
the box masks in the built records are the submitted boxes, pixel for pixel. Plus a screenshot of
the labeling page with its pre-annotation, in Debian's headless Chromium.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_tfp.annotate import labelstudio as ls
from cxr_tfp.annotate.__main__ import main as annotate_main
from cxr_tfp.privacy import example_key
from tests.labelstudio.conftest import REPO
from tests.labelstudio.fixtures import link_nih_sample, write_requests

pytestmark = pytest.mark.label_studio

SIZE = 64                    # stored side of the built records
SALT = "label-studio-round-trip"
# What the radiologist draws, in pixels of the 1024 x 1024 PNG: (finding, x, y, w, h). Edges are
# chosen off the stored pixels' centres (8 + 16k), so the expected mask is unambiguous.
DRAWN = [
    [("Effusion", 100.3, 610.2, 290.5, 250.1), ("Nodule", 700.0, 300.0, 61.4, 50.2)],
    [("Cardiomegaly", 300.2, 450.1, 420.6, 330.4)],
    [],                      # reviewed: nothing to box
]


def _percent_result(finding, x, y, w, h, width, height, i):
    # The editor sends unrounded percents of the image and the natural size it saw.
    return {"id": f"drawn{i}", "type": "rectanglelabels", "from_name": ls.FROM_NAME, "to_name": ls.TO_NAME,
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"x": 100.0 * x / width, "y": 100.0 * y / height, "width": 100.0 * w / width,
                      "height": 100.0 * h / height, "rotation": 0, "rectanglelabels": [finding]}}


def _expected_mask(boxes, side=1024, size=SIZE):
    centres = (np.arange(size) + 0.5) * side / size
    m = np.zeros((size, size), bool)
    for _, x, y, w, h in boxes:
        m |= ((centres[None, :] >= x) & (centres[None, :] <= x + w)
              & (centres[:, None] >= y) & (centres[:, None] <= y + h))
    return m


def _records(out: Path):
    import tensorflow as tf

    got = {}
    for f in sorted(out.glob("*/*.tfrecord.gz")):
        for raw in tf.data.TFRecordDataset(str(f), compression_type="GZIP"):
            ex = tf.train.Example.FromString(raw.numpy())
            key = ex.features.feature["example_key"].bytes_list.value[0].decode()
            got[key] = ex
    return got


def test_round_trip_through_a_real_label_studio(label_studio, shared_data, tmp_path):
    raw = label_studio.document_root / "raw"
    link_nih_sample(shared_data, raw)
    with open(raw / "1" / "BBox_List_2017.csv", newline="") as fh:
        in_table = {r[0] for r in list(csv.reader(fh))[1:]}
    on_disk = {p.name for p in (raw / "1" / "images").glob("*.png")}
    boxed = on_disk & in_table               # the sample's 12 images with expert boxes
    names = sorted(on_disk - boxed)[:3]
    assert len(names) == 3
    sizes = [Image.open(raw / "1" / "images" / n).size for n in names]
    suggested = [("Effusion", 120.0, 600.0, 256.0, 240.0), None, ("Cardiomegaly", 280.0, 430.0, 460.0, 360.0)]
    req = write_requests(tmp_path / "requests", raw,
                         [(f"1/images/{n}", w, h) for n, (w, h) in zip(names, sizes)], boxes=suggested)

    # export and push (the raw root sits at "raw/" under the server's local-files document root)
    project_dir = tmp_path / "project"
    assert annotate_main(["labelstudio", "export", "--requests", str(req), "--out", str(project_dir),
                          "--document-root-prefix", "raw"]) == 0
    res = ls.push_project(project_dir, label_studio.url, label_studio.token)
    assert res["storage_paths"] == [str(raw / "1")]
    client = ls.LabelStudioClient(label_studio.url, label_studio.token)
    tasks = sorted(client.tasks(res["project"]), key=lambda t: t["data"]["rank"])
    assert [t["data"]["cxr_image"] for t in tasks] == [f"1/images/{n}" for n in names]
    # the server serves the image through the local-files storage, and keeps the pre-annotations
    assert tasks[0]["total_predictions"] == 1 and tasks[1]["total_predictions"] == 0

    # the labeling page with its pre-annotation, in headless Chromium
    shot = Path(os.environ.get("LS_SCREENSHOT_OUT") or tmp_path / "labeling.png")
    subprocess.run([str(label_studio.python), str(REPO / "scripts" / "labelstudio_screenshot.py"),
                    "--url", label_studio.url, "--email", label_studio.email, "--password", label_studio.password,
                    "--project", str(res["project"]), "--task", str(tasks[0]["id"]), "--out", str(shot)],
                   check=True, timeout=240)
    with Image.open(shot) as im:
        assert im.size[0] >= 1000 and np.asarray(im.convert("L")).std() > 10  # not a blank page

    # the radiologist corrects the suggestions, draws a box on an image without one, clears the last
    for k, task in enumerate(tasks):
        w, h = sizes[k]
        result = [_percent_result(f, x, y, bw, bh, w, h, i) for i, (f, x, y, bw, bh) in enumerate(DRAWN[k])]
        client.annotate(task["id"], result)
    export = tmp_path / "export.json"
    export.write_text(json.dumps(client.export(res["project"])))

    assert annotate_main(["labelstudio", "import", "--export", str(export), "--raw-root", str(raw)]) == 0
    summary = json.loads((raw / "2" / ls.IMPORT_JSON).read_text())
    assert (summary["annotated"], summary["no_boxes"], summary["boxes_new"]) == (3, 1, 3)

    out = tmp_path / "records"
    env = dict(os.environ, CXR_TFP_SALT=SALT)
    build = subprocess.run([sys.executable, "-m", "cxr_tfp.records.build", "--dataset", "nih", "--root",
                            str(raw / "2"), "--out", str(out), "--image-size", str(SIZE), "--workers", "1",
                            "--quiet"], env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert build.returncode == 0, build.stderr[-2000:]
    records = _records(out)
    assert len(records) == 24
    n_boxed = sum(ex.features.feature["has_boxes"].int64_list.value[0] for ex in records.values())
    assert n_boxed == len(boxed) + 2          # span 1's expert boxes plus the two images boxed here
    for k, name in enumerate(names):
        ex = records[example_key(name, "nih", SALT)]
        has = ex.features.feature["has_boxes"].int64_list.value[0]
        assert has == int(bool(DRAWN[k]))
        if DRAWN[k]:
            png = ex.features.feature["box_mask"].bytes_list.value[0]
            mask = np.asarray(Image.open(io.BytesIO(png))) > 0
            np.testing.assert_array_equal(mask, _expected_mask(DRAWN[k]))


def test_the_server_did_not_call_out(label_studio):
    # Sentry, analytics and the version check are off: nothing in the log tries to leave loopback.
    log = label_studio.log.read_text(errors="replace")
    assert "sentry.io" not in log and "pypi.org" not in log and "NameResolutionError" not in log
