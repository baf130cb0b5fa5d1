"""The work behind the API: searches, explanations, uploads and thumbnails over one open `Index`.

Everything that runs the model runs on one thread of its own (`model_thread`): torch already
spreads one query's arithmetic over every core, so two queries at once would only fight for
them, and the index is then used by one thread only. Text queries that arrive together are
gathered (up to `max_batch`, waiting `batch_wait_ms` for company) into one `Index.search_many`
call, whose first stage is one matrix product for the batch; the shortlist is the same whatever
the batch, so a query's results never depend on what it was batched with.

Request checks raise `RequestError` (the HTTP status and the field at fault); the app turns
them into JSON. Nothing a client sends reaches the file system as a path: photos are named by
their index id.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from scan.errors import ScanError
from scan.search.index import DEFAULT_SHORTLIST, Index
from scan.search.store import StoreError
from scan.search.two_stage import Hit
from scan.serve.settings import ServeSettings

__all__ = ["RequestError", "SearchService"]

T = TypeVar("T")

UPLOAD_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})  # what PIL may decode for us
THUMBNAILS_KEPT = 512  # thumbnails held in memory (about 15 KB each)
# Tokens that are not words of the query (the page does not offer them); <unk> is a word it shows.
SPECIAL_TOKENS = frozenset({"<start>", "<end>", "<pad>", "<s>", "</s>", "[CLS]", "[SEP]", "[PAD]", "[MASK]"})


class RequestError(Exception):
    """A request the server will not answer: an HTTP status, the field at fault and why."""

    def __init__(self, status: int, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


@dataclass
class _Pending:
    text: str
    k: int
    future: asyncio.Future[list[Hit]]


class SearchService:
    """Answers the API's questions about one index, within the limits of `settings`."""

    def __init__(self, index: Index, settings: ServeSettings) -> None:
        self.index = index
        self.settings = settings
        # One shortlist for every query (see the module docstring), never below the largest k.
        self.shortlist = max(settings.shortlist or DEFAULT_SHORTLIST, settings.max_k)
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="scan-model")
        self._pending: list[_Pending] = []
        self._draining = False
        self._drainer: asyncio.Task[None] | None = None
        self._thumbnails: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._thumbnail_lock = threading.Lock()
        self.batches = 0  # first-stage calls made, for the health report and the load test
        self.queries = 0

    def close(self) -> None:
        self.model_thread.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ checks

    def check_text(self, text: str, field: str = "q") -> str:
        if len(text) > self.settings.max_query_chars:
            raise RequestError(
                422, f"the query is {len(text)} characters; at most {self.settings.max_query_chars}", field=field
            )
        if not text.strip():
            raise RequestError(422, "the query is empty", field=field)
        try:
            self.index.check_query(text)
        except ScanError as error:
            raise RequestError(422, str(error), field=field) from None
        return text

    def check_k(self, k: int, size: int, what: str) -> int:
        if size == 0:
            raise RequestError(409, f"the index holds no {what}", field="k")
        if not 1 <= k <= min(self.settings.max_k, size):
            raise RequestError(
                422,
                f"k must be in 1..{min(self.settings.max_k, size)} ({size} {what} in the index), got {k}",
                field="k",
            )
        return k

    def live_item(self, item: int) -> dict[str, Any]:
        """The store's record of a photo still in the index, or a 404."""
        try:
            record = self.index.store.item(item)
        except StoreError:
            raise RequestError(404, f"no photo with id {item} in the index", field="id") from None
        if record["removed"]:
            raise RequestError(404, f"photo {item} was removed from the index", field="id")
        return record

    # ------------------------------------------------------------------ model work

    async def _on_model_thread(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.model_thread, lambda: function(*args, **kwargs))

    async def search(self, text: str, k: int) -> list[Hit]:
        """The `k` photos that best match `text` (checked here), through the batcher."""
        self.check_text(text)
        self.check_k(k, len(self.index), "photos")
        self.queries += 1
        if self.settings.max_batch == 1:
            self.batches += 1
            return await self._on_model_thread(self.index.search, text, k=k, shortlist=self.shortlist)
        loop = asyncio.get_running_loop()
        pending = _Pending(text, k, loop.create_future())
        self._pending.append(pending)
        if not self._draining:
            self._draining = True
            self._drainer = loop.create_task(self._drain())  # kept: the loop holds tasks only weakly
        return await pending.future

    async def _drain(self) -> None:
        """Answer the gathered queries, a batch at a time, until none is left."""
        try:
            await asyncio.sleep(self.settings.batch_wait_ms / 1000)
            while self._pending:
                batch = self._pending[: self.settings.max_batch]
                del self._pending[: self.settings.max_batch]
                live = [p for p in batch if not p.future.done()]  # a timed-out request is not searched
                if not live:
                    continue
                k = max(p.k for p in live)
                self.batches += 1
                try:
                    results = await self._on_model_thread(
                        self.index.search_many, [p.text for p in live], k=k, shortlist=self.shortlist
                    )
                except Exception as error:  # every query of the batch gets the error, none is lost
                    for p in live:
                        if not p.future.done():
                            p.future.set_exception(error)
                    continue
                for p, hits in zip(live, results, strict=True):
                    if not p.future.done():
                        p.future.set_result(hits[: p.k])
        finally:
            self._draining = False

    async def explain(self, text: str, item: int) -> dict[str, Any]:
        """Each word's attention over photo `item`'s regions, with its boxes and the photo's size."""
        self.check_text(text)
        record = self.live_item(item)
        seen = await self._on_model_thread(self.index.explain, text, item)
        width, height = _photo_size(self.index.photo_path(item))
        top = np.argsort(-seen.weights, axis=1)[:, :3]  # (W, 3) each word's strongest regions
        return {
            "query": text,
            "id": item,
            "path": record["path"],
            "score": round(seen.score, 6),
            "width": width,
            "height": height,
            "boxes": np.round(seen.boxes, 1).tolist(),
            "words": [
                {
                    "text": word,
                    "special": word in SPECIAL_TOKENS,
                    "weights": np.round(seen.weights[w], 5).tolist(),
                    "top": top[w].tolist(),
                }
                for w, word in enumerate(seen.words)
            ],
        }

    async def search_image(self, data: bytes, k: int) -> list[Any]:
        """The `k` captions that best describe an uploaded photo (checked and decoded here)."""
        self.check_k(k, len(self.index.captions), "captions")
        image = await asyncio.get_running_loop().run_in_executor(None, self.decode_upload, data)

        def work() -> list[Any]:
            regions, _boxes = self.index.encode_image(image)
            return self.index.search_captions(regions, k=k, shortlist=max(self.shortlist, k))

        return await self._on_model_thread(work)

    def decode_upload(self, data: bytes) -> np.ndarray:
        """RGB `(H, W, 3)` of an uploaded photo, after checking its bytes, format and pixel count."""
        from PIL import Image, ImageOps, UnidentifiedImageError

        from scan.features.extract import rgb8

        if not data:
            raise RequestError(422, "the uploaded photo is empty", field="photo")
        if len(data) > self.settings.max_upload_bytes:
            raise RequestError(
                413, f"the photo is {len(data)} bytes; at most {self.settings.max_upload_bytes}", field="photo"
            )
        try:
            with Image.open(io.BytesIO(data)) as opened:
                if opened.format not in UPLOAD_FORMATS:
                    raise RequestError(415, f"photos in {opened.format} are not accepted", field="photo")
                width, height = opened.size
                if width * height > self.settings.max_pixels:  # before decoding: a bomb stays a header
                    raise RequestError(
                        413,
                        f"the photo is {width}x{height} pixels; at most {self.settings.max_pixels} pixels",
                        field="photo",
                    )
                opened.load()
                array = rgb8(ImageOps.exif_transpose(opened))
        except RequestError:
            raise
        except UnidentifiedImageError:
            raise RequestError(415, "the upload is not a photo this server can read", field="photo") from None
        except Exception as error:  # truncated or corrupt data: PIL raises many kinds
            raise RequestError(
                422, f"cannot decode the photo: {type(error).__name__}: {error}", field="photo"
            ) from None
        if array.ndim != 3 or min(array.shape[:2]) < 1:
            raise RequestError(422, f"the photo is empty ({array.shape})", field="photo")
        return array

    # ------------------------------------------------------------------ photos

    def photo_file(self, item: int) -> Path:
        """The file of photo `item` (by id only), or a 404."""
        self.live_item(item)
        path = self.index.photo_path(item)
        if not path.is_file():
            raise RequestError(404, f"photo {item}'s file is not on disk any more", field="id")
        return path

    def thumbnail(self, item: int) -> bytes:
        """A JPEG of photo `item`, its longer side `thumbnail_px`, kept in a small LRU."""
        from PIL import Image, ImageOps

        key = (item, self.settings.thumbnail_px)
        with self._thumbnail_lock:
            if key in self._thumbnails:
                self._thumbnails.move_to_end(key)
                return self._thumbnails[key]
        path = self.photo_file(item)
        try:
            with Image.open(path) as opened:
                opened.draft("RGB", (self.settings.thumbnail_px, self.settings.thumbnail_px))  # JPEG: decode small
                picture = ImageOps.exif_transpose(opened).convert("RGB")
        except Exception as error:
            raise RequestError(404, f"photo {item}'s file cannot be read: {type(error).__name__}", field="id") from None
        picture.thumbnail((self.settings.thumbnail_px, self.settings.thumbnail_px))
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=82)
        data = buffer.getvalue()
        with self._thumbnail_lock:
            self._thumbnails[key] = data
            while len(self._thumbnails) > THUMBNAILS_KEPT:
                self._thumbnails.popitem(last=False)
        return data


def _photo_size(path: Path) -> tuple[int | None, int | None]:
    """Width and height of the upright photo (as its boxes are measured), or None if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            width, height = opened.size
            orientation = opened.getexif().get(0x0112, 1)  # EXIF orientation: 5-8 swap the sides
    except Exception:
        return None, None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)
