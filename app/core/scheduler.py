"""APScheduler jobs, run once per period across every replica.

Before running, a replica claims the job's period with one conditional UPDATE of
``scheduled_job.last_run_at``; whoever updates the row runs the job, the others skip
it. That works the same on SQLite and PostgreSQL, with or without Redis.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from loguru import logger
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.database import rows_matched
from app.models import ScheduledJob, now_epoch


@dataclass(frozen=True)
class Job:
    """A maintenance job and how often it runs."""

    name: str
    period_seconds: int
    run: Callable[[], Awaitable[dict[str, int]]]


async def ensure_job_rows(
    session_factory: async_sessionmaker[AsyncSession], names: list[str]
) -> None:
    """Create the bookkeeping row of each job (never run yet)."""
    async with session_factory() as db:
        existing = set(
            await db.scalars(select(ScheduledJob.name).where(ScheduledJob.name.in_(names)))
        )
        for name in names:
            if name not in existing:
                db.add(ScheduledJob(name=name, last_run_at=0))
        try:
            await db.commit()
        except Exception:  # another replica inserted them at the same moment
            await db.rollback()


async def claim_run(
    session_factory: async_sessionmaker[AsyncSession], name: str, period_seconds: int
) -> bool:
    """Claim this period's run of ``name``; True for exactly one caller per period."""
    now = now_epoch()
    # A little slack so that a replica whose timer fires a second early still runs.
    threshold = now - period_seconds + max(1, period_seconds // 20)
    async with session_factory() as db:
        result = await db.execute(
            update(ScheduledJob)
            .where(ScheduledJob.name == name, ScheduledJob.last_run_at <= threshold)
            .values(last_run_at=now)
        )
        await db.commit()
    return rows_matched(result) == 1


class JobScheduler:
    """Runs the jobs on their periods; each run is claimed first, then logged."""

    def __init__(self, session_factory: async_sessionmaker[AsyncSession], jobs: list[Job]):
        self.session_factory = session_factory
        self.jobs = {job.name: job for job in jobs}
        self.scheduler = AsyncIOScheduler()

    async def start(self) -> None:
        """Create the job rows and start the timers (first runs one period from now)."""
        await ensure_job_rows(self.session_factory, list(self.jobs))
        for job in self.jobs.values():
            self.scheduler.add_job(
                self.run,
                IntervalTrigger(seconds=job.period_seconds),
                args=[job.name],
                id=job.name,
                max_instances=1,
                coalesce=True,
            )
        self.scheduler.start()

    def stop(self) -> None:
        """Stop the timers (a running job is not waited for)."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    async def run(self, name: str, *, force: bool = False) -> dict[str, int] | None:
        """Run one job if this replica wins its period (or always with ``force``)."""
        job = self.jobs[name]
        if not force and not await claim_run(self.session_factory, name, job.period_seconds):
            return None
        try:
            result = await job.run()
        except Exception as error:  # a failed run is retried next period
            logger.error("job {} failed: {}: {}", name, type(error).__name__, error)
            return None
        logger.info("job {}: {}", name, ", ".join(f"{k}={v}" for k, v in result.items()))
        return result
