"""Streams a multipart upload straight into a blob writer: the file never sits whole in
memory, and nothing is visible until the whole upload has been checked."""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from barge.blobs.protocol import Blobs, BlobWriter
from barge.exceptions import InvalidRequest

MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 16  # the SDK sends 2 to 4 (file, purpose, expires_after[...])
MAX_PART_HEADER_BYTES = 8 * 1024  # all the headers of one part


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    utf8: bool = True  # the file part decoded as UTF-8


class _Parts:
    """python-multipart callbacks that route the ``file`` part into a blob writer."""

    def __init__(self, writer: BlobWriter, utf8_check: bool) -> None:
        self.upload = Upload()
        self._writer = writer
        self._decoder = codecs.getincrementaldecoder("utf-8")() if utf8_check else None
        self._headers: dict[bytes, bytes] = {}
        self._header_field = b""
        self._header_value = b""
        self._name: str | None = None
        self._value = bytearray()
        self._in_file = False
        self.saw_file = False
        self.utf8_ok = True
        self._parts = 0
        self._part_header_bytes = 0

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise InvalidRequest(f"The multipart body has more than {MAX_PARTS} parts.",
                                 code="too_many_parts")
        self._headers, self._name, self._value, self._in_file = {}, None, bytearray(), False
        self._part_header_bytes = 0

    def _count_header_bytes(self, n: int) -> None:
        self._part_header_bytes += n
        if self._part_header_bytes > MAX_PART_HEADER_BYTES:
            raise InvalidRequest(f"The headers of a multipart part are longer than "
                                 f"{MAX_PART_HEADER_BYTES} bytes.", code="part_headers_too_large")

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._count_header_bytes(end - start)
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._count_header_bytes(end - start)
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        if self._name == "file":
            if self.saw_file:
                raise InvalidRequest("Send exactly one 'file' part.", param="file")
            self.saw_file = True
            self._in_file = True
            raw_name = params.get(b"filename", b"")
            self.upload.filename = raw_name.decode("utf-8", "replace")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._in_file:
            if self._decoder is not None and self.utf8_ok:
                try:
                    self._decoder.decode(chunk)
                except UnicodeDecodeError:
                    self.utf8_ok = False
            self._writer.write(chunk)
            return
        self._value += chunk
        if len(self._value) > MAX_FIELD_BYTES:
            raise InvalidRequest(f"The form field {self._name!r} is too long.", param=self._name)

    def _part_end(self) -> None:
        if not self._in_file and self._name:
            self.upload.fields[self._name] = self._value.decode("utf-8", "replace")
        self._in_file = False

    def finish_utf8(self) -> None:
        if self._decoder is not None and self.utf8_ok:
            try:
                self._decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                self.utf8_ok = False


async def receive_upload(
    request: Request, blobs: Blobs, key: str, *, max_bytes: int
) -> tuple[Upload, BlobWriter]:
    """Parse the multipart body, streaming the ``file`` part into blob ``key``'s writer.
    Returns the writer uncommitted: the caller commits after checking the fields, and
    must abort it on any error."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise InvalidRequest("Upload files as multipart/form-data.", param="file")
    writer = blobs.writer(key, max_bytes=max_bytes)
    try:
        parts = _Parts(writer, utf8_check=True)
        parser = MultipartParser(boundary, parts.callbacks())  # type: ignore[arg-type]
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
        parts.finish_utf8()
        if not parts.saw_file:
            raise InvalidRequest("The 'file' part is missing.", param="file")
        parts.upload.utf8 = parts.utf8_ok
        return parts.upload, writer
    except MultipartParseError as e:
        writer.abort()
        raise InvalidRequest(f"The multipart body is malformed: {e}", param="file") from e
    except BaseException:
        writer.abort()
        raise
