"""Hostile and malformed torch checkpoints (`--weights torchxrayvision:FILE`): every one ends in one
line naming the file, saying it is not a readable checkpoint, exit 2; checkpoints that describe more
than they hold are refused before anything is materialised (peak RSS measured in a fresh process)."""
import json
import os
import subprocess
import sys

import pytest

from cxr_tfp import cli
from cxr_tfp.weights import WeightsError, check_weights_spec
from cxr_tfp.weights.torch_file import MAX_BYTES_ENV, CheckpointFormatError, load_checkpoint
from tests.faults.hostile import (FIXTURE_TXRV, checkpoint_bombs, malformed_checkpoints,
                                  zip_bomb_checkpoint)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write(tmp_path, cases):
    paths = {}
    for name, data in cases.items():
        p = tmp_path / f"{name}.pt"
        p.write_bytes(data)
        paths[name] = str(p)
    return paths


def test_23_malformed_checkpoints_are_one_named_line_exit_2(tmp_path):
    paths = _write(tmp_path, malformed_checkpoints())
    assert len(paths) == 23
    for name, p in paths.items():
        with pytest.raises(WeightsError) as err:
            check_weights_spec("torchxrayvision:" + p)
        msg = cli.one_line(err.value)
        assert msg == str(err.value), name                     # already one line
        assert msg.startswith(f"weights: checkpoint {p}: not a readable checkpoint ("), (name, msg)
        assert cli.exit_code(err.value) == 2, name


def test_real_checkpoints_still_load_and_a_folder_is_named(tmp_path):
    for name in ("model_zip.pt", "model_legacy.pt", "state_zip.pt", "state_legacy.pt"):
        check_weights_spec("torchxrayvision:" + os.path.join(FIXTURE_TXRV, name))
    with pytest.raises(WeightsError, match=r"not found: .* \(a folder\)"):
        check_weights_spec(f"torchxrayvision:{tmp_path}")
    # under a ceiling smaller than its storages, a real checkpoint is refused (the ceiling is honoured)
    with pytest.raises(CheckpointFormatError, match=r"state_zip.pt: not a readable checkpoint \(storage .* above "
                                                      r"the ceiling of 10,000"):
        load_checkpoint(os.path.join(FIXTURE_TXRV, "state_zip.pt"), max_bytes=10_000)


_PEAK = r'''
import json, resource, sys
from cxr_tfp.weights.torch_file import CheckpointFormatError, load_checkpoint
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {}
for p in sys.argv[1:]:
    try:
        load_checkpoint(p)
        out[p] = "loaded"
    except CheckpointFormatError as exc:
        out[p] = str(exc)
out["growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps(out))
'''


def test_checkpoints_that_describe_more_than_they_hold_are_refused_before_materialising(tmp_path):
    cases = dict(checkpoint_bombs())                      # 8 GiB / 512 MiB / 16 MB from 4 KB of storage
    cases["zip_bomb"] = zip_bomb_checkpoint(64 << 20)      # 64 MiB of zeros deflated to ~64 KB
    cases["over_ceiling"] = checkpoint_bombs(2 << 20, 1)["many_views"]   # 2 MiB stored, ceiling 1 MB
    paths = _write(tmp_path, cases)
    env = dict(os.environ, **{MAX_BYTES_ENV: "1000000"}, PYTHONPATH=REPO)
    res = subprocess.run([sys.executable, "-c", _PEAK, *paths.values()], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    reasons = {"stride_repeat": "its strides repeat the storage", "overlapping_rows": "its strides repeat",
               "many_views": "views repeat their storages", "zip_bomb": "67,108,864 bytes",
               "over_ceiling": "above the ceiling of 1,000,000"}
    for name, p in paths.items():
        assert out[p].startswith(f"checkpoint {p}: not a readable checkpoint ("), (name, out[p])
        assert reasons[name] in out[p], (name, out[p])
    # the 2 MiB storage is read before it is refused; nothing near the announced gigabytes
    assert out["growth_mb"] < 40, out["growth_mb"]


def test_zip_member_lying_about_its_size_is_refused_without_inflating(tmp_path):
    """A deflated member whose header claims 1 KB: zipfile stops at the claimed size (CRC fails)."""
    import zipfile

    data = zip_bomb_checkpoint(32 << 20)
    p = tmp_path / "liar.pt"
    p.write_bytes(data)
    with zipfile.ZipFile(p) as zf:
        info = zf.getinfo("archive/data/0")
    # patch the declared sizes (local header and central directory) to 1 KB
    raw = bytearray(data)
    real = info.file_size.to_bytes(4, "little")
    assert raw.count(real) == 2
    raw = raw.replace(real, (1024).to_bytes(4, "little"))
    p.write_bytes(bytes(raw))
    with pytest.raises(CheckpointFormatError, match=r"liar.pt: not a readable checkpoint \("):
        load_checkpoint(str(p))


@pytest.mark.slow  # starts the train CLI (TensorFlow import, ~15 s)
def test_train_cli_names_a_bad_checkpoint_before_reading_data(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(malformed_checkpoints()["zip_memo_missing"])
    res = subprocess.run([sys.executable, "-m", "cxr_tfp.train", "--data", str(tmp_path / "nothing"),
                          "--out", str(tmp_path / "run"), "--backbone", "densenet_tiny",
                          "--weights", f"torchxrayvision:{bad}"],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 2, res.stderr[-2000:]
    assert lines == [f"error: weights: checkpoint {bad}: not a readable checkpoint "
                     f"(UnpicklingError: Memo value not found at index 5)"]
