"""Throughput and latency of `GET /groups` and `POST /login` under concurrent clients.

Starts `privategpt serve` as a real server process (SQLite and/or PostgreSQL via pgserver), seeds groups and a
user, then drives it with wrk (a C load generator, so the client costs little of this machine's CPU):

    apt-get install -y wrk
    python bench/bench_api.py --databases sqlite,postgresql --connections 50 --duration 20 --think-ms 0,100

Each client sends its next request as soon as the last one is answered (`think 0`: the server saturated, so
latency = clients / throughput), or after a pause (`think 100`: 50 people each clicking ten times a second;
`think ~100`: the same pause drawn from 50..150 ms, so that the clients do not stay in step).
Prints a Markdown table; results are recorded in docs/benchmarks.md.

Before/after on this noisy shared machine: `--baseline DIR` (an older checkout, e.g. from
`git worktree add /tmp/baseline <commit>`) serves that code beside this one, and every measurement runs on
both, alternating, `--rounds` times; the table then has a row per version and round.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

ADMIN_EMAIL = "bench-admin@example.com"
ADMIN_PASSWORD = "bench-admin-password"
USER_PASSWORD = "bench-user-password"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def server(
    database: str, workdir: Path, workers: int, code: Path | None = None, settings: dict[str, str] | None = None
) -> Iterator[str]:
    """A `privategpt serve` process; `code`: the checkout to serve (default: the installed package);
    `settings`: PGPT_* variables for it (those of this environment are never passed on)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGPT_")}
    if code is not None:
        env["PYTHONPATH"] = str(code)
    env.update(
        PGPT_DATA_DIR=str(workdir / "data"),
        PGPT_ADMIN_EMAIL=ADMIN_EMAIL,
        PGPT_ADMIN_PASSWORD=ADMIN_PASSWORD,
        PGPT_LOG_LEVEL="warning",
    )
    env.update(settings or {})
    pg = None
    if database == "postgresql":
        import pgserver

        pg = pgserver.get_server(str(workdir / "pg"), cleanup_mode="stop")
        pg.psql('CREATE DATABASE "bench";')
        env["PGPT_DATABASE_URL"] = f"postgresql://postgres@/bench?host={workdir / 'pg'}"
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "privategpt.cli", "serve", "--port", str(port), "--workers", str(workers)],
        env=env,
        cwd=code,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("server did not start")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
        if pg is not None:
            pg.cleanup()


