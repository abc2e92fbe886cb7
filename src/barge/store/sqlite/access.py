"""The SQLite verbs on access: API keys, roles, account weights, the secrets nodes share,
and names used once."""

from __future__ import annotations

import sqlite3
import time

import orjson

from barge.domain.models import KeyRecord, Principal
from barge.domain.permissions import Role, make_role
from barge.exceptions import Conflict, NotFound
from barge.store.protocol import USE_ONCE_SLACK, AccountSettings
from barge.store.sqlite.base import Verbs

# Most expired ``used_once`` rows one ``use_once`` call purges.
PURGE_LIMIT = 100


def _settings(row: sqlite3.Row) -> AccountSettings:
    mif, tpm = row["max_in_flight"], row["tokens_per_minute"]
    return AccountSettings(float(row["weight"]), None if mif is None else int(mif),
                           None if tpm is None else int(tpm))


class AccessVerbs(Verbs):
    # -- keys -----------------------------------------------------------------

    async def create_key(self, key: KeyRecord, key_hash: str) -> None:
        def q(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO api_keys (id, name, account, role, key_hash, created_at)"
                " VALUES (?,?,?,?,?,?)",
                (key.id, key.name, key.account, key.role, key_hash, key.created_at),
            )

        await self._run(q)

    async def principal_for(self, key_hash: str) -> Principal | None:
        def q(db: sqlite3.Connection) -> Principal | None:
            row = db.execute(
                "SELECT id, account, role FROM api_keys WHERE key_hash=? AND revoked_at IS NULL",
                (key_hash,),
            ).fetchone()
            return None if row is None else Principal(row["account"], row["id"], row["role"])

        return await self._read(q)

    async def list_keys(self) -> list[KeyRecord]:
        def q(db: sqlite3.Connection) -> list[KeyRecord]:
            rows = db.execute(
                "SELECT id, name, account, role, created_at, revoked_at FROM api_keys"
                " ORDER BY created_at, id"
            ).fetchall()
            return [KeyRecord(**{k: r[k] for k in r.keys()}) for r in rows]  # noqa: SIM118

        return await self._read(q)

    async def revoke_key(self, key_id: str) -> None:
        def q(db: sqlite3.Connection) -> None:
            cur = db.execute(
                "UPDATE api_keys SET revoked_at=? WHERE id=? AND revoked_at IS NULL",
                (int(time.time()), key_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"No such live key: {key_id}", param="key_id")

        await self._run(q)

    # -- roles ----------------------------------------------------------------

    async def create_role(self, account: str, role: Role) -> None:
        def q(db: sqlite3.Connection) -> None:
            try:
                db.execute(
                    "INSERT INTO roles (account, name, actions, operations, created_at)"
                    " VALUES (?,?,?,?,?)",
                    (account, role.name, orjson.dumps(sorted(role.actions)).decode(),
                     orjson.dumps(sorted(role.operations)).decode(), int(time.time())),
                )
            except sqlite3.IntegrityError as e:
                raise Conflict(f"A role named {role.name!r} exists.", param="name") from e

        await self._run(q)

    async def get_role(self, account: str, name: str) -> Role | None:
        def q(db: sqlite3.Connection) -> Role | None:
            row = db.execute(
                "SELECT name, actions, operations FROM roles WHERE account=? AND name=?",
                (account, name),
            ).fetchone()
            return None if row is None else _role(row)

        return await self._read(q)

    async def list_roles(self, account: str | None) -> list[tuple[str, Role]]:
        def q(db: sqlite3.Connection) -> list[tuple[str, Role]]:
            if account is None:
                rows = db.execute("SELECT account, name, actions, operations FROM roles"
                                  " ORDER BY account, name")
            else:
                rows = db.execute("SELECT account, name, actions, operations FROM roles"
                                  " WHERE account=? ORDER BY name", (account,))
            return [(r["account"], _role(r)) for r in rows.fetchall()]

        return await self._read(q)

    # -- account weights ------------------------------------------------------

    async def set_account_weight(self, account: str, weight: float) -> None:
        def q(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO account_weights (account, weight, updated_at) VALUES (?,?,?)"
                " ON CONFLICT (account) DO UPDATE SET weight=excluded.weight,"
                " updated_at=excluded.updated_at",
                (account, float(weight), int(time.time())),
            )

        await self._run(q)

    async def account_weights(self) -> dict[str, float]:
        def q(db: sqlite3.Connection) -> dict[str, float]:
            rows = db.execute("SELECT account, weight FROM account_weights").fetchall()
            return {r["account"]: float(r["weight"]) for r in rows}

        return await self._read(q)

    async def set_account_settings(self, account: str, settings: AccountSettings) -> None:
        def q(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO account_weights"
                " (account, weight, max_in_flight, tokens_per_minute, updated_at)"
                " VALUES (?,?,?,?,?) ON CONFLICT (account) DO UPDATE"
                " SET weight=excluded.weight, max_in_flight=excluded.max_in_flight,"
                " tokens_per_minute=excluded.tokens_per_minute,"
                " updated_at=excluded.updated_at",
                (account, float(settings.weight), settings.max_in_flight,
                 settings.tokens_per_minute, int(time.time())),
            )

        await self._run(q)

    async def account_settings(self) -> dict[str, AccountSettings]:
        def q(db: sqlite3.Connection) -> dict[str, AccountSettings]:
            rows = db.execute("SELECT account, weight, max_in_flight, tokens_per_minute"
                              " FROM account_weights").fetchall()
            return {r["account"]: _settings(r) for r in rows}

        return await self._read(q)

    # -- secrets --------------------------------------------------------------

    async def shared_secret(self, name: str, candidate: str) -> str:
        def q(db: sqlite3.Connection) -> str:
            # One write job: no other writer, of this store or another on the file, comes
            # between the insert and the read.
            db.execute("INSERT OR IGNORE INTO secrets (name, value) VALUES (?,?)",
                       (name, candidate))
            return str(db.execute("SELECT value FROM secrets WHERE name=?",
                                  (name,)).fetchone()[0])

        return await self._run(q)

    async def use_once(self, key: str, *, expires_at: int) -> bool:
        def q(db: sqlite3.Connection) -> bool:
            # One write job, as in shared_secret: no other writer comes between the read
            # and the insert. A row past its time counts as unused, and is purged.
            cutoff = int(time.time()) - USE_ONCE_SLACK
            db.execute(
                "DELETE FROM used_once WHERE name IN (SELECT name FROM used_once"
                " WHERE expires_at < ? AND name <> ? ORDER BY expires_at LIMIT ?)",
                (cutoff, key, PURGE_LIMIT),
            )
            row = db.execute("SELECT expires_at FROM used_once WHERE name=?",
                             (key,)).fetchone()
            if row is not None and row[0] >= cutoff:
                return False
            db.execute("INSERT OR REPLACE INTO used_once (name, expires_at) VALUES (?,?)",
                       (key, int(expires_at)))
            return True

        return await self._run(q)

def _role(row: sqlite3.Row) -> Role:
    return make_role(row["name"], orjson.loads(row["actions"]), orjson.loads(row["operations"]))
