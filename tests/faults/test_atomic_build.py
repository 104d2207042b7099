"""Nothing lost: a failed, killed or concurrent build never touches the previous build.

Cheap in-process faults run by default; real ``kill -9`` of a build subprocess is marked slow.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxr_tfp import staging as S
from cxr_tfp.records import build as B
from cxr_tfp.datasets.synthetic import generate

REPO = Path(__file__).resolve().parents[2]


def snapshot(folder: Path) -> dict:
    """{relative path: sha256} of every file (the byte-for-byte identity of a build)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list:
    """Anything a run must not leave behind: staging, previous, lock files, Beam temp folders."""
    bad = [p.name for p in parent.iterdir() if p.name.startswith(".") and
           any(s in p.name for s in (".staging", ".previous", ".lock"))]
    bad += [str(p) for p in parent.rglob("beam-temp-*")]
    bad += [str(p) for p in parent.rglob(".work")]
    return bad


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("atomic") / "root", n_patients=6, image_size=32, seed=3)


@pytest.fixture(scope="module")
def first_build(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("first") / "records"
    B.build("synthetic", root, out, image_size=16, workers=1, progress=False)
    return out


@pytest.fixture()
def built(first_build, tmp_path):
    """A previous build in a fresh folder (a byte copy of one real build: builds cost seconds)."""
    import shutil

    out = tmp_path / "records"
    shutil.copytree(first_build, out)
    return out, snapshot(out)


def test_build_output_is_complete_and_owner_only(first_build):
    out, snap = first_build, snapshot(first_build)
    assert {"summary.json", "dead_letters.jsonl"} <= set(snap)
    assert any(k.startswith("train/") for k in snap)
    assert (out.stat().st_mode & 0o777) == 0o700
    assert all((out / k).stat().st_mode & 0o077 == 0 for k in snap)
    assert json.loads((out / "summary.json").read_text())["out"] == str(out)
    assert leftovers(out.parent) == []


def test_failed_rebuild_leaves_the_previous_build_byte_for_byte(built, root, monkeypatch, capsys):
    out, snap = built

    def disk_full(records, stage, *a, **k):
        (stage / "train" / "data-00000-of-00001.tfrecord.gz").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(stage / "train"))

    monkeypatch.setattr(B, "_run_beam", disk_full)
    with pytest.raises(OSError):
        B.build("synthetic", root, out, image_size=16, workers=1, progress=False)
    assert snapshot(out) == snap and leftovers(out.parent) == []
    # The CLI: one line, exit 1 (a runtime failure), no traceback.
    rc = B.main(["--dataset", "synthetic", "--root", str(root), "--out", str(out), "--image-size", "16",
                 "--workers", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and err.startswith("error: No space left on device")
    assert "Traceback" not in err and snapshot(out) == snap


def test_second_writer_is_refused_naming_the_holder(built, root, capsys):
    out, snap = built
    with S.OutputLock(out, "build"):
        with pytest.raises(S.OutputLockedError, match=f"pid {os.getpid()} on host"):
            B.build("synthetic", root, out, image_size=16, workers=1, progress=False)
        rc = B.main(["--dataset", "synthetic", "--root", str(root), "--out", str(out), "--image-size", "16",
                     "--workers", "1", "--quiet"])
        err = capsys.readouterr().err
        assert rc == 1 and err.count("\n") == 1 and "is being written by another build" in err
    assert snapshot(out) == snap


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    out = tmp_path / "o"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    S.lock_path(out).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename,
                                            "started": "2026-01-01T00:00:00Z"}))
    with S.OutputLock(out, "build") as lock:
        assert lock.took_over["pid"] == dead.pid
        assert json.loads(S.lock_path(out).read_text())["pid"] == os.getpid()
    assert "took over the stale lock" in capsys.readouterr().err
    assert not S.lock_path(out).exists()


def test_interrupted_swap_and_stale_staging_are_repaired(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "summary.json").write_text("old")
    # killed between the two renames of a swap: only .o.previous is left
    os.rename(out, S.previous_path(out))
    (S.staging_path(out) / "train" / "beam-temp-x").mkdir(parents=True)
    notes = S.recover(out)
    assert (out / "summary.json").read_text() == "old"
    assert not S.previous_path(out).exists() and not S.staging_path(out).exists()
    assert len(notes) == 2


def test_a_folder_that_is_not_a_build_is_never_replaced(root, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="refusing to replace .*thesis.tex"):
        B.build("synthetic", root, out, image_size=16, workers=1, progress=False)
    assert (out / "thesis.tex").read_text() == "precious" and leftovers(tmp_path) == []


def test_rebuild_replaces_and_cleans(built, root):
    out, snap = built
    s = B.build("synthetic", root, out, image_size=20, workers=1, progress=False)
    assert s["image_size"] == 20 and snapshot(out) != snap and leftovers(out.parent) == []


