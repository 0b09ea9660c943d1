"""``metrictransfer serve``: one process holds an index and its model and answers searches over HTTP, with a
web page to search from a browser.

The API (FastAPI; its OpenAPI schema at ``/openapi.json``) searches by an uploaded image, by an item of
the index, or by embeddings, and serves an item's image by its id only: no path from a request ever
reaches the file system. Concurrent requests' images go through the model together
(:mod:`.serve_batching` says why one thread owns the model). Everything the page needs is served by the
same process (no CDN, no web fonts), under a Content-Security-Policy that allows nothing else.

Exposure rules: the service binds to 127.0.0.1 unless told otherwise, and binding anywhere else needs a
token, which every API request must then carry (``Authorization: Bearer TOKEN``, compared in constant
time). Without a token only requests addressed to a loopback name are answered, so a web page elsewhere
cannot reach the service through DNS rebinding. Request bodies are size-limited before they are read, an
upload is decoded in memory with the project's checks (:mod:`metrictransfer.data.decode`: no
decompression bombs, no non-images), and every refusal is one line of JSON: ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.resources
import io
import ipaddress
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol, cast

import numpy as np
from PIL import Image

from metrictransfer import __version__
from metrictransfer.data.decode import open_rgb8, open_rgb8_raw
from metrictransfer.errors import BadImageError, ConfigError, MetricTransferError, MissingPackageError, SearchIndexError
from metrictransfer.retrieval.gallery import INDEX_FILE, Gallery, Neighbour
from metrictransfer.retrieval.onnx_model import OnnxQueryModel, preprocess
from metrictransfer.retrieval.serve_batching import BatcherBusyError, MicroBatcher

try:
    from fastapi import Depends, FastAPI, HTTPException, Query, Request
    from fastapi import Path as PathParam
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from pydantic import BaseModel, Field
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.formparsers import MultiPartException, MultiPartParser
except ImportError as err:  # the serve extra
    raise MissingPackageError(
        f"metrictransfer serve needs FastAPI, uvicorn and python-multipart ({err}): pip install 'metrictransfer[serve]'"
    ) from None

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "check_binding", "create_app", "create_server", "serve"]

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MULTIPART_OVERHEAD = 64 * 1024  # a multipart body's boundaries and headers, on top of the image itself
MIN_TOKEN_LENGTH = 16
MAX_K = 1000
MAX_EMBEDDINGS = 1024  # query embeddings in one request
RELOAD_CHECK_S = 1.0  # how often requests look whether the index was updated
THUMBNAIL_SIZES = (16, 1024)
UPLOAD_HINT = "upload a JPEG, PNG, WebP, GIF, BMP or TIFF image"
TOKEN_HINT = 'make one with: python -c "import secrets; print(secrets.token_urlsafe())"'
WEB_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
IMAGE_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}
# the page's own files only: nothing from elsewhere, no inline script, no framing
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


# ------------------------------------------------------------------------------------------ binding


def is_loopback(host: str) -> bool:
    """Whether an address or host name (``localhost``) is this machine's loopback interface."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token, and a token too short to resist guessing."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"the token is {len(token)} characters long; use at least {MIN_TOKEN_LENGTH} ({TOKEN_HINT})")
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"binding to {host} lets other machines search this index: give a token (--token or METRICTRANSFER_TOKEN; "
            f"{TOKEN_HINT}), or bind to 127.0.0.1"
        )


# ---------------------------------------------------------------------------------------- embedding


class _Forward(Protocol):
    """How a query model embeds decoded images: ``prepare`` in the request's thread (preprocessing, in
    parallel), ``forward`` on the batcher's thread (the model, one batch at a time)."""

    engine: str

    def prepare(self, image: Image.Image) -> Any: ...

    def forward(self, items: list[Any]) -> np.ndarray: ...


