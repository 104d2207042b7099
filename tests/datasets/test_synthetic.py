"""The embedded synthetic dataset: real layouts, determinism, informative vs control annotations."""
import csv
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from cxr_tfp.datasets.egd import read_fixations
from cxr_tfp.datasets.synthetic import SyntheticAdapter, generate
from cxr_tfp.labels import SYNTHETIC_FINDINGS
from cxr_tfp.privacy import assign_split


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "synthetic.json":
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    base = tmp_path_factory.mktemp("syn")
    inf = generate(base / "informative", n_patients=20, image_size=64, seed=3)
    ctl = generate(base / "control", n_patients=20, image_size=64, seed=3, informative=False)
    return inf, ctl


def test_layout_is_nih_plus_egd(pair):
    root, _ = pair
    head = (root / "Data_Entry_2017.csv").read_text().splitlines()[0]
    assert head.startswith("Image Index,Finding Labels") and head.endswith(",")
    assert (root / "BBox_List_2017.csv").read_text().startswith("Image Index,Finding Label,Bbox [x,y,w,h],,,")
    assert len(list((root / "images").glob("*.png"))) == 40
    assert (root / "egd" / "master_sheet.csv").is_file() and (root / "egd" / "fixations.csv").is_file()
    img = Image.open(sorted((root / "images").glob("*.png"))[0])
    assert img.mode == "L" and img.size == (64, 64)
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["findings"] == list(SYNTHETIC_FINDINGS) and meta["n_images"] == 40


def test_findings_are_exactly_the_synthetic_vocabulary(pair):
    root, _ = pair
    with open(root / "Data_Entry_2017.csv") as fh:
        rows = list(csv.reader(fh))[1:]
    names = {n for r in rows for n in r[1].split("|")}
    assert names <= set(SYNTHETIC_FINDINGS) | {"No Finding"} and set(SYNTHETIC_FINDINGS) <= names


def test_deterministic_given_seed(tmp_path, pair):
    again = generate(tmp_path / "again", n_patients=20, image_size=64, seed=3)
    assert _digest(again) == _digest(pair[0])
    other = generate(tmp_path / "other", n_patients=20, image_size=64, seed=4)
    assert _digest(other) != _digest(pair[0])


def test_control_changes_only_where_annotations_point(pair):
    inf, ctl = pair
    assert (inf / "Data_Entry_2017.csv").read_text() == (ctl / "Data_Entry_2017.csv").read_text()
    for a, b in zip(sorted((inf / "images").glob("*.png")), sorted((ctl / "images").glob("*.png"))):
        assert a.read_bytes() == b.read_bytes()
    box_i = (inf / "BBox_List_2017.csv").read_text().splitlines()
    box_c = (ctl / "BBox_List_2017.csv").read_text().splitlines()
    assert len(box_i) == len(box_c) and box_i != box_c


def _box_contrast(root):
    """Mean |image - local median background| inside boxes: the lesion makes it larger."""
    vals = []
    with open(root / "BBox_List_2017.csv") as fh:
        for r in list(csv.reader(fh))[1:]:
            img = np.asarray(Image.open(root / "images" / r[0]), np.float32)
            x, y, w, h = (float(v) for v in r[2:6])
            cx, cy = int(x + w / 2), int(y + h / 2)
            centre = img[max(cy - 1, 0):cy + 2, max(cx - 1, 0):cx + 2]
            vals.append(float(np.abs(centre - np.median(img[max(int(y), 0):int(y + h), max(int(x), 0):int(x + w)])).mean()))
    return float(np.mean(vals))


def test_informative_boxes_sit_on_the_findings_and_gaze_dwells_there(pair):
    inf, ctl = pair
    assert _box_contrast(inf) > _box_contrast(ctl) + 2.0
    fix = read_fixations(inf / "egd" / "fixations.csv")
    with open(inf / "BBox_List_2017.csv") as fh:
        boxes = list(csv.reader(fh))[1:]
    hits = 0
    for r in boxes:
        g, _ = fix[r[0][:-4]]
        x, y, w, h = (float(v) for v in r[2:6])
        inside = (g.x >= x) & (g.x <= x + w) & (g.y >= y) & (g.y <= y + h)
        hits += g.weight[inside].sum() >= 0.2 * g.weight.sum() / max(1, sum(1 for b in boxes if b[0] == r[0]))
    assert hits >= 0.8 * len(boxes)


def test_annotated_examples_in_every_split_and_splits_by_patient_hash(pair):
    root, _ = pair
    with open(root / "Data_Entry_2017.csv") as fh:
        rows = list(csv.reader(fh))[1:]
    split_of = {r[0]: assign_split(r[3], "synthetic") for r in rows}
    annotated = {r[0] + ".png" for r in csv.reader(open(root / "egd" / "master_sheet.csv")) if r[0] != "dicom_id"}
    for s in ("train", "eval", "test"):
        assert any(split_of[n] == s for n in annotated), s
    pats = {r[3] for r in rows}
    assert len(pats) == 20
    counts = {s: len({r[3] for r in rows if split_of[r[0]] == s}) for s in ("train", "eval", "test")}
    assert counts == {"train": 16, "eval": 2, "test": 2}


