"""The status page: one self-contained HTML document (its style and script inlined) built
from this package's data, and the rule that decides who gets it instead of JSON."""

from __future__ import annotations

import base64
import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

_STYLE_MARK = "/* style */"
_SCRIPT_MARK = "/* script */"


@dataclass(frozen=True, slots=True)
class Page:
    body: bytes
    policy: str  # Content-Security-Policy: nothing but this page's own style and script


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@functools.cache
def page() -> Page:
    """Read and assemble once: the files never change while the process runs."""
    files = resources.files(__package__)
    html = files.joinpath("status.html").read_text("utf-8")
    style = files.joinpath("status.css").read_text("utf-8")
    script = files.joinpath("status.js").read_text("utf-8")
    html = html.replace(_STYLE_MARK, style).replace(_SCRIPT_MARK, script)
    policy = "; ".join(
        (
            "default-src 'none'",
            f"script-src {_sha256(script)}",
            f"style-src {_sha256(style)}",
            "img-src data:",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )
    return Page(html.encode("utf-8"), policy)


def response() -> web.Response:
    built = page()
    return web.Response(
        body=built.body,
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": built.policy,
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
            "Vary": "Accept",
        },
    )


def wants_html(accept: str | None) -> bool:
    """Whether a client asks for HTML rather than JSON: it names `text/html` itself (a
    browser), with a quality no lower than any JSON type it names. `*/*`, no Accept, or
    `application/json` keep the JSON that programs rely on."""
    if not accept:
        return False
    html = json = 0.0
    for item in accept.split(","):
        media, _, params = item.partition(";")
        quality = _quality(params)
        match media.strip().lower():
            case "text/html" | "application/xhtml+xml":
                html = max(html, quality)
            case "application/json" | "application/*":
                json = max(json, quality)
    return html > 0.0 and html >= json


def _quality(params: str) -> float:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return min(1.0, max(0.0, float(value)))
            except ValueError:
                return 0.0
    return 1.0
