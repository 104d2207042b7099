"""A real Label Studio server on loopback for the tests marked ``label_studio``.

It runs from its own environment (``.venv-ls``, built by ``scripts/install_label_studio.sh``; its
pins clash with the TFX stack), on 127.0.0.1 and a free port, with a temporary data folder (SQLite),
an admin user and API token created non-interactively by ``label-studio start``, local-files
serving rooted at a temporary folder, and telemetry off. A missing ``.venv-ls`` fails (it is not a
skip): ``make test-label-studio`` builds it first. The server is stopped (its process group) at the
end of the session.
"""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LS_VENV = Path(os.environ.get("LS_VENV", REPO / ".venv-ls"))
START_TIMEOUT_S = float(os.environ.get("LS_START_TIMEOUT_S", "420"))  # first start runs the migrations


@dataclass
class LabelStudioServer:
    url: str
    token: str
    email: str
    password: str
    document_root: Path
    python: Path
    log: Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as r:  # noqa: S310 (loopback)
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory) -> LabelStudioServer:
    exe = LS_VENV / "bin" / "label-studio"
    if not exe.is_file():
        pytest.fail(f"{exe} not found: run `make test-label-studio` (or bash scripts/install_label_studio.sh)")
    base = tmp_path_factory.mktemp("label_studio")
    docroot, data = base / "files", base / "data"
    docroot.mkdir()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = LabelStudioServer(url=url, token=secrets.token_hex(20), email="radiologist@example.org",
                               password=secrets.token_urlsafe(12), document_root=docroot,
                               python=LS_VENV / "bin" / "python", log=base / "server.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "LABEL_STUDIO"))}
    env.update({
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(docroot),
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        # The --user-token given at start is a legacy token: new organisations refuse those unless
        # this is set when the organisation is created (personal access tokens need a browser).
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        # Loopback only: no error reporting, analytics or version check leave the machine.
        "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "", "COLLECT_ANALYTICS": "false",
        "LATEST_VERSION_CHECK": "false",
    })
    cmd = [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
           "--host", url, "--data-dir", str(data), "--username", server.email,
           "--password", server.password, "--user-token", server.token]
    with open(server.log, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=base,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _up(url):
            if proc.poll() is not None:
                pytest.fail(f"label-studio exited ({proc.returncode}): {server.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"label-studio not up after {START_TIMEOUT_S:.0f}s: {server.log.read_text()[-2000:]}")
            time.sleep(2)
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
