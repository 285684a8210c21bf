"""SQLite storage: the embedded default, one database file for jobs and one for checkpoints.

Jobs and events share `scout.db`; LangGraph's checkpoints live in `checkpoints.db`, so
checkpoint writes and event writes never wait for each other's lock. Both files run in
WAL mode with a busy timeout, which lets several processes share them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiosqlite
import orjson
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from app.jobs import JobRecord, StoredEvent
from app.storage.base import EventDraft, EventsFor, JobConflict, LeaseLost, NewJob

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    question TEXT NOT NULL,
    error TEXT,
    owner TEXT NOT NULL DEFAULT '',
    idempotency_key TEXT,
    request_hash TEXT,
    model TEXT NOT NULL,
    search TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    planned_at REAL,
    approved_at REAL,
    finished_at REAL,
    decision TEXT,
    last_event_id INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_idempotency_key ON jobs (owner, idempotency_key);
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at DESC, id DESC);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    id INTEGER NOT NULL,
    event TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job_id, id)
) WITHOUT ROWID;
"""

JOB_COLUMNS = (
    "id, status, question, error, idempotency_key, request_hash, model, search, created_at,"
    " updated_at, planned_at, approved_at, finished_at, decision, last_event_id, version, owner"
)
UPDATABLE_FIELDS = frozenset(
    {"error", "planned_at", "approved_at", "finished_at", "decision", "updated_at", "lease_owner"}
)
UNFINISHED = "('pending', 'running')"  # SQL list of the statuses a run may still change


def _record(row: Sequence[Any]) -> JobRecord:
    values = list(row)
    values[13] = orjson.loads(values[13]) if values[13] else None
    return JobRecord(*values)


async def _connect(path: Path) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None)
    await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    await conn.execute("PRAGMA journal_mode = WAL")
    await conn.execute("PRAGMA synchronous = NORMAL")
    return conn