def _by_shape(items: list[Any], run: Callable[[list[Any]], np.ndarray]) -> np.ndarray:
    """``run`` on each group of same-shaped inputs (a resize without a crop keeps aspect ratios), rows in order."""
    shapes = [tuple(item.shape) for item in items]
    if len(set(shapes)) == 1:
        return run(items)
    rows: list[np.ndarray | None] = [None] * len(items)
    for shape in dict.fromkeys(shapes):
        where = [i for i, s in enumerate(shapes) if s == shape]
        for i, row in zip(where, run([items[i] for i in where])):
            rows[i] = row
    return np.stack(rows)  # type: ignore[arg-type]


class _OnnxForward:
    """The index's exported model: the description's preprocessing, then onnxruntime."""

    engine = "onnx"

    def __init__(self, model: Any) -> None:
        self.model = model

    def prepare(self, image: Image.Image) -> np.ndarray:
        return preprocess(image, self.model.steps)

    def forward(self, items: list[np.ndarray]) -> np.ndarray:
        def run(batch: list[np.ndarray]) -> np.ndarray:
            out = self.model.session.run([self.model.output_name], {self.model.input_name: np.stack(batch)})[0]
            return np.asarray(out, dtype=np.float32)

        return _by_shape(items, run)


class _TorchForward:
    """The run's PyTorch model: its test-time transform, then the model."""

    engine = "pytorch"

    def __init__(self, model: Any) -> None:
        from metrictransfer.data.transforms import build_transform

        data = model.config.data
        self.transform = build_transform(data.transform, False, data.image_size, data.normalization)
        self.device = model.device
        self.net = model.model.to(model.device).eval()

    def prepare(self, image: Image.Image) -> Any:
        return self.transform(image)

    def forward(self, items: list[Any]) -> np.ndarray:
        import torch

        def run(batch: list[Any]) -> np.ndarray:
            with torch.inference_mode():
                return np.asarray(self.net(torch.stack(batch).to(self.device)).float().cpu().numpy(), dtype=np.float32)

        return _by_shape(items, run)


class _FileForward:
    """Any other query model (its ``embed`` takes files): the checked images, written as PNG to a private
    temporary folder that is removed as soon as they are embedded."""

    engine = "files"

    def __init__(self, gallery: Gallery) -> None:
        self.gallery = gallery

    def prepare(self, image: Image.Image) -> Image.Image:
        return image

    def forward(self, items: list[Image.Image]) -> np.ndarray:
        folder = Path(tempfile.mkdtemp(prefix="metrictransfer-serve-"))  # mode 0700: this user's only
        try:
            paths = []
            for i, image in enumerate(items):
                paths.append(folder / f"{i}.png")
                image.save(paths[-1])
            return np.asarray(self.gallery.embed_images(paths), dtype=np.float32)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _forward_for(gallery: Gallery) -> _Forward:
    model = gallery.query_model
    if isinstance(model, OnnxQueryModel):
        return _OnnxForward(model)
    if type(model).__name__ == "CheckpointQueryModel":  # its module imports PyTorch, loaded already if it is in use
        return _TorchForward(model)
    return _FileForward(gallery)


class _Upload(io.BytesIO):
    """An upload's bytes as Pillow reads them, named by the upload in messages (a decoding note's "first seen")."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.upload_name = name  # not .name: Pillow treats a file object's name as a path in places

    def __str__(self) -> str:  # Pillow's "cannot identify image file <this>"
        return repr(self.upload_name)

    __repr__ = __str__


def decode_upload(data: bytes, name: str, warned: set[str] | None = None) -> Image.Image:
    """An uploaded file as 8-bit RGB, decoded in memory with the checks every image gets (no decompression
    bombs); anything Pillow cannot decode is a :class:`BadImageError` naming the upload."""
    try:
        return open_rgb8_raw(cast(Any, _Upload(data, name)), warned)
    except Exception as err:  # untrusted bytes: whatever a decoder raises means "not an image we can read"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BadImageError(f"cannot read the uploaded image {name!r}: {reason}; {UPLOAD_HINT}") from None


# ------------------------------------------------------------------------------------------- schema


class Item(BaseModel):
    """An item of the index. Its file's path on the server is not sent: ``image`` is where to get it."""

    id: int
    name: str = Field(description="the image's file name")
    label: str | None = Field(description="its class, when the gallery has classes")
    metadata: dict[str, str] = Field(description="its metadata columns (from the CSV the index was built from)")
    image: str = Field(description="URL of its image; add ?size=N for a thumbnail of at most N pixels a side")


