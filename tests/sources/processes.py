"""Real `privategpt serve` and `privategpt worker` processes, for tests that kill them with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.fixtures.servers import ADMIN_EMAIL, ADMIN_PASSWORD, free_port


class Process:
    """One CLI process; its output goes to a log file that failures quote."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, cwd: Path) -> None:
        self.log = log
        self._log_file = log.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "privategpt.cli", *args],
            env=env,
            cwd=cwd,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a crash or an OOM kill."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=30)
        self._log_file.close()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=30)
        self._log_file.close()


class Cluster:
    """Servers and workers sharing one database, all started from the command line."""

    def __init__(self, database_url: str, root: Path, **settings: str) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PGPT_")}
        env.update(
            {
                "PGPT_DATABASE_URL": database_url,
                "PGPT_DATA_DIR": str(root / "data"),
                "PGPT_ADMIN_EMAIL": ADMIN_EMAIL,
                "PGPT_ADMIN_PASSWORD": ADMIN_PASSWORD,
                "PGPT_ARGON2_TIME_COST": "1",
                "PGPT_ARGON2_MEMORY_KIB": "256",
                "PGPT_ARGON2_PARALLELISM": "1",
                "PGPT_LOG_LEVEL": "warning",
                "PGPT_EMBEDDING_BACKEND": "none",
                **{f"PGPT_{k.upper()}": v for k, v in settings.items()},
            }
        )
        self.env = env
        self.processes: list[Process] = []
        self._count = 0

    def _start(self, args: list[str], **settings: str) -> Process:
        self._count += 1
        env = {**self.env, **{f"PGPT_{k.upper()}": v for k, v in settings.items()}}
        process = Process(args, env, self.root / f"{args[0]}-{self._count}.log", self.root)
        self.processes.append(process)
        return process

    def serve(self, **settings: str) -> tuple[Process, str]:
        """Start `privategpt serve`; returns it and its base URL once /health answers."""
        port = free_port()
        process = self._start(["serve", "--port", str(port)], **settings)
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            if process.popen.poll() is not None:
                raise AssertionError(f"server exited with {process.popen.returncode}:\n{process.output()}")
            try:
                if httpx.get(base_url + "/health", timeout=2).status_code == 200:
                    return process, base_url
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server did not become healthy:\n{process.output()}")
            time.sleep(0.05)

    def worker(self, **settings: str) -> Process:
        return self._start(["worker"], **settings)

    def close(self) -> None:
        for process in self.processes:
            process.kill()
