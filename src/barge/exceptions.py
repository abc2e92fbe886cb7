"""Barge's own exceptions. Driver errors are translated into these at the edges.

    BargeError
    ├── InvalidRequest      a caller's input is wrong (HTTP 400)
    │   └── PayloadTooLarge     an upload is over a limit (HTTP 413)
    ├── Unauthenticated     no key, or an unknown or revoked key (HTTP 401)
    ├── PermissionDenied    the key may not do this (HTTP 403)
    ├── NotFound            no such object for this account (HTTP 404)
    ├── Conflict            the object's state forbids the action (HTTP 409)
    │   └── Fenced              a lease or claim is no longer held under its token
    ├── StorageError        the disk refused a write (HTTP 507 or 500)
    ├── StoreUnavailable    the metadata store failed (HTTP 503)
    ├── BlobsUnavailable    the object store holding file bytes failed (HTTP 503)
    └── UpstreamError       the upstream could not be reached or answered badly
"""

from __future__ import annotations


class BargeError(Exception):
    """Base class of every error Barge raises on purpose."""

    status_code = 500
    error_type = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequest(BargeError):
    status_code = 400
    error_type = "invalid_request_error"


class PayloadTooLarge(InvalidRequest):
    status_code = 413


class Unauthenticated(BargeError):
    status_code = 401
    error_type = "invalid_request_error"


class PermissionDenied(BargeError):
    status_code = 403
    error_type = "invalid_request_error"


class NotFound(BargeError):
    status_code = 404
    error_type = "invalid_request_error"


class Conflict(BargeError):
    status_code = 409
    error_type = "invalid_request_error"


class Fenced(Conflict):
    """A write under a lease (a slice's) or a finalisation claim (a batch's) whose token
    is no longer the current one: another node took the work over, or the lease was given
    back. Nothing of the write was applied; the caller stops that work and drops what it
    buffered for it."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message, param=param, code=code or "fenced")


class StorageError(BargeError):
    status_code = 507
    error_type = "server_error"


class StoreUnavailable(BargeError):
    status_code = 503
    error_type = "server_error"


class BlobsUnavailable(BargeError):
    status_code = 503
    error_type = "server_error"


class UpstreamError(BargeError):
    status_code = 502
    error_type = "server_error"
