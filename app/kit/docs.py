"""The API's documentation pages (Swagger UI, ReDoc), each with a content-security policy.

FastAPI's own pages are replaced by the same HTML rendered once at start, so the policies can
allow exactly the inline scripts that HTML contains (by their SHA-256) instead of any inline
script: a reflected or stored script on a docs page cannot run. Every page refuses framing.
Everything else the API serves gets the strict API policy from `RequestContextMiddleware`.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse

CDN = "https://cdn.jsdelivr.net"  # where FastAPI's pages load Swagger UI and ReDoc from
FAVICON_HOST = "https://fastapi.tiangolo.com"
_COMMON = "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def inline_script_hashes(html: str) -> list[str]:
    """CSP sources (`'sha256-…'`) of the inline scripts of a page, in document order."""
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(html)
    ]


def _text(response: HTMLResponse) -> str:
    return bytes(response.body).decode()


def _page(html: str, policy: str) -> Callable[[Request], Awaitable[HTMLResponse]]:
    body, headers = html.encode(), {"Content-Security-Policy": policy}

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(body, headers=headers)

    return page


def install_docs(app: FastAPI, *, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve Swagger UI at `docs_url` (with its OAuth2 redirect page) and ReDoc at `redoc_url`;
    the app must be created with `docs_url=None, redoc_url=None`."""
    openapi_url = app.openapi_url
    assert openapi_url is not None, "the docs pages need the OpenAPI document"
    redirect_url = app.swagger_ui_oauth2_redirect_url or f"{docs_url}/oauth2-redirect"

    swagger = _text(
        get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=redirect_url,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )
    )
    swagger_policy = (
        f"default-src 'none'; script-src {CDN} {' '.join(inline_script_hashes(swagger))}; "
        f"style-src {CDN} 'unsafe-inline'; img-src 'self' data: {FAVICON_HOST}; "
        f"connect-src 'self'; {_COMMON}"
    )
    redirect = _text(get_swagger_ui_oauth2_redirect_html())
    redirect_policy = (
        f"default-src 'none'; script-src {' '.join(inline_script_hashes(redirect))}; {_COMMON}"
    )
    redoc = _text(get_redoc_html(openapi_url=openapi_url, title=f"{app.title} - ReDoc"))
    # ReDoc styles itself inline, loads Google's fonts and runs its search in a blob: worker.
    redoc_policy = (
        f"default-src 'none'; script-src {CDN}; "
        "style-src https://fonts.googleapis.com 'unsafe-inline'; "
        "font-src https://fonts.gstatic.com; "
        f"img-src 'self' data: {FAVICON_HOST} https://cdn.redoc.ly; connect-src 'self'; "
        f"worker-src blob:; {_COMMON}"
    )

    for path, html, policy in (
        (docs_url, swagger, swagger_policy),
        (redirect_url, redirect, redirect_policy),
        (redoc_url, redoc, redoc_policy),
    ):
        app.add_route(path, _page(html, policy), include_in_schema=False)
