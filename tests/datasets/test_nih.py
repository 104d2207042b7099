"""NIH ChestX-ray14 adapter: the real sample files, and the layout's quirks on small fixtures."""
import numpy as np
import pytest
from PIL import Image

from cxr_tfp import labels as L
from cxr_tfp.datasets.base import DatasetLayoutError, Rejected, SourceRecord
from cxr_tfp.datasets.nih import NIHAdapter, parse_findings

IDX = {n: L.FINDINGS.index(n) for n in L.FINDINGS}


@pytest.fixture(scope="module")
def real(shared_data):
    """The real sample, parsed once for the module (the 112k-row table is streamed, only present rows kept)."""
    a = NIHAdapter(shared_data / "nih-sample")
    records, rejected = a.collect()
    return a, records, rejected


def test_real_sample_reads_only_the_rows_whose_image_is_there(real):
    a, records, rejected = real
    assert len(records) == 24 and rejected == []
    assert a.skipped["label row without its image on disk (partial download)"] == 112120 - 24
    assert a.skipped["box row without its image on disk (partial download)"] == 984 - 12


def test_real_sample_labels_views_and_mask(real):
    _, records, _ = real
    r = records["00000404_000.png"]   # Atelectasis|Consolidation|Effusion|Mass|Pleural_Thickening, AP
    pos = {L.FINDINGS[i] for i in np.flatnonzero(r.labels)}
    assert pos == {"Atelectasis", "Consolidation", "Effusion", "Mass", "Pleural_Thickening"}
    assert r.view == "AP" and r.patient_id == "404"
    assert r.label_mask[:14].all() and not r.label_mask[14:].any()   # NIH labels its 14 findings only
    normal = records["00014998_000.png"]                            # No Finding
    assert not normal.labels.any() and normal.label_mask[:14].all()


def test_real_boxes_are_attached_with_infiltrate_harmonised(real):
    _, records, _ = real
    boxed = {n: r for n, r in records.items() if r.regions}
    assert len(boxed) == 12 and sum(len(r.regions) for r in boxed.values()) == 12
    findings = {reg.finding for r in boxed.values() for reg in r.regions}
    assert findings <= set(L.FINDINGS) and "Infiltrate" not in findings
    for r in boxed.values():
        for reg in r.regions:
            assert 0 <= reg.x0 < reg.x1 <= 1024 and 0 <= reg.y0 < reg.y1 <= 1024
            assert reg.source.startswith("BBox_List_2017.csv:")


def test_parse_findings_rejects_unknown_names():
    lab, mask = parse_findings("Effusion|Infiltration")
    assert lab[IDX["Effusion"]] == 1 and lab[IDX["Infiltration"]] == 1 and lab.sum() == 2
    with pytest.raises(ValueError, match="Dragonpox"):
        parse_findings("Mass|Dragonpox")
    with pytest.raises(ValueError, match="not one of the 14"):
        parse_findings("Fracture")


HEADER_2017 = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
               "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")


def _img(path, size=64):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), 100, np.uint8)).save(path)


@pytest.fixture()
def tiny(tmp_path):
    root = tmp_path / "nih"
    for n in ("00000001_000.png", "00000001_001.png", "00000002_000.png", "00000003_000.png",
              "00000004_000.png", "00000005_000.png"):
        _img(root / "images_001" / "images" / n)
    rows = [
        "00000001_000.png,Effusion|Mass,0,1,50,M,PA,2500,2048,0.168,0.168,",
        "00000001_001.png,No Finding,1,1,51,M,AP,2500,2048,0.168,0.168,",
        "00000002_000.png,Mass|Dragonpox,0,2,60,F,PA,2500,2048,0.168,0.168,",     # unknown finding
        "00000003_000.png,Nodule,0",                                             # malformed (too few fields)
        "00000009_000.png,Hernia,0,9,60,F,PA,2500,2048,0.168,0.168,",            # image not downloaded
        "00000005_000.png,Cardiomegaly,0,5,70,F,PA,2500,2048,0.168,0.168,",
    ]
    (root / "Data_Entry_2017.csv").write_text(HEADER_2017 + "\n" + "\n".join(rows) + "\n")
    boxes = [
        "00000001_000.png,Mass,10,10,20,20",
        "00000001_000.png,Infiltrate,5,5,10,10",
        "00000001_000.png,Unicorn,5,5,10,10",          # unknown finding
        "00000001_001.png,Mass,1e9,abc,20,20",          # malformed numbers
        "00000002_000.png,Mass,10,10,20,20",            # its image's row was rejected
        "00000077_000.png,Mass,10,10,20,20",            # image not downloaded
    ]
    (root / "BBox_List_2017.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n" + "\n".join(boxes) + "\n")
    return root


def test_2017_layout_trailing_commas_images_0nn_and_rejections(tiny):
    a = NIHAdapter(tiny)
    records, rejected = a.collect()
    assert sorted(records) == ["00000001_000.png", "00000001_001.png", "00000005_000.png"]
    assert records["00000001_000.png"].source == "images_001/images/00000001_000.png"
    reasons = {(r.kind, r.reason.split(" (")[0]) for r in rejected}
    assert ("example", "unknown finding 'Dragonpox'") in reasons
    assert any(r.kind == "example" and "malformed row" in r.reason for r in rejected)
    assert ("example", "image has no row in Data_Entry_2017.csv") in reasons          # 00000004
    assert ("annotation", "unknown finding 'Unicorn'") in reasons
    assert any(r.kind == "annotation" and "not a number" in r.reason for r in rejected)
    assert any(r.kind == "annotation" and r.reason.startswith("its image was rejected") for r in rejected)
    assert len(records["00000001_000.png"].regions) == 2
    assert a.skipped["label row without its image on disk (partial download)"] == 1
    assert a.skipped["box row without its image on disk (partial download)"] == 1
    for r in rejected:   # dead-letter sources are file:line or relative paths, never absolute
        assert not r.source.startswith("/")


def test_views_filter_skips(tiny):
    a = NIHAdapter(tiny, views="PA")
    records, _ = a.collect()
    assert "00000001_001.png" not in records and a.skipped["view not in --views"] == 1


def test_official_split_lists_are_resolved_per_patient(tiny):
    (tiny / "test_list.txt").write_text("00000001_001.png\n")
    (tiny / "train_val_list.txt").write_text("00000001_000.png\n00000005_000.png\n")
    records, _ = NIHAdapter(tiny).collect()
    # patient 1 has one image in each list: the whole patient goes to test
    assert records["00000001_000.png"].split == records["00000001_001.png"].split == "test"
    assert records["00000005_000.png"].split in ("train", "eval")
    records, _ = NIHAdapter(tiny, use_official_split=False).collect()
    assert all(r.split is None for r in records.values())


def test_missing_label_table_or_images_fail_at_once(tmp_path):
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        NIHAdapter(tmp_path / "nope").check()
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetLayoutError, match="Data_Entry_2017"):
        NIHAdapter(tmp_path).check()
    (tmp_path / "Data_Entry_2017.csv").write_text(HEADER_2017 + "\n")
    with pytest.raises(DatasetLayoutError, match="no images"):
        NIHAdapter(tmp_path).check()


def test_items_yield_records_and_rejections(tiny):
    items = list(NIHAdapter(tiny).items())
    assert {type(i) for i in items} == {SourceRecord, Rejected}
