"""How request costs grow with the user table: part of `make bench` on PostgreSQL.

One service on a fresh PostgreSQL schema; users are added with ``app.cli seed-users``
up to each size (10k, 100k, 1M by default) and at each size wrk measures login,
GET /api/users/me, the admin listing's first page, a deep page reached by cursor
(the middle of the table), a prefix search matching one user, and, for contrast,
the same deep page reached by offset. The verdict: each measured request (offset
excepted) costs less than twice as much at the largest size as at the smallest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
PASSWORD = "correct horse battery staple"
ADMIN = "bench_admin"

#: (key, label, counted in the verdict)
MEASURED = [
    ("login", "POST /api/auth/login", True),
    ("me", "GET /api/users/me", True),
    ("first", "GET /api/users first page", True),
    ("cursor", "GET /api/users deep page by cursor", True),
    ("search", "GET /api/users?search= (one match)", True),
    ("offset", "GET /api/users deep page by offset", False),
]


def _seed(env: dict[str, str], start: int, count: int) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "seed-users",
            "--count",
            str(count),
            "--start",
            str(start),
            "--password",
            PASSWORD,
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        timeout=3600,
    )


def measure_growth(
    database_url: str,
    redis_url: str | None,
    sizes: list[int],
    seconds: int,
    server_class: Callable[..., Any],
    wrk: Callable[..., Any],
) -> tuple[list[str], list[tuple[str, str, str, bool]]]:
    """The growth table's markdown lines and its verdicts."""
    data_dir = tempfile.mkdtemp(prefix="bench-growth-")
    env = {
        "DATABASE_URI": database_url,
        "DATA_DIR": data_dir,
        "JWT_SECRET_KEY": "benchmark-secret-" + "g" * 32,
        "LOG_LEVEL": "WARNING",
        "AUTH_RATE_LIMIT_ADDRESS": "100000000 per 1 minute",
        "FIRST_ADMIN_USERNAME": ADMIN,
        "FIRST_ADMIN_EMAIL": f"{ADMIN}@example.com",
        "FIRST_ADMIN_PASSWORD": PASSWORD,
        **({"REDIS_URL": redis_url} if redis_url else {}),
    }
    server = server_class("app.main:app", ROOT, env)
    rows: dict[int, dict[str, Any]] = {}
    try:
        http = httpx.Client(base_url=server.url, timeout=60)
        http.post(
            "/api/auth/signup",
            json={
                "username": "bench_login",
                "email": "bench_login@example.com",
                "password": PASSWORD,
            },
        ).raise_for_status()
        token = http.post("/api/auth/login", json={"username": ADMIN, "password": PASSWORD}).json()[
            "access_token"
        ]
        auth = {"Authorization": f"Bearer {token}"}
        seeded = 0
        for size in sizes:
            _seed(env, seeded, size - seeded)
            seeded = size
            http.post("/api/auth/login", json={"username": ADMIN, "password": PASSWORD})
            middle = http.get(
                "/api/users",
                params={"limit": 1, "offset": size // 2, "with_total": "false"},
                headers=auth,
            ).json()
            cursor = middle["next_cursor"]
            url = server.url
            label = f"{size:,} users"
            rows[size] = {
                # One connection per core: more would only queue for bcrypt, and the
                # service sheds such a queue with 503 (see "Under a login flood").
                "login": wrk(
                    f"{label}: login",
                    f"{url}/api/auth/login",
                    seconds=seconds,
                    connections=os.cpu_count() or 1,
                    script="login.lua",
                ),
                "me": wrk(
                    f"{label}: me",
                    f"{url}/api/users/me",
                    seconds=seconds,
                    connections=32,
                    headers=auth,
                ),
                "first": wrk(
                    f"{label}: first page",
                    f"{url}/api/users?limit=50&with_total=false",
                    seconds=seconds,
                    connections=8,
                    headers=auth,
                ),
                "cursor": wrk(
                    f"{label}: cursor page",
                    f"{url}/api/users?limit=50&cursor={cursor}",
                    seconds=seconds,
                    connections=8,
                    headers=auth,
                ),
                "search": wrk(
                    f"{label}: search",
                    f"{url}/api/users?search=seed_0005000&with_total=false",
                    seconds=seconds,
                    connections=8,
                    headers=auth,
                ),
                "offset": wrk(
                    f"{label}: offset page",
                    f"{url}/api/users?limit=50&offset={size // 2}&with_total=false",
                    seconds=seconds,
                    connections=8,
                    headers=auth,
                ),
            }
    finally:
        server.stop()

    header = "| request | " + " | ".join(f"{size:,} users" for size in sizes) + " | growth |"
    lines = [
        "",
        "## Growth with the user table (PostgreSQL)",
        "",
        "Requests per second (p50 ms) at each size; growth is the cost (1 / throughput) at "
        f"{sizes[-1]:,} over the cost at {sizes[0]:,}.",
        "",
        header,
        "|---|" + "---:|" * (len(sizes) + 1),
    ]
    verdicts = []
    for key, name, counted in MEASURED:
        cells = [f"{rows[size][key].rps:.0f} ({rows[size][key].p50_ms:.1f})" for size in sizes]
        growth = rows[sizes[0]][key].rps / rows[sizes[-1]][key].rps
        errors = sum(rows[size][key].errors for size in sizes)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {growth:.2f}x |")
        if counted:
            verdicts.append(
                (
                    f"{name}: cost at {sizes[-1]:,} / at {sizes[0]:,} users",
                    f"{growth:.2f}x" + (f" ({errors} non-2xx)" if errors else ""),
                    "< 2x",
                    growth < 2 and errors == 0,
                )
            )
    return lines, verdicts
