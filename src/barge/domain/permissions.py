"""Roles: which actions a key may take, and which batch operations (endpoints) it may run.

Creating a batch needs ``create_batch`` and the permission for the batch's endpoint.
Every object belongs to an account; a key acts only on its own account's objects."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

ANY_OPERATION = "*"
_ROLE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")


class Action(StrEnum):
    """Every action a role can allow; each names the route family it guards."""

    CREATE_BATCH = "create_batch"  # POST /v1/batches (plus the endpoint's own permission)
    GET_BATCH = "get_batch"  # GET /v1/batches/{id}
    GET_BATCHES = "get_batches"  # GET /v1/batches
    CANCEL_BATCH = "cancel_batch"  # POST /v1/batches/{id}/cancel
    DELETE_BATCH = "delete_batch"  # DELETE /v1/batches/{id}
    UPLOAD_FILE = "upload_file"  # POST /v1/files
    GET_FILE = "get_file"  # GET /v1/files/{id}
    GET_FILES = "get_files"  # GET /v1/files
    DOWNLOAD_FILE = "download_file"  # GET /v1/files/{id}/content
    DELETE_FILE = "delete_file"  # DELETE /v1/files/{id}
    MANAGE_KEYS = "manage_keys"  # /v1/admin/keys and /v1/admin/roles


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    actions: frozenset[Action]
    operations: frozenset[str]  # endpoints such as /v1/chat/completions, or "*" for all

    def allows(self, action: Action) -> bool:
        return action in self.actions

    def allows_operation(self, endpoint: str) -> bool:
        return ANY_OPERATION in self.operations or endpoint in self.operations


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated request: the account it acts for, its key, and its role."""

    account: str
    key_id: str
    role: Role
    # The server's own admin key (BARGE_ADMIN_KEY) manages keys of every account; a stored
    # key allowed manage_keys manages only its own account's keys.
    manages_all_accounts: bool = False


ALL_ACTIONS = frozenset(Action)
BUILTIN_ROLES: dict[str, Role] = {
    "admin": Role("admin", ALL_ACTIONS, frozenset({ANY_OPERATION})),
    "member": Role("member", ALL_ACTIONS - {Action.MANAGE_KEYS}, frozenset({ANY_OPERATION})),
    "reader": Role(
        "reader",
        frozenset({Action.GET_BATCH, Action.GET_BATCHES, Action.GET_FILE, Action.GET_FILES,
                   Action.DOWNLOAD_FILE}),
        frozenset(),
    ),
}


def missing_grants(holder: Role, wanted: Role) -> tuple[list[str], list[str]]:
    """What ``wanted`` allows that ``holder`` does not, as (actions, operations): a key
    may hand on only what it holds itself. The built-in admin role is handed on by
    admin keys alone, however much another role holds."""
    admin = BUILTIN_ROLES["admin"]
    if wanted == admin and holder != admin:
        return sorted(a.value for a in wanted.actions), sorted(wanted.operations)
    actions = sorted(a.value for a in wanted.actions - holder.actions)
    if ANY_OPERATION in holder.operations:
        operations: list[str] = []
    else:
        operations = sorted(wanted.operations - holder.operations)
    return actions, operations


class InvalidRole(ValueError):
    """A role definition that breaks a rule; ``param`` names the field at fault."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def make_role(name: str, actions: Iterable[str], operations: Iterable[str]) -> Role:
    """A custom role, checked; raises InvalidRole naming the field that is wrong."""
    if not _ROLE_NAME.fullmatch(name):
        raise InvalidRole("name", "a role name is 1-64 characters of a-z, 0-9, '_' or '-', "
                                  "starting with a letter")
    if name in BUILTIN_ROLES:
        raise InvalidRole("name", f"{name!r} is a built-in role")
    known = {a.value for a in Action}
    unknown = sorted(set(actions) - known)
    if unknown:
        raise InvalidRole("actions", f"unknown actions {unknown}; known: {sorted(known)}")
    ops = frozenset(operations)
    bad = sorted(op for op in ops if op != ANY_OPERATION and not op.startswith("/v1/"))
    if bad:
        raise InvalidRole("operations",
                          f"operations are endpoints like /v1/chat/completions or '*': {bad}")
    return Role(name, frozenset(Action(a) for a in actions), ops)