def test_adapter_generates_when_missing_then_reads_back(tmp_path):
    a = SyntheticAdapter(tmp_path / "fresh", synthetic_patients=6, image_size=64)
    records, rejected = a.collect()
    assert a.generated and rejected == [] and len(records) == 12
    assert all(r.dataset == "synthetic" and r.namespace == "synthetic" for r in records.values())
    gazes = [r for r in records.values() if r.gaze is not None]
    assert gazes and all(r.gaze.sigma_frac == pytest.approx(0.05) for r in gazes)
    b = SyntheticAdapter(tmp_path / "fresh", synthetic_patients=99)
    b.check()
    assert not b.generated   # an existing label table is read, not regenerated


@pytest.fixture(scope="module")
def decoy_pair(tmp_path_factory):
    base = tmp_path_factory.mktemp("decoys")
    kw = dict(n_patients=12, image_size=64, seed=5, contrast=3.0)
    plain = generate(base / "plain", **kw)
    inf = generate(base / "informative", decoys=2.0, **kw)
    ctl = generate(base / "control", decoys=2.0, informative=False, **kw)
    return plain, inf, ctl


def _decoys(root):
    with open(root / "decoys.csv") as fh:
        return [(r[0], r[1], float(r[2]), float(r[3])) for r in list(csv.reader(fh))[1:]]


def test_decoys_change_images_only_not_labels_or_annotations(decoy_pair):
    plain, inf, _ = decoy_pair
    assert not (plain / "decoys.csv").exists()
    for name in ("Data_Entry_2017.csv", "BBox_List_2017.csv", "egd/fixations.csv", "egd/master_sheet.csv"):
        assert (plain / name).read_text() == (inf / name).read_text(), name
    dec = _decoys(inf)
    assert len(dec) >= 24 * 1.0   # Poisson(2) per image over 24 images
    assert {d[1] for d in dec} <= set(SYNTHETIC_FINDINGS)
    # Each decoy is drawn into its image: the pixels at its centre differ from the decoy-free image
    # far more than the pixel noise elsewhere (the noise draw shifts when a decoy is drawn).
    for name, _, x, y in dec[:10]:
        a = np.asarray(Image.open(plain / "images" / name), np.float32)
        b = np.asarray(Image.open(inf / "images" / name), np.float32)
        cx, cy = int(x), int(y)
        local = np.abs(b - a)[max(cy - 2, 0):cy + 3, max(cx - 2, 0):cx + 3].max()
        assert local > 4 * np.median(np.abs(b - a)) + 10, name
    assert json.loads((inf / "synthetic.json").read_text())["decoys"] == 2.0


def test_decoys_are_outside_every_informative_box_and_shared_by_the_control(decoy_pair):
    _, inf, ctl = decoy_pair
    with open(inf / "BBox_List_2017.csv") as fh:
        boxes = [(r[0], *(float(v) for v in r[2:6])) for r in list(csv.reader(fh))[1:]]
    annotated_with_decoys = 0
    for name, _, x, y in _decoys(inf):
        own = [b for b in boxes if b[0] == name]
        annotated_with_decoys += bool(own)
        for _, bx, by, bw, bh in own:
            assert not (bx <= x <= bx + bw and by <= y <= by + bh), name
    assert annotated_with_decoys > 0   # the check above actually ran on boxed images
    assert _decoys(ctl) == _decoys(inf)
    for a, b in zip(sorted((inf / "images").glob("*.png")), sorted((ctl / "images").glob("*.png"))):
        assert a.read_bytes() == b.read_bytes()


def test_decoys_option_reaches_the_generator_and_rejects_negatives(tmp_path):
    a = SyntheticAdapter(tmp_path / "d", synthetic_patients=3, synthetic_decoys=1.5, image_size=64)
    a.check()
    assert json.loads((tmp_path / "d" / "synthetic.json").read_text())["decoys"] == 1.5
    with pytest.raises(ValueError, match="decoys"):
        generate(tmp_path / "neg", n_patients=3, image_size=64, decoys=-1)


def test_shortcut_copies_each_train_finding_outside_the_lungs_and_leaves_eval_independent(tmp_path):
    root = generate(tmp_path / "s", n_patients=30, image_size=64, decoys=1.5, shortcut=1.0, salt="t",
                    seed=3)
    with open(root / "Data_Entry_2017.csv") as fh:
        rows = list(csv.reader(fh))[1:]
    findings = {r[0]: sorted(f for f in r[1].split("|") if f != "No Finding") for r in rows}
    split = {r[0]: assign_split(str(int(r[3])), "synthetic", "t") for r in rows}
    decoys = {}
    for name, pattern, _, _ in _decoys(root):
        decoys.setdefault(name, []).append(pattern)
    train = [n for n in findings if split[n] == "train"]
    held_out = [n for n in findings if split[n] != "train"]
    assert train and held_out
    # train: exactly one copy per finding (probability 1), nothing else
    for n in train:
        assert sorted(decoys.get(n, [])) == findings[n], n
    # eval/test: Poisson(1.5) decoys of any pattern, so some carry a pattern the image is not labelled with
    assert any(set(decoys.get(n, [])) - set(findings[n]) for n in held_out)
    assert json.loads((root / "synthetic.json").read_text())["shortcut"] == 1.0
    with pytest.raises(ValueError, match="shortcut"):
        generate(tmp_path / "bad", n_patients=3, image_size=64, shortcut=1.5)
