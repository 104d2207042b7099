"""Label Studio both ways: the annotation requests as a project, its JSON export back as NIH boxes.

    python -m cxr_tfp.annotate labelstudio export --requests REQ_DIR --out PROJECT_DIR
    python -m cxr_tfp.annotate labelstudio push   --project PROJECT_DIR --url URL --token TOKEN
    python -m cxr_tfp.annotate labelstudio import --export EXPORT.json --raw-root RAW

``export`` reads ``REQ_DIR/requests.csv`` and ``requests.json`` (written by ``annotate requests``) and
writes, through staging, a Label Studio project folder::

    PROJECT_DIR/labeling_config.xml   one RectangleLabels label per finding of the model's vocabulary
    PROJECT_DIR/tasks.json            one task per requested image: the image URL, rank, reason, the
                                      model's probabilities, and a pre-annotation ("predictions") from
                                      the suggested box, so the radiologist corrects rather than starts
    PROJECT_DIR/project.json          title, raw root, the local-files storage to connect, counts

The image is served by Label Studio's local-files storage rooted at the raw folder: the task's URL
is ``/data/local-files/?d=<path relative to LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT>`` (start the
server with ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and that document root; ``push`` or the
UI connects a local-files storage over each span folder so the server may serve its images). Nothing leaves
the hospital's folder: the tasks hold the image's path inside it, the rank, the reason and the
model's numbers; no patient identifier beyond the file name the folder already holds.

``push`` creates the project on a running server through its REST API (config, tasks with their
predictions, local-files storage), for scripts and the tests; the UI's "Create project" does the same.

``import`` reads a Label Studio JSON export (Export -> JSON). For each task it takes the latest
annotation that was not cancelled; each ``rectanglelabels`` result (``x, y, width, height`` in
percent of the image, ``rotation`` 0) becomes a pixel box ``[x, y, w, h]`` in the original image's
pixels, in NIH's ``BBox_List_2017.csv`` format. The boxes go into the NEXT span of the raw folder
(``RAW/<latest + 1>/``, or today's date for dated spans): a complete dataset in NIH's layout, the
latest span's images (hard links where the file system allows, else copies) and label tables,
with ``BBox_List_2017.csv`` = the latest span's boxes plus the new ones. The span is staged and
swapped in whole; an existing span is never overwritten. The pipeline's ExampleGen builds the
latest span, so its next run trains stage 2 with the new boxes.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from cxr_tfp import labels as L
from cxr_tfp.cli import RuntimeFailure, UsageError, cli_main
from cxr_tfp.datasets.nih import BBOX_TABLE, index_images
from cxr_tfp.staging import OutputLock, make_staging, recover, swap_in

REQUESTS_CSV = "requests.csv"
REQUESTS_JSON = "requests.json"
CONFIG_XML = "labeling_config.xml"
TASKS_JSON = "tasks.json"
PROJECT_JSON = "project.json"
IMPORT_JSON = "labelstudio_import.json"    # provenance written into the new span (counts, sha256)
BBOX_HEADER = ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"]
LOCAL_FILES_URL = "/data/local-files/?d="
FROM_NAME, TO_NAME = "findings", "image"   # the config's control and object tag names
ROTATION_TOLERANCE = 1e-6                  # degrees; NIH boxes are axis-aligned
PIXEL_DECIMALS = 2                         # pixel boxes are written to 1/100 pixel
PERCENT_DECIMALS = 6                       # pre-annotations: 1e-6 % of 1024 px is 1e-5 px
FIXED_COLUMNS = ("rank", "image", "strategy", "score", "reason", "width", "height", "suggest_finding",
                 "suggest_x", "suggest_y", "suggest_w", "suggest_h")
# NIH's box table spells this finding its own way (the adapter harmonises it back).
NIH_BOX_SPELLING = {"Infiltration": "Infiltrate"}
# A colour per label (Tableau 20), so neighbouring findings are told apart on the image.
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
           "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5")
_DATE_SPAN = re.compile(r"^\d{4}-\d{2}-\d{2}$")


# ------------------------------------------------------------------------------ percent <-> pixels
def pixels_to_percent(box: Sequence[float], width: int, height: int) -> Dict[str, float]:
    """A pixel box ``[x, y, w, h]`` on a ``width`` x ``height`` image -> Label Studio's percent value."""
    x, y, w, h = (float(v) for v in box)
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    r = PERCENT_DECIMALS
    return {"x": round(100.0 * x / width, r), "y": round(100.0 * y / height, r),
            "width": round(100.0 * w / width, r), "height": round(100.0 * h / height, r), "rotation": 0}


