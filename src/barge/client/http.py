"""One aiohttp session behind plain, blocking methods, for the client commands.

The session lives on an ``asyncio.Runner`` kept for the whole command, so every call
reuses its connections; Ctrl-C during a call cancels it and surfaces as
KeyboardInterrupt (the Runner's doing). Whatever goes wrong becomes an ApiError: the
server's OpenAI-shaped error (its message), or why the server could not be reached."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import orjson

from barge.exceptions import BargeError

T = TypeVar("T")
CHUNK = 256 * 1024  # bytes read at a time from a download


class ApiError(BargeError):
    """The server answered with an error (``status``), or could not be reached
    (``status`` None); ``message`` is what to tell the user."""

    def __init__(self, message: str, *, status: int | None = None,
                 type_: str | None = None, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message, param=param, code=code)
        self.status = status
        self.type = type_

    @property
    def transient(self) -> bool:
        """Whether asking again later may well work (no answer, or a 5xx)."""
        return self.status is None or self.status >= 500


def api_base(url: str) -> str:
    """The API root, ``…/v1``, from a server URL given with or without ``/v1``."""
    url = url.strip().rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def _error_of(status: int, body: bytes) -> ApiError:
    """The ApiError of an error answer: its OpenAI error's message when it has one."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    err = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return ApiError(err["message"], status=status, type_=err.get("type"),
                        param=err.get("param"), code=err.get("code"))
    text = body.decode(errors="replace").strip()[:200]
    return ApiError(f"HTTP {status}" + (f": {text}" if text else ""), status=status)


@dataclass(frozen=True)
class Downloaded:
    bytes: int
    lines: int


