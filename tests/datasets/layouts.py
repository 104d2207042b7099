"""Small fixture datasets in the published layouts of MIMIC-CXR-JPG, EGD-CXR and REFLACX (tests only)."""
from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image

CHEXPERT = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
            "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
            "Pneumothorax", "Support Devices")


def write_image(path: Path, w: int = 96, h: int = 80, seed: int = 0, fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = np.clip(rng.normal(120, 30, (h, w)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def write_csv(path: Path, header: Sequence[str], rows: List[Sequence], gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    data = buf.getvalue().encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def mimic_path(root: Path, subject: str, study: str, dicom: str, ext: str = "jpg") -> Path:
    return root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.{ext}"


def make_mimic(root: Path) -> Dict[str, object]:
    """3 subjects, 4 studies, 6 images (one not downloaded); labels with 1, 0, -1, blank; one bad label row."""
    labels = {  # (subject, study) -> {column: value}
        ("10000001", "50000001"): {"Pleural Effusion": "1.0", "Cardiomegaly": "-1.0", "No Finding": ""},
        ("10000001", "50000002"): {"No Finding": "1.0"},
        ("10000002", "50000003"): {"Atelectasis": "0.0", "Edema": "1.0"},
        ("10000003", "50000004"): {"Pneumonia": "2.0"},  # malformed value
    }
    rows = [[s, st] + [v.get(c, "") for c in CHEXPERT] for (s, st), v in labels.items()]
    write_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *CHEXPERT], rows, gz=True)
    images = [  # dicom, subject, study, view, split, on_disk
        ("d1", "10000001", "50000001", "PA", "train", True),
        ("d2", "10000001", "50000001", "LATERAL", "train", True),
        ("d3", "10000001", "50000002", "AP", "train", True),
        ("d4", "10000002", "50000003", "PA", "validate", True),
        ("d5", "10000003", "50000004", "PA", "test", True),
        ("d6", "10000002", "50000003", "PA", "validate", False),
        ("d7", "10000004", "50000009", "PA", "test", True),   # study without a label row
    ]
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz",
              ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
               "Columns"], [[d, s, st, "CHEST (PA AND LAT)", v, 80, 96] for d, s, st, v, _, _ in images], gz=True)
    write_csv(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"],
              [[d, st, s, sp] for d, s, st, _, sp, _ in images], gz=True)
    for i, (d, s, st, _, _, on_disk) in enumerate(images):
        if on_disk:
            write_image(mimic_path(root, s, st, d), seed=i)
    return {"images": images}


def make_egd(root: Path, mimic_root: Path) -> None:
    """3 master-sheet rows (one image missing), fixations incl. an orphan group and invalid rows."""
    chx = [c.lower().replace(" ", "_") + "__chx" for c in CHEXPERT]
    header = ["dicom_id", "path", "study_id", "patient_id", "stay_id", "gender", "anchor_age", "image_top_pad",
              "image_bottom_pad", "image_left_pad", "image_right_pad", "Normal", "CHF", "pneumonia", *chx,
              "cxr_exam_indication"]
    def row(did, subj, study, vals):
        return [did, f"files/p{subj[:2]}/p{subj}/s{study}/{did}.dcm", study, subj, "1", "F", "20 - 30",
                0, 0, 0, 0, 0, 1, 0, *[vals.get(c, "") for c in chx], "SOB, ?CHF"]
    write_csv(root / "master_sheet.csv", header, [
        row("e1", "11000001", "51000001", {"cardiomegaly__chx": "1", "pleural_effusion__chx": "-1"}),
        row("e2", "11000002", "51000002", {"no_finding__chx": "1"}),
        row("e3", "11000003", "51000003", {"edema__chx": "1"}),          # image not on disk
    ])
    write_image(mimic_path(mimic_root, "11000001", "51000001", "e1"), w=200, h=160, seed=1)
    write_image(mimic_path(mimic_root, "11000002", "51000002", "e2"), w=200, h=160, seed=2)
    fh = ["SESSION_ID", "MEDIA_ID", "DICOM_ID", "CNT", "Time (in secs)", "FPOGX", "FPOGY", "FPOGS", "FPOGD",
          "FPOGID", "FPOGV", "X_ORIGINAL", "Y_ORIGINAL"]
    rows = [
        [1, 0, "e1", 1, 0.5, 0.5, 0.5, 0.1, 0.6, 1, 1, 150, 40],
        [1, 0, "e1", 2, 0.9, 0.5, 0.5, 0.7, 0.3, 2, 1, 150, 42],
        [1, 0, "e1", 3, 1.2, 0.5, 0.5, 1.0, 0.2, 3, 0, 20, 20],      # invalid (FPOGV=0)
        [1, 0, "e1", 4, 1.5, 0.5, 0.5, 1.3, 0.2, 4, 1, -1, -1],      # off the image
        [1, 0, "e2", 1, 0.5, 0.5, 0.5, 0.1, 0.4, 1, 1, 100, 80],
        [1, 0, "e3", 1, 0.5, 0.5, 0.5, 0.1, 0.4, 1, 1, 100, 80],     # its image is missing
        [1, 0, "zz", 1, 0.5, 0.5, 0.5, 0.1, 0.4, 1, 1, 100, 80],     # not in the master sheet
        [1, 0, "e2", 2, "x", 0.5, 0.5, 0.1, 0.4, 1, 1, "bad", 80],   # malformed
    ]
    write_csv(root / "fixations.csv", fh, rows)
    write_csv(root / "bounding_boxes.csv", ["dicom_id", "bbox_name", "x1", "x2", "y1", "y2"],
              [["e1", "cardiac silhouette", 50, 150, 60, 140]])