def seed(base: str) -> tuple[str, str]:
    """20 groups; a plain user in 5 of them. Returns (user email, user token)."""
    api = httpx.Client(base_url=base + "/api/v1", timeout=30)
    admin = api.post("/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}).json()["data"]["token"]
    auth = {"Authorization": f"Bearer {admin}"}
    for i in range(20):
        api.post("/groups", json={"groupName": f"group-{i:02d}"}, headers=auth).raise_for_status()
    email = "bench-user@example.com"
    api.post(
        "/users",
        json={
            "name": "Bench",
            "email": email,
            "password": USER_PASSWORD,
            "groups": [f"group-{i:02d}" for i in range(5)],
        },
        headers=auth,
    ).raise_for_status()
    token = api.post("/login", json={"email": email, "password": USER_PASSWORD}).json()["data"]["token"]
    return email, token


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def with_think_time(script: Path, think: str) -> Path:
    """`think`: "0" (none), "100" (every client pauses 100 ms: wrk's clients then stay in phase and arrive
    in bursts), "~100" (each pause drawn uniformly from 50..150 ms, so clients drift apart as people do)."""
    jittered = think.startswith("~")
    think_ms = int(think.lstrip("~"))
    if think_ms <= 0:
        return script
    paced = script.with_name(f"{script.stem}-think{'j' if jittered else ''}{think_ms}.lua")
    if jittered:
        body = (
            "local seeded = false\n"
            "function delay()\n"
            "  if not seeded then math.randomseed(os.time() + os.clock() * 1e6); seeded = true end\n"
            f"  return math.random({think_ms // 2}, {think_ms * 3 // 2})\n"
            "end\n"
        )
    else:
        body = f"function delay()\n  return {think_ms}\nend\n"
    paced.write_text(script.read_text() + body)
    return paced


def wrk(url: str, connections: int, duration: int, script: Path) -> dict[str, float]:
    threads = min(2, connections)
    # A login waits for argon2 behind the others; wrk's default 2 s timeout would drop it from the latencies.
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--timeout", "30s"]
    out = subprocess.run(
        [*command, "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": p50, "p99": p99, "non2xx": float(errors.group(1)) if errors else 0.0}


def scripts(workdir: Path, email: str, token: str) -> dict[str, tuple[str, Path]]:
    groups_script = workdir / "groups.lua"
    groups_script.write_text(f'wrk.method = "GET"\nwrk.headers["Authorization"] = "Bearer {token}"\n')
    login_script = workdir / "login.lua"
    body = json.dumps({"email": email, "password": USER_PASSWORD}).replace('"', '\\"')
    login_script.write_text(
        f'wrk.method = "POST"\nwrk.body = "{body}"\nwrk.headers["Content-Type"] = "application/json"\n'
    )
    return {"groups": ("/api/v1/groups", groups_script), "login": ("/api/v1/login", login_script)}


ENDPOINT_NAMES = {"groups": "GET /groups", "login": "POST /login"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--endpoints", default="groups,login", help="comma list of: groups, login")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument(
        "--think-ms",
        default="0,100,~100",
        help="pause of each client between requests, comma list; ~N: drawn uniformly from N/2..3N/2 ms",
    )
    parser.add_argument("--workers", type=int, default=1, help="server processes (privategpt serve --workers)")
    parser.add_argument("--baseline", type=Path, help="another checkout to measure alongside, alternating")
    parser.add_argument("--rounds", type=int, default=1, help="measurements of each kind (and version)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="seconds of the same load before each measurement, not counted (pools fill, first queries compile)",
    )
    args = parser.parse_args()
    thinks = [t.strip() for t in args.think_ms.split(",") if t.strip()]
    endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    if shutil.which("wrk") is None:
        print("wrk is required: apt-get install -y wrk", file=sys.stderr)
        return 2
    versions: list[tuple[str, Path | None]] = [("this", None)]
    if args.baseline is not None:
        versions.append(("baseline", args.baseline.resolve()))

    rows = []
    for database in args.databases.split(","):
        with tempfile.TemporaryDirectory(prefix="pgpt-bench-") as tmp, ExitStack() as stack:
            targets = {}
            for version, code in versions:
                workdir = Path(tmp) / version
                workdir.mkdir()
                base = stack.enter_context(server(database, workdir, args.workers, code))
                targets[version] = (base, scripts(workdir, *seed(base)))
            # Every GET /groups measurement before any login one: logins still queued for argon2 when wrk stops
            # would run on into the next measurement.
            for endpoint in endpoints:
                # Logins are argon2-bound (~8/s on 2 cores): only the closed loop says anything about them.
                for think in thinks if endpoint == "groups" else ["0"]:
                    for round_ in range(1, args.rounds + 1):
                        for version, _ in versions:
                            base, by_endpoint = targets[version]
                            path, script = by_endpoint[endpoint]
                            paced = with_think_time(script, think)
                            if args.warmup > 0:
                                wrk(base + path, args.connections, args.warmup, paced)
                            result = wrk(base + path, args.connections, args.duration, paced)
                            rows.append((version, round_, database, ENDPOINT_NAMES[endpoint], think, result))
                            print(
                                f"{version:8} {round_} {database:10} {endpoint:6} think={think} {result}",
                                file=sys.stderr,
                                flush=True,
                            )

    print(
        f"\nserver processes: {args.workers}\n\n"
        "| version | round | database | endpoint | clients | think ms | req/s | p50 ms | p99 ms | non-2xx |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    for version, round_, database, name, think, r in rows:
        print(
            f"| {version} | {round_} | {database} | {name} | {args.connections} | {think} | {r['rps']:.0f} "
            f"| {r['p50']:.1f} | {r['p99']:.1f} | {r['non2xx']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
