"""Every CLI: one line and exit 2 for a user error, one line and exit 1 for a runtime failure, no traceback
unless --debug / CXR_TFP_DEBUG asks for it."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cxr_tfp import cli

REPO = Path(__file__).resolve().parents[2]


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("exc,code", [
    (ValueError("bad value"), 2),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x"), 2),
    (PermissionError(errno.EACCES, "Permission denied", "/ro/out"), 2),
    (OSError(errno.EROFS, "Read-only file system", "/ro"), 2),
    (OSError(errno.ENOSPC, "No space left on device", "/full"), 1),
    (OSError(errno.EFBIG, "File too large", "/big"), 1),
    (RuntimeError("boom\nsecond line"), 1),
    (KeyError("x"), 1),
    (cli.UsageError("fix it"), 2),
])
def test_exit_codes_and_one_line(exc, code, capsys):
    def main(argv):
        raise exc

    assert cli.run(main, []) == code
    line = one_error_line(capsys.readouterr().err)
    assert "\n" not in line and len(line) < 450


def test_traceback_only_with_debug(capsys, monkeypatch):
    def main(argv):
        assert "--debug" not in argv  # removed before the command parses its arguments
        raise RuntimeError("boom")

    assert cli.run(main, ["--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    assert cli.run(main, []) == 1
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv(cli.DEBUG_ENV, "0")
    assert cli.run(main, []) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_argparse_errors_keep_exit_2(capsys):
    from cxr_tfp.records.build import main

    assert main(["--dataset", "nope"]) == 2
    assert main(["--help"]) == 0
    assert "--debug (every command)" in capsys.readouterr().out


def test_every_cli_main_is_wrapped():
    import importlib

    for mod in ("cxr_tfp.records.build", "cxr_tfp.train", "cxr_tfp.evaluate", "cxr_tfp.client",
                "cxr_tfp.export", "serving.standin", "pipeline.demo", "pipeline.lineage",
                "serving.render_models_config"):
        assert hasattr(importlib.import_module(mod).main, "unwrapped"), mod
    for runner in ("pipeline/local_runner.py", "pipeline/kubeflow_v2_runner.py"):
        assert "cxr_tfp.cli import run" in (REPO / runner).read_text(), runner


def test_evaluate_errors_are_one_line(tmp_path, capsys):
    from cxr_tfp import evaluate

    assert evaluate.main(["--model", str(tmp_path / "none.keras"), "--data", str(tmp_path),
                          "--out", str(tmp_path / "r")]) in (1, 2)
    one_error_line(capsys.readouterr().err)
    assert evaluate.main(["--model", "m", "--data", "d", "--out", "o", "--referral", "x"]) == 2
    one_error_line(capsys.readouterr().err)


def _unprivileged(cmd):
    """Run cmd so that file permissions apply even as root (drop the DAC override capabilities)."""
    if os.geteuid() == 0:
        return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"] + cmd
    return cmd


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    from cxr_tfp.datasets.synthetic import generate

    return generate(tmp_path_factory.mktemp("cli") / "root", n_patients=3, image_size=32, seed=2)


@pytest.mark.parametrize("where", ["parent", "out"])
def test_read_only_output_is_one_line_exit_2_and_nothing_lost(where, tiny_root, tmp_path):
    ro = tmp_path / "ro"
    out = ro / "records"
    out.mkdir(parents=True)
    (out / "summary.json").write_text('{"status": "ok"}')
    before = (out / "summary.json").read_bytes()
    os.chmod(ro if where == "parent" else out, 0o555)
    try:
        env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
        p = subprocess.run(_unprivileged([sys.executable, "-m", "cxr_tfp.records.build", "--dataset", "synthetic",
                                          "--root", str(tiny_root), "--out", str(out if where == "parent"
                                                                                 else out / "inner"),
                                          "--image-size", "16", "--workers", "1", "--quiet"]),
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    finally:
        os.chmod(ro, 0o755)
        os.chmod(out, 0o755)
    line = one_error_line(p.stderr)
    assert p.returncode == 2, p.stderr
    assert "not writable" in line or "permission denied" in line.lower()
    assert (out / "summary.json").read_bytes() == before


def test_bad_label_table_encoding_names_file_line_column(tiny_root, tmp_path, capsys):
    from cxr_tfp.records.build import main

    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    table = root / "Data_Entry_2017.csv"
    lines = table.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b",", b",Caf\xe9 ", 1)
    table.write_bytes(b"\n".join(lines))
    rc = main(["--dataset", "nih", "--root", str(root), "--out", str(tmp_path / "o"), "--image-size", "16",
               "--workers", "1", "--quiet"])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2
    assert "Data_Entry_2017.csv: line 4, column" in line and "0xe9 is not UTF-8" in line
    assert not (tmp_path / "o").exists()


def test_renamed_required_column_is_an_error(tiny_root, tmp_path, capsys):
    from cxr_tfp.records.build import main

    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    table = root / "Data_Entry_2017.csv"
    table.write_text(table.read_text().replace("View Position", "ViewPos", 1))
    rc = main(["--dataset", "nih", "--root", str(root), "--out", str(tmp_path / "o"), "--image-size", "16",
               "--workers", "1", "--quiet"])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and "missing required column 'View Position'" in line and "'ViewPos'" in line


def test_malformed_csv_row_names_file_and_line(tmp_path):
    from cxr_tfp.datasets.base import DatasetLayoutError, read_dict_csv

    p = tmp_path / "t.csv"
    p.write_text("a,b\n1,2\n3,4,5\n6\n")
    rows = list(read_dict_csv(p))
    assert rows[1] == (3, {"__malformed__": "3 fields, header has 2 (column 3 is extra)"})
    assert rows[2] == (4, {"__malformed__": "1 fields, header has 2 (column 2 is missing)"})
    p.write_text("a,b\n1,2\n3," + "x" * 200_000 + "\n")
    with pytest.raises(DatasetLayoutError, match=r"t.csv: line 3: field larger than field limit"):
        list(read_dict_csv(p))


def test_client_bad_labels_or_thresholds_file_is_one_line(tmp_path, capsys):
    from cxr_tfp import client
    from tests.faults import hostile

    img = tmp_path / "a.png"
    img.write_bytes(hostile.small_png(32))
    (tmp_path / "t.json").write_text("{not json")
    (tmp_path / "l.txt").write_bytes(b"Mass\n\xff\xfe\n")
    assert client.main(["--thresholds", str(tmp_path / "t.json"), str(img)]) == 2
    assert "t.json: not valid JSON (line 1" in one_error_line(capsys.readouterr().err)
    assert client.main(["--labels", str(tmp_path / "l.txt"), str(img)]) == 2
    assert "l.txt: not UTF-8" in one_error_line(capsys.readouterr().err)
    assert client.main(["--thresholds", str(tmp_path / "nope.json"), str(img)]) == 2
    one_error_line(capsys.readouterr().err)
