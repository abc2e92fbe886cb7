"""The response headers of the browser pages: a Content-Security-Policy that lets a page
load and call only this server (``default-src 'self'``), plus the usual hardening."""

from __future__ import annotations

import base64
import hashlib
import re

# The dashboard: its own files only, no inline script or style, no frames, no plugins.
# Downloads are Blob URLs made by the page; ``img-src data:`` is for none so far but costs
# nothing. ``form-action 'none'``: the sign-in form is never submitted to a server.
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def docs_csp(html: str) -> str:
    """The policy of the docs page: this server only, plus the page's own inline script by
    hash (it starts Swagger UI, which sets styles inline)."""
    script_src = " ".join(["'self'", *(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in _INLINE_SCRIPT.findall(html)
    )])
    return (
        f"default-src 'self'; script-src {script_src}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    )


def page_headers(csp: str) -> dict[str, str]:
    return {
        "content-security-policy": csp,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "x-frame-options": "DENY",
        "cache-control": "no-cache",
    }
