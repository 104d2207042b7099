"""The ranking experiment's reduced version runs end to end (slow: 6 to 9 minutes on the shared 2-core machine)."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_reduced_request_experiment_writes_rows_table_and_figure(tmp_path):
    from PIL import Image

    work, fig, table = tmp_path / "w", tmp_path / "req.png", tmp_path / "req.md"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    p = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "bench_request_strategies.py"), "--reduced",
                        "--work", str(work), "--figure", str(fig), "--table", str(table)],
                       env=env, capture_output=True, text=True, timeout=1200, cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((work / "request_strategies.json").read_text())
    rows = res["rows"]
    names = ["random", "uncertainty", "uncertainty+div", "shift", "shift+div"]
    # 2 seeds x 2 budgets x 5 strategies, one shared stage 1 per seed
    assert len(rows) == 20 and sorted({r["strategy"] for r in rows}) == sorted(names)
    for seed in (0, 1):
        assert len({r["stage1"] for r in rows if r["seed"] == seed}) == 1
    for r in rows:   # every strategy gets exactly the budget
        assert r["n_annotated"] == round(r["fraction"] * r["n_train"])
        assert 0.0 <= r["stage2"] <= 1.0 and r["gain"] == pytest.approx(r["stage2"] - r["stage1"])
    # the paired difference is the mean of per-seed differences from random
    e = next(e for e in res["summary"] if e["strategy"] == "uncertainty" and e["fraction"] == 0.1)
    g = {r["seed"]: r["gain"] for r in rows if r["fraction"] == 0.1 and r["strategy"] == "uncertainty"}
    b = {r["seed"]: r["gain"] for r in rows if r["fraction"] == 0.1 and r["strategy"] == "random"}
    assert e["vs_random"]["gain"] == pytest.approx(sum(g[s] - b[s] for s in (0, 1)) / 2)
    assert e["vs_random"]["ci_half"] is not None and e["vs_random"]["seeds"] == 2
    text = table.read_text()
    assert text.count("\n| yes |") == 10 and "(baseline)" in text and "95% CI" in text
    with Image.open(fig) as im:
        assert im.format == "PNG" and im.size[0] > 300