# --------------------------------------------------------------------------------------------- slow
def _spawn_build(root: Path, out: Path, n_workers: int = 1) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, "-m", "cxr_tfp.records.build", "--dataset", "synthetic", "--root",
                             str(root), "--out", str(out), "--image-size", "16", "--workers", str(n_workers),
                             "--quiet"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(pred, proc, timeout=240.0) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("point", ["locked", "beam", "written"])
def test_kill_9_during_a_rebuild(point, tmp_path_factory):
    """kill -9 when the lock is taken / while Beam runs / after the staging is complete (before the swap)."""
    base = tmp_path_factory.mktemp(f"kill-{point}")
    root = generate(base / "root", n_patients=40, image_size=48, seed=5)
    out = base / "records"
    B.build("synthetic", root, out, image_size=16, workers=1, progress=False)
    snap = snapshot(out)
    stage = S.staging_path(out)
    when = {"locked": lambda: S.lock_path(out).exists(),
            "beam": lambda: (stage / ".work").exists(),
            "written": lambda: any(stage.glob("train/data-*"))}[point]
    proc = _spawn_build(root, out)
    hit = _wait_for(when, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert hit, proc.stderr.read().decode()[-2000:]
    assert snapshot(out) == snap  # the previous build, byte for byte
    # the next run cleans the staging (Beam temp files included) and completes
    s = B.build("synthetic", root, out, image_size=16, workers=1, progress=False)
    assert s["status"] == "ok" and leftovers(out.parent) == []


@pytest.mark.slow
def test_two_concurrent_builds_one_wins_one_is_refused(root, tmp_path):
    out = tmp_path / "records"
    procs = [_spawn_build(root, out) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], outs
    err = [o[1].decode() for p, o in zip(procs, outs) if p.returncode == 1][0]
    assert "is being written by another build: pid" in err and err.strip().count("\n") == 0
    s = json.loads((out / "summary.json").read_text())
    files = {sp: sorted(p.name for p in (out / sp).glob("*.tfrecord.gz")) for sp in ("train", "eval", "test")}
    assert s["files"] == files and leftovers(tmp_path) == []


@pytest.mark.slow
def test_full_disk_fails_in_one_line_and_keeps_the_previous_build(root, first_build, tmp_path):
    """A file-size limit (RLIMIT_FSIZE) stands in for a full disk: writes fail with EFBIG mid-build."""
    import resource
    import shutil

    out = tmp_path / "records"
    shutil.copytree(first_build, out)
    snap = snapshot(out)
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    p = subprocess.run([sys.executable, "-m", "cxr_tfp.records.build", "--dataset", "synthetic", "--root", str(root),
                        "--out", str(out), "--image-size", "64", "--workers", "1", "--quiet"], cwd=REPO, env=env,
                       preexec_fn=small_files, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode == 1, p.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert "too large" in lines[0].lower() or "space" in lines[0].lower(), lines[0]
    assert snapshot(out) == snap
    # the next run (no limit) cleans what the failed one left and succeeds
    s = B.build("synthetic", root, out, image_size=16, workers=1, progress=False)
    assert s["status"] == "ok" and leftovers(out.parent) == []


def test_symlinked_out_is_written_where_it_points_and_kept(root, tmp_path):
    """--out a symlink to the real storage (dangling at first): the build writes into the target, the
    link stays a link, and a rebuild works (was: the link replaced by a folder, then every rebuild
    failing with 'Cannot call rmtree on a symbolic link' and leaving .out.staging behind)."""
    storage, links = tmp_path / "storage", tmp_path / "links"
    storage.mkdir()
    links.mkdir()
    link = links / "records"
    link.symlink_to(storage / "records")
    for size in (16, 20):
        s = B.build("synthetic", root, link, image_size=size, workers=1, progress=False)
        assert s["image_size"] == size
        assert link.is_symlink() and os.readlink(link) == str(storage / "records")
        assert json.loads((storage / "records" / "summary.json").read_text())["image_size"] == size
        assert leftovers(storage) == [] and leftovers(links) == []
    # one lock whichever path names the output; a loop is named
    assert S.OutputLock(link).path == S.OutputLock(storage / "records").path == storage / ".records.lock"
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(S.UsageError, match="symbolic link loop"):
        B.build("synthetic", root, loop, image_size=16, workers=1, progress=False)


def test_symlinked_training_out_and_export_keep_the_link(tmp_path):
    real = tmp_path / "disk" / "run"
    real.mkdir(parents=True)
    link = tmp_path / "run"
    link.symlink_to(real)
    with S.OutputLock(link, "training") as lock:
        assert lock.path == real.parent / ".run.lock"
        with pytest.raises(S.OutputLockedError):
            S.OutputLock(real, "training").acquire()
    # an export (staging + swap) into a symlinked saved_model folder
    target = tmp_path / "disk" / "sm"
    (link / "saved_model").symlink_to(target)
    for content in ("one", "two"):
        stage = S.make_staging(link / "saved_model")
        (stage / "saved_model.pb").write_text(content)
        S.swap_in(stage, link / "saved_model")
        assert (link / "saved_model").is_symlink() and (target / "saved_model.pb").read_text() == content
    assert leftovers(tmp_path / "disk") == [] and leftovers(real) == []
