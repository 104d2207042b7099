"""Label Studio conversions and the export / import commands, without a server (fast)."""
from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET

import pytest

from cxr_tfp import labels as L
from cxr_tfp.annotate import labelstudio as ls
from cxr_tfp.annotate.__main__ import main as annotate_main
from cxr_tfp.datasets.nih import NIHAdapter
from tests.labelstudio.fixtures import make_raw_span, write_requests

SIZES = {"00000001_000.png": (64, 48), "00000002_000.png": (100, 100), "00000003_000.png": (37, 91)}


# ------------------------------------------------------------------------------ percent <-> pixels
@pytest.mark.parametrize("size", [(1024, 1024), (2500, 2048), (37, 91), (1, 1)])
def test_pixels_percent_round_trip_on_images_of_different_sizes(size):
    w, h = size
    box = (0.25 * w, 0.1 * h, 0.5 * w, 0.33 * h)
    pct = ls.pixels_to_percent(box, w, h)
    assert pct["x"] == pytest.approx(25.0) and pct["width"] == pytest.approx(50.0)
    assert pct["y"] == pytest.approx(10.0) and pct["height"] == pytest.approx(33.0)
    back = ls.percent_to_pixels(pct, w, h)
    assert back == pytest.approx(box, abs=0.01)


def test_percent_to_pixels_rounds_to_a_hundredth_and_clips_to_the_image():
    assert ls.percent_to_pixels({"x": 10 / 3, "y": 0, "width": 10, "height": 10}, 1000, 300) == \
        (33.33, 0.0, 100.0, 30.0)
    # dragged past the right and bottom edges: ends at the edge
    assert ls.percent_to_pixels({"x": 90, "y": 95, "width": 20, "height": 20}, 200, 100) == \
        (180.0, 95.0, 20.0, 5.0)
    # non-square image: x scales with the width, y with the height
    assert ls.percent_to_pixels({"x": 50, "y": 50, "width": 10, "height": 10}, 2000, 1000) == \
        (1000.0, 500.0, 200.0, 100.0)


@pytest.mark.parametrize("value, message", [
    ({"x": 1, "y": 1, "width": 5, "height": 5, "rotation": 30}, "rotation is 30"),
    ({"x": 1, "y": 1, "width": 5}, "no 'height'"),
    ({"x": "a", "y": 1, "width": 5, "height": 5}, "must be numbers"),
    ({"x": float("nan"), "y": 1, "width": 5, "height": 5}, "finite"),
    ({"x": 120, "y": 1, "width": 5, "height": 5}, "no area inside"),
])
def test_percent_to_pixels_refuses_what_is_not_an_axis_aligned_box(value, message):
    with pytest.raises(ValueError, match=message):
        ls.percent_to_pixels(value, 100, 100)


def test_rotation_of_360_degrees_is_no_rotation():
    assert ls.percent_to_pixels({"x": 0, "y": 0, "width": 50, "height": 50, "rotation": 360}, 10, 10) == \
        (0.0, 0.0, 5.0, 5.0)


# ---------------------------------------------------------------------------------------- export
def _requests(tmp_path):
    raw = tmp_path / "raw"
    make_raw_span(raw, SIZES, boxes=[["00000002_000.png", "Infiltrate", "10", "20", "30", "40"]])
    images = [(f"1/images/{n}", w, h) for n, (w, h) in sorted(SIZES.items())]
    boxes = [("Effusion", 8.0, 6.0, 32.0, 24.0), None, ("Mass", 3.7, 9.1, 18.5, 45.5)]
    return raw, write_requests(tmp_path / "req", raw, images, boxes)


