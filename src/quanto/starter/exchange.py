"""The local paper exchange as a detached process (`python -m quanto.execution.paper_exchange`).

`ensure_exchange(port)` starts one on 127.0.0.1:`port` unless something already answers its health
check there, `stop_exchange(port)` stops it, `exchange_status(port)` reports on it. The process lives
in its own session (it outlives the command that started it); its pid file and log are under the
state folder ($QUANTO_HOME, default .quanto): `exchange-<port>.pid`, `logs/exchange-<port>.log`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from quanto.starter.server import DevServer

HOST = "127.0.0.1"
START_WAIT_S = 15.0


def _state_dir() -> Path:
    return Path(os.environ.get("QUANTO_HOME", ".quanto"))


def health(port: int, timeout_s: float = 1.0) -> dict | None:
    """The exchange's health answer on `port`, or None when nothing (or something else) answers."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/_quanto/health", timeout=timeout_s) as r:
            answer = json.loads(r.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return answer if isinstance(answer, dict) and answer.get("ok") is True else None


@dataclass
class ExchangeProcess(DevServer):
    """The exchange's detached process on `port`. The dev server's process handling applies as it
    is (pid file, SIGTERM then SIGKILL on stop); the command, the pid and log files and the health
    check are the exchange's."""

    port: int = 8765
    ui_port: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / f"exchange-{self.port}.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "logs" / f"exchange-{self.port}.log"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "quanto.execution.paper_exchange",
            "--host",
            self.ip,
            "--port",
            str(self.port),
        ]

    def pid(self) -> int | None:
        """The exchange's pid: from the pid file, else from its health answer (one started elsewhere)."""
        return super().pid() or (health(self.port) or {}).get("pid")

    def start(self, wait_s: float = START_WAIT_S) -> subprocess.Popen:
        """Start the exchange detached and wait until it answers its health check."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "ab")  # noqa: SIM115 — owned by the child
        proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid_file.write_text(str(proc.pid))
        # Reap the child when it exits: a zombie still answers kill(pid, 0), so a stop from this
        # same process would wait out its whole grace period.
        threading.Thread(target=proc.wait, name=f"exchange-{self.port}-reaper", daemon=True).start()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = self.log_file.read_text(errors="replace").strip().splitlines()[-3:]
                self.pid_file.unlink(missing_ok=True)
                raise RuntimeError(
                    f"the paper exchange on port {self.port} exited with code {proc.returncode}: "
                    f"{' | '.join(tail)} (log: {self.log_file})"
                )
            if health(self.port) is not None:
                return proc
            time.sleep(0.1)
        proc.kill()
        self.pid_file.unlink(missing_ok=True)
        raise TimeoutError(
            f"the paper exchange on port {self.port} not healthy after {wait_s:.0f}s (log: {self.log_file})"
        )


def ensure_exchange(port: int) -> str:
    """The base URL of the exchange on 127.0.0.1:`port`, started detached when none answers there."""
    process = ExchangeProcess(state_dir=_state_dir(), port=port)
    if health(port) is None:
        process.start()
    return process.url


def stop_exchange(port: int) -> bool:
    """Stop the exchange on `port`; True when one was running."""
    process = ExchangeProcess(state_dir=_state_dir(), port=port)
    stopped = process.stop()
    process.pid_file.unlink(missing_ok=True)
    return stopped


def exchange_status(port: int) -> dict:
    """Whether an exchange answers on `port`: running, url, pid, accounts, log file."""
    process = ExchangeProcess(state_dir=_state_dir(), port=port)
    answer = health(port)
    return {
        "running": answer is not None,
        "url": process.url,
        "port": port,
        "pid": answer.get("pid") if answer else None,
        "accounts": answer.get("accounts") if answer else None,
        "log": str(process.log_file),
    }
