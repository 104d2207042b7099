"""``python -m cxr_tfp.annotate requests``: the table contract, staging, privacy, and a real NIH layout."""
import json
import os
import shutil
import stat

import numpy as np
import pandas as pd
import pytest

from cxr_tfp.annotate import requests as R
from cxr_tfp.annotate.scoring import box_from_map

NIH_N, NIH_ANNOTATED = 24, 12


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained tiny model over the NIH vocabulary, saved as a training output folder."""
    from cxr_tfp.config import TrainConfig
    from cxr_tfp.model import build_model

    out = tmp_path_factory.mktemp("run")
    model = build_model(TrainConfig(backbone="tiny", image_size=32, findings="nih", latent_dim=4, hidden_dim=8,
                                    num_samples=4, seed=5))
    model.save(str(out / "model.keras"))
    return out


@pytest.fixture(scope="module")
def nih_spans(shared_data, tmp_path_factory):
    """A hospital raw folder with two numbered spans; the latest (2) is the dataset."""
    raw = tmp_path_factory.mktemp("raw")
    shutil.copytree(shared_data / "nih-sample", raw / "1")
    shutil.copytree(shared_data / "nih-sample", raw / "2")
    return raw


def test_the_columns_follow_the_contract_in_the_models_finding_order():
    cols = R.columns(("Effusion", "Mass"))
    assert cols == ["rank", "image", "strategy", "score", "reason", "width", "height", "suggest_finding",
                    "suggest_x", "suggest_y", "suggest_w", "suggest_h", "p_Effusion", "u_Effusion", "p_Mass", "u_Mass"]


def test_the_latest_numbered_span_is_the_dataset(tmp_path):
    assert R.dataset_root(tmp_path) == tmp_path
    for name in ("1", "2", "10", "notes"):
        (tmp_path / name).mkdir()
    assert R.dataset_root(tmp_path) == tmp_path / "10"


def test_records_and_raw_folders_are_told_apart(tmp_path):
    (tmp_path / "raw" / "images").mkdir(parents=True)
    (tmp_path / "rec" / "train").mkdir(parents=True)
    (tmp_path / "rec" / "train" / "train-00000-of-00001.tfrecord.gz").write_bytes(b"")
    assert not R.is_records_folder(tmp_path / "raw") and R.is_records_folder(tmp_path / "rec")


def test_a_box_is_drawn_around_the_peak_region_and_none_on_a_flat_map():
    heat = np.zeros((32, 32))
    heat[10:14, 20:26] = 1.0
    heat[2:4, 2:4] = 0.4
    assert box_from_map(heat) == (20, 10, 6, 4)
    assert box_from_map(np.full((32, 32), 0.7)) is None and box_from_map(np.zeros((32, 32))) is None
    broad = np.ones((32, 32))
    broad[16, 16] = 2.0
    broad[:2, :2] = 0.0
    assert box_from_map(broad) is None, "a region over half the image points nowhere"


def _table(raw_root="/data/raw"):
    df = pd.DataFrame([{"rank": 1, "image": "1/images/a.png", "strategy": "random", "score": 0.5,
                        "reason": "drawn at random (seed 0)", "width": 1024, "height": 1024,
                        "suggest_finding": "Mass", "suggest_x": 1, "suggest_y": 2, "suggest_w": 3, "suggest_h": 4,
                        "p_Mass": 0.7, "u_Mass": 0.1}], columns=R.columns(("Mass",)))
    df.attrs.update({"raw_root": raw_root, "dataset": "nih", "model": "run", "strategy": "random", "budget": 1,
                     "seed": 0, "findings": ["Mass"], "created": "2026-01-01T00:00:00+00:00", "candidates": 9})
    return df


def test_the_table_is_written_through_staging_owner_only_and_a_foreign_folder_is_refused(tmp_path):
    out = tmp_path / "req"
    R.write_requests(_table(), out)
    assert sorted(p.name for p in out.iterdir()) == ["requests.csv", "requests.json"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert not any(p.name.startswith(".req") for p in tmp_path.iterdir() if p.name != ".req.lock")
    back = pd.read_csv(out / "requests.csv")
    assert list(back.columns) == R.columns(("Mass",)) and back.loc[0, "image"] == "1/images/a.png"
    meta = json.loads((out / "requests.json").read_text())
    assert set(meta) >= {"raw_root", "dataset", "model", "strategy", "budget", "seed", "findings", "created",
                         "candidates"} and meta["candidates"] == 9
    R.write_requests(_table(), out)   # a rerun replaces its own output
    (out / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="refusing to replace .* notes.txt"):
        R.write_requests(_table(), out)


@pytest.mark.slow
def test_requests_from_a_nih_raw_folder_name_images_as_the_hospital_knows_them(tiny_model, nih_spans):
    df = R.request_annotations(str(tiny_model), nih_spans, 5, strategy="uncertainty", dataset="nih",
                               diversity=0.5)
    assert list(df.columns) == R.columns(df.attrs["findings"]) and len(df) == 5
    assert df["rank"].tolist() == [1, 2, 3, 4, 5] and (df["strategy"] == "uncertainty").all()
    assert all(name.startswith("2/images/") and name.endswith(".png") for name in df["image"])
    assert df.attrs["candidates"] == NIH_N - NIH_ANNOTATED and df.attrs["annotated"] == NIH_ANNOTATED
    # only unannotated images: none of the requested images has a row in BBox_List
    boxed = set(pd.read_csv(nih_spans / "2" / "BBox_List_2017.csv")["Image Index"])
    assert not boxed & {os.path.basename(n) for n in df["image"]}
    assert (df["width"] > 0).all() and (df["height"] > 0).all()
    assert (df["score"].diff().dropna() <= 1e-9).all() or df.attrs["diversity"] > 0
    p = df[[f"p_{f}" for f in df.attrs["findings"]]].to_numpy()
    assert ((p >= 0) & (p <= 1)).all()
    assert (df["suggest_finding"] == [df.attrs["findings"][i] for i in p.argmax(1)]).all()
    has_box = df["suggest_x"].notna()
    assert ((df.loc[has_box, "suggest_x"] + df.loc[has_box, "suggest_w"]) <= df.loc[has_box, "width"]).all()


@pytest.mark.slow
def test_the_command_writes_the_table_and_logs_no_image_names(tiny_model, nih_spans, tmp_path, capsys):
    out = tmp_path / "req"
    code = R.main(["--model", str(tiny_model), "--data", str(nih_spans), "--dataset", "nih", "--budget", "3",
                   "--strategy", "shift", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    df = pd.read_csv(out / "requests.csv")
    assert len(df) == 3 and (df["strategy"] == "shift").all() and df["reason"].str.contains("nats").all()
    meta = json.loads((out / "requests.json").read_text())
    assert meta["raw_root"] == str(nih_spans) and meta["budget"] == 3 and meta["candidates"] == 12
    logs = captured.err + captured.out.replace(str(out / "requests.csv"), "")
    assert ".png" not in logs and "images/" not in logs
    assert "12 unannotated candidates, 12 annotated images" in captured.err


@pytest.mark.parametrize("args,message", [
    (["--strategy", "entropy"], "unknown strategy 'entropy'; choose one of random, uncertainty, shift"),
    (["--budget", "0"], "--budget must be at least 1"),
    (["--dataset", None], "is a raw folder: give --dataset"),
])
def test_bad_options_are_one_line_usage_errors(shared_data, tmp_path, capsys, args, message):
    """Refused before the model is loaded (there is none at --model) or anything is written."""
    argv = {"--model": str(tmp_path / "no-model"), "--data": str(shared_data / "nih-sample"), "--dataset": "nih",
            "--budget": "2",
            "--out": str(tmp_path / "o")}
    for k, v in zip(args[::2], args[1::2]):
        if v is None:
            argv.pop(k)
        else:
            argv[k] = v
    code = R.main([x for kv in argv.items() for x in kv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_requests_from_records_by_example_key_and_by_path_with_the_raw_root(shared_data, tmp_path):
    """A tiny model trained (1 epoch) on the NIH sample's records; rows named by key, then by path."""
    from cxr_tfp.config import TrainConfig, load_config
    from cxr_tfp.records.build import build
    from cxr_tfp.train import train_model

    raw = shared_data / "nih-sample"
    build("nih", raw, tmp_path / "rec", image_size=32, workers=1, progress=False)
    cfg = load_config(os.path.join(os.path.dirname(R.__file__), "..", "..", "configs", "smoke.yaml")).to_dict()
    cfg.update(image_size=32, findings="nih", stage1_epochs=1, stage2_epochs=0, num_samples=4, verbose=0)
    train_model(TrainConfig.from_dict(cfg), str(tmp_path / "rec" / "train"), str(tmp_path / "rec" / "eval"),
                str(tmp_path / "run"))
    keyed = R.request_annotations(str(tmp_path / "run"), tmp_path / "rec", 4, strategy="uncertainty",
                                  splits=("train", "eval", "test"))
    assert keyed.attrs["candidates"] == NIH_N - NIH_ANNOTATED and len(keyed) == 4
    assert all(len(k) == 24 and all(c in "0123456789abcdef" for c in k) for k in keyed["image"])
    assert keyed["width"].isna().all() and keyed["suggest_x"].isna().all() and keyed.attrs["raw_root"] is None
    named = R.request_annotations(str(tmp_path / "run"), tmp_path / "rec", 4, strategy="uncertainty",
                                  splits=("train", "eval", "test"), raw_root=str(raw))
    assert all(n.startswith("images/") and n.endswith(".png") for n in named["image"])
    np.testing.assert_allclose(named["score"], keyed["score"])   # the same ranking, only named
    from PIL import Image

    for _, row in named.iterrows():   # the image file's own pixels (the frame BBox_List uses)
        with Image.open(raw / row["image"]) as im:
            assert (row["width"], row["height"]) == im.size
    with pytest.raises(Exception, match="not the build's"):
        R.request_annotations(str(tmp_path / "run"), tmp_path / "rec", 4, splits=("train", "eval", "test"),
                              raw_root=str(raw), salt="another salt")