class Hit(Item):
    distance: float = Field(description="to the query, in the index's metric")


class Neighbours(BaseModel):
    neighbours: list[Hit] = Field(description="nearest first")
    took_ms: float = Field(description="time in the service, receiving and decoding the request included")


class ItemNeighbours(Neighbours):
    item: Item = Field(description="the item searched from (not among its neighbours)")


class EmbeddingsQuery(BaseModel):
    embeddings: list[list[float]] = Field(
        min_length=1, max_length=MAX_EMBEDDINGS, description="query embeddings as the model outputs them, one row each"
    )


class EmbeddingsResults(BaseModel):
    results: list[list[Hit]] = Field(description="each query's neighbours, nearest first")
    took_ms: float


class Health(BaseModel):
    status: str
    batcher: dict[str, Any] = Field(description="batches run, images embedded, the largest batch, batch sizes counted")


class Version(BaseModel):
    metrictransfer: str
    index: dict[str, Any]
    query_model: str = Field(description="onnx (the index's exported model), pytorch (the run's checkpoint) or files")
    max_upload_bytes: int
    columns: list[str] = Field(description="what a where filter can name")


class ErrorMessage(BaseModel):
    error: str = Field(description="one line: what is wrong and what to do")


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorMessage, "description": text}
    for status, text in {
        400: "a bad parameter, filter, image or embedding",
        401: "a token is needed and was missing or wrong",
        404: "no such item",
        413: "the request body is larger than the limit",
        503: "too many images wait for the model",
    }.items()
}
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary", "description": "the query image"}},
                }
            }
        },
    }
}


@dataclass(frozen=True)
class SearchOptions:
    k: int
    where: str | None
    effort: int | None
    refine: int | None


# -------------------------------------------------------------------------------------- the service


