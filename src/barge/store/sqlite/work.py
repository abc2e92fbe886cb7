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
from barge.store.protocol import ExpiredLines, Lease, ResultGroup, SliceProgress, StoredResult
from barge.store.rows import (
    _FILE_COLUMNS,
    _GROUP_COLUMNS,
    _LEASE_COLUMNS,
    _RESULT_COLUMNS,
    _SLICE_COLUMNS,
    LogGroup,
    _field_groups,
    _first_records,
    _group,
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


_ROWS_PER_INSERT = 500  # result records per INSERT (6 parameters each)

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


def _store_records(db: sqlite3.Connection, batch_id: str, commit_no: int,
                   progress: Sequence[SliceProgress], groups: dict[int, LogGroup]) -> None:
    """Store the records of ``progress`` under ``commit_no``, an index already stored
    left out, and add those stored to their slice's log group."""
    rows = [(batch_id, no, idx, int(ok), line, commit_no)
            for (no, idx), (ok, line) in _first_records(progress).items()]
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start:start + _ROWS_PER_INSERT]
        stored = db.execute(
            "INSERT INTO results (batch_id, slice_no, idx, ok, line, commit_no) VALUES "
            + ",".join(["(?,?,?,?,?,?)"] * len(chunk))
            + " ON CONFLICT DO NOTHING RETURNING slice_no, ok, length(line)",
            [v for row in chunk for v in row],
        ).fetchall()
        for no, ok, size in stored:
            g = groups.setdefault(no, [0, 0, 0, 0, 0, 0])
            g[0 if ok else 1] += 1
            g[2 if ok else 3] += size + 1


def _place_groups(db: sqlite3.Connection, b: BatchRecord,
                  expired: Sequence[ExpiredLines]) -> None:
    """Inside ``finish``: log the batch_expired lines as one more commit's groups, and
    set where every group of the batch starts in the published files."""
    if b.result_commits is None:
        return  # a batch from before the log: none of its results were logged
    db.executemany(
        "INSERT INTO result_log (batch_id, commit_no, slice_no, n_ok, n_err, ok_bytes,"
        " err_bytes, part_start, part_end) VALUES (?,?,?,0,?,0,?,0,0)",
        [(b.id, b.result_commits + 1, no, n, size) for no, n, size in expired if n],
    )
    db.execute(
        "UPDATE result_log SET ok_offset = p.ok_offset, err_offset = p.err_offset FROM"
        " (SELECT commit_no, slice_no, sum(ok_bytes) OVER w - ok_bytes AS ok_offset,"
        "  sum(err_bytes) OVER w - err_bytes AS err_offset FROM result_log"
        "  WHERE batch_id = ? WINDOW w AS (ORDER BY slice_no, commit_no)) AS p"
        " WHERE result_log.batch_id = ? AND result_log.commit_no = p.commit_no"
        " AND result_log.slice_no = p.slice_no",
        (b.id, b.id),
    )


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
                " reasoning_tokens=MIN(reasoning_tokens+?, ?),"
                " result_commits=result_commits+1 WHERE id=? RETURNING result_commits",
                (sum(p.completed for p in progress), sum(p.failed for p in progress),
                 time.time(), add[0], MAX_TOKENS, add[1], MAX_TOKENS, add[2], MAX_TOKENS,
                 add[3], MAX_TOKENS, batch_id),
            ).fetchone()
            if counted is None:  # no such batch: nothing is kept
                return
            # Its results are kept with its counts, and logged as this commit's groups.
            commit_no: int | None = counted[0]
            groups = _field_groups(progress)
            if any(p.records for p in progress):
                _store_records(db, batch_id, commit_no or 0, progress, groups)
            if commit_no is not None and groups:
                db.executemany(
                    "INSERT INTO result_log (batch_id, commit_no, slice_no, n_ok, n_err,"
                    " ok_bytes, err_bytes, part_start, part_end) VALUES (?,?,?,?,?,?,?,?,?)",
                    [(batch_id, commit_no, no, *g) for no, g in groups.items()],
                )

        await self._run(q)

    async def slice_results(
        self, batch_id: str, *, after: tuple[int, int, int] | None = None, limit: int = 1000
    ) -> list[StoredResult]:
        if limit <= 0:
            return []

        def q(db: sqlite3.Connection) -> list[StoredResult]:
            if after is None:
                rows = db.execute(
                    f"SELECT {_RESULT_COLUMNS} FROM results WHERE batch_id=?"
                    " ORDER BY slice_no, commit_no, idx LIMIT ?", (batch_id, limit))
            else:
                rows = db.execute(
                    f"SELECT {_RESULT_COLUMNS} FROM results WHERE batch_id=?"
                    " AND (slice_no, commit_no, idx) > (?, ?, ?)"
                    " ORDER BY slice_no, commit_no, idx LIMIT ?",
                    (batch_id, *after, limit))
            return [_result(r) for r in rows.fetchall()]

        return await self._read(q)

    async def result_groups(
        self, batch_id: str, *, after: tuple[int, int] = (0, 0), limit: int = 1000
    ) -> list[ResultGroup]:
        if limit <= 0:
            return []

        def q(db: sqlite3.Connection) -> list[ResultGroup]:
            rows = db.execute(
                f"SELECT {_GROUP_COLUMNS} FROM result_log WHERE batch_id=?"
                " AND (commit_no, slice_no) >= (?, ?) ORDER BY commit_no, slice_no LIMIT ?",
                (batch_id, *after, limit)).fetchall()
            return [_group(r) for r in rows]

        return await self._read(q)

    async def group_results(
        self, batch_id: str, groups: Sequence[tuple[int, int]]
    ) -> list[StoredResult]:
        def q(db: sqlite3.Connection) -> list[StoredResult]:
            found: list[StoredResult] = []
            for commit_no, slice_no in sorted(set(groups)):
                rows = db.execute(
                    f"SELECT {_RESULT_COLUMNS} FROM results WHERE batch_id=? AND slice_no=?"
                    " AND commit_no=? ORDER BY ok DESC, idx", (batch_id, slice_no, commit_no))
                found += [_result(r) for r in rows.fetchall()]
            return found

        return await self._read(q)

    async def done_indexes(self, batch_id: str, slice_no: int) -> list[int]:
        def q(db: sqlite3.Connection) -> list[int]:
            rows = db.execute("SELECT idx FROM results WHERE batch_id=? AND slice_no=?"
                              " ORDER BY idx", (batch_id, slice_no)).fetchall()
            return [int(r[0]) for r in rows]

        return await self._read(q)

    async def finish(
        self, batch_id: str, to: Status, *, files: Sequence[FileRecord],
        expired: Sequence[ExpiredLines] = (), fin_token: int | None = None, **fields: Any,
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
            _place_groups(db, b, expired)
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
