"""The FastAPI application of `scan serve`: the JSON API, the page, and the rules every request obeys.

    app = create_app(Index.open("photos.index"), ServeSettings())

Routes (all JSON unless said otherwise; every error is `{"error": {"message", "field"}}` with a
4xx status, except 503 for a request that ran out of time):

    GET  /                               the search page (HTML; its script and style below)
    GET  /static/{app.js,app.css}        the page's assets, from the package: no CDN, no network
    GET  /api/health                     liveness and what the index holds
    GET  /api/search?q=...&k=10          text -> photos, ranked by SCAN
    POST /api/search/image?k=10          multipart field "photo" -> captions of the caption collection
    GET  /api/explain?q=...&id=N         each word's attention over photo N's regions (boxes, weights)
    GET  /api/photos/{id}                the photo file (by index id only, never by a path)
    GET  /api/photos/{id}/thumbnail      a small JPEG of it
    GET  /api/openapi.json, /api/docs    the OpenAPI schema, and a page listing it (no CDN assets)
"""

from __future__ import annotations

import asyncio
import hmac
import json
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from scan.errors import ScanError
from scan.search.index import Index
from scan.serve.service import RequestError, SearchService
from scan.serve.settings import ServeSettings

__all__ = ["TOKEN_COOKIE", "create_app"]

TOKEN_COOKIE = "scan_token"
STATIC = {"app.js": "text/javascript", "app.css": "text/css"}  # the only files served from the package
UPLOAD_OVERHEAD = 64 * 1024  # multipart framing and headers allowed beside the photo's bytes
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'"
    ),
}


def _error(status: int, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "field": field}}, status_code=status)


def _asset(name: str) -> str:
    return resources.files("scan.serve").joinpath("static", name).read_text(encoding="utf-8")


