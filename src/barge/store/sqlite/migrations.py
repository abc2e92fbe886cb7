"""The SQLite schema's migrations: the SQL files in order, and each split into the
statements ``SQLiteStore`` runs."""

from __future__ import annotations

import re
from importlib import resources


def migrations() -> list[tuple[int, str]]:
    """Every migration as (version, SQL), in order."""
    folder = resources.files("barge.store") / "sql"
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql"):
            found.append((int(name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


def split_statements(sql: str) -> list[str]:
    """Split a migration file into statements (no string in it holds a semicolon); a
    ``CREATE TRIGGER`` stays whole, the statements of its ``BEGIN … END`` body included."""
    lines = [ln for ln in sql.splitlines() if not ln.lstrip().startswith("--")]
    statements: list[str] = []
    pending = ""
    for part in "\n".join(lines).split(";"):
        pending = f"{pending};{part}" if pending else part
        text = pending.strip()
        if _TRIGGER.match(text) and not _TRIGGER_END.search(text):
            continue  # inside a trigger's body
        if text:
            statements.append(text)
        pending = ""
    if pending.strip():
        statements.append(pending.strip())
    return statements


_TRIGGER = re.compile(r"CREATE\s+(TEMP\s+|TEMPORARY\s+)?TRIGGER\b", re.I)
_TRIGGER_END = re.compile(r"\bEND$", re.I)