class SearchService:
    """The gallery and its batcher, shared by the requests. Gallery calls take turns (a lock): they share
    one SQLite connection to the catalogue, which is not for concurrent use."""

    def __init__(self, gallery: Gallery, max_batch: int = 32, max_wait_s: float = 0.005, max_pending: int = 256) -> None:
        self._gallery = gallery
        self._index_file = gallery.index_dir / INDEX_FILE
        self._stamp = self._index_stamp()
        self._checked = time.monotonic()
        self._reloading = threading.Lock()
        self.model = _forward_for(gallery)
        self.batcher: MicroBatcher[Any] = MicroBatcher(self.model.forward, max_batch, max_wait_s, max_pending)
        self.lock = threading.Lock()
        self.warned: set[str] = set()  # decoding notes (alpha composited, 16-bit scaled): each logged once

    @property
    def gallery(self) -> Gallery:
        """The index as it is now. An update (``index --index DIR --add/--remove``) replaces index.json last;
        at most once a second a request looks whether it changed, and the new generation is loaded in the
        background and swapped in, while requests go on answering from the previous one."""
        now = time.monotonic()
        if now - self._checked >= RELOAD_CHECK_S:
            self._checked = now
            stamp = self._index_stamp()
            if stamp != self._stamp and self._reloading.acquire(blocking=False):
                threading.Thread(target=self._reload, args=(stamp,), name="index-reload", daemon=True).start()
        return self._gallery

    def _index_stamp(self) -> tuple[int, int] | None:
        try:
            found = self._index_file.stat()
        except OSError:
            return None
        return found.st_mtime_ns, found.st_ino  # an atomic replace gives a new inode even within one tick

    def _reload(self, stamp: tuple[int, int] | None) -> None:
        old = self._gallery
        try:
            new = Gallery(old.index_dir)
            if new.meta["fingerprint"] != old.meta["fingerprint"]:
                raise SearchIndexError(f"{old.index_dir} was rebuilt with another model; restart serve to answer from it")
            with self.lock:
                self._gallery = new
            print(
                f"serve: now answering from generation {new.generation} of {old.index_dir} ({new.count} items)", file=sys.stderr, flush=True
            )
        except MetricTransferError as err:  # the previous generation keeps answering
            print(
                f"serve: the changed index was not loaded, still answering from generation {old.generation}: {err}",
                file=sys.stderr,
                flush=True,
            )
        finally:
            self._stamp = stamp  # not retried until index.json changes again
            self._reloading.release()

    def prepare(self, data: bytes, name: str) -> Any:
        return self.model.prepare(decode_upload(data, name, self.warned))

    async def embed(self, data: bytes, name: str) -> np.ndarray:
        """The upload's embedding (its request announced to the batcher already)."""
        try:
            prepared = await run_in_threadpool(self.prepare, data, name)
        except BaseException:
            self.batcher.withdraw()
            raise
        return await asyncio.wrap_future(self.batcher.submit(prepared, announced=True))

    def options(self, k: int, where: str | None, nprobe: int | None, ef: int | None, refine: int | None) -> SearchOptions:
        return SearchOptions(k, where or None, self.gallery.effort_for(nprobe, ef), refine)

    def search(self, vectors: np.ndarray, options: SearchOptions, exclude: int | None = None) -> list[list[Neighbour]]:
        with self.lock:
            return self.gallery.search_vectors(
                vectors,
                options.k,
                effort=options.effort,
                refine=options.refine,
                where=options.where,
                exclude_ids=None if exclude is None else [exclude],
            )

    def item(self, item_id: int) -> tuple[Neighbour, np.ndarray]:
        """An item and its embedding; an unknown id is a 404."""
        if not -(2**63) <= item_id < 2**63:  # beyond SQLite's and numpy's integers: no such item either
            raise HTTPException(404, f"item id {item_id} is not in this index")
        with self.lock:
            try:
                return self.gallery.item(item_id), self.gallery.vector(item_id)
            except ConfigError as err:
                raise HTTPException(404, str(err)) from None


def _item(n: Neighbour) -> dict[str, Any]:
    return {"id": n.id, "name": Path(n.path).name, "label": n.label, "metadata": n.metadata, "image": f"/items/{n.id}/image"}


def _hits(found: list[Neighbour]) -> list[Hit]:
    return [Hit(distance=n.distance, **_item(n)) for n in found]


_CLI_OPTION = re.compile(r"--(k|where|refine|nprobe|ef)\b")


def _one_line(text: str) -> str:
    """A gallery message in the API's words (its parameters, not the command line's --options), one line."""
    return " ".join(_CLI_OPTION.sub(r"\1", text).split())


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": _one_line(message)}, status_code=status, headers=headers)


