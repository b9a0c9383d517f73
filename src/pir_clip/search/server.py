"""``pir-clip serve``: a JSON API and a search page over one index, on FastAPI.

:func:`create_app` is the one app factory (the CLI serves it with uvicorn; tests drive it with FastAPI's
``TestClient``). Routes::

    GET  /                              the search page (static files shipped in the package; no CDN)
    GET  /api/health                    {"status", "items", "manifest"}
    GET  /api/search?q=TEXT&k=K         text query        -> {"query", "hits": [...]}, as `pir-clip search --output`
    GET  /api/search?like=ID&k=K        more like item ID
    POST /api/search/image?k=K          the request body is an image file (any format the shared decoder reads)
    GET  /api/search.geojson?q=..|like=..&k=K   the hits as RFC 7946 GeoJSON
    GET  /api/items/{id}                an item's metadata (source, window, bounds, ...)
    GET  /api/items/{id}/image?size=S   the item as PNG (JPEG with format=jpeg), S px on its longer side

Safe by default: the CLI binds 127.0.0.1; with a token every ``/api`` call needs ``Authorization: Bearer
TOKEN``; items are reached by integer id only (no path from a request reaches the file system); query length,
``k``, image size and upload size are limited; every error is JSON ``{"error": {"status", "message"}}`` with
the matching status code (401, 404, 413, 415, 422, 500).
"""
import hmac
import io
import logging
import threading
from dataclasses import asdict, dataclass, is_dataclass
from importlib import resources
from typing import Any, Dict, List, Optional

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

log = logging.getLogger(__name__)

STATIC_DIR = resources.files("pir_clip.search") / "static"


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for."""
    max_query_chars: int = 500
    max_k: int = 1000
    max_upload_bytes: int = 20 * 1024 * 1024
    max_image_size: int = 1024


class ApiError(HTTPException):
    """An error answered as ``{"error": {"status", "message"}}``."""


def _error(status: int, message: str, headers: Optional[Dict[str, str]] = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status, headers=headers)


def _as_dict(value: Any) -> Dict[str, Any]:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if is_dataclass(value):
        return asdict(value)
    return dict(value)


def create_app(index, token: Optional[str] = None, limits: ServeLimits = ServeLimits()) -> FastAPI:
    """The app serving ``index`` (a :class:`pir_clip.search.SearchIndex`, model already loaded or loaded on
    the first query). ``token``: when set, required as a bearer token on every ``/api`` route."""
    app = FastAPI(title="pir-clip search", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.index = index

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if token and request.url.path.startswith("/api/"):
            given = request.headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
                return _error(401, "missing or wrong access token: send 'Authorization: Bearer TOKEN'",
                              headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}"
                             for e in exc.errors())
        return _error(422, f"invalid request: {problems}")

    @app.exception_handler(Exception)
    async def internal_error(_request, exc: Exception):
        log.exception("internal error")
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    def check_id(item_id: int) -> int:
        if not 0 <= item_id < len(index):
            raise ApiError(404, f"no item {item_id}: ids run from 0 to {len(index) - 1}")
        return item_id

    def hits_of(q: Optional[str], like: Optional[int], k: int):
        if (q is None) == (like is None):
            raise ApiError(422, "give exactly one of q (a text query) or like (an item id)")
        if q is not None:
            if not q.strip():
                raise ApiError(422, "q is empty")
            return {"text": q, "k": k}, index.search_text(q, k)
        return {"like": check_id(like), "k": k}, index.search_like(like, k)

    K = Query(20, ge=1, le=limits.max_k, description="number of hits")
    Q = Query(None, max_length=limits.max_query_chars, description="text query")
    LIKE = Query(None, ge=0, description="item id for 'more like this'")

    @app.get("/api/health")
    def health():
        return {"status": "ok", "items": len(index), "manifest": index.manifest}

    @app.get("/api/search")
    def search(q: Optional[str] = Q, like: Optional[int] = LIKE, k: int = K):
        query, hits = hits_of(q, like, k)
        return {"query": query, "hits": [_as_dict(h) for h in hits]}

    @app.get("/api/search.geojson")
    def search_geojson(q: Optional[str] = Q, like: Optional[int] = LIKE, k: int = K):
        from .geojson import hits_to_geojson
        query, hits = hits_of(q, like, k)
        return JSONResponse(hits_to_geojson(hits, query), media_type="application/geo+json",
                            headers={"Content-Disposition": 'attachment; filename="hits.geojson"'})

    @app.post("/api/search/image")
    async def search_image(request: Request, k: int = K):
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type and not (content_type.startswith("image/") or content_type == "application/octet-stream"):
            raise ApiError(415, f"send the image file itself as the request body (got Content-Type {content_type})")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_upload_bytes:
            raise ApiError(413, f"upload of {int(declared):,} bytes is over the limit of {limits.max_upload_bytes:,}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_upload_bytes:
                raise ApiError(413, f"upload is over the limit of {limits.max_upload_bytes:,} bytes")
        if not body:
            raise ApiError(422, "the request body is empty: send an image file")
        from starlette.concurrency import run_in_threadpool
        hits = await run_in_threadpool(_search_uploaded, index, bytes(body), k)
        return {"query": {"image": f"upload ({len(body):,} bytes)", "k": k}, "hits": [_as_dict(h) for h in hits]}

    @app.get("/api/items/{item_id}")
    def item(item_id: int):
        return _as_dict(index.item(check_id(item_id)))

    @app.get("/api/items/{item_id}/image")
    def item_image(item_id: int, size: int = Query(256, ge=16, le=limits.max_image_size),
                   format: str = Query("png", pattern="^(png|jpeg)$")):
        image = index.item_image(check_id(item_id))
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG" if format == "png" else "JPEG", quality=90)
        return Response(buffer.getvalue(), media_type=f"image/{format}",
                        headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(str(STATIC_DIR / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    return app


def _search_uploaded(index, data: bytes, k: int) -> List[Any]:
    """Decoded by the shared decoder with the index's bands, as ``pir-clip search --image`` does."""
    from ..data.images import ImageDecodeError
    try:
        return index.search_image(data, k)
    except ImageDecodeError as exc:
        raise ApiError(415, f"the upload is not an image the decoder reads: {exc}") from None


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def serve(index_dir: str, host: str = "127.0.0.1", port: int = 8000, token: Optional[str] = None,
          limits: ServeLimits = ServeLimits(), log_level: str = "warning", exit_after: Optional[float] = None,
          **open_kwargs) -> None:
    """Opens the index, loads its model once, and serves until interrupted (or for ``exit_after`` seconds,
    then shuts down cleanly: tests and demos). ``open_kwargs`` go to :meth:`SearchIndex.open` (device,
    precision, checkpoint, prior_pretrained)."""
    import uvicorn

    from .index import SearchIndex
    index = SearchIndex.open(index_dir, **open_kwargs)
    index.search_text("warm-up", 1)  # load the model now, not on the first user's query
    if not is_loopback(host):
        log.warning(f"serving on {host}: the page and API are reachable from other machines"
                    + ("" if token else " WITHOUT an access token (pass --token)"))
    address = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    print(f"Serving {index_dir} ({len(index):,} items, model {index.manifest['model']['name']}) at {address}"
          + ("#token=..." if token else "") + "  (Ctrl+C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(index, token, limits), host=host, port=port,
                                           log_level=log_level))
    if exit_after is not None:
        timer = threading.Timer(exit_after, lambda: setattr(server, "should_exit", True))
        timer.daemon = True
        timer.start()
    server.run()