class Client:
    """``with Client(base_url, api_key) as client: client.get_batch(id)``."""

    def __init__(self, base_url: str, api_key: str | None, *,
                 connect_timeout: float = 10.0, read_timeout: float = 300.0) -> None:
        self.base = api_base(base_url)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout,
                                              sock_read=read_timeout)
        self._runner = asyncio.Runner()
        self._session: aiohttp.ClientSession | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        try:
            if self._session is not None:
                with contextlib.suppress(Exception):
                    self._runner.run(self._session.close())
        finally:
            self._session = None
            self._runner.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coro)

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self._session

    async def _call(self, method: str, path: str, *, json: Any = None,
                    data: aiohttp.FormData | None = None,
                    params: dict[str, Any] | None = None) -> Any:
        http = await self._http()
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        try:
            async with http.request(method, self.base + path, json=json, data=data,
                                    params=query) as r:
                body = await r.read()
                if r.status >= 400:
                    raise _error_of(r.status, body)
        except aiohttp.ClientError as e:
            raise ApiError(f"cannot reach {self.base}: {e or type(e).__name__}") from None
        except TimeoutError:
            raise ApiError(f"{self.base} did not answer in time") from None
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ApiError(f"{self.base}{path} answered with something not JSON",
                           status=r.status) from None

    def request(self, method: str, path: str, *, json: Any = None,
                params: dict[str, Any] | None = None) -> Any:
        """``method`` on ``<base>/v1<path>``: the parsed JSON answer."""
        return self._run(self._call(method, path, json=json, params=params))

    # ---- files -----------------------------------------------------------------------------
    def upload(self, path: Path, purpose: str = "batch") -> dict[str, Any]:
        """POST /files, the file streamed from disk as multipart."""
        with path.open("rb") as f:
            form = aiohttp.FormData()
            form.add_field("purpose", purpose)
            form.add_field("file", f, filename=path.name, content_type="application/jsonl")
            answer: dict[str, Any] = self._run(self._call("POST", "/files", data=form))
        return answer

    def list_files(self, *, purpose: str | None = None, limit: int | None = None,
                   after: str | None = None) -> dict[str, Any]:
        answer: dict[str, Any] = self.request(
            "GET", "/files", params={"purpose": purpose, "limit": limit, "after": after})
        return answer

    def get_file(self, file_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("GET", f"/files/{file_id}")
        return answer

    def delete_file(self, file_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("DELETE", f"/files/{file_id}")
        return answer

    async def _stream(self, file_id: str, write: Callable[[bytes], object]) -> Downloaded:
        http = await self._http()
        size = lines = 0
        last = b""
        try:
            async with http.get(f"{self.base}/files/{file_id}/content") as r:
                if r.status >= 400:
                    raise _error_of(r.status, await r.read())
                async for chunk in r.content.iter_chunked(CHUNK):
                    write(chunk)
                    size += len(chunk)
                    lines += chunk.count(b"\n")
                    last = chunk
        except aiohttp.ClientError as e:
            raise ApiError(f"downloading {file_id} from {self.base} failed: "
                           f"{e or type(e).__name__}") from None
        except TimeoutError:
            raise ApiError(f"downloading {file_id}: {self.base} stopped answering") from None
        if size and not last.endswith(b"\n"):
            lines += 1
        return Downloaded(size, lines)

    def download(self, file_id: str, dest: Path) -> Downloaded:
        """The file's content into ``dest``: written to a temporary file beside it, then
        renamed, so ``dest`` is never half-written."""
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.",
                                       suffix=".part")
        except OSError as e:
            raise BargeError(f"cannot write {dest}: {e.strerror or e}") from None
        try:
            with os.fdopen(fd, "wb") as out:
                done = self._run(self._stream(file_id, out.write))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(e, OSError):
                raise BargeError(f"cannot write {dest}: {e.strerror or e}") from None
            raise
        return done

    def download_to(self, file_id: str, write: Callable[[bytes], object]) -> Downloaded:
        """The file's content, chunk by chunk, to ``write`` (such as stdout's)."""
        return self._run(self._stream(file_id, write))

    # ---- batches ---------------------------------------------------------------------------
    def create_batch(self, input_file_id: str, endpoint: str, completion_window: str,
                     metadata: dict[str, str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"input_file_id": input_file_id, "endpoint": endpoint,
                                "completion_window": completion_window}
        if metadata:
            body["metadata"] = metadata
        answer: dict[str, Any] = self.request("POST", "/batches", json=body)
        return answer

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("GET", f"/batches/{batch_id}")
        return answer

    def list_batches(self, *, limit: int | None = None,
                     after: str | None = None) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("GET", "/batches",
                                              params={"limit": limit, "after": after})
        return answer

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("POST", f"/batches/{batch_id}/cancel")
        return answer

    def delete_batch(self, batch_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("DELETE", f"/batches/{batch_id}")
        return answer

    def retry_batch(self, batch_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("POST", f"/batches/{batch_id}/retry")
        return answer

    async def _results(self, batch_id: str, after: str | None, limit: int | None
                       ) -> tuple[bytes, str]:
        http = await self._http()
        query = {k: str(v) for k, v in (("after", after), ("limit", limit)) if v}
        try:
            async with http.get(f"{self.base}/batches/{batch_id}/results",
                                params=query) as r:
                body = await r.read()
                if r.status >= 400:
                    raise _error_of(r.status, body)
                return body, r.headers.get("barge-next-after", "")
        except aiohttp.ClientError as e:
            raise ApiError(f"cannot reach {self.base}: {e or type(e).__name__}") from None
        except TimeoutError:
            raise ApiError(f"{self.base} did not answer in time") from None

    def results_page(self, batch_id: str, *, after: str | None = None,
                     limit: int | None = None) -> tuple[bytes, str]:
        """One page of the batch's results so far (JSON Lines) and the cursor after it
        ("" once the batch has ended and every result was read)."""
        return self._run(self._results(batch_id, after, limit))

    # ---- webhooks --------------------------------------------------------------------------
    def add_webhook(self, url: str, events: list[str] | None) -> dict[str, Any]:
        body: dict[str, Any] = {"url": url}
        if events is not None:
            body["events"] = events
        answer: dict[str, Any] = self.request("POST", "/admin/webhooks", json=body)
        return answer

    def list_webhooks(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("GET", "/admin/webhooks")
        return answer

    def delete_webhook(self, webhook_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("DELETE", f"/admin/webhooks/{webhook_id}")
        return answer
