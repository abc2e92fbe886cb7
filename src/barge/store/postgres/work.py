"""The PostgreSQL verbs on a batch's work: its slices, their progress and the results it
stores, the leases nodes hold on slices and on finalisation, finishing, and the nodes'
shares of the upstream budget."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from barge.domain.models import BatchRecord, FileRecord, Slice
from barge.domain.status import Status
from barge.domain.usage import MAX_TOKENS, NO_USAGE
from barge.exceptions import Fenced
from barge.store.postgres.base import Verbs
from barge.store.postgres.moves import _Move
from barge.store.postgres.rows import _NOW, _S_LEASE_COLUMNS
from barge.store.protocol import ExpiredLines, Lease, ResultGroup, SliceProgress, StoredResult
from barge.store.rows import (
    _FILE_COLUMNS,
    _GROUP_COLUMNS,
    _RESULT_COLUMNS,
    _SLICE_COLUMNS,
    _field_groups,
    _first_records,
    _group,
    _lease,
    _result,
    _slice,
    _tokens,
)

# Statuses in which fenced progress is accepted: the batch's requests are being sent, or
# drained after a cancel.
_SENDING = ["processing", "cancel", "cancelling"]

# The result records of a flush (``r``), inserted in its statement from four arrays
# under the commit number ``b`` returned, a record for an index already stored left out;
# and its groups of the results log (``l``): those of the records stored, added to those
# of the entries without records (seven arrays: slice, counts, bytes, part range). A
# batch from before the log (``result_commits`` NULL) logs nothing.
_STORE_RESULTS = (
    " r AS (INSERT INTO results (batch_id, slice_no, idx, ok, line, commit_no)"
    " SELECT $1, u.*, COALESCE((SELECT result_commits FROM b), 0)"
    " FROM unnest(${0}::bigint[], ${1}::bigint[], ${2}::bool[], ${3}::bytea[]) AS u"
    " WHERE EXISTS (SELECT 1 FROM b) ON CONFLICT (batch_id, slice_no, idx) DO NOTHING"
    " RETURNING slice_no, ok, octet_length(line) AS size),"
    " l AS (INSERT INTO result_log (batch_id, commit_no, slice_no, n_ok, n_err, ok_bytes,"
    " err_bytes, part_start, part_end)"
    " SELECT $1, (SELECT result_commits FROM b), g.no, sum(g.n_ok), sum(g.n_err),"
    " sum(g.ok_bytes), sum(g.err_bytes), min(g.part_start), max(g.part_end) FROM"
    " (SELECT slice_no, ok::int, (NOT ok)::int, CASE WHEN ok THEN size + 1 ELSE 0 END,"
    "  CASE WHEN ok THEN 0 ELSE size + 1 END, 0::bigint, 0::bigint FROM r"
    "  UNION ALL SELECT * FROM unnest(${4}::bigint[], ${5}::bigint[], ${6}::bigint[],"
    "  ${7}::bigint[], ${8}::bigint[], ${9}::bigint[], ${10}::bigint[]))"
    " AS g (no, n_ok, n_err, ok_bytes, err_bytes, part_start, part_end)"
    " WHERE (SELECT result_commits FROM b) IS NOT NULL GROUP BY g.no)"
)


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be positive, not {value!r}")


def _lease_arrays(leases: Sequence[Lease]) -> list[list[Any]]:
    """The leases as (batch ids, slice numbers, tokens), for ``unnest``."""
    return [[x.batch_id for x in leases], [x.slice_no for x in leases],
            [x.token for x in leases]]


def _record_arrays(progress: Sequence[SliceProgress]) -> list[list[Any]]:
    """The records of ``progress`` as (slice numbers, indexes, oks, lines), then the log
    groups of its entries without records as seven arrays, for ``unnest``
    (``_STORE_RESULTS``)."""
    records = _first_records(progress)
    groups = _field_groups(progress)
    return [[no for no, _ in records], [idx for _, idx in records],
            [ok for ok, _ in records.values()], [line for _, line in records.values()],
            list(groups), *([g[i] for g in groups.values()] for i in range(6))]


def _file_arrays(files: Sequence[FileRecord]) -> list[list[Any]]:
    """The files as one array per column, for ``unnest``."""
    return [
        [f.id for f in files], [f.account for f in files], [f.filename for f in files],
        [f.purpose for f in files], [f.bytes for f in files], [f.sha256 for f in files],
        [f.created_at for f in files], [f.expires_at for f in files],
        [f.lines for f in files],
    ]


class WorkVerbs(Verbs):
    # -- slices and progress -------------------------------------------------

    async def list_slices(self, batch_id: str) -> list[Slice]:
        rows = await self._fetch(
            f"SELECT {_SLICE_COLUMNS} FROM slices WHERE batch_id=$1 ORDER BY no", batch_id)
        return [_slice(r) for r in rows]

    async def record_progress(self, batch_id: str, progress: Sequence[SliceProgress]) -> None:
        # One entry per slice, as if the list were applied in order: counts add up, the
        # last length and ``done`` stand.
        merged: dict[int, list[int]] = {}
        for p in progress:
            m = merged.setdefault(p.no, [0, 0, 0, 0])
            m[0] = p.committed_bytes
            m[1] += p.completed
            m[2] += p.failed
            m[3] = int(p.done)
        usage = sum((p.usage for p in progress), NO_USAGE)
        # Token sums saturate at MAX_TOKENS (far inside BIGINT): what an upstream reports
        # can never make this statement fail and wedge the batch.
        add = [_tokens(n) for n in (usage.input_tokens, usage.output_tokens,
                                     usage.cached_tokens, usage.reasoning_tokens)]
        if any(p.token is not None for p in progress):
            await self._record_fenced(batch_id, progress, merged, add)
            return
        # The results ride along when the batch exists (``b`` updated its row).
        await self._fetchrow(
            "WITH p AS (SELECT * FROM unnest($2::bigint[], $3::bigint[], $4::bigint[],"
            "  $5::bigint[], $6::bool[]) AS p (no, committed_bytes, completed, failed, done)),"
            " s AS (UPDATE slices SET committed_bytes = p.committed_bytes,"
            "  completed = slices.completed + p.completed, failed = slices.failed + p.failed,"
            "  done = p.done FROM p WHERE slices.batch_id = $1 AND slices.no = p.no),"
            " b AS (UPDATE batches SET completed = completed + $7, failed = failed + $8,"
            f" updated_at = {_NOW},"
            " input_tokens = LEAST(input_tokens + $9, $13),"
            " output_tokens = LEAST(output_tokens + $10, $13),"
            " cached_tokens = LEAST(cached_tokens + $11, $13),"
            " reasoning_tokens = LEAST(reasoning_tokens + $12, $13),"
            " result_commits = result_commits + 1 WHERE id = $1 RETURNING result_commits),"
            f"{_STORE_RESULTS.format(*range(14, 25))}"
            " SELECT 1",
            batch_id, list(merged), [m[0] for m in merged.values()],
            [m[1] for m in merged.values()], [m[2] for m in merged.values()],
            [bool(m[3]) for m in merged.values()],
            sum(p.completed for p in progress), sum(p.failed for p in progress),
            *add, MAX_TOKENS, *_record_arrays(progress), read=False,
        )

    async def _record_fenced(
        self, batch_id: str, progress: Sequence[SliceProgress], merged: dict[int, list[int]],
        add: list[int],
    ) -> None:
        """``record_progress`` under lease tokens, in one statement: ``open`` locks the
        batch while it is being sent and unclaimed for finalisation, then ``held`` the
        slices whose token is still current; only when that is the batch and every slice
        given a token (``ok``) do the slices, the batch and the results change. A
        claimer that took a slice over or claimed the finalisation first has changed a
        token, which the lock's re-check sees; one that comes after waits for this
        statement's commit. The batch is locked first, as ``claim_finalize`` and
        ``renew_leases`` lock it."""
        tokens: dict[int, int] = {}
        for p in progress:
            if p.token is not None and tokens.setdefault(p.no, p.token) != p.token:
                raise Fenced(f"Slice {p.no} of batch {batch_id}: two tokens in one flush.",
                             param="token")
        row = await self._fetchrow(
            "WITH p AS (SELECT * FROM unnest($2::bigint[], $3::bigint[], $4::bigint[],"
            "  $5::bigint[], $6::bool[], $14::bigint[])"
            "  AS p (no, committed_bytes, completed, failed, done, token)),"
            " open AS (SELECT id FROM batches WHERE id = $1 AND fin_token IS NULL"
            "  AND status = ANY($16::text[]) FOR UPDATE),"
            " held AS (SELECT slices.no FROM slices JOIN p ON slices.no = p.no"
            "  WHERE slices.batch_id = $1 AND slices.lease_token = p.token"
            "  AND EXISTS (SELECT 1 FROM open) FOR UPDATE OF slices),"
            " ok AS (SELECT count(*) = $15 AND EXISTS (SELECT 1 FROM open) AS ok FROM held),"
            " s AS (UPDATE slices SET committed_bytes = p.committed_bytes,"
            "  completed = slices.completed + p.completed, failed = slices.failed + p.failed,"
            "  done = p.done FROM p, ok WHERE ok.ok AND slices.batch_id = $1"
            "  AND slices.no = p.no"
            "  AND (p.token IS NULL OR slices.lease_token = p.token)),"
            " b AS (UPDATE batches SET completed = completed + $7, failed = failed + $8,"
            f" updated_at = {_NOW},"
            " input_tokens = LEAST(input_tokens + $9, $13),"
            " output_tokens = LEAST(output_tokens + $10, $13),"
            " cached_tokens = LEAST(cached_tokens + $11, $13),"
            " reasoning_tokens = LEAST(reasoning_tokens + $12, $13),"
            " result_commits = result_commits + 1"
            " WHERE id = $1 AND (SELECT ok FROM ok) RETURNING result_commits),"
            f"{_STORE_RESULTS.format(*range(17, 28))}"
            " SELECT ok FROM ok",
            batch_id, list(merged), [m[0] for m in merged.values()],
            [m[1] for m in merged.values()], [m[2] for m in merged.values()],
            [bool(m[3]) for m in merged.values()],
            sum(p.completed for p in progress), sum(p.failed for p in progress),
            *add, MAX_TOKENS, [tokens.get(no) for no in merged], len(tokens), _SENDING,
            *_record_arrays(progress), read=False,
        )
        if not row["ok"]:
            raise Fenced(f"Batch {batch_id}: a lease given is no longer held under its"
                         " token, or the batch is no longer being processed (or is being"
                         " finalised); nothing was recorded.", param="token")

    async def slice_results(
        self, batch_id: str, *, after: tuple[int, int, int] | None = None, limit: int = 1000
    ) -> list[StoredResult]:
        if limit <= 0:
            return []
        if after is None:
            rows = await self._fetch(
                f"SELECT {_RESULT_COLUMNS} FROM results WHERE batch_id = $1"
                " ORDER BY slice_no, commit_no, idx LIMIT $2", batch_id, limit)
        else:
            rows = await self._fetch(
                f"SELECT {_RESULT_COLUMNS} FROM results WHERE batch_id = $1"
                " AND (slice_no, commit_no, idx) > ($2, $3, $4)"
                " ORDER BY slice_no, commit_no, idx LIMIT $5",
                batch_id, *after, limit)
        return [_result(r) for r in rows]

    async def result_groups(
        self, batch_id: str, *, after: tuple[int, int] = (0, 0), limit: int = 1000
    ) -> list[ResultGroup]:
        if limit <= 0:
            return []
        rows = await self._fetch(
            f"SELECT {_GROUP_COLUMNS} FROM result_log WHERE batch_id = $1"
            " AND (commit_no, slice_no) >= ($2, $3) ORDER BY commit_no, slice_no LIMIT $4",
            batch_id, *after, limit)
        return [_group(r) for r in rows]

    async def group_results(
        self, batch_id: str, groups: Sequence[tuple[int, int]]
    ) -> list[StoredResult]:
        if not groups:
            return []
        rows = await self._fetch(
            f"SELECT {', '.join('r.' + c for c in _RESULT_COLUMNS.split(', '))}"
            " FROM unnest($2::bigint[], $3::bigint[]) AS g (commit_no, slice_no)"
            " JOIN results AS r ON r.batch_id = $1 AND r.slice_no = g.slice_no"
            " AND r.commit_no = g.commit_no"
            " ORDER BY r.commit_no, r.slice_no, r.ok DESC, r.idx",
            batch_id, [c for c, _ in groups], [s for _, s in groups])
        return [_result(r) for r in rows]

    async def done_indexes(self, batch_id: str, slice_no: int) -> list[int]:
        rows = await self._fetch(
            "SELECT idx FROM results WHERE batch_id = $1 AND slice_no = $2 ORDER BY idx",
            batch_id, slice_no)
        return [int(r["idx"]) for r in rows]

    async def finish(
        self, batch_id: str, to: Status, *, files: Sequence[FileRecord],
        expired: Sequence[ExpiredLines] = (), fin_token: int | None = None, **fields: Any,
    ) -> BatchRecord:
        move = _Move([to], None, fields, fin_token=fin_token)
        n = len(move.args)
        # The batch's results go with the move: its files hold them now. Its log gets
        # the batch_expired lines as the groups of one more commit, and every group its
        # place in the files: the bytes of the groups before it in (slice, commit) order.
        # (One statement: the update sees the log as it was, so the new groups are
        # placed in ``placed`` together with the old ones.)
        ctes = [
            "cleared AS (DELETE FROM results WHERE batch_id = $1"
            " AND EXISTS (SELECT 1 FROM moved))",
            "next_commit AS (SELECT result_commits + 1 AS no FROM batches WHERE id = $1"
            " AND result_commits IS NOT NULL)",
            f"expired AS (SELECT e.*, c.no AS commit_no FROM unnest(${n + 1}::bigint[],"
            f" ${n + 2}::bigint[], ${n + 3}::bigint[]) AS e (slice_no, n_err, err_bytes),"
            " next_commit AS c WHERE e.n_err > 0)",
            "placed AS (SELECT commit_no, slice_no,"
            " (sum(ok_bytes) OVER w - ok_bytes)::bigint AS ok_offset,"
            " (sum(err_bytes) OVER w - err_bytes)::bigint AS err_offset"
            " FROM (SELECT commit_no, slice_no, ok_bytes, err_bytes FROM result_log"
            "  WHERE batch_id = $1 UNION ALL"
            "  SELECT commit_no, slice_no, 0, err_bytes FROM expired) AS g"
            " WINDOW w AS (ORDER BY slice_no, commit_no))",
            "placed_old AS (UPDATE result_log AS l SET ok_offset = p.ok_offset,"
            " err_offset = p.err_offset FROM placed AS p WHERE l.batch_id = $1"
            " AND l.commit_no = p.commit_no AND l.slice_no = p.slice_no"
            " AND EXISTS (SELECT 1 FROM moved))",
            "placed_new AS (INSERT INTO result_log (batch_id, commit_no, slice_no, n_ok,"
            " n_err, ok_bytes, err_bytes, part_start, part_end, ok_offset, err_offset)"
            " SELECT $1, e.commit_no, e.slice_no, 0, e.n_err, 0, e.err_bytes, 0, 0,"
            " p.ok_offset, p.err_offset FROM expired AS e JOIN placed AS p"
            " ON p.commit_no = e.commit_no AND p.slice_no = e.slice_no"
            " WHERE EXISTS (SELECT 1 FROM moved))",
        ]
        args: list[Any] = [[e[0] for e in expired], [e[1] for e in expired],
                           [e[2] for e in expired]]
        if files:
            casts = ("text", "text", "text", "text", "bigint", "text", "bigint", "bigint",
                     "bigint")
            arrays = ", ".join(f"${n + 4 + i}::{t}[]" for i, t in enumerate(casts))
            # A file of that id is replaced, and moves to the end of its list (SQLite's
            # INSERT OR REPLACE gives the new row a new seq too).
            ctes.append(
                f"published AS (INSERT INTO files ({_FILE_COLUMNS}) SELECT * FROM"
                f" unnest({arrays}) WHERE EXISTS (SELECT 1 FROM moved) ON CONFLICT (id)"
                " DO UPDATE SET seq = DEFAULT, account = excluded.account,"
                " filename = excluded.filename, purpose = excluded.purpose,"
                " bytes = excluded.bytes, sha256 = excluded.sha256,"
                " created_at = excluded.created_at, expires_at = excluded.expires_at,"
                " lines = excluded.lines)")
            args += _file_arrays(files)
        return await self._transition(batch_id, move, *ctes, extra_args=args)

    # -- leases ---------------------------------------------------------------

    async def claim_slices(
        self, node: str, *, limit: int, lease_seconds: float, batch_id: str | None = None
    ) -> list[Lease]:
        _positive("lease_seconds", lease_seconds)
        if limit <= 0:
            return []
        # SKIP LOCKED: a slice another claimer is taking right now is passed over, not
        # waited for; one taken over since this statement's snapshot fails the re-check
        # of its row (its lease is no longer free) and is left out.
        only, args = ("", []) if batch_id is None else (" AND b.id = $4", [batch_id])
        rows = await self._fetch(
            "WITH free AS (SELECT s.batch_id, s.no, b.seq FROM slices AS s"
            "  JOIN batches AS b ON b.id = s.batch_id"
            f"  WHERE b.status = 'processing' AND b.fin_token IS NULL{only} AND NOT s.done"
            f"  AND (s.lease_expires IS NULL OR s.lease_expires <= {_NOW})"
            "  ORDER BY b.seq, s.no LIMIT $2 FOR UPDATE OF s SKIP LOCKED)"
            " UPDATE slices AS s SET lease_token = nextval('lease_tokens'), lease_owner = $1,"
            f" lease_expires = {_NOW} + $3"
            " FROM free WHERE s.batch_id = free.batch_id AND s.no = free.no"
            f" RETURNING free.seq AS batch_seq, {_S_LEASE_COLUMNS}",
            node, limit, float(lease_seconds), *args, read=False,
        )
        rows.sort(key=lambda r: (r["batch_seq"], r["no"]))
        return [_lease(r) for r in rows]

    async def renew_leases(
        self, leases: Sequence[Lease], *, lease_seconds: float
    ) -> list[Lease]:
        _positive("lease_seconds", lease_seconds)
        if not leases:
            return []
        # ``open`` share-locks the batches nobody has claimed to finalise: a claim made
        # meanwhile is waited for and then seen (the lock's re-check), and one made
        # after waits for this statement (the claim on a cancelling batch looks at the
        # leases).
        rows = await self._fetch(
            "WITH open AS (SELECT id FROM batches WHERE id = ANY($1::text[])"
            "  AND fin_token IS NULL FOR SHARE)"
            f" UPDATE slices AS s SET lease_expires = {_NOW} + $4"
            " FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS l (batch_id, no, token)"
            " WHERE s.batch_id = l.batch_id AND s.no = l.no AND s.lease_token = l.token"
            " AND s.batch_id IN (SELECT id FROM open)"
            f" RETURNING {_S_LEASE_COLUMNS}",
            *_lease_arrays(leases), float(lease_seconds), read=False,
        )
        order = {(x.batch_id, x.slice_no): i for i, x in enumerate(leases)}
        rows.sort(key=lambda r: order[(r["batch_id"], r["no"])])
        return [_lease(r) for r in rows]

    async def release_leases(self, leases: Sequence[Lease]) -> None:
        if not leases:
            return
        await self._fetch(
            "UPDATE slices AS s SET lease_token = NULL, lease_owner = NULL,"
            " lease_expires = NULL"
            " FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS l (batch_id, no, token)"
            " WHERE s.batch_id = l.batch_id AND s.no = l.no AND s.lease_token = l.token",
            *_lease_arrays(leases), read=False,
        )

    async def claim_finalize(
        self, batch_id: str, node: str, *, lease_seconds: float
    ) -> int | None:
        _positive("lease_seconds", lease_seconds)
        # ``b`` locks the batch while its claim is free: of concurrent claimers, the
        # later ones wait and then see the winner's claim (the lock's re-check). On a
        # cancelling batch, ``leased`` share-locks the slices that hold a token and
        # reads their newest expiry, so a renewal under way is waited for and seen.
        row = await self._fetchrow(
            "WITH b AS (SELECT id, status, expires_at FROM batches WHERE id = $1"
            f"  AND (fin_expires IS NULL OR fin_expires <= {_NOW}) FOR UPDATE),"
            " leased AS (SELECT s.lease_expires FROM slices AS s WHERE s.batch_id = $1"
            "  AND s.lease_token IS NOT NULL"
            "  AND EXISTS (SELECT 1 FROM b WHERE b.status = 'cancelling') FOR SHARE OF s)"
            " UPDATE batches SET fin_token = nextval('lease_tokens'), fin_owner = $2,"
            f" fin_expires = {_NOW} + $3"
            " FROM b WHERE batches.id = b.id AND (b.status = 'writing_results'"
            f"  OR (b.status = 'processing' AND b.expires_at <= {_NOW})"
            "  OR (b.status = 'cancelling' AND NOT EXISTS (SELECT 1 FROM leased"
            f"   WHERE lease_expires > {_NOW})))"
            " RETURNING batches.fin_token",
            batch_id, node, float(lease_seconds), read=False,
        )
        return None if row is None else int(row["fin_token"])

    # -- nodes ----------------------------------------------------------------

    async def share_budget(
        self, node: str, *, ttl: float, want: int, budget: int
    ) -> tuple[int, int]:
        _positive("ttl", ttl)

        async def q(conn: Any) -> tuple[int, int]:
            async with conn.transaction():
                # One node at a time settles its share: the sum it reads stays true
                # until it commits.
                await conn.execute("LOCK TABLE nodes IN SHARE ROW EXCLUSIVE MODE")
                await conn.execute(
                    f"DELETE FROM nodes WHERE expires_at <= {_NOW} AND node <> $1", node)
                row = await conn.fetchrow(
                    "SELECT coalesce(sum(slots), 0) AS others, count(*) AS live FROM nodes"
                    " WHERE node <> $1", node)
                slots = max(0, min(want, budget - int(row["others"])))
                await conn.execute(
                    "INSERT INTO nodes (node, started_at, expires_at, slots)"
                    f" VALUES ($1, {_NOW}, {_NOW} + $2, $3)"
                    " ON CONFLICT (node) DO UPDATE SET expires_at = excluded.expires_at,"
                    " slots = excluded.slots,"
                    " started_at = CASE WHEN nodes.expires_at <= excluded.started_at"
                    "  THEN excluded.started_at ELSE nodes.started_at END",
                    node, float(ttl), slots)
                return slots, int(row["live"]) + 1

        return await self._call(q)

    async def leave(self, node: str) -> None:
        await self._fetchrow("DELETE FROM nodes WHERE node = $1", node, read=False)
