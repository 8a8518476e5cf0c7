"""The operator console at /ui: static files from this package, and its sign-in.

The page is plain HTML, CSS and JavaScript (no build step, nothing fetched from elsewhere); it
reads the same /api routes as every client, authorised by the session cookie that signing in
with an admin token sets (see task_api/auth.py).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from task_api.auth import CSRF_COOKIE, SESSION_COOKIE, SESSION_S
from task_api.body import JsonBodyRoute
from task_api.schemas import Text
from task_api.services import Services
from taskfleet.errors import NotFound, Unauthorized

STATIC = Path(__file__).resolve().parent / "static"
FILES = {p.name: p for p in STATIC.iterdir() if p.is_file()}
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}
# Scripts, styles and API calls from this origin only; previews of results may come from the
# storage's own host (an S3 / R2 / GCS URL), so images and media may load from anywhere.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data: https: http:; media-src 'self' https: http:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class Login(BaseModel):
    token: Text = Field(min_length=1, max_length=1000)


def console_router(svc: Services) -> APIRouter:
    # The API's strict JSON reading: a lone surrogate in a token is a 400, not a failed encode.
    router = APIRouter(route_class=JsonBodyRoute)
    auth = svc.auth

    @router.get("/ui", response_class=FileResponse)
    async def console() -> FileResponse:
        """The console's page (it holds no data: everything it shows comes from /api)."""
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=HEADERS)

    @router.get("/ui/static/{name}", response_class=FileResponse)
    async def static(name: str) -> FileResponse:
        path = FILES.get(name)
        if path is None:
            raise NotFound(f"no console file {name!r}")
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix), headers=HEADERS)

    @router.get("/ui/session")
    async def session(request: Request) -> JSONResponse:
        """Whether the API runs open (no tokens: no sign-in) and whether this browser is signed in."""
        cookie = request.cookies.get(SESSION_COOKIE)
        return JSONResponse({"open": auth.open, "signed_in": auth.open or bool(cookie and auth.session_valid(cookie))})

    @router.post("/ui/login", status_code=204)
    async def login(body: Login, request: Request) -> Response:
        """Sign in with an admin token (in the body, never the URL): sets the session cookie
        (HttpOnly) and the CSRF cookie the page echoes in X-CSRF-Token on its writes."""
        if auth.open:
            return Response(status_code=204)
        opened = auth.open_session(body.token)
        if opened is None:
            raise Unauthorized("not an admin token")
        session_cookie, csrf = opened
        secure = request.url.scheme == "https"
        response = Response(status_code=204)
        response.set_cookie(SESSION_COOKIE, session_cookie, max_age=SESSION_S, path="/", httponly=True,
                            samesite="strict", secure=secure)  # fmt: skip
        response.set_cookie(CSRF_COOKIE, csrf, max_age=SESSION_S, path="/", httponly=False,
                            samesite="strict", secure=secure)  # fmt: skip
        return response

    @router.post("/ui/logout", status_code=204)
    async def logout() -> Response:
        response = Response(status_code=204)
        for name in (SESSION_COOKIE, CSRF_COOKIE):
            response.delete_cookie(name, path="/", httponly=name == SESSION_COOKIE, samesite="strict")
        return response

    return router