class SqliteStorage:
    """Storage on SQLite files under `data_dir`.

    One writer connection serialises this process's writes behind an asyncio lock, because a
    transaction spans several awaits and another coroutine's statement must not land inside
    it. Reads use their own connection and never wait for that lock.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.jobs_path = data_dir / "scout.db"
        self.checkpoints_path = data_dir / "checkpoints.db"
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()

    async def open(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._writer = await _connect(self.jobs_path)
        await self._writer.executescript(SCHEMA)
        self._reader = await _connect(self.jobs_path)
        logger.info("storage opened: %s", self.jobs_path)

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    @asynccontextmanager
    async def checkpointer(self) -> AsyncIterator[AsyncSqliteSaver]:
        """Yield LangGraph's SQLite saver on its own file, with its schema created once here."""
        conn = await _connect(self.checkpoints_path)
        try:
            saver = AsyncSqliteSaver(conn)
            await saver.setup()
            yield saver
        finally:
            await conn.close()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        assert self._writer is not None, "storage is not open"
        async with self._write_lock:
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                await self._writer.execute("ROLLBACK")
                raise
            await self._writer.execute("COMMIT")

    async def create_job(self, job: NewJob, events_for: EventsFor) -> tuple[JobRecord, bool]:
        """Insert a job with its first events, or return the job that already has its key."""
        async with self._transaction() as db:
            if job.idempotency_key is not None:
                existing = await self._job_by_key(db, job.owner, job.idempotency_key)
                if existing is not None:
                    return existing, False

            await db.execute(
                "INSERT INTO jobs (id, status, question, owner, idempotency_key, request_hash,"
                " model, search, created_at, updated_at)"
                " VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.question,
                    job.owner,
                    job.idempotency_key,
                    job.request_hash,
                    job.model,
                    job.search,
                    job.created_at,
                    job.created_at,
                ),
            )
            record = await self._job(db, job.id)
            assert record is not None
            stored = await self._insert_events(db, record, events_for(record))
            return _with_last_event(record, stored), True

    async def get_job(self, job_id: str) -> JobRecord | None:
        assert self._reader is not None, "storage is not open"
        return await self._job(self._reader, job_id)

    async def get_job_by_idempotency_key(self, owner: str, key: str) -> JobRecord | None:
        assert self._reader is not None, "storage is not open"
        return await self._job_by_key(self._reader, owner, key)

    async def list_jobs(
        self, owner: str, status: str | None, limit: int, before: tuple[float, str] | None
    ) -> list[JobRecord]:
        """List an owner's jobs newest first; `before` is the (created_at, id) of the last seen."""
        assert self._reader is not None, "storage is not open"
        clauses, params = ["owner = ?"], [owner]
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        if before is not None:
            clauses.append("(created_at, id) < (?, ?)")
            params.extend(before)
        where = f"WHERE {' AND '.join(clauses)}"
        cursor = await self._reader.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs {where} ORDER BY created_at DESC, id DESC LIMIT ?",
            (*params, limit),
        )
        return [_record(row) for row in await cursor.fetchall()]

    async def count_unfinished(self, owner: str) -> int:
        """Count an owner's jobs that are not finished, including those awaiting approval."""
        assert self._reader is not None, "storage is not open"
        cursor = await self._reader.execute(
            "SELECT count(*) FROM jobs WHERE owner = ?"
            " AND status IN ('pending', 'awaiting_approval', 'running')",
            (owner,),
        )
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def compare_and_set(
        self,
        job_id: str,
        expected: Iterable[str],
        status: str,
        fields: dict[str, Any],
        events_for: EventsFor,
        owner: str | None = None,
    ) -> tuple[JobRecord, list[StoredEvent], str]:
        """Move a job to `status` if it is in one of `expected`, storing its events atomically.

        With `owner`, the change also requires that this owner holds the job's lease.
        Returns the changed record, its stored events and the status it had before.
        """
        unknown = set(fields) - UPDATABLE_FIELDS
        assert not unknown, f"not updatable: {unknown}"
        values = {k: orjson.dumps(v) if k == "decision" else v for k, v in fields.items()}
        assignments = "".join(f", {name} = ?" for name in values)
        allowed = list(expected)

        async with self._transaction() as db:
            current = await self._job(db, job_id)
            if current is None or current.status not in allowed:
                raise JobConflict(job_id, current.status if current else None)
            if owner is not None:
                await self._check_lease(db, job_id, owner)
            await db.execute(
                f"UPDATE jobs SET status = ?, version = version + 1{assignments} WHERE id = ?",
                (status, *values.values(), job_id),
            )
            record = await self._job(db, job_id)
            assert record is not None
            stored = await self._insert_events(db, record, events_for(record))
            return _with_last_event(record, stored), stored, current.status

    async def append_events(
        self,
        job_id: str,
        events: Sequence[EventDraft],
        bump_version: bool,
        owner: str | None = None,
    ) -> list[StoredEvent]:
        """Store events in one transaction; `bump_version` marks a change to the job's view.

        With `owner`, the events are stored only while that owner holds the job's lease.
        """
        async with self._transaction() as db:
            if owner is not None:
                await self._check_lease(db, job_id, owner)
            if bump_version:
                await db.execute("UPDATE jobs SET version = version + 1 WHERE id = ?", (job_id,))
            record = await self._job(db, job_id)
            if record is None:
                raise JobConflict(job_id, None)
            return await self._insert_events(db, record, events)

    async def read_events(self, job_id: str, after_id: int, limit: int) -> list[StoredEvent]:
        assert self._reader is not None, "storage is not open"
        cursor = await self._reader.execute(
            "SELECT id, event, data FROM events WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?",
            (job_id, after_id, limit),
        )
        return [
            StoredEvent.make(job_id, event_id, event, data)
            for event_id, event, data in await cursor.fetchall()
        ]

    async def claim(self, job_id: str, owner: str, ttl_s: float) -> bool:
        """Take the lease of an unfinished job that is free, or whose holder let it expire."""
        now = time.time()
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE jobs SET lease_owner = ?, lease_expires = ? WHERE id = ?"
                f" AND status IN {UNFINISHED}"
                " AND (lease_owner IS NULL OR lease_owner = ? OR lease_expires < ?)",
                (owner, now + ttl_s, job_id, owner, now),
            )
            return cursor.rowcount == 1

    async def renew(self, job_ids: Sequence[str], owner: str, ttl_s: float) -> set[str]:
        """Extend this owner's leases; return the ids whose lease it still holds."""
        if not job_ids:
            return set()
        marks = ", ".join("?" for _ in job_ids)
        async with self._transaction() as db:
            cursor = await db.execute(
                f"UPDATE jobs SET lease_expires = ? WHERE lease_owner = ? AND id IN ({marks})"
                f" AND status IN {UNFINISHED} RETURNING id",
                (time.time() + ttl_s, owner, *job_ids),
            )
            return {row[0] for row in await cursor.fetchall()}

    async def release(self, job_ids: Sequence[str], owner: str) -> None:
        """Give up this owner's leases, so another process may resume the jobs at once."""
        if not job_ids:
            return
        marks = ", ".join("?" for _ in job_ids)
        async with self._transaction() as db:
            await db.execute(
                "UPDATE jobs SET lease_owner = NULL, lease_expires = NULL"
                f" WHERE lease_owner = ? AND id IN ({marks})",
                (owner, *job_ids),
            )

    async def orphaned_jobs(self, limit: int) -> list[JobRecord]:
        """List unfinished jobs that no live process holds, oldest first."""
        assert self._reader is not None, "storage is not open"
        cursor = await self._reader.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE status IN {UNFINISHED}"
            " AND (lease_owner IS NULL OR lease_expires < ?) ORDER BY created_at LIMIT ?",
            (time.time(), limit),
        )
        return [_record(row) for row in await cursor.fetchall()]

    @staticmethod
    async def _check_lease(db: aiosqlite.Connection, job_id: str, owner: str) -> None:
        cursor = await db.execute("SELECT lease_owner FROM jobs WHERE id = ?", (job_id,))
        row = await cursor.fetchone()
        if row is None or row[0] != owner:
            raise LeaseLost(job_id, owner)

    @staticmethod
    async def _job(db: aiosqlite.Connection, job_id: str) -> JobRecord | None:
        cursor = await db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        row = await cursor.fetchone()
        return _record(row) if row else None

    @staticmethod
    async def _job_by_key(db: aiosqlite.Connection, owner: str, key: str) -> JobRecord | None:
        cursor = await db.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE owner = ? AND idempotency_key = ?", (owner, key)
        )
        row = await cursor.fetchone()
        return _record(row) if row else None

    @staticmethod
    async def _insert_events(
        db: aiosqlite.Connection, record: JobRecord, events: Sequence[EventDraft]
    ) -> list[StoredEvent]:
        if not events:
            return []
        first = record.last_event_id + 1
        stored = [
            StoredEvent.make(record.id, first + offset, name, data)
            for offset, (name, data) in enumerate(events)
        ]
        await db.executemany(
            "INSERT INTO events (job_id, id, event, data) VALUES (?, ?, ?, ?)",
            [(e.job_id, e.id, e.event, e.data) for e in stored],
        )
        await db.execute(
            "UPDATE jobs SET last_event_id = ? WHERE id = ?", (stored[-1].id, record.id)
        )
        return stored


def _with_last_event(record: JobRecord, stored: Sequence[StoredEvent]) -> JobRecord:
    if not stored:
        return record
    return replace(record, last_event_id=stored[-1].id)
