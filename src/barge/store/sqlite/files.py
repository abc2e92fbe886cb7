"""The SQLite verbs on files."""

from __future__ import annotations

import sqlite3

from barge.domain.models import FileRecord
from barge.domain.status import TERMINAL, Status
from barge.exceptions import Conflict, NotFound
from barge.store.protocol import Page
from barge.store.rows import _FILE_COLUMNS, _file
from barge.store.sqlite.base import Verbs, _position


class FileVerbs(Verbs):
    # -- files ----------------------------------------------------------------

    async def create_file(self, f: FileRecord) -> None:
        def q(db: sqlite3.Connection) -> None:
            db.execute(
                f"INSERT INTO files ({_FILE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
                (f.id, f.account, f.filename, f.purpose, f.bytes, f.sha256, f.created_at,
                 f.expires_at, f.lines),
            )

        await self._run(q)

    async def get_file(self, account: str, file_id: str) -> FileRecord:
        def q(db: sqlite3.Connection) -> FileRecord:
            row = db.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE id=? AND account=?", (file_id, account)
            ).fetchone()
            if row is None:
                raise NotFound(f"No such file: {file_id}", param="file_id")
            return _file(row)

        return await self._read(q)

    async def list_files(
        self, account: str, *, purpose: str | None, limit: int, order: str, after: str | None
    ) -> Page[FileRecord]:
        desc = order == "desc"

        def q(db: sqlite3.Connection) -> Page[FileRecord]:
            where: list[str] = ["account=?"]
            args: list[str | int] = [account]
            if purpose is not None:
                where.append("purpose=?")
                args.append(purpose)
            if after is not None:
                seq = _position(db, "files", after, account)
                if seq is None:
                    raise NotFound(f"No such file: {after}", param="after")
                where.append("seq < ?" if desc else "seq > ?")
                args.append(seq)
            rows = db.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE {' AND '.join(where)}"
                f" ORDER BY seq {'DESC' if desc else 'ASC'} LIMIT ?",
                (*args, limit + 1),
            ).fetchall()
            return Page([_file(r) for r in rows[:limit]], len(rows) > limit)

        return await self._read(q)

    async def delete_file(self, account: str, file_id: str) -> None:
        def q(db: sqlite3.Connection) -> None:
            row = db.execute(
                "SELECT 1 FROM files WHERE id=? AND account=?", (file_id, account)
            ).fetchone()
            if row is None:
                raise NotFound(f"No such file: {file_id}", param="file_id")
            placeholders = ",".join("?" * (len(TERMINAL) + 1))
            busy = db.execute(
                f"SELECT id FROM batches WHERE input_file_id=? AND status NOT IN ({placeholders})"
                " LIMIT 1",
                (file_id, *TERMINAL, Status.DELETING),
            ).fetchone()
            if busy is not None:
                raise Conflict(
                    f"The file is the input of batch {busy['id']}, which has not finished.",
                    param="file_id",
                )
            db.execute("DELETE FROM files WHERE id=?", (file_id,))

        await self._run(q)

    async def expired_files(self, now: int, *, limit: int) -> list[FileRecord]:
        def q(db: sqlite3.Connection) -> list[FileRecord]:
            rows = db.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE expires_at IS NOT NULL"
                " AND expires_at <= ? ORDER BY expires_at LIMIT ?",
                (now, limit),
            ).fetchall()
            return [_file(r) for r in rows]

        return await self._read(q)
