"""Serve a local storage's objects over HTTP (``GET/HEAD /{key}``), for the task API to mount.

    app.mount("/files", create_files_app(storage))   # then {public_base_url}/files/{key} works

Starlette's FileResponse streams from disk and answers Range requests, so a 2 GB video is
served without being read into memory.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from storage.errors import StorageError
from storage.keys import guess_content_type
from storage.local import LocalStorage


def create_files_app(storage: LocalStorage) -> Starlette:
    async def serve(request: Request) -> Response:
        key = request.path_params["key"]
        try:
            path = storage.local_path(key)
        except StorageError as exc:
            return JSONResponse(exc.to_body(), status_code=404 if exc.code == "invalid_key" else exc.status)
        if not path.is_file():
            return JSONResponse(
                {"error": {"code": "not_found", "message": f"no such file: {key}"}}, status_code=404
            )
        return FileResponse(path, media_type=guess_content_type(key))

    return Starlette(routes=[Route("/{key:path}", serve, methods=["GET", "HEAD"])])
