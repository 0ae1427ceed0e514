"""The benchmark behind `make bench`: the service against a bare FastAPI endpoint.

Starts the service with uvicorn on SQLite (and on PostgreSQL + Redis when
--database-url / --redis-url are given), and ``bare_app.py`` with the same uvicorn
settings; drives both with wrk; writes one markdown table to reports/benchmark.md
with the performance budget's ratios (README, Performance):

- authenticated GET /api/users/me at >= 30% of the bare endpoint's throughput;
- login throughput >= 85% of (cores / bcrypt time per hash);
- GET /health p99 under 25 ms during a login storm;
- GET /api/users/me p99 under 50 ms during a 200-connection wrong-password flood,
  which itself gets no 5xx but 503 (with Retry-After);

and, with PostgreSQL, its two read ratios at >= 80% of SQLite's. The PostgreSQL run
uses a new schema of the given database, dropped afterwards.

The service runs with its defaults, except that the brute-force guard's
per-address limit is raised (a login storm from one address is exactly what it
stops) and logging is at WARNING (no per-request access line).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import httpx
import psycopg
from sqlalchemy import make_url

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
PASSWORD = "correct horse battery staple"
SECRET = "benchmark-secret-" + "b" * 32


@dataclass
class Result:
    """One wrk run."""

    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def wrk(
    name: str,
    url: str,
    *,
    seconds: int,
    connections: int,
    script: str | None = None,
    headers: dict[str, str] | None = None,
) -> Result:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for key, value in (headers or {}).items():
        command += ["-H", f"{key}: {value}"]
    if script:
        command += ["-s", str(HERE / script)]
    output = subprocess.run(
        [*command, url], capture_output=True, text=True, check=True, timeout=seconds + 60
    ).stdout
    if "50%" not in output:
        raise RuntimeError(f"wrk gave no latency distribution for {name}:\n{output}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE).group(1))
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return Result(name, rps, p50, p99, int(errors.group(1)) if errors else 0)


class Server:
    """A uvicorn process, started with the benchmark's common settings."""

    def __init__(self, target: str, cwd: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="bench-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                target,
                "--port",
                str(self.port),
                "--no-access-log",
                "--log-level",
                "warning",
                "--no-proxy-headers",
            ],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if (
                    httpx.get(
                        f"{self.url}/health" if target.startswith("app.") else f"{self.url}/me"
                    ).status_code
                    == 200
                ):
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError(f"{target} did not start: {Path(self.log.name).read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


@contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    """``url`` pointed at a new, empty schema of its database, dropped afterwards
    (runs never meet each other's users)."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield (
            make_url(url)
            .set(drivername="postgresql+psycopg", query={"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def bcrypt_seconds(rounds: int = 12, samples: int = 5) -> float:
    """Average time of one bcrypt hash at the service's default cost."""
    salt = bcrypt.gensalt(rounds)
    started = time.perf_counter()
    for _ in range(samples):
        bcrypt.hashpw(b"benchmark-password-prehash", salt)
    return (time.perf_counter() - started) / samples


def measure_service(label: str, env: dict[str, str], seconds: int) -> dict[str, Result]:
    data_dir = tempfile.mkdtemp(prefix="bench-data-")
    server = Server(
        "app.main:app",
        ROOT,
        {
            "DATA_DIR": data_dir,
            "JWT_SECRET_KEY": SECRET,
            "LOG_LEVEL": "WARNING",
            "AUTH_RATE_LIMIT_ADDRESS": "100000000 per 1 minute",
            **env,
        },
    )
    try:
        http = httpx.Client(base_url=server.url, timeout=30)
        for name in ("bench_reader", "bench_target", "bench_login"):
            http.post(
                "/api/auth/signup",
                json={"username": name, "email": f"{name}@example.com", "password": PASSWORD},
            ).raise_for_status()
        token = http.post(
            "/api/auth/login", data={"username": "bench_reader", "password": PASSWORD}
        ).json()["access_token"]
        target_token = http.post(
            "/api/auth/login", data={"username": "bench_target", "password": PASSWORD}
        ).json()["access_token"]
        target = http.get(
            "/api/users/me", headers={"Authorization": f"Bearer {target_token}"}
        ).json()["uuid"]
        auth = {"Authorization": f"Bearer {token}"}
        results = {
            "me": wrk(
                f"{label}: GET /api/users/me",
                f"{server.url}/api/users/me",
                seconds=seconds,
                connections=32,
                headers=auth,
            ),
            "profile": wrk(
                f"{label}: GET /api/user/{{uuid}}",
                f"{server.url}/api/user/{target}",
                seconds=seconds,
                connections=32,
                headers=auth,
            ),
            "login": wrk(
                f"{label}: POST /api/auth/login",
                f"{server.url}/api/auth/login",
                seconds=seconds,
                connections=8,
                script="login.lua",
            ),
            "signup": wrk(
                f"{label}: POST /api/auth/signup",
                f"{server.url}/api/auth/signup",
                seconds=seconds,
                connections=8,
                script="signup.lua",
            ),
        }
        storm = subprocess.Popen(
            [
                "wrk",
                "-t1",
                "-c8",
                f"-d{seconds + 4}s",
                "-s",
                str(HERE / "login.lua"),
                f"{server.url}/api/auth/login",
            ],
            stdout=subprocess.DEVNULL,
        )
        time.sleep(2)
        results["health"] = wrk(
            f"{label}: GET /health during a login storm",
            f"{server.url}/health",
            seconds=seconds,
            connections=2,
        )
        storm.wait(timeout=seconds + 60)
        results["flood"], results["flood_statuses"] = me_during_flood(
            label, server.url, auth, seconds
        )
        return results
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def me_during_flood(
    label: str, url: str, auth: dict[str, str], seconds: int
) -> tuple[Result, dict[int, int]]:
    """GET /api/users/me while 200 connections send wrong-password logins, and the
    flood's answers by status."""
    flood = subprocess.Popen(
        [
            "wrk",
            "-t2",
            "-c200",
            f"-d{seconds + 4}s",
            "-s",
            str(HERE / "flood.lua"),
            f"{url}/api/auth/login",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(2)
    result = wrk(
        f"{label}: GET /api/users/me during a 200-connection wrong-password flood",
        f"{url}/api/users/me",
        seconds=seconds,
        connections=2,
        headers=auth,
    )
    output, _ = flood.communicate(timeout=seconds + 60)
    statuses = {
        int(status): int(count)
        for status, count in re.findall(r"^status (\d+) (\d+)$", output, re.MULTILINE)
    }
    return result, statuses


def measure_budget(args: argparse.Namespace) -> tuple[list[str], list[tuple[str, str, str, bool]]]:
    """The performance budget's table and verdicts."""
    cores = os.cpu_count() or 1
    hash_seconds = bcrypt_seconds()
    bare_server = Server("bare_app:app", HERE, {})
    try:
        bare = wrk(
            "bare FastAPI endpoint, same JSON",
            f"{bare_server.url}/me",
            seconds=args.seconds,
            connections=32,
        )
    finally:
        bare_server.stop()

    runs = {"SQLite": measure_service("SQLite", {}, args.seconds)}
    if args.database_url:
        with fresh_schema(args.database_url) as database_url:
            env = {"DATABASE_URI": database_url}
            if args.redis_url:
                env["REDIS_URL"] = args.redis_url
            label = "PostgreSQL + Redis" if args.redis_url else "PostgreSQL"
            runs[label] = measure_service(label, env, args.seconds)

    login_ceiling = cores / hash_seconds
    lines = [
        "# Benchmark",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')} · {cores} cores · bcrypt cost 12: "
        f"{hash_seconds * 1000:.0f} ms per hash · wrk, {args.seconds} s per run",
        "",
        "| measurement | requests/s | p50 ms | p99 ms | non-2xx |",
        "|---|---:|---:|---:|---:|",
        f"| {bare.name} | {bare.rps:.0f} | {bare.p50_ms:.1f} | {bare.p99_ms:.1f} | {bare.errors} |",
    ]
    verdicts = []
    for label, results in runs.items():
        for result in results.values():
            if not isinstance(result, Result):
                continue
            lines.append(
                f"| {result.name} | {result.rps:.0f} | {result.p50_ms:.1f} | "
                f"{result.p99_ms:.1f} | {result.errors} |"
            )
        read_ratio = results["me"].rps / bare.rps
        profile_ratio = results["profile"].rps / bare.rps
        login_ratio = results["login"].rps / login_ceiling
        health_p99 = results["health"].p99_ms
        flood_p99 = results["flood"].p99_ms
        flood_statuses = results["flood_statuses"]
        server_errors = sum(
            count for status, count in flood_statuses.items() if status >= 500 and status != 503
        )
        lines.append(
            f"| {label}: the flood's answers | "
            + ", ".join(f"{status}: {count}" for status, count in sorted(flood_statuses.items()))
            + " | | | |"
        )
        verdicts += [
            (
                f"{label}: /api/users/me p99 during a wrong-password flood",
                f"{flood_p99:.1f} ms",
                "< 50 ms",
                flood_p99 < 50,
            ),
            (
                f"{label}: flood answers 5xx other than 503",
                str(server_errors),
                "0",
                server_errors == 0 and bool(flood_statuses),
            ),
            (
                f"{label}: GET /api/users/me / bare",
                f"{read_ratio:.0%}",
                ">= 30%",
                read_ratio >= 0.30,
            ),
            (
                f"{label}: GET /api/user/{{uuid}} / bare",
                f"{profile_ratio:.0%}",
                ">= 30%",
                profile_ratio >= 0.30,
            ),
            (
                f"{label}: login / (cores / bcrypt time)",
                f"{login_ratio:.0%}",
                ">= 85%",
                login_ratio >= 0.85,
            ),
            (
                f"{label}: /health p99 during a login storm",
                f"{health_p99:.1f} ms",
                "< 25 ms",
                health_p99 < 25,
            ),
        ]
    sqlite = runs["SQLite"]
    for label, results in list(runs.items())[1:]:
        # PostgreSQL's read ratios must not fall more than 20% below SQLite's.
        for key, path in (("me", "GET /api/users/me"), ("profile", "GET /api/user/{uuid}")):
            relative = results[key].rps / sqlite[key].rps
            verdicts.append(
                (
                    f"{label}: {path} ratio / SQLite's",
                    f"{relative:.0%}",
                    ">= 80%",
                    relative >= 0.80,
                )
            )
    if len(runs) == 1:
        lines += [
            "",
            "PostgreSQL + Redis not measured: set BENCH_DATABASE_URL and BENCH_REDIS_URL "
            "(make bench BENCH_DATABASE_URL=postgresql+psycopg://... BENCH_REDIS_URL=redis://...).",
        ]
    return lines, verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL"))
    parser.add_argument("--output", default=str(ROOT / "reports" / "benchmark.md"))
    parser.add_argument(
        "--growth-sizes",
        default=os.environ.get("BENCH_GROWTH_SIZES", "10000,100000,1000000"),
        help="user counts of the growth table (PostgreSQL only); empty to skip it",
    )
    parser.add_argument("--growth-only", action="store_true", help="measure only the growth table")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install wrk (make bench installs it as root)")
        return 2

    if args.growth_only:
        lines: list[str] = ["# Benchmark", ""]
        verdicts: list[tuple[str, str, str, bool]] = []
    else:
        lines, verdicts = measure_budget(args)
    if args.database_url and args.growth_sizes:
        from growth import measure_growth

        sizes = [int(size) for size in args.growth_sizes.split(",")]
        with fresh_schema(args.database_url) as database_url:
            growth_lines, growth_verdicts = measure_growth(
                database_url, args.redis_url, sizes, args.seconds, Server, wrk
            )
        lines += growth_lines
        verdicts += growth_verdicts
    lines += ["", "| ratio | measured | budget | met |", "|---|---:|---:|:---:|"]
    lines += [
        f"| {name} | {value} | {budget} | {'yes' if ok else 'NO'} |"
        for name, value, budget, ok in verdicts
    ]
    report = "\n".join(lines) + "\n"
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
