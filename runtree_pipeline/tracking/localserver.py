"""An `mlflow server` (or `mlflow ui`) on a free loopback port, for tests, benchmarks and demos.

`--workers 1` avoids the ~40 ms delayed-ACK stall of the default multi-worker uvicorn (uvicorn#3149); the default
form is what users run, so benchmarks keep it. The job runner (~7 processes) is off: nothing here needs it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalMlflowServer:
    """Start, stop and start again on the same port and store (to test riding out an outage)."""

    def __init__(
        self,
        root: Path,
        *,
        backend_uri: str | None = None,
        command: str = "server",
        workers: int | None = 1,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.backend_uri = backend_uri or f"sqlite:///{self.root / 'server.db'}"
        self.command = command
        self.workers = workers
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> LocalMlflowServer:
        args = [sys.executable, "-m", "mlflow", self.command, "--backend-store-uri", self.backend_uri]
        if self.command == "server":
            args += ["--artifacts-destination", str(self.root / "artifacts")]
        if self.workers:
            args += ["--workers", str(self.workers)]
        args += ["--host", "127.0.0.1", "--port", str(self.port)]
        env = {**(self.env if self.env is not None else os.environ), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.root / "server.log", "a") as log:
            self.proc = subprocess.Popen(args, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log_text = (self.root / "server.log").read_text()[-2000:]
                raise RuntimeError(f"mlflow {self.command} did not start: {log_text}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> LocalMlflowServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