def percent_to_pixels(value: Dict[str, Any], width: int, height: int) -> Tuple[float, float, float, float]:
    """Label Studio's ``{x, y, width, height}`` (percent of the image) -> pixel ``(x, y, w, h)``.

    Clipped to the image (a box dragged past the edge ends at the edge), rounded to 1/100 pixel.
    Raises ``ValueError`` for a rotated box, a non-finite value or one that misses the image.
    """
    rot = float(value.get("rotation", 0) or 0)
    if abs(((rot + 180.0) % 360.0) - 180.0) > ROTATION_TOLERANCE:
        raise ValueError(f"rotation is {rot:g} degrees; NIH boxes are axis-aligned (draw without rotating)")
    try:
        px, py, pw, ph = (float(value[k]) for k in ("x", "y", "width", "height"))
    except KeyError as exc:
        raise ValueError(f"value has no {exc.args[0]!r}") from None
    except (TypeError, ValueError):
        raise ValueError("value x, y, width, height must be numbers") from None
    if not all(math.isfinite(v) for v in (px, py, pw, ph)):
        raise ValueError("value x, y, width, height must be finite")
    x0, y0 = px * width / 100.0, py * height / 100.0
    x1, y1 = x0 + pw * width / 100.0, y0 + ph * height / 100.0
    x0, x1 = sorted((min(max(x0, 0.0), width), min(max(x1, 0.0), width)))
    y0, y1 = sorted((min(max(y0, 0.0), height), min(max(y1, 0.0), height)))
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        raise ValueError(f"box {px:g},{py:g},{pw:g},{ph:g} (percent) has no area inside the image")
    d = PIXEL_DECIMALS
    return round(x0, d), round(y0, d), round(x1 - x0, d), round(y1 - y0, d)


# ----------------------------------------------------------------------------------- the requests
@dataclass
class Request:
    rank: int
    image: str                  # relative to the raw root, POSIX separators
    strategy: str
    score: float
    reason: str
    width: int
    height: int
    suggest_finding: str
    suggest_box: Optional[Tuple[float, float, float, float]]
    probs: Dict[str, float]
    uncert: Dict[str, float]


def _num(text: str, where: str, kind=float):
    try:
        v = kind(float(text)) if kind is int else float(text)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(v):
        raise UsageError(f"{where}: {text!r} is not a finite number")
    return v