def test_export_writes_config_tasks_and_pre_annotations(tmp_path):
    raw, req = _requests(tmp_path)
    out = tmp_path / "project"
    assert annotate_main(["labelstudio", "export", "--requests", str(req), "--out", str(out)]) == 0
    root = ET.fromstring((out / "labeling_config.xml").read_text())
    rect = root.find(".//RectangleLabels")
    assert rect.get("name") == ls.FROM_NAME and rect.get("toName") == ls.TO_NAME
    assert [lab.get("value") for lab in rect.findall("Label")] == list(L.NIH_FINDINGS)
    assert root.find(".//Image").get("value") == "$image"
    tasks = json.loads((out / "tasks.json").read_text())
    assert [t["data"]["rank"] for t in tasks] == [1, 2, 3]
    first = tasks[0]
    assert first["data"]["image"] == "/data/local-files/?d=1/images/00000001_000.png"
    assert first["data"]["cxr_image"] == "1/images/00000001_000.png"
    assert set(first["data"]) >= {f"p_{n}" for n in L.NIH_FINDINGS}
    pred = first["predictions"][0]["result"][0]
    assert pred["value"]["rectanglelabels"] == ["Effusion"]
    assert (pred["original_width"], pred["original_height"]) == (64, 48)
    assert pred["value"]["x"] == pytest.approx(12.5) and pred["value"]["height"] == pytest.approx(50.0)
    assert "predictions" not in tasks[1]  # flat saliency: no suggested box, no pre-annotation
    third = tasks[2]["predictions"][0]["result"][0]["value"]
    assert (third["x"], third["y"], third["width"], third["height"]) == pytest.approx((10, 10, 50, 50))
    project = json.loads((out / "project.json").read_text())
    assert project["tasks"] == 3 and project["pre_annotated"] == 2
    assert project["local_files"]["env"]["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == str(raw)
    # nothing but the folder's own names: no patient ID column reaches the tasks
    assert "Patient" not in (out / "tasks.json").read_text()


@pytest.mark.parametrize("edit, message", [
    (lambda rows: rows[1].__setitem__(5, "wide"), "requests.csv:2: field 'width': 'wide' is not a number"),
    (lambda rows: rows[1].__setitem__(1, "/etc/x.png"), "field 'image'"),
    (lambda rows: rows[1].__setitem__(7, "Flu"), "field 'suggest_finding': unknown finding 'Flu'"),
    (lambda rows: [r.pop(3) for r in rows], "missing column 'score'"),
])
def test_export_names_the_file_and_field_of_a_malformed_request(tmp_path, capsys, edit, message):
    _, req = _requests(tmp_path)
    with open(req / "requests.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    edit(rows)
    with open(req / "requests.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    assert annotate_main(["labelstudio", "export", "--requests", str(req), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("error: ")
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------------------------------- import
def _annotation(rel, w, h, boxes, cancelled=False, updated="2026-12-07T01:00:00Z"):
    result = [{"id": f"r{i}", "type": "rectanglelabels", "from_name": "findings", "to_name": "image",
               "original_width": w, "original_height": h, "image_rotation": 0,
               "value": dict(ls.pixels_to_percent(b, w, h), rectanglelabels=[f])} for i, (f, b) in enumerate(boxes)]
    return {"id": abs(hash((rel, updated))) % 1000, "result": result, "was_cancelled": cancelled,
            "updated_at": updated}


def _export(path, tasks):
    path.write_text(json.dumps(tasks))
    return path


def test_import_writes_pixel_boxes_into_the_next_span_and_the_adapter_reads_them(tmp_path, capsys):
    raw, _ = _requests(tmp_path)
    exp = _export(tmp_path / "export.json", [
        {"id": 1, "data": {"image": ls.image_url("1/images/00000001_000.png"),
                           "cxr_image": "1/images/00000001_000.png"},
         "annotations": [_annotation("a", 64, 48, [("Effusion", (4.0, 5.0, 20.0, 10.0))],
                                     updated="2026-12-07T01:00:00Z"),
                         _annotation("a", 64, 48, [("Effusion", (8.0, 6.0, 30.0, 20.0)),
                                                   ("Infiltration", (1.0, 2.0, 3.0, 4.0))],
                                     updated="2026-12-07T02:00:00Z"),
                         _annotation("a", 64, 48, [("Mass", (1.0, 1.0, 1.0, 1.0))], cancelled=True,
                                     updated="2026-12-07T03:00:00Z")]},
        # task without cxr_image: the local-files URL names the image; a non-square image
        {"id": 2, "data": {"image": ls.image_url("1/images/00000003_000.png")},
         "annotations": [_annotation("c", 37, 91, [("Mass", (3.7, 9.1, 18.5, 45.5))])]},
        {"id": 3, "data": {"cxr_image": "1/images/00000002_000.png"}, "annotations": []},
    ])
    rc = annotate_main(["labelstudio", "import", "--export", str(exp), "--raw-root", str(raw)])
    assert rc == 0, capsys.readouterr().err
    span2 = raw / "2"
    with open(span2 / "BBox_List_2017.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ls.BBOX_HEADER
    assert rows[1:] == [["00000002_000.png", "Infiltrate", "10", "20", "30", "40"],   # span 1's box kept
                        ["00000001_000.png", "Effusion", "8", "6", "30", "20"],       # latest annotation
                        ["00000001_000.png", "Infiltrate", "1", "2", "3", "4"],       # NIH's spelling
                        ["00000003_000.png", "Mass", "3.7", "9.1", "18.5", "45.5"]]
    summary = json.loads((span2 / ls.IMPORT_JSON).read_text())
    assert (summary["tasks"], summary["annotated"], summary["unannotated"], summary["boxes_new"]) == (3, 2, 1, 3)
    # span 1 is untouched and span 2 is a whole dataset: images, label table, boxes
    assert len((raw / "1" / "BBox_List_2017.csv").read_text().splitlines()) == 2
    assert sorted(p.name for p in (span2 / "images").iterdir()) == sorted(SIZES)
    records, rejected = NIHAdapter(span2).collect()
    assert not rejected
    boxes = {(n, r.finding, r.x0, r.y0, r.x1, r.y1) for n, rec in records.items() for r in rec.regions}
    assert ("00000003_000.png", "Mass", 3.7, 9.1, 3.7 + 18.5, 9.1 + 45.5) in boxes
    assert ("00000001_000.png", "Infiltration", 1.0, 2.0, 4.0, 6.0) in boxes
    # a second import of the same export makes span 3 and adds no duplicate
    assert annotate_main(["labelstudio", "import", "--export", str(exp), "--raw-root", str(raw)]) == 0
    assert json.loads((raw / "3" / ls.IMPORT_JSON).read_text())["boxes_already_present"] == 3
    assert len((raw / "3" / "BBox_List_2017.csv").read_text().splitlines()) == 5


def test_import_never_overwrites_a_span(tmp_path, capsys):
    raw, _ = _requests(tmp_path)
    (raw / "2").mkdir()
    exp = _export(tmp_path / "e.json", [])
    assert annotate_main(["labelstudio", "import", "--export", str(exp), "--raw-root", str(raw),
                          "--span", "2"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert list((raw / "2").iterdir()) == []


@pytest.mark.parametrize("tasks, message", [
    ({"not": "a list"}, "expected a JSON list of tasks"),
    ([{"id": 7}], "task 7: field 'data' missing"),
    ([{"id": 7, "data": {"image": "http://elsewhere/x.png"}}], "field 'data.image'"),
    ([{"id": 7, "data": {"cxr_image": "1/images/nope.png"}, "annotations": [{"result": []}]}],
     "image '1/images/nope.png' is not in span 1/"),
    ([{"id": 7, "data": {"cxr_image": "1/images/00000001_000.png"},
       "annotations": [{"result": [{"type": "rectanglelabels",
                                    "value": {"x": 1, "y": 1, "width": 2, "height": 2, "rotation": 15,
                                              "rectanglelabels": ["Mass"]}}]}]}],
     "task 7: field 'result[0].value': rotation is 15"),
    ([{"id": 7, "data": {"cxr_image": "1/images/00000001_000.png"},
       "annotations": [{"result": [{"type": "rectanglelabels", "value": {"x": 1, "y": 1, "width": 2, "height": 2,
                                                                        "rectanglelabels": ["Flu"]}}]}]}],
     "field 'result[0].value.rectanglelabels': unknown finding 'Flu'"),
    ([{"id": 7, "data": {"cxr_image": "1/images/00000001_000.png"},
       "annotations": [{"result": [{"type": "rectanglelabels", "original_width": 1024, "original_height": 1024,
                                    "value": {"x": 1, "y": 1, "width": 2, "height": 2,
                                              "rectanglelabels": ["Mass"]}}]}]}],
     "field 'result[0].original_width' is 1024 but 1/images/00000001_000.png is 64x48"),
    ([{"id": 7, "data": {"cxr_image": "1/images/00000001_000.png"},
       "annotations": [{"result": [{"type": "rectanglelabels", "original_width": "wide",
                                    "value": {"x": 1, "y": 1, "width": 2, "height": 2,
                                              "rectanglelabels": ["Mass"]}}]}]}],
     "field 'result[0].original_width' 'wide' is not a number"),
])
def test_import_names_the_file_and_field_of_a_malformed_export(tmp_path, capsys, tasks, message):
    raw, _ = _requests(tmp_path)
    exp = _export(tmp_path / "bad.json", tasks)
    assert annotate_main(["labelstudio", "import", "--export", str(exp), "--raw-root", str(raw)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "bad.json" in err, err
    assert sorted(p.name for p in raw.iterdir()) == ["1"]  # nothing staged is left behind


def test_import_refuses_a_raw_root_without_spans_and_not_json(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    exp = tmp_path / "e.json"
    exp.write_text("[")
    assert annotate_main(["labelstudio", "import", "--export", str(exp), "--raw-root", str(tmp_path / "raw")]) == 2
    assert "has no span folders" in capsys.readouterr().err
    raw, _ = _requests(tmp_path / "x")
    assert annotate_main(["labelstudio", "import", "--export", str(exp), "--raw-root", str(raw)]) == 2
    assert "e.json: not JSON" in capsys.readouterr().err


def test_next_span_numbered_and_dated():
    import datetime as dt

    assert ls.next_span(["1", "2", "10"]) == "11"
    assert ls.next_span(["2026-12-01"], today=dt.date(2026, 12, 7)) == "2026-12-07"
    with pytest.raises(ValueError, match="already exists"):
        ls.next_span(["2026-12-07"], today=dt.date(2026, 12, 7))