class _Guard:
    """ASGI middleware: security headers on every response; without a token, only requests addressed to a
    loopback name (DNS rebinding); request bodies cut off (413) before they are read: at ``max_upload_bytes``
    and room for a multipart body's headers."""

    def __init__(self, app: Any, max_upload_bytes: int, loopback_only: bool) -> None:
        self.app, self.limit, self.loopback_only = app, max_upload_bytes, loopback_only
        self.max_body = max_upload_bytes + MULTIPART_OVERHEAD

    async def __call__(
        self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])

        async def send_secured(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        host = headers.get(b"host", b"").decode("latin-1")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if self.loopback_only and not is_loopback(name):
            message = (
                f"this server answers requests addressed to 127.0.0.1 or localhost only, not {host!r}; "
                "start it with a token to serve other names"
            )
            await _error(421, message)(scope, receive, send_secured)
            return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _error(413, _too_large(int(length), self.limit))(scope, receive, send_secured)
            return
        received = 0

        async def receive_limited() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise HTTPException(413, _too_large(None, self.limit))
            return message

        await self.app(scope, receive_limited, send_secured)


def _megabytes(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


def _too_large(size: int | None, limit: int) -> str:
    sent = f"the request is {_megabytes(size)}" if size is not None else "the request is larger than the limit"
    return f"{sent}; this server takes images of at most {_megabytes(limit)} (serve --max-upload-mb): send a smaller one"


async def _read_upload(request: Request, limit: int) -> tuple[bytes, str]:
    """The ``image`` file of a multipart body, read into memory (never spooled to disk)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        sent = content_type or "no content type"
        raise HTTPException(400, f"send the image as multipart/form-data in a field named image (curl -F image=@photo.jpg), not {sent!r}")
    parser = MultiPartParser(request.headers, request.stream(), max_files=1, max_fields=16)
    parser.spool_max_size = limit + MULTIPART_OVERHEAD  # an upload stays in memory: the body is capped below this
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise HTTPException(400, f"the multipart body is malformed ({err.message}); send one file in a field named image") from None
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise HTTPException(400, "no file in a field named image: send it as multipart/form-data (curl -F image=@photo.jpg)")
    try:
        data = await upload.read()
    finally:
        await upload.close()
    if len(data) > limit:
        raise HTTPException(413, _too_large(len(data), limit))
    if not data:
        raise HTTPException(400, "the uploaded image is empty (0 bytes)")
    return data, upload.filename or "image"


_bearer = HTTPBearer(auto_error=False, description="the token serve was started with")


async def _authorised(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """Every API request of a service with a token: the token, compared in constant time."""
    expected: bytes = request.app.state.token
    sent = credentials.credentials.encode() if credentials is not None else b""
    if not hmac.compare_digest(sent, expected):
        what = "a wrong token" if credentials is not None else "no token"
        raise HTTPException(
            401,
            f"this server needs a token and got {what}: send Authorization: Bearer TOKEN (the token serve was started with)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _search_options(
    request: Request,
    k: int = Query(10, ge=1, le=MAX_K, description="neighbours to return"),
    where: str | None = Query(None, max_length=1000, description='only items whose metadata pass, e.g. "brand = acme and year > 2019"'),
    nprobe: int | None = Query(None, ge=1, description="IVF indexes: clusters to visit (default: the one the index measured)"),
    ef: int | None = Query(None, ge=1, description="HNSW indexes: efSearch (default: the one the index measured)"),
    refine: int | None = Query(None, ge=0, description="re-rank this many candidates by exact distance (at least k; 0: none)"),
) -> SearchOptions:
    service: SearchService = request.app.state.service
    return service.options(k, where, nprobe, ef, refine)


Options = Annotated[SearchOptions, Depends(_search_options)]
ItemId = Annotated[int, PathParam(description="an item's id (search results and GET /items/{id} give them)")]


def _web_file(name: str) -> bytes:
    return importlib.resources.files("metrictransfer.retrieval").joinpath("web").joinpath(name).read_bytes()


def create_app(
    gallery: Gallery,
    *,
    token: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_batch: int = 32,
    batch_wait_ms: float = 5.0,
    loopback_only: bool | None = None,
) -> FastAPI:
    """The search service's ASGI app over a loaded gallery.

    ``token``: every API request must send ``Authorization: Bearer TOKEN``. ``loopback_only`` (default:
    when there is no token): answer only requests addressed to 127.0.0.1, ::1 or localhost.
    ``max_batch`` and ``batch_wait_ms``: the largest batch of query images, and how long the first image
    of a batch waits for others."""
    if token is not None:
        check_binding("127.0.0.1", token)
    if max_upload_bytes < 1:
        raise ConfigError(f"max_upload_bytes must be at least 1, got {max_upload_bytes}")
    service = SearchService(gallery, max_batch=max_batch, max_wait_s=batch_wait_ms / 1000)
    web = {name: _web_file(name) for name in WEB_FILES}  # read once: requests name a route, never a file

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.batcher.close()

    app = FastAPI(
        title="metrictransfer search",
        version=__version__,
        description="Search an index built by `metrictransfer index`: by image, by item or by embeddings.",
        docs_url=None,  # FastAPI's docs pages load their scripts from a CDN
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service
    loopback_only = token is None if loopback_only is None else loopback_only
    app.add_middleware(_Guard, max_upload_bytes=max_upload_bytes, loopback_only=loopback_only)

    app.state.token = token.encode() if token is not None else None
    api = [Depends(_authorised)] if token is not None else []

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint {request.url.path!r}; the API is described at /openapi.json"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path!r}; the API is described at /openapi.json"
        return _error(exc.status_code, message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for problem in exc.errors()[:3]:
            where = ".".join(str(part) for part in problem.get("loc", ()) if part not in ("query", "path", "body"))
            problems.append(f"{where or 'request'}: {problem.get('msg', 'invalid')}")
        return _error(422, "; ".join(problems) + " (the API is described at /openapi.json)")

    @app.exception_handler(MetricTransferError)
    async def refused(request: Request, exc: MetricTransferError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(BatcherBusyError)
    async def busy(request: Request, exc: BatcherBusyError) -> JSONResponse:
        return _error(503, str(exc), {"Retry-After": "1"})

    # ------------------------------------------------------------------------------------ the page

    def page_file(name: str) -> Response:
        headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"}
        return Response(web[name], media_type=WEB_FILES[name], headers=headers)

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return page_file("index.html")

    @app.get("/app.js", include_in_schema=False)
    def script() -> Response:
        return page_file("app.js")

    @app.get("/style.css", include_in_schema=False)
    def style() -> Response:
        return page_file("style.css")

    # ------------------------------------------------------------------------------------ the API

    @app.get("/health", response_model=Health, summary="Whether the service answers (no token needed)")
    def health() -> Any:
        if not service.batcher.alive:
            raise HTTPException(503, "the model's worker thread has stopped; restart the server")
        return {"status": "ok", "batcher": service.batcher.stats.as_dict()}

    @app.get("/version", response_model=Version, dependencies=api, responses=ERRORS, summary="The software, the index and its model")
    def version() -> Any:
        gallery = service.gallery  # the current generation
        meta = gallery.meta
        return {
            "metrictransfer": __version__,
            "index": {
                "count": gallery.count,
                "dim": gallery.dim,
                "metric": gallery.metric,
                "kind": gallery.plan.kind,
                "generation": gallery.generation,
                "classes": len(meta.get("classes") or []),
                "built_by": meta.get("metrictransfer"),
            },
            "query_model": service.model.engine,
            "max_upload_bytes": max_upload_bytes,
            "columns": ["path", "label", *gallery.metadata_columns],
        }

    @app.post(
        "/search/image",
        response_model=Neighbours,
        dependencies=api,
        responses=ERRORS,
        openapi_extra=UPLOAD_BODY,
        summary="Search by an uploaded image (multipart/form-data, field image)",
    )
    async def search_image(request: Request, options: Options) -> Any:
        started = time.perf_counter()
        service.batcher.announce()  # a batch being gathered now waits for this image
        try:
            data, name = await _read_upload(request, max_upload_bytes)
        except BaseException:
            service.batcher.withdraw()
            raise
        vector = await service.embed(data, name)
        [found] = await run_in_threadpool(service.search, vector[None], options)
        return {"neighbours": _hits(found), "took_ms": 1000 * (time.perf_counter() - started)}

    @app.get(
        "/search/item/{item_id}",
        response_model=ItemNeighbours,
        dependencies=api,
        responses=ERRORS,
        summary="Search from an item of the index (left out of its own results)",
    )
    def search_item(item_id: ItemId, options: Options) -> Any:
        started = time.perf_counter()
        item, vector = service.item(item_id)
        [found] = service.search(vector[None], options, exclude=item_id)
        return {"item": _item(item), "neighbours": _hits(found), "took_ms": 1000 * (time.perf_counter() - started)}

    @app.post("/search/embeddings", response_model=EmbeddingsResults, dependencies=api, responses=ERRORS, summary="Search by embeddings")
    def search_embeddings(query: EmbeddingsQuery, options: Options) -> Any:
        started = time.perf_counter()
        rows, dim = {len(row) for row in query.embeddings}, service.gallery.dim
        if rows != {dim}:
            raise ConfigError(f"each embedding must have {dim} numbers (this index's dimension), got rows of {sorted(rows)}")
        vectors = np.asarray(query.embeddings, dtype=np.float32)
        if not np.isfinite(vectors).all():
            raise ConfigError("the embeddings hold NaN or infinite values")
        found = service.search(vectors, options)
        return {"results": [_hits(row) for row in found], "took_ms": 1000 * (time.perf_counter() - started)}

    @app.get("/items/{item_id}", response_model=Item, dependencies=api, responses=ERRORS, summary="An item of the index")
    def item(item_id: ItemId) -> Any:
        return _item(service.item(item_id)[0])

    @app.get(
        "/items/{item_id}/image",
        dependencies=api,
        responses={**ERRORS, 200: {"content": {"image/*": {}}, "description": "the image file, or a JPEG thumbnail"}},
        response_class=Response,
        summary="An item's image, by id only",
    )
    def item_image(
        item_id: ItemId,
        size: int | None = Query(
            None, ge=THUMBNAIL_SIZES[0], le=THUMBNAIL_SIZES[1], description="a JPEG thumbnail, at most this many pixels a side"
        ),
    ) -> Response:
        found, _ = service.item(item_id)
        file = Path(found.path)  # from the index's own records, never from the request
        headers = {"Cache-Control": "private, max-age=3600"}  # an id is never reused for another image
        if not file.is_file():
            raise HTTPException(404, f"item {item_id}'s image file is missing on the server (the index lists {file.name})")
        if size is None:
            media = IMAGE_TYPES.get(file.suffix.lower(), "application/octet-stream")
            return FileResponse(file, media_type=media, headers=headers)  # streamed: a gallery file may be large
        return Response(_thumbnail(file, size, service.warned), media_type="image/jpeg", headers=headers)

    return app


def _thumbnail(file: Path, size: int, warned: set[str]) -> bytes:
    image = open_rgb8(file, warned, hint="the index lists an image that no longer reads; rebuild or update the index")
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


# ---------------------------------------------------------------------------------------- the server


def create_server(
    index_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    checkpoint: str | Path | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    device: str = "cpu",
    max_batch: int = 32,
    batch_wait_ms: float = 5.0,
    log_level: str = "info",
) -> Any:
    """A uvicorn server of the index (not started: ``.run()`` blocks, ``.should_exit = True`` stops it);
    the binding is checked before the index is loaded."""
    check_binding(host, token)
    import uvicorn

    gallery = Gallery(index_dir, checkpoint, device)
    app = create_app(gallery, token=token, max_upload_bytes=max_upload_bytes, max_batch=max_batch, batch_wait_ms=batch_wait_ms)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, server_header=False, access_log=log_level == "debug")
    return uvicorn.Server(config)


def serve(index_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, token: str | None = None, **options: Any) -> None:
    """Serve searches of an index folder over HTTP until interrupted (Ctrl-C), with its page at ``/``.

    Binding to anything but a loopback address needs ``token`` (a :class:`ConfigError` otherwise, before
    anything is loaded); with a token every API request must send ``Authorization: Bearer TOKEN``.
    ``checkpoint``: embed queries with that run's model instead of the index's exported one (it must be
    the model that built the index). ``max_upload_bytes``: the largest query image (413 above it). The
    other ``options`` are those of :func:`create_server`."""
    server = create_server(index_dir, host, port, token, **options)
    shown = f"[{host}]" if ":" in host else host
    gallery: Gallery = server.config.app.state.service.gallery
    access = " (the page asks for the token once; API requests send Authorization: Bearer TOKEN)" if token else ""
    print(f"serving {index_dir} ({gallery.count} items, {gallery.dim}-d) at http://{shown}:{port}/{access}", flush=True)
    server.run()