def create_app(index: Index, settings: ServeSettings | None = None) -> FastAPI:
    """The application serving `index` within `settings` (checked here)."""
    settings = (settings or ServeSettings()).check()
    service = SearchService(index, settings)
    app = FastAPI(
        title="scan",
        summary="Search a photo collection with SCAN: a vector index shortlists, Stacked Cross Attention re-ranks.",
        version="1",
        openapi_url="/api/openapi.json",
        docs_url=None,  # FastAPI's Swagger and ReDoc pages load their scripts from a CDN; /api/docs does not
        redoc_url=None,
    )
    app.state.service = service
    app.state.settings = settings
    app.router.add_event_handler("shutdown", service.close)

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )

    @app.middleware("http")
    async def log_and_harden(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
        except Exception:  # a bug, not the client's fault: answered, logged, and the process lives on
            traceback.print_exc(file=sys.stderr)
            response = _error(500, "internal error (logged on the server)")
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if settings.access_log:
            line = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "client": request.client.host if request.client else None,
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query[:200],
                "status": status,
                "ms": round((time.perf_counter() - started) * 1000, 2),
            }
            print(json.dumps(line), file=sys.stderr, flush=True)
        return response

    @app.exception_handler(RequestError)
    async def request_error(_request: Request, error: RequestError) -> JSONResponse:
        return _error(error.status, error.message, error.field)

    @app.exception_handler(ScanError)
    async def scan_error(_request: Request, error: ScanError) -> JSONResponse:
        return _error(422, str(error), getattr(error, "field", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        location = [str(part) for part in first.get("loc", ()) if part not in ("query", "path", "body")]
        field = ".".join(location) or None
        return _error(422, f"{field or 'request'}: {first.get('msg', 'invalid')}", field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail))

    def authorised(request: Request) -> None:
        if settings.token is None:
            return
        given = request.cookies.get(TOKEN_COOKIE, "")
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            given = header[7:].strip()
        if not hmac.compare_digest(given.encode("utf-8"), settings.token.encode("utf-8")):
            raise RequestError(401, "a valid bearer token is required (Authorization: Bearer ...)", field="token")

    async def in_time(work: Awaitable[Any]) -> Any:
        try:
            return await asyncio.wait_for(work, settings.request_timeout_s)
        except TimeoutError:
            raise RequestError(503, f"the request took longer than {settings.request_timeout_s:g} s") from None

    api = [Depends(authorised)]

    # ---------------------------------------------------------------- the page

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(_asset("index.html"))

    @app.get("/static/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        if name not in STATIC:  # a fixed list: a client's name never becomes a path
            raise RequestError(404, f"no such asset: {name[:80]!r}", field="name")
        return Response(_asset(name), media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    @app.get("/api/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(_docs_page(app.openapi()))

    # ---------------------------------------------------------------- the API

    @app.get("/api/health", dependencies=api)
    def health() -> dict[str, Any]:
        """Whether the server is up, and what its index holds."""
        return {
            "status": "ok",
            "photos": len(index),
            "captions": len(index.captions),
            "model": index.manifest["model"]["folder"],
            "first_stage": index.images.kind if index.images is not None else None,
            "shortlist": service.shortlist,
            "queries": service.queries,
            "batches": service.batches,
        }

    @app.get("/api/search", dependencies=api)
    async def search(
        q: str = Query(description="the sentence to search with"),
        k: int = Query(10, description="results wanted, 1..max_k"),
    ) -> dict[str, Any]:
        """The `k` photos that best match a sentence, best first, with SCAN scores."""
        started = time.perf_counter()
        hits = await in_time(service.search(q, k))
        return {
            "query": q,
            "k": k,
            "ms": round((time.perf_counter() - started) * 1000, 2),
            "hits": [
                {
                    "rank": rank,
                    "id": hit.id,
                    "score": hit.score,
                    "first_stage_score": hit.first_stage_score,
                    "path": hit.path,
                    "photo": f"/api/photos/{hit.id}",
                    "thumbnail": f"/api/photos/{hit.id}/thumbnail",
                }
                for rank, hit in enumerate(hits, start=1)
            ],
        }

    @app.post("/api/search/image", dependencies=api)
    async def search_image(request: Request, k: int = Query(10, description="captions wanted")) -> dict[str, Any]:
        """The captions of the index's caption collection that best describe an uploaded photo.

        Send the photo as the multipart form field `photo` (JPEG, PNG, WebP, GIF, BMP or TIFF).
        """
        data = await _read_upload(request, settings.max_upload_bytes)
        started = time.perf_counter()
        hits = await in_time(service.search_image(data, k))
        return {
            "k": k,
            "ms": round((time.perf_counter() - started) * 1000, 2),
            "hits": [
                {"rank": rank, "id": hit.id, "score": hit.score, "caption": hit.text, "source": hit.source}
                for rank, hit in enumerate(hits, start=1)
            ],
        }

    @app.get("/api/explain", dependencies=api)
    async def explain(
        q: str = Query(description="the sentence"), id: int = Query(description="the photo's index id")
    ) -> dict[str, Any]:
        """Where each word of a sentence looks in a photo: per word, its weight on each region box."""
        return await in_time(service.explain(q, id))

    @app.get("/api/photos/{id}", dependencies=api)
    def photo(id: int) -> FileResponse:
        """The photo file with this index id."""
        return FileResponse(service.photo_file(id), headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/photos/{id}/thumbnail", dependencies=api)
    def thumbnail(id: int) -> Response:
        """A small JPEG of the photo with this index id."""
        return Response(
            service.thumbnail(id), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"}
        )

    return app


async def _read_upload(request: Request, limit: int) -> bytes:
    """The bytes of the form field `photo`, reading no more than `limit` (plus framing) from the client."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise RequestError(
            415, f"send the photo as multipart/form-data (field 'photo'), not {content_type[:60]!r}", field="photo"
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + UPLOAD_OVERHEAD:
        raise RequestError(413, f"the upload is {declared} bytes; at most {limit} for the photo", field="photo")
    body = bytearray()
    async for chunk in request.stream():  # counted as it arrives: a lying or absent length is caught too
        body += chunk
        if len(body) > limit + UPLOAD_OVERHEAD:
            raise RequestError(413, f"the upload is over {limit} bytes", field="photo")
    request._body = bytes(body)  # Starlette parses the form from the body read above, not the spent stream
    try:
        form = await request.form(max_files=1, max_fields=8)
    except Exception as error:
        raise RequestError(422, f"malformed multipart upload: {error}", field="photo") from None
    upload = form.get("photo")
    if upload is None or isinstance(upload, str):
        raise RequestError(422, "the form has no file field 'photo'", field="photo")
    data = await upload.read()
    await form.close()
    return data


def _docs_page(schema: dict[str, Any]) -> str:
    """A plain HTML list of the API's routes and parameters, from the OpenAPI schema."""
    from html import escape

    rows = []
    for path, methods in schema.get("paths", {}).items():
        for method, operation in methods.items():
            parameters = ", ".join(
                f"{escape(p['name'])} ({escape(p.get('in', ''))}): {escape(p.get('description', ''))}"
                for p in operation.get("parameters", [])
            )
            rows.append(
                f"<tr><td><code>{method.upper()} {escape(path)}</code></td>"
                f"<td>{escape(operation.get('description') or operation.get('summary', ''))}</td>"
                f"<td>{parameters}</td></tr>"
            )
    return (
        "<!doctype html><meta charset=utf-8><title>scan API</title>"
        "<link rel=stylesheet href=/static/app.css><main class=docs><h1>scan API</h1>"
        "<p>The machine-readable schema: <a href=/api/openapi.json>/api/openapi.json</a>. "
        'Errors are <code>{"error": {"message", "field"}}</code> with a 4xx status.</p>'
        f"<table><tr><th>route</th><th>what</th><th>parameters</th></tr>{''.join(rows)}</table></main>"
    )
