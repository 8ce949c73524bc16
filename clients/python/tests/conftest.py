"""A real `chassis serve` for the client's tests.

The binary and the example guests come from the cargo build:
``CHASSIS_BIN`` (default ``target/debug/chassis``) and ``CHASSIS_GUESTS``
(default ``target/guests/wasm32-wasip2/release``), both relative to the
repository root. ``cargo xtask test`` sets them.
"""

import os
import pathlib
import socket
import subprocess
import tempfile
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]


def _path(var: str, default: str) -> pathlib.Path:
    return pathlib.Path(os.environ.get(var) or ROOT / default)


@pytest.fixture(scope="session")
def guests() -> pathlib.Path:
    path = _path("CHASSIS_GUESTS", "target/guests/wasm32-wasip2/release")
    assert (path / "hello.wasm").is_file(), f"no built guests in {path}: run cargo xtask test"
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


METRICS_PORT = _free_port()


@pytest.fixture(scope="session")
def metrics_url(server) -> str:
    """The served host's metrics port (`/metrics`, `/health`)."""
    return f"http://127.0.0.1:{METRICS_PORT}"


@pytest.fixture(scope="session")
def server():
    """Starts `chassis serve` on a free loopback port; yields its address."""
    binary = _path("CHASSIS_BIN", "target/debug/chassis")
    assert binary.is_file(), f"no chassis binary at {binary}: run cargo xtask test"
    with tempfile.TemporaryDirectory() as tmp:
        config = pathlib.Path(tmp) / "chassis.yaml"
        config.write_text(
            "chassis:\n"
            f"  metrics:\n    enabled: true\n    port: {METRICS_PORT}\n"
            "  logging:\n    level: WARN\n    format: json\n    output: stderr\n"
            "  server:\n    listen: 127.0.0.1:0\n"
            f"  policies_dir: {ROOT / 'policies'}\n"
            f"  data_dir: {pathlib.Path(tmp) / 'data'}\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "CHASSIS_"))}
        proc = subprocess.Popen(
            [str(binary), "serve", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        # Drain the server's log so a full pipe never blocks it.
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        line = proc.stdout.readline()
        assert line.startswith("chassis listening on "), f"unexpected first line {line!r}"
        addr = line.strip().removeprefix("chassis listening on ")
        try:
            yield addr
        finally:
            proc.terminate()
            assert proc.wait(timeout=30) == 0, "chassis serve did not stop cleanly on SIGTERM"
