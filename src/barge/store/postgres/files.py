"""The PostgreSQL verbs on files."""

from __future__ import annotations

from barge.domain.models import FileRecord
from barge.domain.status import TERMINAL, Status
from barge.exceptions import Conflict, NotFound
from barge.store.postgres.base import Verbs
from barge.store.protocol import Page
from barge.store.rows import _FILE_COLUMNS, _clamp, _file


class FileVerbs(Verbs):
    # -- files ----------------------------------------------------------------

    async def create_file(self, f: FileRecord) -> None:
        await self._fetchrow(
            f"INSERT INTO files ({_FILE_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
            f.id, f.account, f.filename, f.purpose, f.bytes, f.sha256, f.created_at,
            f.expires_at, f.lines, read=False,
        )

    async def get_file(self, account: str, file_id: str) -> FileRecord:
        row = await self._fetchrow(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE id=$1 AND account=$2", file_id, account
        )
        if row is None:
            raise NotFound(f"No such file: {file_id}", param="file_id")
        return _file(row)

    async def list_files(
        self, account: str, *, purpose: str | None, limit: int, order: str, after: str | None
    ) -> Page[FileRecord]:
        where, args = [], []
        if purpose is not None:
            where.append("purpose = $2")
            args.append(purpose)
        rows, more = await self._page(
            "files", _FILE_COLUMNS, where, args, account=account, after=after,
            ascending=order != "desc", limit=limit, param="after", what="file",
        )
        return Page([_file(r) for r in rows], more)

    async def delete_file(self, account: str, file_id: str) -> None:
        row = await self._fetchrow(
            "WITH f AS (SELECT id FROM files WHERE id = $1 AND account = $2 FOR UPDATE),"
            " busy AS (SELECT b.id FROM batches AS b JOIN f ON b.input_file_id = f.id"
            "  WHERE b.status <> ALL($3::text[]) LIMIT 1),"
            " gone AS (DELETE FROM files WHERE id IN (SELECT id FROM f)"
            "  AND NOT EXISTS (SELECT 1 FROM busy) RETURNING id)"
            " SELECT EXISTS (SELECT 1 FROM f) AS found, (SELECT id FROM busy) AS busy",
            file_id, account, sorted(s.value for s in {*TERMINAL, Status.DELETING}), read=False,
        )
        if not row["found"]:
            raise NotFound(f"No such file: {file_id}", param="file_id")
        if row["busy"] is not None:
            raise Conflict(
                f"The file is the input of batch {row['busy']}, which has not finished.",
                param="file_id",
            )

    async def expired_files(self, now: int, *, limit: int) -> list[FileRecord]:
        rows = await self._fetch(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE expires_at IS NOT NULL"
            " AND expires_at <= $1 ORDER BY expires_at, seq LIMIT $2",
            _clamp(now), limit,
        )
        return [_file(r) for r in rows]
