"""The yardstick: a bare FastAPI endpoint returning the same JSON as GET /api/users/me.

Served by the benchmark with the same uvicorn settings as the service, so the ratio
between the two is the cost of everything the service does on top (middleware,
token and session checks, the database, serialisation).
"""

from fastapi import FastAPI

app = FastAPI()

PAYLOAD = {
    "uuid": "6f1f2b8e-3a1c-4c1e-9d2b-5b7a8c9d0e1f",
    "username": "bench_reader",
    "display_name": "bench_reader",
    "description": None,
    "picture_url": "http://127.0.0.1:8000/api/user/6f1f2b8e-3a1c-4c1e-9d2b-5b7a8c9d0e1f/pfp",
    "created_at": 1795800000,
    "email": "bench_reader@example.com",
    "email_verified": False,
    "roles": ["user"],
    "otp_method": "none",
    "is_active": True,
    "is_external_only": False,
    "updated_at": 1795800000,
}


@app.get("/me")
async def read_me() -> dict:
    """The same JSON, nothing else."""
    return PAYLOAD
