"""Acceptance (no browser): the dashboard and the API docs page are served by Barge
itself, refer to no URL outside the server, and carry a strict Content-Security-Policy."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from ui.support import Dashboard

PAGES = ["/ui/", "/docs"]


class Links(HTMLParser):
    """Every URL an HTML page refers to (src, href, action, …), and its inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts: list[str] = []
        self.attributes: set[str] = set()
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            self.attributes.add(name)
            if name in ("src", "href", "action", "srcset", "poster", "data") and value:
                self.urls.append(value)
        self._in_script = tag == "script" and not dict(attrs).get("src")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts.append(data)


def links(html: str) -> Links:
    parser = Links()
    parser.feed(html)
    return parser


def csp(r: httpx.Response) -> dict[str, list[str]]:
    policy = r.headers["content-security-policy"]
    return {d.split()[0]: d.split()[1:] for d in (p.strip() for p in policy.split(";")) if d}


@pytest.fixture
def http(dashboard: Dashboard) -> httpx.Client:
    return httpx.Client(base_url=dashboard.root, timeout=10)


@pytest.mark.parametrize("path", PAGES)
def test_pages_refer_to_nothing_outside_the_server(http: httpx.Client, path: str) -> None:
    r = http.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), r
    found = links(r.text)
    assert found.urls, "the page refers to no file at all"
    page_url = str(r.url)
    for url in found.urls:
        absolute = urljoin(page_url, url)
        assert urlsplit(absolute).netloc == urlsplit(page_url).netloc, url
        if absolute.startswith(page_url + "#"):
            continue  # a route within the dashboard
        assert http.get(absolute).status_code == 200, absolute
    assert "cdn" not in r.text.lower()


def test_the_dashboard_has_a_strict_policy_and_no_inline_code(http: httpx.Client) -> None:
    r = http.get("/ui")
    assert r.status_code == 307 and r.headers["location"] == "ui/"
    page = http.get("/ui/")
    policy = csp(page)
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"] and policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"] and policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    found = links(page.text)
    assert found.inline_scripts == []  # nor inline styles or handlers, which the CSP bars
    assert "style" not in found.attributes and not [a for a in found.attributes
                                                    if a.startswith("on")]
    for name in ("app.js", "app.css", "favicon.svg"):
        asset = http.get(f"/ui/assets/{name}")
        assert asset.status_code == 200, name
        assert csp(asset)["default-src"] == ["'self'"]
    for name in ("app.js", "app.css"):
        text = http.get(f"/ui/assets/{name}").text
        assert "http://" not in text and "https://" not in text, name
    js = http.get("/ui/assets/app.js").text
    for risky in (".innerHTML", ".outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                  "localStorage.", "document.cookie"):
        assert risky not in js, risky
    assert http.get("/ui/assets/index.html").status_code == 404
    assert http.get("/ui/assets/..%2fdashboard.py").status_code == 404


def test_the_docs_page_is_local_and_its_one_script_is_allowed_by_hash(
    http: httpx.Client,
) -> None:
    page = http.get("/docs")
    policy = csp(page)
    assert policy["default-src"] == ["'self'"]
    assert "'unsafe-inline'" not in policy["script-src"]
    scripts = links(page.text).inline_scripts
    assert len(scripts) == 1 and len(policy["script-src"]) == 2  # 'self' and its hash
    assert policy["script-src"][1].startswith("'sha256-")
    assert http.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    assert http.get("/redoc").status_code == 404
    spec = http.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    assert "/v1/me" in spec["paths"] and not any(p.startswith("/ui") for p in spec["paths"])
