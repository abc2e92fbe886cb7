"""The PostgreSQL verbs on access: API keys, roles, account weights, the secrets nodes
share, and names used once."""

from __future__ import annotations

from typing import Any

import orjson

from barge.domain.models import KeyRecord, Principal
from barge.domain.permissions import Role, make_role
from barge.exceptions import Conflict, NotFound
from barge.store.postgres.base import Verbs
from barge.store.postgres.rows import _NOW_S
from barge.store.protocol import USE_ONCE_SLACK, AccountSettings

# Most expired ``used_once`` rows one ``use_once`` call purges.
PURGE_LIMIT = 100


def _role(row: Any) -> Role:
    return make_role(row["name"], orjson.loads(row["actions"]), orjson.loads(row["operations"]))


def _settings(row: Any) -> AccountSettings:
    mif, tpm = row["max_in_flight"], row["tokens_per_minute"]
    return AccountSettings(float(row["weight"]), None if mif is None else int(mif),
                           None if tpm is None else int(tpm))


class AccessVerbs(Verbs):
    # -- keys -----------------------------------------------------------------

    async def create_key(self, key: KeyRecord, key_hash: str) -> None:
        await self._fetchrow(
            "INSERT INTO api_keys (id, name, account, role, key_hash, created_at)"
            " VALUES ($1,$2,$3,$4,$5,$6)",
            key.id, key.name, key.account, key.role, key_hash, key.created_at, read=False,
        )

    async def principal_for(self, key_hash: str) -> Principal | None:
        row = await self._fetchrow(
            "SELECT id, account, role FROM api_keys WHERE key_hash=$1 AND revoked_at IS NULL",
            key_hash,
        )
        return None if row is None else Principal(row["account"], row["id"], row["role"])

    async def list_keys(self) -> list[KeyRecord]:
        rows = await self._fetch(
            "SELECT id, name, account, role, created_at, revoked_at FROM api_keys"
            ' ORDER BY created_at, id COLLATE "C"'
        )
        return [KeyRecord(r["id"], r["name"], r["account"], r["role"], r["created_at"],
                          r["revoked_at"]) for r in rows]

    async def revoke_key(self, key_id: str) -> None:
        row = await self._fetchrow(
            f"UPDATE api_keys SET revoked_at = {_NOW_S} WHERE id=$1 AND revoked_at IS NULL"
            " RETURNING id",
            key_id, read=False,
        )
        if row is None:
            raise NotFound(f"No such live key: {key_id}", param="key_id")

    # -- roles ----------------------------------------------------------------

    async def create_role(self, account: str, role: Role) -> None:
        row = await self._fetchrow(
            "INSERT INTO roles (account, name, actions, operations, created_at)"
            f" VALUES ($1, $2, $3::jsonb, $4::jsonb, {_NOW_S})"
            " ON CONFLICT (account, name) DO NOTHING RETURNING name",
            account, role.name, orjson.dumps(sorted(role.actions)).decode(),
            orjson.dumps(sorted(role.operations)).decode(), read=False,
        )
        if row is None:
            raise Conflict(f"A role named {role.name!r} exists.", param="name")

    async def get_role(self, account: str, name: str) -> Role | None:
        row = await self._fetchrow(
            "SELECT name, actions, operations FROM roles WHERE account=$1 AND name=$2",
            account, name,
        )
        return None if row is None else _role(row)

    async def list_roles(self, account: str | None) -> list[tuple[str, Role]]:
        if account is None:
            rows = await self._fetch(
                "SELECT account, name, actions, operations FROM roles"
                ' ORDER BY account COLLATE "C", name COLLATE "C"')
        else:
            rows = await self._fetch(
                "SELECT account, name, actions, operations FROM roles WHERE account=$1"
                ' ORDER BY name COLLATE "C"', account)
        return [(r["account"], _role(r)) for r in rows]

    # -- account weights ------------------------------------------------------

    async def set_account_weight(self, account: str, weight: float) -> None:
        await self._fetchrow(
            "INSERT INTO account_weights (account, weight, updated_at)"
            f" VALUES ($1, $2, {_NOW_S}) ON CONFLICT (account) DO UPDATE"
            " SET weight = excluded.weight, updated_at = excluded.updated_at",
            account, float(weight), read=False,
        )

    async def account_weights(self) -> dict[str, float]:
        rows = await self._fetch("SELECT account, weight FROM account_weights")
        return {r["account"]: float(r["weight"]) for r in rows}

    async def set_account_settings(self, account: str, settings: AccountSettings) -> None:
        await self._fetchrow(
            "INSERT INTO account_weights"
            " (account, weight, max_in_flight, tokens_per_minute, updated_at)"
            f" VALUES ($1, $2, $3, $4, {_NOW_S}) ON CONFLICT (account) DO UPDATE"
            " SET weight = excluded.weight, max_in_flight = excluded.max_in_flight,"
            " tokens_per_minute = excluded.tokens_per_minute,"
            " updated_at = excluded.updated_at",
            account, float(settings.weight), settings.max_in_flight,
            settings.tokens_per_minute, read=False,
        )

    async def account_settings(self) -> dict[str, AccountSettings]:
        rows = await self._fetch("SELECT account, weight, max_in_flight, tokens_per_minute"
                                 " FROM account_weights")
        return {r["account"]: _settings(r) for r in rows}

    # -- secrets --------------------------------------------------------------

    async def shared_secret(self, name: str, candidate: str) -> str:
        # On a conflict, DO UPDATE (not DO NOTHING) returns the stored row, even one a
        # concurrent caller committed after this statement's snapshot: every caller
        # gets the first value.
        row = await self._fetchrow(
            "INSERT INTO secrets (name, value) VALUES ($1, $2)"
            " ON CONFLICT (name) DO UPDATE SET value = secrets.value RETURNING value",
            name, candidate, read=False,
        )
        return str(row["value"])

    async def use_once(self, key: str, *, expires_at: int) -> bool:
        # The insert of a name in use waits for its first user's statement to commit and
        # then finds the row: of concurrent callers exactly one inserts it (or, when the
        # row is past its time, updates it: the others then see the new expiry and update
        # nothing). The purge skips rows other calls are purging, and the name itself,
        # which the insert takes care of.
        row = await self._fetchrow(
            "WITH gone AS (DELETE FROM used_once WHERE name IN (SELECT name FROM used_once"
            f"  WHERE expires_at < {_NOW_S} - $3 AND name <> $1"
            "  ORDER BY expires_at LIMIT $4 FOR UPDATE SKIP LOCKED))"
            " INSERT INTO used_once (name, expires_at) VALUES ($1, $2)"
            " ON CONFLICT (name) DO UPDATE SET expires_at = excluded.expires_at"
            f" WHERE used_once.expires_at < {_NOW_S} - $3 RETURNING name",
            key, int(expires_at), USE_ONCE_SLACK, PURGE_LIMIT, read=False,
        )
        return row is not None
