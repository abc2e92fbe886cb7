"""The process's log: text for people (the default) or JSON lines for machines
(``--log-format json``), uvicorn's own loggers included.

A record may carry structured fields through ``extra=``: ``event`` (what happened, such
as ``batch.created``), ``batch_id``, ``account`` and any other of its own. JSON lines
hold them as keys next to ``ts``, ``level``, ``logger`` and ``message`` (and ``exc`` with
the traceback, when there is one); text lines end with them as ``key=value``.
``batch_event`` logs one event of a batch's lifecycle, at info."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from barge.domain.models import BatchRecord

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Every attribute a plain LogRecord has (and those the formatting adds): what is left on
# a record is what its ``extra=`` put there.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName",
    "color_message",  # uvicorn's copy of the message with terminal colours
}
# Fields every reader looks for first, in this order; the others follow sorted.
FIRST_FIELDS = ("event", "batch_id", "account")


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields ``extra=`` put on ``record``, the well-known ones first."""
    extra = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
    ordered = {k: extra.pop(k) for k in FIRST_FIELDS if k in extra}
    return ordered | dict(sorted(extra.items()))


def _default(value: object) -> str:
    return str(value)


class JSONFormatter(logging.Formatter):
    """One JSON object per line (never a newline inside: orjson escapes them)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
                  .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in fields_of(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=_default,
                            option=orjson.OPT_NON_STR_KEYS).decode()


class TextFormatter(logging.Formatter):
    """The classic line, then `` key=value`` for each structured field."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = fields_of(record)
        if not fields:
            return line
        return line + " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())


def _text_value(value: object) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=_default).decode()
    return orjson.dumps(text).decode() if not text or " " in text or '"' in text else text


def formatter(log_format: LogFormat) -> logging.Formatter:
    return JSONFormatter() if log_format == "json" else TextFormatter()


def setup_logging(level: str, log_format: LogFormat = "text") -> None:
    """Send every logger's records (uvicorn's too: ``runserver`` gives it no handlers of
    its own) to stderr at ``level``, in ``log_format``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(True)


def batch_event(log: logging.Logger, event: str, batch: BatchRecord, message: str,
                *args: object, **fields: Any) -> None:
    """Log ``event`` of ``batch``'s lifecycle at info, with ``event``, ``batch_id``,
    ``account`` and ``fields`` as structured fields (``message`` % ``args`` says the same
    for people). Called once per event per batch, by the node that made it happen; never
    on a per-request path."""
    log.info(message, *args,
             extra={"event": event, "batch_id": batch.id, "account": batch.account, **fields})


def seconds_since_created(batch: BatchRecord, now: float) -> float:
    """Seconds from ``batch``'s creation (to the millisecond where known) to ``now``."""
    created = batch.created_ms / 1000 if batch.created_ms is not None else batch.created_at
    return max(0.0, round(now - created, 3))


def json_logging() -> bool:
    """Whether the log is JSON lines (``setup_logging(..., "json")`` ran)."""
    return any(isinstance(h.formatter, JSONFormatter) for h in logging.getLogger().handlers)


def tell(text: str, *, level: int = logging.WARNING) -> None:
    """Say ``text`` to the person running Barge, on stderr: as it is, or, when the log
    is JSON lines, as one more of them (so that every line of the output parses)."""
    if json_logging():
        logging.getLogger("barge").log(level, text)
    else:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
