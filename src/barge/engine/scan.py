"""Validation: stream an input file once, check every line, and cut it into work slices."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from barge.domain.models import LineError, Slice
from barge.domain.validation import UTF8_BOM, LineCodes, bom_length, is_blank, parse_line
from barge.engine.duplicates import MEMORY_ENTRIES, DuplicateTracker, LateDuplicates

MAX_REPORTED_ERRORS = 1000  # the batch's errors list keeps the first ones; the count is exact


@dataclass
class ScanResult:
    total: int = 0  # requests (non-blank lines)
    model: str | None = None
    slices: list[Slice] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)
    error_count: int = 0

    def add_error(self, error: LineError) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(error)


def scan_input(
    path: Path,
    *,
    batch_id: str,
    endpoint: str,
    max_requests: int,
    max_bytes: int,
    slice_lines: int,
    serves: Callable[[str], bool] | None = None,
    scratch: Path | None = None,
    memory_ids: int = MEMORY_ENTRIES,
) -> ScanResult:
    """Check every line; memory holds one line, the slices and a bounded table of
    custom_id fingerprints (see ``duplicates``), never the file: past ``memory_ids`` ids
    the table spills into a folder made in ``scratch`` (None: the system's temporary
    folder) and is removed before this returns. ``serves``: whether some upstream serves
    a model (asked once per model name); a line naming a model it refuses is a
    ``model_not_found`` error."""
    result = ScanResult()
    size = path.stat().st_size
    if size > max_bytes:
        result.add_error(
            LineError(LineCodes.FILE_TOO_LARGE, f"The file has {size} bytes; the limit is "
                      f"{max_bytes}.")
        )
        return result
    with DuplicateTracker(path, size=size, spill_dir=scratch,
                          memory_entries=memory_ids) as seen:
        _scan_lines(path, result, seen, batch_id=batch_id, endpoint=endpoint,
                    max_requests=max_requests, slice_lines=slice_lines, serves=serves)
        _add_late(result, seen.finish(MAX_REPORTED_ERRORS))
    if result.total == 0:
        result.add_error(LineError(LineCodes.EMPTY_FILE, "The file holds no requests."))
    return result


def _scan_lines(
    path: Path, result: ScanResult, seen: DuplicateTracker, *, batch_id: str, endpoint: str,
    max_requests: int, slice_lines: int, serves: Callable[[str], bool] | None,
) -> None:
    served: dict[str, bool] = {}
    line_index = -1
    with open(path, "rb") as fh:
        offset = bom_length(fh.read(len(UTF8_BOM)))  # the first slice starts after a BOM
        fh.seek(offset)
        slice_start_line, slice_start_offset = 0, offset
        for line_index, raw in enumerate(fh):
            if line_index - slice_start_line == slice_lines:
                result.slices.append(
                    Slice(batch_id, len(result.slices), slice_start_line, slice_lines,
                          slice_start_offset, offset)
                )
                slice_start_line, slice_start_offset = line_index, offset
            start = offset
            offset += len(raw)
            if is_blank(raw):
                continue
            line_no = line_index + 1
            result.total += 1
            if result.total > max_requests:
                result.add_error(
                    LineError(
                        LineCodes.TOO_MANY_REQUESTS,
                        f"The file holds more than {max_requests} requests.",
                        line_no,
                    )
                )
                return
            parsed = parse_line(raw, line_no, endpoint)
            if isinstance(parsed, LineError):
                result.add_error(parsed)
                continue
            refused = False
            if serves is not None:
                ok = served.get(parsed.model)
                if ok is None:
                    ok = served[parsed.model] = serves(parsed.model)
                refused = not ok
            # A repeated custom_id is the line's error, whatever its model.
            duplicate = seen.check(parsed.custom_id, line_no, start, refused=refused)
            if duplicate is not None:
                result.add_error(duplicate)
                continue
            if refused:
                result.add_error(
                    LineError(LineCodes.MODEL_NOT_FOUND,
                              f"No upstream serves the model {parsed.model!r}.",
                              line_no, "body.model")
                )
                continue
            if result.model is None:
                result.model = parsed.model
    if line_index >= slice_start_line:
        result.slices.append(
            Slice(batch_id, len(result.slices), slice_start_line, line_index + 1 - slice_start_line,
                  slice_start_offset, offset)
        )


def _add_late(result: ScanResult, late: LateDuplicates) -> None:
    """Merge the duplicates found after the fingerprints spilled into the errors, in line
    order. Such a line was valid JSON with a request, so the only error it can already
    have is model_not_found, which its duplicate_custom_id replaces (as at once)."""
    if not late.count:
        return
    lines = {e.line for e in late.errors}
    kept = [e for e in result.errors if e.line not in lines]
    merged = heapq.merge(kept, late.errors, key=_line_order)
    result.errors = list(merged)[:MAX_REPORTED_ERRORS]
    result.error_count += late.count - late.refused


def _line_order(error: LineError) -> float:
    return math.inf if error.line is None else error.line
