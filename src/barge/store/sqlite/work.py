"""The SQLite verbs on a batch's work: its slices, their progress and the results it
stores, the leases nodes hold on slices and on finalisation, finishing, and the nodes'
shares of the upstream budget."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from barge.domain.models import BatchRecord, FileRecord, Slice
from barge.domain.status import Status
from barge.domain.usage import MAX_TOKENS, NO_USAGE
from barge.exceptions import Fenced
from barge.store.protocol import Lease, SliceProgress, StoredResult
from barge.store.rows import (
    _FILE_COLUMNS,
    _LEASE_COLUMNS,
    _RESULT_COLUMNS,
    _SLICE_COLUMNS,
    _lease,
    _result,
    _slice,
    _tokens,
)
from barge.store.sqlite.base import Verbs


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be positive, not {value!r}")


def _next_tokens(db: sqlite3.Connection, n: int) -> range:
    """Take ``n`` new tokens from the counter (inside the caller's transaction)."""
    db.execute("UPDATE lease_tokens SET last = last + ?", (n,))
    last = int(db.execute("SELECT last FROM lease_tokens").fetchone()[0])
    return range(last - n + 1, last + 1)


# Statuses in which fenced progress is accepted: the batch's requests are being sent, or
# drained after a cancel.
_SENDING = ("processing", "cancel", "cancelling")


def _check_fence(db: sqlite3.Connection, batch_id: str,
                 progress: Sequence[SliceProgress]) -> None:
    """Raise Fenced unless every token given in ``progress`` is its slice's current one,
    the batch is still being sent (``_SENDING``) and nobody has claimed to finalise it."""
    wanted: dict[int, int] = {}
    for p in progress:
        if p.token is None:
            continue
        if wanted.setdefault(p.no, p.token) != p.token:
            raise Fenced(f"Slice {p.no} of batch {batch_id}: two tokens in one flush.",
                         param="token")
    if not wanted:
        return
    batch = db.execute("SELECT status, fin_token FROM batches WHERE id=?",
                       (batch_id,)).fetchone()
    if batch is None or batch["status"] not in _SENDING or batch["fin_token"] is not None:
        raise Fenced(f"Batch {batch_id} is no longer being processed (or is being"
                     " finalised); nothing was recorded.", param="token")
    current = dict(db.execute(
        f"SELECT no, lease_token FROM slices WHERE batch_id=?"
        f" AND no IN ({','.join('?' * len(wanted))})",
        (batch_id, *wanted),
    ).fetchall())
    stale = sorted(no for no, token in wanted.items() if current.get(no) != token)
    if stale:
        raise Fenced(f"Batch {batch_id}: the lease on slice {stale[0]} is no longer held"
                     " under its token; nothing was recorded.", param="token")


class WorkVerbs(Verbs):
    # -- slices and progress -------------------------------------------------

    async def list_slices(self, batch_id: str) -> list[Slice]:
        def q(db: sqlite3.Connection) -> list[Slice]:
            rows = db.execute(
                f"SELECT {_SLICE_COLUMNS} FROM slices WHERE batch_id=? ORDER BY no",
                (batch_id,),
            ).fetchall()
            return [_slice(r) for r in rows]

        return await self._read(q)

    async def record_progress(self, batch_id: str, progress: Sequence[SliceProgress]) -> None:
        fenced = any(p.token is not None for p in progress)

        def q(db: sqlite3.Connection) -> None:
            if fenced:  # before anything is written: all or nothing
                _check_fence(db, batch_id, progress)
            db.executemany(
                "UPDATE slices SET committed_bytes=?, completed=completed+?, failed=failed+?,"
                " done=? WHERE batch_id=? AND no=?",
                [(p.committed_bytes, p.completed, p.failed, int(p.done), batch_id, p.no)
                 for p in progress],
            )
            usage = sum((p.usage for p in progress), NO_USAGE)
            # Token sums saturate at MAX_TOKENS (far inside SQLite's int64): what an
            # upstream reports can never make this statement fail and wedge the batch.
            add = [_tokens(n) for n in (usage.input_tokens, usage.output_tokens,
                                         usage.cached_tokens, usage.reasoning_tokens)]
            counted = db.execute(
                "UPDATE batches SET completed=completed+?, failed=failed+?, updated_at=?,"
                " input_tokens=MIN(input_tokens+?, ?), output_tokens=MIN(output_tokens+?, ?),"
                " cached_tokens=MIN(cached_tokens+?, ?),"
                " reasoning_tokens=MIN(reasoning_tokens+?, ?) WHERE id=?",
                (sum(p.completed for p in progress), sum(p.failed for p in progress),
                 time.time(), add[0], MAX_TOKENS, add[1], MAX_TOKENS, add[2], MAX_TOKENS,
                 add[3], MAX_TOKENS, batch_id),
            ).rowcount
            if counted:  # the batch exists: its results are kept with its counts
                db.executemany(
                    "INSERT OR REPLACE INTO results (batch_id, slice_no, idx, ok, line)"
                    " VALUES (?,?,?,?,?)",
                    [(batch_id, p.no, idx, int(ok), line)
                     for p in progress for idx, ok, line in p.records],
                )

        await self._run(q)

    async def slice_results(
        self, batch_id: str, *, after: tuple[int, int] | None = None, limit: int = 1000
    ) -> list[StoredResult]:
        if limit <= 0:
            return []

        def q(db: sqlite3.Connection) -> list[StoredResult]:
            if after is None:
                rows = db.execute(
                    f"SELECT {_RESULT_COLUMNS} FROM results WHERE batch_id=?"
                    " ORDER BY slice_no, idx LIMIT ?", (batch_id, limit))
            else:
                rows = db.execute(
                    f"SELECT {_RESULT_COLUMNS} FROM results WHERE batch_id=?"
                    " AND (slice_no, idx) > (?, ?) ORDER BY slice_no, idx LIMIT ?",
                    (batch_id, *after, limit))
            return [_result(r) for r in rows.fetchall()]

        return await self._read(q)

    async def done_indexes(self, batch_id: str, slice_no: int) -> list[int]:
        def q(db: sqlite3.Connection) -> list[int]:
            rows = db.execute("SELECT idx FROM results WHERE batch_id=? AND slice_no=?"
                              " ORDER BY idx", (batch_id, slice_no)).fetchall()
            return [int(r[0]) for r in rows]

        return await self._read(q)

    async def finish(
        self, batch_id: str, to: Status, *, files: Sequence[FileRecord],
        fin_token: int | None = None, **fields: Any,
    ) -> BatchRecord:
        def q(db: sqlite3.Connection) -> BatchRecord:
            if fin_token is not None:
                row = db.execute("SELECT fin_token FROM batches WHERE id=?",
                                 (batch_id,)).fetchone()
                if row is not None and row["fin_token"] != fin_token:
                    raise Fenced(f"Batch {batch_id} is being finalised under another token.",
                                 param="fin_token")
            for f in files:
                db.execute(
                    f"INSERT OR REPLACE INTO files ({_FILE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
                    (f.id, f.account, f.filename, f.purpose, f.bytes, f.sha256, f.created_at,
                     f.expires_at, f.lines),
                )
            b = self._transition(db, batch_id, to, None, fields)
            db.execute("DELETE FROM results WHERE batch_id=?", (batch_id,))
            return b

        return await self._run(q)

    # -- leases ---------------------------------------------------------------
    # Every verb is one write job: the writer's transaction (BEGIN IMMEDIATE) keeps out
    # every other writer, of this store or of another on the same file, so a check and
    # the write it guards see the same rows.

    async def claim_slices(
        self, node: str, *, limit: int, lease_seconds: float, batch_id: str | None = None
    ) -> list[Lease]:
        _positive("lease_seconds", lease_seconds)
        if limit <= 0:
            return []

        def q(db: sqlite3.Connection) -> list[Lease]:
            now = time.time()
            only = "" if batch_id is None else " AND b.id = ?"
            free = db.execute(
                "SELECT s.batch_id, s.no FROM slices AS s JOIN batches AS b ON b.id = s.batch_id"
                f" WHERE b.status = 'processing' AND b.fin_token IS NULL{only} AND s.done = 0"
                " AND (s.lease_expires IS NULL OR s.lease_expires <= ?)"
                " ORDER BY b.seq, s.no LIMIT ?",
                (*(() if batch_id is None else (batch_id,)), now, limit),
            ).fetchall()
            if not free:
                return []
            tokens = _next_tokens(db, len(free))
            expires = now + lease_seconds
            db.executemany(
                "UPDATE slices SET lease_token=?, lease_owner=?, lease_expires=?"
                " WHERE batch_id=? AND no=?",
                [(token, node, expires, r["batch_id"], r["no"])
                 for token, r in zip(tokens, free, strict=True)],
            )
            return [_lease(db.execute(
                f"SELECT {_LEASE_COLUMNS} FROM slices WHERE batch_id=? AND no=?",
                (r["batch_id"], r["no"])).fetchone()) for r in free]

        return await self._run(q)

    async def renew_leases(
        self, leases: Sequence[Lease], *, lease_seconds: float
    ) -> list[Lease]:
        _positive("lease_seconds", lease_seconds)
        if not leases:
            return []

        def q(db: sqlite3.Connection) -> list[Lease]:
            expires = time.time() + lease_seconds
            renewed = []
            for lease in leases:
                cur = db.execute(
                    "UPDATE slices SET lease_expires=? WHERE batch_id=? AND no=?"
                    " AND lease_token=? AND NOT EXISTS (SELECT 1 FROM batches"
                    "  WHERE id = slices.batch_id AND fin_token IS NOT NULL)",
                    (expires, lease.batch_id, lease.slice_no, lease.token),
                )
                if cur.rowcount:
                    renewed.append(_lease(db.execute(
                        f"SELECT {_LEASE_COLUMNS} FROM slices WHERE batch_id=? AND no=?",
                        (lease.batch_id, lease.slice_no)).fetchone()))
            return renewed

        return await self._run(q)

    async def release_leases(self, leases: Sequence[Lease]) -> None:
        if not leases:
            return

        def q(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE slices SET lease_token=NULL, lease_owner=NULL, lease_expires=NULL"
                " WHERE batch_id=? AND no=? AND lease_token=?",
                [(lease.batch_id, lease.slice_no, lease.token) for lease in leases],
            )

        await self._run(q)

    async def claim_finalize(
        self, batch_id: str, node: str, *, lease_seconds: float
    ) -> int | None:
        _positive("lease_seconds", lease_seconds)

        def q(db: sqlite3.Connection) -> int | None:
            now = time.time()
            row = db.execute(
                "SELECT status, expires_at FROM batches WHERE id=?"
                " AND (fin_expires IS NULL OR fin_expires <= ?)",
                (batch_id, now),
            ).fetchone()
            if row is None:
                return None
            status = row["status"]
            if status == Status.PROCESSING:
                free = row["expires_at"] <= now  # expired: it is to be expired
            elif status == Status.CANCELLING:  # once no slice is held any more
                free = db.execute(
                    "SELECT 1 FROM slices WHERE batch_id=? AND lease_token IS NOT NULL"
                    " AND lease_expires > ? LIMIT 1", (batch_id, now)).fetchone() is None
            else:
                free = status == Status.WRITING_RESULTS
            if not free:
                return None
            (token,) = _next_tokens(db, 1)
            db.execute("UPDATE batches SET fin_token=?, fin_owner=?, fin_expires=? WHERE id=?",
                       (token, node, now + lease_seconds, batch_id))
            return token

        return await self._run(q)

    # -- nodes ----------------------------------------------------------------

    async def share_budget(
        self, node: str, *, ttl: float, want: int, budget: int
    ) -> tuple[int, int]:
        _positive("ttl", ttl)

        def q(db: sqlite3.Connection) -> tuple[int, int]:
            now = time.time()
            db.execute("DELETE FROM nodes WHERE expires_at <= ? AND node <> ?", (now, node))
            others, live = db.execute(
                "SELECT coalesce(sum(slots), 0), count(*) FROM nodes WHERE node <> ?",
                (node,)).fetchone()
            slots = max(0, min(want, budget - int(others)))
            db.execute(
                "INSERT INTO nodes (node, started_at, expires_at, slots) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (node) DO UPDATE SET expires_at = excluded.expires_at,"
                " slots = excluded.slots,"
                " started_at = CASE WHEN nodes.expires_at <= excluded.started_at"
                "  THEN excluded.started_at ELSE nodes.started_at END",
                (node, now, now + ttl, slots),
            )
            return slots, int(live) + 1

        return await self._run(q)

    async def leave(self, node: str) -> None:
        def q(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM nodes WHERE node=?", (node,))

        await self._run(q)
