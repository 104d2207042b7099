"""The annotation-gain sweep's reduced version runs end to end (slow: ~2 minutes on 2 cores)."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_reduced_gain_sweep_writes_rows_table_and_figure(tmp_path):
    from PIL import Image

    work, fig, table = tmp_path / "w", tmp_path / "sweep.png", tmp_path / "sweep.md"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    p = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "bench_gain_sweep.py"), "--reduced",
                        "--work", str(work), "--figure", str(fig), "--table", str(table)],
                       env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((work / "gain_sweep.json").read_text())
    rows = res["rows"]
    # 2 seeds x 2 fractions x 1 beta x 2 arms, one shared stage 1 per seed
    assert len(rows) == 8 and {r["arm"] for r in rows} == {"informative", "control"}
    for seed in (0, 1):
        assert len({r["stage1"] for r in rows if r["seed"] == seed}) == 1
    # the same images annotated in both arms, more at the larger fraction
    n = {(r["fraction"], r["arm"]): r["n_annotated"] for r in rows if r["seed"] == 0}
    assert n[(0.1, "informative")] == n[(0.1, "control")] < n[(0.5, "informative")]
    for r in rows:
        assert 0.0 <= r["stage2"] <= 1.0 and r["gain"] == pytest.approx(r["stage2"] - r["stage1"])
    e = res["summary"][0]
    assert e["informative"]["seeds"] == 2 and e["informative"]["ci_half"] is not None
    assert e["difference"]["gain"] == pytest.approx(e["informative"]["gain"] - e["control"]["gain"])
    text = table.read_text()
    assert text.count("\n| yes |") == 2 and "95% CI" in text
    with Image.open(fig) as im:
        assert im.format == "PNG" and im.size[0] > 300
