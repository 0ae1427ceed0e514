"""Scheduled jobs: each leaves exactly the expected rows and files; one run per period."""

from __future__ import annotations

import os
import time

from fastapi import FastAPI
from sqlalchemy import func, select

from app.core.scheduler import claim_run, ensure_job_rows
from app.models import (
    File,
    OtpChallenge,
    RotatedRefreshToken,
    ScheduledJob,
    Session,
    UsedToken,
    User,
    now_epoch,
    user_file,
)
from app.services.maintenance import purge_expired, remove_orphan_files
from app.test.factories import create_user


async def _count(app: FastAPI, model) -> int:
    async with app.state.session_factory() as db:
        return await db.scalar(select(func.count()).select_from(model))


async def test_purge_expired(app: FastAPI) -> None:
    now = now_epoch()
    user = await create_user(app.state.session_factory)
    rows = {
        "live": dict(expires_at=now + 3600),
        "expired": dict(expires_at=now - 1),
        "revoked_long_ago": dict(expires_at=now + 3600, revoked_at=now - 2 * 86400),
        "revoked_just_now": dict(expires_at=now + 3600, revoked_at=now - 60),
    }
    async with app.state.session_factory() as db:
        for name, values in rows.items():
            db.add(Session(id=name, user_uuid=user.uuid, refresh_token_hash=name, **values))
        await db.flush()
        # Replaced refresh tokens go with their session.
        for name in rows:
            db.add(RotatedRefreshToken(token_hash=f"{name}-old", session_id=name, rotated_at=now))
        db.add(UsedToken(token_id="old", purpose="x", expires_at=now - 1))
        db.add(UsedToken(token_id="fresh", purpose="x", expires_at=now + 60))
        for name, created in (("old", now - 2 * 86400), ("recent", now - 60)):
            db.add(
                OtpChallenge(
                    id=name,
                    user_uuid=user.uuid,
                    purpose="login",
                    method="email",
                    created_at=created,
                    expires_at=created + 600,
                )
            )
        await db.commit()
    result = await purge_expired(app.state.session_factory)
    assert result == {
        "sessions": 2,
        "used_tokens": 1,
        "otp_challenges": 1,
        "webauthn_challenges": 0,
        "signing_keys": 0,
        "oidc_codes": 0,
        "oidc_grants": 0,
    }
    async with app.state.session_factory() as db:
        assert sorted(await db.scalars(select(Session.id))) == ["live", "revoked_just_now"]
        assert sorted(await db.scalars(select(RotatedRefreshToken.session_id))) == [
            "live",
            "revoked_just_now",
        ]
        assert list(await db.scalars(select(UsedToken.token_id))) == ["fresh"]
        assert list(await db.scalars(select(OtpChallenge.id))) == ["recent"]


async def test_finish_pending_deletions_job(app: FastAPI) -> None:
    keep = await create_user(app.state.session_factory)
    await create_user(app.state.session_factory, is_active=False, deactivated_reason="deleting")
    await create_user(app.state.session_factory, is_active=False, deactivated_reason="banned")
    result = await app.state.scheduler.run("finish_deletions", force=True)
    assert result == {"users_deleted": 1}
    async with app.state.session_factory() as db:
        reasons = sorted(str(r) for r in await db.scalars(select(User.deactivated_reason)))
    assert reasons == ["None", "banned"]
    async with app.state.session_factory() as db:
        assert await db.get(User, keep.uuid) is not None


async def test_remove_orphan_files(app: FastAPI) -> None:
    settings = app.state.settings
    user = await create_user(app.state.session_factory)
    folder = settings.DATA_DIR / "users" / user.uuid
    folder.mkdir(parents=True)
    kept = folder / "kept.txt"
    orphan = folder / "orphan.txt"
    fresh_orphan = folder / "uploading.txt"
    for path in (kept, orphan, fresh_orphan):
        path.write_text("x")
    old = time.time() - 7200
    os.utime(kept, (old, old))
    os.utime(orphan, (old, old))
    gone_user = settings.DATA_DIR / "users" / "00000000-0000-4000-8000-000000000000"
    gone_user.mkdir(parents=True)
    (gone_user / "left.txt").write_text("x")
    os.utime(gone_user / "left.txt", (old, old))
    async with app.state.session_factory() as db:
        file = File(
            owner_uuid=user.uuid,
            file_name="kept.txt",
            file_type="text/plain",
            file_path=f"users/{user.uuid}/kept.txt",
            created_by_uuid=user.uuid,
        )
        db.add(file)
        await db.flush()
        await db.execute(user_file.insert().values(user_uuid=user.uuid, file_id=file.id))
        await db.commit()
    result = await remove_orphan_files(app.state.session_factory, settings)
    assert result == {"files": 2, "folders": 1}
    assert sorted(p.name for p in folder.iterdir()) == ["kept.txt", "uploading.txt"]
    assert not gone_user.exists()
    assert await _count(app, File) == 1


async def test_a_job_runs_once_per_period_across_replicas(app: FastAPI) -> None:
    factory = app.state.session_factory
    await ensure_job_rows(factory, ["demo"])
    await ensure_job_rows(factory, ["demo"])  # a second replica starting: no error
    assert await claim_run(factory, "demo", 3600) is True
    assert await claim_run(factory, "demo", 3600) is False  # the other replica skips
    async with factory() as db:  # an hour later
        job = await db.get(ScheduledJob, "demo")
        job.last_run_at -= 3600
        await db.commit()
    assert await claim_run(factory, "demo", 3600) is True
    assert await app.state.scheduler.run("purge_expired") is not None  # never ran yet
    assert await app.state.scheduler.run("purge_expired") is None  # claimed this period


async def test_jobs_log_what_they_did(app: FastAPI, captured_logs: list[str]) -> None:
    await app.state.scheduler.run("purge_expired", force=True)
    assert any("job purge_expired: sessions=0, used_tokens=0" in line for line in captured_logs)
