"""Client behaviour that needs no model: server down, retries on UNAVAILABLE, deadlines."""
from __future__ import annotations

import threading
import time

import portpicker
import pytest

from cxr_tfp import client
from tests.serving.conftest import MODEL_NAME


def test_server_down_is_clear_after_retries(images, capsys):
    port = portpicker.pick_unused_port()
    with pytest.raises(client.ServingError) as ei:
        client.predict_files(f"127.0.0.1:{port}", [images["white"]], retries=2, timeout_s=2)
    assert ei.value.code == "UNAVAILABLE"
    assert f"cannot reach TF Serving at 127.0.0.1:{port}" in str(ei.value)
    assert "after 3 attempt(s)" in str(ei.value)
    assert client.main(["--server", f"127.0.0.1:{port}", "--retries", "0", images["white"]]) == 1
    assert "is the server running" in capsys.readouterr().err


def test_retry_on_unavailable_reaches_a_server_that_starts_late(images, tiny_base):
    from serving.standin import start_server

    port = portpicker.pick_unused_port()
    started = {}

    def late_start():
        time.sleep(0.6)
        started["srv"] = start_server(tiny_base, MODEL_NAME, port=port)

    t = threading.Thread(target=late_start)
    t.start()
    try:
        with client.PredictClient(f"127.0.0.1:{port}", retries=6, backoff_s=0.25,
                                  timeout_s=5) as c:
            out = c.predict_encoded([open(images["white"], "rb").read()])
        assert out["probabilities"].shape == (1, 3)
    finally:
        t.join()
        if "srv" in started:
            started["srv"].stop()


def test_deadline_exceeded_is_clear(grpc_server, images):
    _, address = grpc_server
    with client.PredictClient(address, timeout_s=1e-4, retries=0) as c:
        with pytest.raises(client.ServingError) as ei:
            c.predict_encoded([open(images["mid"], "rb").read()] * 8)
    assert ei.value.code == "DEADLINE_EXCEEDED"
    assert "raise --timeout" in str(ei.value)


def test_cli_reports_each_bad_file_and_classifies_the_rest(grpc_server, images, tmp_path, capsys):
    """One unreadable file no longer aborts the batch: each bad file gets its line, exit 2 at the end."""
    import json

    from tests.faults import hostile

    _, address = grpc_server
    (tmp_path / "garbage.png").write_bytes(hostile.garbage())
    (tmp_path / "bomb.png").write_bytes(hostile.png_header_only(20000, 20000))
    files = [str(tmp_path / "garbage.png"), images["white"], str(tmp_path / "bomb.png"),
             str(tmp_path / "missing.png"), images["black"]]
    rc = client.main(["--server", address, "--json"] + files)
    cap = capsys.readouterr()
    assert rc == 2
    assert [r["file"] for r in json.loads(cap.out)] == [images["white"], images["black"]]
    err = [ln for ln in cap.err.splitlines() if ln.startswith("error:")]
    assert len(err) == 4 and "garbage.png" in err[0] and "bomb.png: image is 20000x20000" in err[1]
    assert "missing.png" in err[2] and "3 of 5 file(s) could not be sent" in err[3]
    assert "Traceback" not in cap.err