REFLACX_LABELS = ("Abnormal mediastinal contour", "Acute fracture", "Atelectasis", "Consolidation",
                  "Enlarged cardiac silhouette", "Enlarged hilum", "Groundglass opacity", "Hiatal hernia",
                  "High lung volume / emphysema", "Interstitial lung disease", "Lung nodule or mass",
                  "Pleural abnormality", "Pneumothorax", "Pulmonary edema")
REFLACX_FIX = ("timestamp_start_fixation", "timestamp_end_fixation", "x_position", "y_position",
               "pupil_area_normalized", "window_level", "window_width", "angular_resolution_x_pixels_per_degree",
               "angular_resolution_y_pixels_per_degree", "xmin_shown_from_image", "ymin_shown_from_image",
               "xmax_shown_from_image", "ymax_shown_from_image", "xmin_in_screen_coordinates",
               "ymin_in_screen_coordinates", "xmax_in_screen_coordinates", "ymax_in_screen_coordinates")


def make_reflacx(root: Path, mimic_root: Path) -> None:
    """Phase 3 metadata: 2 readings of one image (one with gaze discarded), one reading whose image is missing,
    one orphan reading folder. The image on disk is half the size of image_size_x/y."""
    main = root / "main_data"
    header = ["id", "split", "eye_tracking_data_discarded", "image", "dicom_id", "subject_id", "image_size_x",
              "image_size_y", *REFLACX_LABELS, "Support devices", "Other"]
    def meta(rid, discarded, did, subj, study, certs, split="train"):
        return [rid, split, discarded, f"physionet.org/files/mimic-cxr/2.0.0/files/p{subj[:2]}/p{subj}/s{study}/{did}.dcm",
                did, subj, 400, 300, *[certs.get(c, 0) for c in REFLACX_LABELS], "True", "some text"]
    write_csv(main / "metadata_phase_3.csv", header, [
        meta("P300R000001", "False", "r1", "12000001", "52000001",
             {"Enlarged cardiac silhouette": 5, "Lung nodule or mass": 2, "Pulmonary edema": 4}),
        meta("P300R000002", "True", "r1", "12000001", "52000001", {"Atelectasis": 3}),
        meta("P300R000003", "False", "r9", "12000009", "52000009", {}, split="test"),  # image missing
    ])
    write_image(mimic_path(mimic_root, "12000001", "52000001", "r1"), w=200, h=150, seed=3)
    ell_header = ["xmin", "ymin", "xmax", "ymax", "certainty", *REFLACX_LABELS, "Support devices"]
    def ell(x0, y0, x1, y1, cert, label):
        return [x0, y0, x1, y1, cert, *[str(c == label) for c in REFLACX_LABELS], "False"]
    write_csv(main / "P300R000001" / "anomaly_location_ellipses.csv", ell_header, [
        ell(200, 100, 300, 200, 5, "Enlarged cardiac silhouette"),
        ell(10, 10, 50, 50, 2, "Lung nodule or mass"),           # below min certainty: skipped
        ell(350, 250, 900, 800, 4, "Pulmonary edema"),          # outside the 400x300 image
    ])
    def fix(t0, t1, x, y, ang=40):
        return [t0, t1, x, y, 1.0, 0.5, 1.0, ang, ang, 0, 0, 400, 300, 0, 0, 1920, 1080]
    write_csv(main / "P300R000001" / "fixations.csv", REFLACX_FIX, [fix(0.0, 0.5, 250, 150), fix(0.5, 0.7, 100, 50)])
    write_csv(main / "P300R000002" / "anomaly_location_ellipses.csv", ell_header,
              [ell(20, 20, 120, 120, 3, "Atelectasis")])
    write_csv(main / "P300R000003" / "fixations.csv", REFLACX_FIX, [fix(0.0, 0.5, 250, 150)])
    write_csv(main / "P300R000003" / "anomaly_location_ellipses.csv", ell_header, [ell(1, 1, 5, 5, 5, "Atelectasis")])
    write_csv(main / "P999R999999" / "fixations.csv", REFLACX_FIX, [fix(0.0, 0.5, 250, 150)])  # orphan