def read_requests(folder: Path) -> Tuple[Dict[str, Any], List[Request]]:
    """``requests.json`` and the rows of ``requests.csv`` (the contract of ``annotate requests``)."""
    meta_path, csv_path = folder / REQUESTS_JSON, folder / REQUESTS_CSV
    for p in (meta_path, csv_path):
        if not p.is_file():
            raise UsageError(f"{p} not found: --requests must be the folder `annotate requests --out` wrote")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{meta_path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("findings"), list) or not meta["findings"]:
        raise UsageError(f"{meta_path}: field 'findings' must be a non-empty list of finding names")
    findings = []
    for name in meta["findings"]:
        try:
            findings.append(L.harmonise(str(name)))
        except KeyError:
            raise UsageError(f"{meta_path}: field 'findings': unknown finding {name!r}") from None
    meta["findings"] = findings
    with open(csv_path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise UsageError(f"{csv_path}: empty file (expected a header row)")
        missing = [c for c in FIXED_COLUMNS if c not in header]
        if missing:
            raise UsageError(f"{csv_path}: missing column {missing[0]!r}")
        col = {c: i for i, c in enumerate(header)}
        rows: List[Request] = []
        for line, f in enumerate(reader, start=2):
            if not any(x.strip() for x in f):
                continue
            if len(f) != len(header):
                raise UsageError(f"{csv_path}:{line}: {len(f)} fields, header has {len(header)}")
            g = lambda c: f[col[c]].strip()  # noqa: E731
            at = lambda c: f"{csv_path}:{line}: field {c!r}"  # noqa: E731
            image = g("image")
            if not image or image.startswith("/") or ".." in Path(image).parts or "\\" in image:
                raise UsageError(f"{at('image')}: {image!r} must be a path inside the raw root "
                                 "(relative, POSIX separators)")
            width, height = _num(g("width"), at("width"), int), _num(g("height"), at("height"), int)
            if width <= 0 or height <= 0:
                raise UsageError(f"{at('width')}: image size {width}x{height} must be positive")
            box = None
            raw_box = [g(c) for c in ("suggest_x", "suggest_y", "suggest_w", "suggest_h")]
            if any(raw_box):
                box = tuple(_num(v, at(c)) for v, c in zip(raw_box, ("suggest_x", "suggest_y",
                                                                       "suggest_w", "suggest_h")))
            sf = g("suggest_finding")
            if sf:
                try:
                    sf = L.harmonise(sf)
                except KeyError:
                    raise UsageError(f"{at('suggest_finding')}: unknown finding {sf!r}") from None
            if box is not None and sf not in findings:
                raise UsageError(f"{at('suggest_finding')}: {sf!r} is not in requests.json's findings")
            probs = {n: _num(g(f"p_{n}"), at(f"p_{n}")) for n in findings if f"p_{n}" in col and g(f"p_{n}")}
            uncert = {n: _num(g(f"u_{n}"), at(f"u_{n}")) for n in findings if f"u_{n}" in col and g(f"u_{n}")}
            rows.append(Request(rank=_num(g("rank"), at("rank"), int), image=image, strategy=g("strategy"),
                                score=_num(g("score"), at("score")), reason=g("reason"), width=width,
                                height=height, suggest_finding=sf, suggest_box=box, probs=probs,
                                uncert=uncert))
    if not rows:
        raise UsageError(f"{csv_path}: no requested images")
    return meta, rows


# --------------------------------------------------------------------------------------- export
def labeling_config(findings: Sequence[str]) -> str:
    """The labeling config: the image, one rectangle label per finding, the model's numbers beside."""
    labels = "\n".join(f'    <Label value="{n}" background="{COLOURS[i % len(COLOURS)]}"/>'
                       for i, n in enumerate(findings))
    return f"""<View>
  <Header value="Request $rank: $reason"/>
  <View style="display: flex; gap: 1em">
    <View style="flex: 3">
      <Image name="{TO_NAME}" value="$image" zoom="true" zoomControl="true" rotateControl="false"/>
    </View>
    <View style="flex: 1">
      <Header value="Draw one box per finding you see (none if you see none)" size="5"/>
      <RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}" canRotate="false" strokeWidth="2">
{labels}
      </RectangleLabels>
      <Header value="Model (probability, uncertainty)" size="6"/>
      <Text name="model" value="$model_summary"/>
    </View>
  </View>
</View>
"""


def image_url(image: str, document_root_prefix: str = "") -> str:
    """The local-files URL of ``image`` (relative to the raw root) under the server's document root."""
    rel = "/".join(p for p in (document_root_prefix.strip("/"), image) if p)
    return LOCAL_FILES_URL + urllib.parse.quote(rel, safe="/")


def make_task(req: Request, findings: Sequence[str], model: str, prefix: str = "") -> Dict[str, Any]:
    """One Label Studio task: data for the page and the pre-annotation from the suggested box."""
    order = sorted(findings, key=lambda n: -req.probs.get(n, -1.0))
    summary = "\n".join(f"{n}: {req.probs[n]:.2f}" + (f" (+/- {req.uncert[n]:.2f})" if n in req.uncert else "")
                        for n in order if n in req.probs)
    data: Dict[str, Any] = {
        "image": image_url(req.image, prefix), "cxr_image": req.image, "rank": req.rank,
        "strategy": req.strategy, "score": req.score, "reason": req.reason, "width": req.width,
        "height": req.height, "suggest_finding": req.suggest_finding, "model_summary": summary or "-",
    }
    data.update({f"p_{n}": v for n, v in req.probs.items()})
    data.update({f"u_{n}": v for n, v in req.uncert.items()})
    task: Dict[str, Any] = {"data": data}
    if req.suggest_box is not None:
        value = pixels_to_percent(req.suggest_box, req.width, req.height)
        value["rectanglelabels"] = [req.suggest_finding]
        task["predictions"] = [{
            "model_version": model or "cxr-tfp",
            "score": req.probs.get(req.suggest_finding, 0.0),
            "result": [{"id": f"suggest{req.rank}", "from_name": FROM_NAME, "to_name": TO_NAME,
                        "type": "rectanglelabels", "original_width": req.width,
                        "original_height": req.height, "image_rotation": 0, "value": value}],
        }]
    return task


def export_project(requests_dir: Path, out: Path, title: Optional[str] = None,
                   document_root_prefix: str = "") -> Dict[str, Any]:
    """Write the Label Studio project folder for ``requests_dir`` into ``out`` (staged); returns project.json."""
    meta, rows = read_requests(requests_dir)
    findings = meta["findings"]
    model = str(meta.get("model") or "")
    tasks = [make_task(r, findings, Path(model).name if model else "", document_root_prefix)
             for r in sorted(rows, key=lambda r: r.rank)]
    raw_root = str(meta.get("raw_root") or "")
    project = {
        "title": title or f"cxr-tfp requests ({meta.get('strategy', '?')}, {len(rows)} images)",
        "description": (f"Requested by `annotate requests` ({meta.get('strategy', '?')}) from "
                        f"{meta.get('candidates', '?')} candidates; pre-annotations are the model's "
                        "saliency peak for its top finding: move, resize, relabel or delete them."),
        "raw_root": raw_root, "findings": list(findings), "tasks": len(tasks),
        "pre_annotated": sum(1 for t in tasks if "predictions" in t),
        "local_files": {"document_root": raw_root, "prefix": document_root_prefix,
                        "env": {"LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
                                "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": raw_root}},
        "requests": {k: meta.get(k) for k in ("strategy", "budget", "seed", "created", "candidates")},
    }
    with OutputLock(out, "labelstudio export"):
        recover(out)
        if out.exists() and any(p.name not in (CONFIG_XML, TASKS_JSON, PROJECT_JSON) for p in out.iterdir()):
            raise UsageError(f"refusing to replace {out}: it holds files a project export would not keep")
        stage = make_staging(out)
        (stage / CONFIG_XML).write_text(labeling_config(findings))
        (stage / TASKS_JSON).write_text(json.dumps(tasks, indent=1))
        (stage / PROJECT_JSON).write_text(json.dumps(project, indent=1))
        swap_in(stage, out)
    return project


# ----------------------------------------------------------------------------------------- push
class LabelStudioClient:
    """The few REST calls the round trip needs (stdlib only: runs in either environment)."""

    def __init__(self, url: str, token: str, timeout: float = 60.0):
        self.url, self.timeout = url.rstrip("/"), timeout
        self.headers = {"Content-Type": "application/json"}
        if token.count(".") == 2:
            # A personal access token (a JWT refresh token): exchange it for a short-lived access token.
            access = self.call("POST", "/api/token/refresh/", {"refresh": token})["access"]
            self.headers["Authorization"] = f"Bearer {access}"
        else:
            self.headers["Authorization"] = f"Token {token}"  # a legacy token

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=self.headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 (user's own server)
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise RuntimeFailure(f"Label Studio {method} {path}: HTTP {exc.code}: {' '.join(detail.split())}") from None
        except urllib.error.URLError as exc:
            raise RuntimeFailure(f"Label Studio at {self.url} does not answer ({exc.reason})") from None
        return json.loads(raw) if raw.strip() else None

    def create_project(self, title: str, description: str, config: str) -> int:
        return int(self.call("POST", "/api/projects", {"title": title, "description": description,
                                                        "label_config": config})["id"])

    def add_local_storage(self, project: int, path: str, title: str = "raw folder") -> int:
        body = {"project": project, "path": path, "title": title, "use_blob_urls": False,
                "regex_filter": ""}
        return int(self.call("POST", "/api/storages/localfiles", body)["id"])

    def import_tasks(self, project: int, tasks: List[Dict[str, Any]]) -> int:
        res = self.call("POST", f"/api/projects/{project}/import", tasks)
        return int(res.get("task_count", len(tasks))) if isinstance(res, dict) else len(tasks)

    def tasks(self, project: int) -> List[Dict[str, Any]]:
        res = self.call("GET", f"/api/tasks?project={project}&page_size=1000")
        return res["tasks"] if isinstance(res, dict) else res

    def annotate(self, task: int, result: List[Dict[str, Any]]) -> int:
        return int(self.call("POST", f"/api/tasks/{task}/annotations", {"result": result})["id"])

    def export(self, project: int) -> List[Dict[str, Any]]:
        return self.call("GET", f"/api/projects/{project}/export?exportType=JSON")


def push_project(project_dir: Path, url: str, token: str, storage_path: Optional[str] = None) -> Dict[str, Any]:
    """Create the exported project on a running server; returns ``{"project", "tasks", "storage"}``."""
    files = {n: project_dir / n for n in (CONFIG_XML, TASKS_JSON, PROJECT_JSON)}
    for p in files.values():
        if not p.is_file():
            raise UsageError(f"{p} not found: --project must be the folder `labelstudio export` wrote")
    project = json.loads(files[PROJECT_JSON].read_text())
    tasks = json.loads(files[TASKS_JSON].read_text())
    client = LabelStudioClient(url, token)
    pid = client.create_project(project["title"], project.get("description", ""),
                                files[CONFIG_XML].read_text())
    raw_root = project.get("raw_root") or ""
    if storage_path:
        paths = [storage_path]
    else:
        # One storage per span folder holding a requested image: Label Studio refuses a storage
        # path equal to its document root, which is the raw root in the simplest setup.
        spans = sorted({str(t["data"].get("cxr_image", "")).split("/")[0] for t in tasks
                        if "/" in str(t["data"].get("cxr_image", ""))})
        paths = [os.path.join(raw_root, s) for s in spans] if raw_root else []
    storages = [client.add_local_storage(pid, p, title=f"raw {Path(p).name}") for p in paths]
    n = client.import_tasks(pid, tasks)
    return {"project": pid, "tasks": n, "storages": storages, "storage_paths": paths,
            "url": f"{url.rstrip('/')}/projects/{pid}/data"}


# --------------------------------------------------------------------------------------- import
@dataclass
class Box:
    image: str          # file name (NIH's Image Index)
    finding: str        # harmonised name
    x: float
    y: float
    w: float
    h: float

    def row(self) -> List[str]:
        return [self.image, NIH_BOX_SPELLING.get(self.finding, self.finding)] + [
            f"{v:.{PIXEL_DECIMALS}f}".rstrip("0").rstrip(".") for v in (self.x, self.y, self.w, self.h)]


def _image_of(task: Dict[str, Any], where: str) -> str:
    data = task.get("data")
    if not isinstance(data, dict):
        raise UsageError(f"{where}: field 'data' missing (not a Label Studio JSON export?)")
    rel = data.get("cxr_image")
    if not rel:
        url = str(data.get("image") or "")
        if LOCAL_FILES_URL.split("?")[0] not in url:
            raise UsageError(f"{where}: field 'data.image' {url[:80]!r} is not a local-files URL and "
                             "'data.cxr_image' is missing (tasks must come from `labelstudio export`)")
        rel = urllib.parse.parse_qs(urllib.parse.urlparse(url).query).get("d", [""])[0]
    rel = str(rel)
    if not rel or rel.startswith("/") or ".." in rel.split("/"):
        raise UsageError(f"{where}: field 'data.cxr_image' {rel!r} must be a path inside the raw root")
    return rel


def _latest_annotation(task: Dict[str, Any], where: str) -> Optional[Dict[str, Any]]:
    anns = task.get("annotations", [])
    if not isinstance(anns, list):
        raise UsageError(f"{where}: field 'annotations' must be a list")
    done = [a for a in anns if isinstance(a, dict) and not a.get("was_cancelled")]
    if not done:
        return None
    return max(done, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0))


def read_export(path: Path, image_size) -> Tuple[List[Box], Dict[str, int]]:
    """Boxes from a Label Studio JSON export. ``image_size(rel) -> (w, h)`` gives each image's true size.

    Returns the boxes and counts (tasks, annotated, no_boxes, unannotated, boxes, other_results).
    """
    try:
        tasks = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not JSON ({exc.msg} at line {exc.lineno}); export the project as JSON") from None
    if not isinstance(tasks, list):
        raise UsageError(f"{path}: expected a JSON list of tasks (Label Studio's JSON export), got "
                         f"{type(tasks).__name__}")
    boxes: List[Box] = []
    counts = {"tasks": len(tasks), "annotated": 0, "no_boxes": 0, "unannotated": 0, "boxes": 0,
              "other_results": 0}
    for i, task in enumerate(tasks):
        where = f"{path}: task {task.get('id', i) if isinstance(task, dict) else i}"
        if not isinstance(task, dict):
            raise UsageError(f"{where}: not an object")
        rel = _image_of(task, where)
        ann = _latest_annotation(task, where)
        if ann is None:
            counts["unannotated"] += 1
            continue
        counts["annotated"] += 1
        result = ann.get("result", [])
        if not isinstance(result, list):
            raise UsageError(f"{where}: field 'annotations[].result' must be a list")
        width, height = image_size(rel)
        n = 0
        for j, item in enumerate(result):
            at = f"{where}: field 'result[{j}]"
            if not isinstance(item, dict):
                raise UsageError(f"{at}' is not an object")
            if item.get("type") != "rectanglelabels":
                counts["other_results"] += 1
                continue
            value = item.get("value")
            if not isinstance(value, dict):
                raise UsageError(f"{at}.value' missing")
            names = value.get("rectanglelabels")
            if not isinstance(names, list) or len(names) != 1:
                raise UsageError(f"{at}.value.rectanglelabels' must name exactly one finding, got {names!r}")
            try:
                finding = L.harmonise(str(names[0]))
            except KeyError:
                raise UsageError(f"{at}.value.rectanglelabels': unknown finding {names[0]!r}") from None
            for key, truth in (("original_width", width), ("original_height", height)):
                if item.get(key) in (None, ""):
                    continue
                try:
                    seen = int(float(item[key]))
                except (TypeError, ValueError):
                    raise UsageError(f"{at}.{key}' {item[key]!r} is not a number") from None
                if seen != truth:
                    raise UsageError(f"{at}.{key}' is {item[key]} but {rel} is {width}x{height} pixels "
                                     "(was the image replaced after export?)")
            try:
                x, y, w, h = percent_to_pixels(value, width, height)
            except ValueError as exc:
                raise UsageError(f"{at}.value': {exc}") from None
            boxes.append(Box(rel.rsplit("/", 1)[-1], finding, x, y, w, h))
            n += 1
        counts["boxes"] += n
        counts["no_boxes"] += int(n == 0)
    return boxes, counts


def span_folders(raw_root: Path) -> List[str]:
    """The raw root's span folders (numbered ``1/, 2/`` or dated ``YYYY-MM-DD/``), oldest first."""
    names = [p.name for p in raw_root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    numbered = sorted((n for n in names if n.isdigit()), key=int)
    dated = sorted(n for n in names if _DATE_SPAN.match(n))
    if numbered and dated:
        raise UsageError(f"{raw_root} mixes numbered and dated span folders ({numbered[-1]}/, {dated[-1]}/)")
    return numbered or dated


def next_span(spans: Sequence[str], today: Optional[_dt.date] = None) -> str:
    """The folder name after the latest span: ``N+1``, or today's date (UTC) for dated spans."""
    if spans and _DATE_SPAN.match(spans[-1]):
        day = (today or _dt.datetime.now(_dt.timezone.utc).date()).isoformat()
        if day <= spans[-1]:
            raise UsageError(f"the next dated span would be {day}/ but {spans[-1]}/ already exists; "
                             "pass --span NAME")
        return day
    return str(int(spans[-1]) + 1 if spans else 1)


def _link_tree(src: Path, dst: Path) -> int:
    """Hard-link (or copy, across file systems) every file of ``src`` into ``dst``; returns the count."""
    n = 0
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for f in sorted(filenames):
            s, d = Path(dirpath) / f, dst / rel / f
            if f == BBOX_TABLE and rel == Path("."):
                continue  # rewritten below, never linked (a link would edit the old span's file)
            try:
                os.link(s, d)
            except OSError:
                shutil.copy2(s, d)
            n += 1
    return n


def _read_bbox_rows(path: Path) -> List[List[str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return [r for r in rows[1:] if any(x.strip() for x in r)]


def _box_key(image: str, finding: str, xywh: Iterable[Any]) -> Tuple:
    try:
        finding = L.harmonise(finding)
    except KeyError:
        pass
    try:
        nums = tuple(round(float(v), PIXEL_DECIMALS) for v in xywh)
    except ValueError:
        nums = tuple(xywh)
    return (image.strip(), finding, nums)


def import_export(export: Path, raw_root: Path, span: Optional[str] = None,
                  from_span: Optional[str] = None) -> Dict[str, Any]:
    """Write the export's boxes into a new span of ``raw_root``; returns the summary (also in the span)."""
    if not export.is_file():
        raise UsageError(f"--export {export} not found")
    if not raw_root.is_dir():
        raise UsageError(f"--raw-root {raw_root} is not a folder")
    spans = span_folders(raw_root)
    if not spans:
        raise UsageError(f"{raw_root} has no span folders (1/, 2/, ... or YYYY-MM-DD/): the next span "
                         "needs the latest one to start from")
    source = from_span or spans[-1]
    if source not in spans:
        raise UsageError(f"--from-span {source}: no such span folder in {raw_root} (have {', '.join(spans)})")
    target = span or next_span(spans)
    if "/" in target or target.startswith(".") or not target:
        raise UsageError(f"--span {target!r} must be a plain folder name")
    out = raw_root / target
    if out.exists():
        raise UsageError(f"span {out} already exists; a span is never overwritten (pass another --span)")
    src = raw_root / source
    from PIL import Image  # lazy: only import needs image headers

    index = index_images(src)  # {file name: path}: the NIH adapter's key, wherever the image sits

    def image_size(rel: str) -> Tuple[int, int]:
        found = index.get(rel.rsplit("/", 1)[-1])
        if found is None:
            raise UsageError(f"{export}: image {rel!r} is not in span {source}/ of {raw_root} "
                             "(the new span starts from that one)")
        with Image.open(found) as im:  # reads the header only
            return int(im.width), int(im.height)

    sizes: Dict[str, Tuple[int, int]] = {}
    boxes, counts = read_export(export, lambda r: sizes.setdefault(r, image_size(r)))
    old_rows = _read_bbox_rows(src / BBOX_TABLE)
    have = {_box_key(r[0], r[1], r[2:6]) for r in old_rows if len(r) >= 6}
    new = [b for b in boxes if _box_key(b.image, b.finding, (b.x, b.y, b.w, b.h)) not in have]
    summary = {
        "export": export.name, "export_sha256": hashlib.sha256(export.read_bytes()).hexdigest(),
        "from_span": source, "span": target, **counts, "boxes_new": len(new),
        "boxes_already_present": len(boxes) - len(new), "boxes_before": len(old_rows),
        "boxes_after": len(old_rows) + len(new), "images_with_new_boxes": len({b.image for b in new}),
        "per_finding": {f: sum(1 for b in new if b.finding == f) for f in sorted({b.finding for b in new})},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    with OutputLock(out, "labelstudio import"):
        recover(out)
        if out.exists():
            raise UsageError(f"span {out} already exists; a span is never overwritten")
        stage = make_staging(out)
        summary["files_linked"] = _link_tree(src, stage)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(BBOX_HEADER)
        w.writerows(old_rows)
        w.writerows(b.row() for b in new)
        (stage / BBOX_TABLE).write_text(buf.getvalue())
        (stage / IMPORT_JSON).write_text(json.dumps(summary, indent=1))
        swap_in(stage, out)
    return summary


# ------------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cxr_tfp.annotate labelstudio",
                                description="Annotation requests -> a Label Studio project; its JSON "
                                            "export -> NIH boxes in the next span of the raw folder.")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="requests folder -> Label Studio project folder")
    e.add_argument("--requests", required=True, type=Path, help="folder with requests.csv/json")
    e.add_argument("--out", required=True, type=Path, help="project folder to write (staged)")
    e.add_argument("--title", help="project title (default: from the requests)")
    e.add_argument("--document-root-prefix", default="",
                   help="the raw root's path under LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT when that "
                        "root is a parent of the raw root (default: they are the same folder)")
    s = sub.add_parser("push", help="create the exported project on a running Label Studio (REST API)")
    s.add_argument("--project", required=True, type=Path, help="folder written by `labelstudio export`")
    s.add_argument("--url", default=os.environ.get("LABEL_STUDIO_URL", "http://127.0.0.1:8080"))
    s.add_argument("--token", default=os.environ.get("LABEL_STUDIO_API_KEY"),
                   help="API token (Account & Settings; default $LABEL_STUDIO_API_KEY)")
    s.add_argument("--storage-path", help="local-files storage path (default: one per span folder of "
                                         "the requested images, RAW_ROOT/1 ...)")
    i = sub.add_parser("import", help="Label Studio JSON export -> boxes in the next span")
    i.add_argument("--export", required=True, type=Path, help="the project's JSON export")
    i.add_argument("--raw-root", required=True, type=Path, help="the raw folder with span sub-folders")
    i.add_argument("--span", help="name of the new span folder (default: latest + 1, or today if dated)")
    i.add_argument("--from-span", help="the span the new one starts from (default: the latest)")
    i.add_argument("--dataset", default="nih", choices=["nih"],
                   help="box table format of the raw folder (NIH BBox_List_2017.csv)")
    return p


@cli_main
def main(argv: Optional[List[str]] = None) -> int:
    """``labelstudio {export,push,import}``; one-line errors, exit 2 for bad input."""
    args = _parser().parse_args(argv)
    if args.command == "export":
        proj = export_project(args.requests, args.out, args.title, args.document_root_prefix)
        print(f"wrote {args.out}: {proj['tasks']} tasks ({proj['pre_annotated']} pre-annotated), "
              f"{len(proj['findings'])} labels; serve images with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true "
              f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={proj['raw_root'] or 'RAW_ROOT'}")
    elif args.command == "push":
        if not args.token:
            raise UsageError("--token (or LABEL_STUDIO_API_KEY) is required")
        res = push_project(args.project, args.url, args.token, args.storage_path)
        print(f"project {res['project']}: {res['tasks']} tasks imported, images served from "
              f"{', '.join(res['storage_paths']) or 'no local-files storage'}; label at {res['url']}")
    else:
        s = import_export(args.export, args.raw_root, args.span, args.from_span)
        print(f"span {args.raw_root / s['span']}: {s['boxes_new']} new boxes on {s['images_with_new_boxes']} "
              f"images ({s['annotated']} of {s['tasks']} tasks annotated, {s['no_boxes']} with no box, "
              f"{s['boxes_already_present']} already present); {s['boxes_after']} boxes in {BBOX_TABLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
