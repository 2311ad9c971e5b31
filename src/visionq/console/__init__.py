"""The web console: one page and its two assets, served by the HTTP API (``GET /``).

Plain HTML, CSS and JavaScript in this package (no build step; the page loads nothing from any
other origin). The page talks to the API with the key its user types in, kept in the tab's
``sessionStorage`` and sent only in the ``x-api-key`` header, and uploads each picture straight to
the bucket with the job's presigned POST. ``tests/e2e/test_console.py`` drives it in Chromium.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import Response
from starlette.exceptions import HTTPException

PAGE = "index.html"
# The only files /console/{name} serves (a fixed table: no other name, no path, reaches the disk).
ASSETS = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}

# connect-src: the page calls the API on its own origin ('self') and POSTs each file to the
# presigned upload URL, which is on another origin whose name depends on where S3 is: moto or
# LocalStack on another port locally, AWS_ENDPOINT_URL_S3 (a container's host name), or AWS's
# regional or virtual-hosted bucket names. The presign answer is the only authority on it, so the
# policy allows any http(s) origin rather than guess it. This costs little: script-src is 'self'
# with no inline script, the page builds its DOM with textContent only, and the only secret it
# holds (the API key) goes out in a header to 'self' alone; connect-src would only be a second line
# against exfiltration by a script that cannot run here in the first place.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "media-src 'self' blob:",  # a dropped video is read from an object URL
        "connect-src 'self' http: https:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate, so a new version's assets are never mixed with old
}


def _read(name: str) -> bytes:
    return resources.files(__name__).joinpath(name).read_bytes()


def install_console(app: FastAPI) -> None:
    """Add ``GET /`` (the page) and ``GET /console/{name}`` (its script and style sheet) to ``app``,
    outside the OpenAPI document. The files are read once, here: a package built without them
    fails at start, not on a user's first visit."""
    files = {name: _read(name) for name in (PAGE, *ASSETS)}

    @app.get("/", include_in_schema=False)
    def console_page() -> Response:
        return Response(files[PAGE], media_type="text/html; charset=utf-8", headers=HEADERS)

    @app.get("/console/{name}", include_in_schema=False)
    def console_asset(name: str) -> Response:
        if name not in ASSETS:
            raise HTTPException(status_code=404, detail="no such console file")
        return Response(files[name], media_type=ASSETS[name], headers=HEADERS)
