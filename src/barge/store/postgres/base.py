"""What the PostgreSQL verbs share: the store's statements, moving a batch, and one
page of a list."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from barge.domain.models import BatchRecord
from barge.exceptions import Fenced, NotFound
from barge.store.postgres.moves import _Move
from barge.store.rows import _batch

R = TypeVar("R")
RETRIES = 3  # attempts of a transaction that lost to a deadlock or serialization failure


class Verbs:
    """The base of the mixins ``PostgresStore`` is made of, one per domain; ``_fetch``
    and ``_fetchrow`` are the store's own (``store.py``)."""

    if TYPE_CHECKING:

        async def _fetch(self, sql: str, *args: Any, read: bool = True) -> list[Any]: ...

        async def _fetchrow(self, sql: str, *args: Any, read: bool = True) -> Any: ...

        async def _call(self, fn: Callable[[Any], Awaitable[R]], *, read: bool = False
                        ) -> R: ...

    async def _move(self, batch_id: str, move: _Move, *extra: str,
                    extra_args: Sequence[Any] = ()) -> tuple[bool, BatchRecord]:
        """Run ``move``; (whether it moved, the record). NotFound when no such batch;
        Fenced when the move is fenced and the batch's finalisation token is another."""
        sql, args = move.sql(batch_id, *extra)
        for _ in range(RETRIES):
            row = await self._fetchrow(sql, *args, *extra_args, read=False)
            if row is None:
                raise NotFound(f"No such batch: {batch_id}", param="batch_id")
            b = _batch(row)
            if not row["moved"] and move.fin_token is not None \
                    and row["fin_token"] != move.fin_token:
                raise Fenced(f"Batch {batch_id} is being finalised under another token.",
                             param="fin_token")
            if row["moved"] or b.status not in move.allowed:
                return bool(row["moved"]), b
            # The row read was older than the one the UPDATE found (another node moved
            # the batch in between): ask again.
        return False, b

    async def _transition(self, batch_id: str, move: _Move, *extra: str,
                          extra_args: Sequence[Any] = ()) -> BatchRecord:
        moved, b = await self._move(batch_id, move, *extra, extra_args=extra_args)
        if not moved:
            raise move.refusal(batch_id, b.status)
        return b

    async def _page(
        self, table: str, columns: str, where: list[str], args: list[Any], *,
        account: str, after: str | None, ascending: bool, limit: int, param: str,
        what: str,
    ) -> tuple[list[Any], bool]:
        """One page of ``table`` in list order (``seq``), after the object ``after``
        (which may be gone: it pages on from where it stood), in one statement."""
        direction = "ASC" if ascending else "DESC"
        args = [account, *args, limit + 1]
        limit_arg = f"${len(args)}"
        if after is None:
            rows = await self._fetch(
                f"SELECT {columns} FROM {table} WHERE account = $1"
                f"{''.join(' AND ' + w for w in where)}"
                f" ORDER BY seq {direction} LIMIT {limit_arg}",
                *args,
            )
        else:
            args.append(after)
            cursor = f"${len(args)}"
            rows = await self._fetch(
                f"WITH place AS (SELECT seq FROM {table} WHERE id = {cursor} AND account = $1"
                f" UNION ALL SELECT seq FROM {table}_gone WHERE id = {cursor}"
                f" AND account = $1 LIMIT 1)"
                f" SELECT page.* FROM place LEFT JOIN LATERAL"
                f" (SELECT seq AS page_seq, {columns} FROM {table} WHERE account = $1"
                f"{''.join(' AND ' + w for w in where)}"
                f" AND seq {'>' if ascending else '<'} place.seq"
                f" ORDER BY seq {direction} LIMIT {limit_arg}) AS page ON TRUE"
                f" ORDER BY page.page_seq {direction}",
                *args,
            )
            if not rows:
                raise NotFound(f"No such {what}: {after}", param=param)
            if rows[0]["id"] is None:  # the place exists, the page is empty
                rows = []
        return rows[:limit], len(rows) > limit
