"""Validation: stream an input file once, check every line, and cut it into work slices."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from barge.domain.models import LineError, Slice
from barge.domain.validation import (
    UTF8_BOM,
    DuplicateTracker,
    LineCodes,
    bom_length,
    is_blank,
    parse_line,
)

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
) -> ScanResult:
    """Check every line; memory holds one line and the set of custom_ids, never the file.
    ``serves``: whether some upstream serves a model (asked once per model name); a line
    naming a model it refuses is a ``model_not_found`` error."""
    result = ScanResult()
    served: dict[str, bool] = {}
    size = path.stat().st_size
    if size > max_bytes:
        result.add_error(
            LineError(LineCodes.FILE_TOO_LARGE, f"The file has {size} bytes; the limit is "
                      f"{max_bytes}.")
        )
        return result
    seen = DuplicateTracker()
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
                return result
            parsed = parse_line(raw, line_no, endpoint)
            if isinstance(parsed, LineError):
                result.add_error(parsed)
                continue
            duplicate = seen.check(parsed.custom_id, line_no)
            if duplicate is not None:
                result.add_error(duplicate)
                continue
            if serves is not None:
                ok = served.get(parsed.model)
                if ok is None:
                    ok = served[parsed.model] = serves(parsed.model)
                if not ok:
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
    if result.total == 0:
        result.add_error(LineError(LineCodes.EMPTY_FILE, "The file holds no requests."))
    return result
