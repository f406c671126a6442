"""Where schedules are kept: PostgreSQL, or memory for tests. Firing is compare-and-set on
`next_fire`, so replicas never need a lock: the job id already makes a fire time unique."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

import asyncpg
import msgspec

from dockyard.core.spec import JobSpec
from dockyard.core.spec_bounds import left_out
from dockyard.core.unchecked import convert_unchecked
from dockyard.scheduler.schedules import Schedule, stored_job
from dockyard.store.pool import Pool, translated


class ScheduleExists(Exception):
    """Raised when the tenant already has a schedule of that name."""


class ScheduleStore(Protocol):
    async def create(self, schedule: Schedule) -> None: ...

    async def listing(self, tenant: str | None) -> list[Schedule]: ...

    async def delete(self, tenant: str, name: str) -> bool: ...

    async def due(self, now: datetime, limit: int) -> list[Schedule]: ...

    async def advance(self, schedule: Schedule, fired: datetime, next_fire: datetime) -> bool:
        """Move `next_fire` on, if nobody did since `schedule` was read."""
        ...


_spec = msgspec.json.Decoder(JobSpec)
_raw = msgspec.json.Decoder()


def _job(data: bytes | str) -> JobSpec:
    try:
        return _spec.decode(data)
    except msgspec.ValidationError:
        # Stored before a rule was tightened: read as it is; firing checks it (firing.py).
        spec: JobSpec = convert_unchecked(_raw.decode(data), JobSpec)
        return spec


_encoder = msgspec.json.Encoder()
_COLUMNS = "tenant, name, cron, interval_s, job, created_at, last_fire, next_fire"


def _schedule(row: asyncpg.Record) -> Schedule:
    return Schedule(
        tenant=row["tenant"],
        name=row["name"],
        cron=row["cron"],
        interval_s=row["interval_s"],
        job=_job(row["job"]),
        created_at=row["created_at"],
        last_fire=row["last_fire"],
        next_fire=row["next_fire"],
        defaulted=left_out(_raw.decode(row["job"])),
    )


class PgScheduleStore:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def create(self, schedule: Schedule) -> None:
        async with translated("create schedule"):
            try:
                await self._pool.execute(
                    f"INSERT INTO schedules ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    schedule.tenant,
                    schedule.name,
                    schedule.cron,
                    schedule.interval_s,
                    _encoder.encode(stored_job(schedule)),
                    schedule.created_at,
                    schedule.last_fire,
                    schedule.next_fire,
                )
            except asyncpg.UniqueViolationError:
                raise ScheduleExists(schedule.name) from None

    async def listing(self, tenant: str | None) -> list[Schedule]:
        async with translated("list schedules"):
            rows = await self._pool.fetch(
                f"SELECT {_COLUMNS} FROM schedules WHERE $1::text IS NULL OR tenant = $1"
                " ORDER BY tenant, name",
                tenant,
            )
        return [_schedule(r) for r in rows]

    async def delete(self, tenant: str, name: str) -> bool:
        async with translated("delete schedule"):
            status = await self._pool.execute(
                "DELETE FROM schedules WHERE tenant = $1 AND name = $2", tenant, name
            )
        return bool(status.endswith(" 1"))

    async def due(self, now: datetime, limit: int) -> list[Schedule]:
        async with translated("due schedules"):
            rows = await self._pool.fetch(
                f"SELECT {_COLUMNS} FROM schedules WHERE next_fire <= $1"
                " ORDER BY next_fire LIMIT $2",
                now,
                limit,
            )
        return [_schedule(r) for r in rows]

    async def advance(self, schedule: Schedule, fired: datetime, next_fire: datetime) -> bool:
        async with translated("advance schedule"):
            status = await self._pool.execute(
                "UPDATE schedules SET last_fire = $3, next_fire = $4"
                " WHERE tenant = $1 AND name = $2 AND next_fire = $5",
                schedule.tenant,
                schedule.name,
                fired,
                next_fire,
                schedule.next_fire,
            )
        return bool(status.endswith(" 1"))


class InMemoryScheduleStore:
    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], Schedule] = {}

    async def create(self, schedule: Schedule) -> None:
        key = (schedule.tenant, schedule.name)
        if key in self._rows:
            raise ScheduleExists(schedule.name)
        self._rows[key] = schedule

    async def listing(self, tenant: str | None) -> list[Schedule]:
        return [s for k, s in sorted(self._rows.items()) if tenant is None or k[0] == tenant]

    async def delete(self, tenant: str, name: str) -> bool:
        return self._rows.pop((tenant, name), None) is not None

    async def due(self, now: datetime, limit: int) -> list[Schedule]:
        due = sorted(
            (s for s in self._rows.values() if s.next_fire <= now), key=lambda s: s.next_fire
        )
        return due[:limit]

    async def advance(self, schedule: Schedule, fired: datetime, next_fire: datetime) -> bool:
        key = (schedule.tenant, schedule.name)
        current = self._rows.get(key)
        if current is None or current.next_fire != schedule.next_fire:
            return False
        self._rows[key] = msgspec.structs.replace(current, last_fire=fired, next_fire=next_fire)
        return True
