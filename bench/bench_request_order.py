"""How fairly one server process serves concurrent `GET /groups` requests: a figure the machine's load cannot move.

Calls the app in-process (ASGI, no sockets, no wrk) with `--clients` clients that each send their next request
as soon as the last is answered — one of `serve --workers 2`'s processes under bench_api.py's 50 clients sees
25 — and counts, for each request, how many other requests completed while it was in flight. Served in
arrival order that is about `clients - 1` for every request; a request passed over by the ones arriving after
it (a connection pool that lets newcomers barge in, a connection opened inside one request) shows up in the
p99 and max of that count however fast or loaded the machine is. Wall-clock latencies and the event loop's
CPU per request are printed too, for what they are worth on a shared machine.

    python bench/bench_request_order.py --clients 25 --seconds 8
    python bench/bench_request_order.py --database postgresql     # PostgreSQL from the pgserver wheel
    python bench/bench_request_order.py --code /tmp/baseline     # an older checkout, for before/after

Results are recorded in docs/benchmarks.md (issue 3).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ADMIN_EMAIL = "bench-admin@example.com"
PASSWORD = "bench-password-123"


def percentiles(values: list[float], *fractions: float) -> list[float]:
    ordered = sorted(values)
    return [ordered[min(len(ordered) - 1, int(len(ordered) * f))] for f in fractions]


async def measure(clients: int, seconds: float) -> dict[str, Any]:
    import httpx

    from privategpt.app import create_app
    from privategpt.config import load_settings

    app = create_app(load_settings())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench/api/v1") as client:

            async def login(email: str) -> dict[str, str]:
                answer = await client.post("/login", json={"email": email, "password": PASSWORD})
                return {"Authorization": f"Bearer {answer.json()['data']['token']}"}

            admin = await login(ADMIN_EMAIL)
            groups = [f"group-{i:02d}" for i in range(20)]
            for name in groups:
                await client.post("/groups", json={"groupName": name}, headers=admin)
            user = {"email": "user@example.com", "name": "User", "password": PASSWORD, "groups": groups[:5]}
            await client.post("/users", json=user, headers=admin)
            headers = await login("user@example.com")

            completed = 0
            latencies: list[float] = []
            passed_by: list[float] = []
            stop_at = 0.0

            async def one_client(record: bool) -> None:
                nonlocal completed
                while time.perf_counter() < stop_at:
                    started, seen = time.perf_counter(), completed
                    answer = await client.get("/groups", headers=headers)
                    assert answer.status_code == 200, answer.text
                    completed += 1
                    if record:
                        latencies.append((time.perf_counter() - started) * 1e3)
                        passed_by.append(completed - seen - 1)

            stop_at = time.perf_counter() + 2  # warm-up: pools filled, caches built
            await asyncio.gather(*(one_client(False) for _ in range(clients)))
            cpu, wall = time.thread_time(), time.perf_counter()
            stop_at = wall + seconds
            await asyncio.gather(*(one_client(True) for _ in range(clients)))
            cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    return {
        "requests": len(latencies),
        "req_per_s": len(latencies) / wall,
        "loop_cpu_ms_per_request": cpu * 1e3 / len(latencies),
        "latency_ms_p50_p90_p99_max": percentiles(latencies, 0.5, 0.9, 0.99, 1.0),
        "served_meanwhile_p50_p90_p99_max": percentiles(passed_by, 0.5, 0.9, 0.99, 1.0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=25)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--code", type=Path, help="import the server from this checkout instead")
    parser.add_argument("--pool-size", type=int, help="PGPT_DB_POOL_SIZE for the run")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()
    if args.code is not None:
        sys.path.insert(0, str(args.code.resolve()))
    with tempfile.TemporaryDirectory(prefix="pgpt-order-") as workdir:
        for key in [k for k in os.environ if k.startswith("PGPT_")]:
            del os.environ[key]
        os.environ.update(
            PGPT_DATA_DIR=str(Path(workdir) / "data"),
            PGPT_ADMIN_EMAIL=ADMIN_EMAIL,
            PGPT_ADMIN_PASSWORD=PASSWORD,
            PGPT_EMBEDDING_BACKEND="none",
            PGPT_LOG_LEVEL="warning",
        )
        if args.pool_size is not None:
            os.environ["PGPT_DB_POOL_SIZE"] = str(args.pool_size)
        postgres = None
        if args.database == "postgresql":
            import pgserver

            postgres = pgserver.get_server(str(Path(workdir) / "pg"), cleanup_mode="stop")
            postgres.psql('CREATE DATABASE "bench";')
            os.environ["PGPT_DATABASE_URL"] = f"postgresql://postgres@/bench?host={Path(workdir) / 'pg'}"
        try:
            result = asyncio.run(measure(args.clients, args.seconds))
        finally:
            if postgres is not None:
                postgres.cleanup()
    code = args.code or "this checkout"
    print(f"{code}: {args.database}, clients={args.clients}, load={os.getloadavg()[0]:.1f}")
    for key, value in result.items():
        shown = [round(v, 1) for v in value] if isinstance(value, list) else round(value, 2)
        print(f"  {key}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
