"""A caption collection for image-to-text search: give a photo, get the sentences that describe it.

The mirror of text-to-image search: a caption's global vector (the model's global head over its
words) goes into a `FirstStageIndex` that shortlists candidates for a query photo's global
vector, and SCAN re-ranks the shortlist. Captions are short and a text encoder is cheap, so
their word vectors are not stored: the shortlisted captions are encoded again at query time.
A collection lives in a folder of its own:

    captions.json            format, version, next_id, items: [{id, text, source}, ...]
    first_stage.faiss        the FirstStageIndex over the captions' global vectors (+ siblings)

`captions.json` is the truth and is replaced atomically; the index is derived from it. An update
writes the captions first and the index after, so a kill in between leaves an index that misses
(or still holds) a few captions, and `open` repairs it by encoding just those (`repaired`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scan.atomic import write_text_atomic
from scan.data.text import read_utf8_text
from scan.errors import ConfigError, DataError
from scan.models.loading import TrainedModel
from scan.search.first_stage import FirstStageIndex
from scan.search.two_stage import (
    encode_texts,
    global_head,
    global_image_vectors,
    global_text_vector,
    rank,
    score_rows,
)

__all__ = ["CAPTIONS_FILE", "CaptionCollection", "CaptionHit", "read_caption_file"]

CAPTIONS_FILE = "captions.json"
INDEX_FILE = "first_stage.faiss"
FORMAT = "scan-captions"
VERSION = 1
ENCODE_BATCH = 256  # captions encoded at once
EXHAUSTIVE_BLOCK = 4096  # captions scored at once by an exhaustive search


@dataclass(frozen=True)
class CaptionHit:
    """One image-to-text result.

    Attributes:
        id: The caption's id in the collection.
        score: Its SCAN score against the query photo (what results are ranked by).
        first_stage_score: Its cosine in the first stage, or None for an exhaustive search.
        text: The caption.
        source: Where it came from (e.g. the photo a caption file names for it), or "".
    """

    id: int
    score: float
    first_stage_score: float | None
    text: str
    source: str


def read_caption_file(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """The captions of a file, as `(text, source)` pairs, in file order.

    Two layouts are read: Flickr8k's `captions.txt` (a CSV whose header is `image,caption`: the
    source of each caption is its photo), and plain text, one caption per line (no source).
    Blank lines are skipped.

    Raises:
        DataError: the file is missing, not UTF-8, or a CSV row has no caption (naming the line).
    """
    path = Path(path)
    text = read_utf8_text(path)
    lines = text.splitlines()
    out: list[tuple[str, str]] = []
    if lines and lines[0].replace(" ", "").lower() == "image,caption":
        import csv

        for number, row in enumerate(csv.reader(lines[1:]), start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2 or not ",".join(row[1:]).strip():
                raise DataError("expected 'image,caption'", path=path, line=number)
            out.append((" ".join(",".join(row[1:]).split()), row[0].strip()))
        return out
    return [(" ".join(line.split()), "") for line in lines if line.strip()]


class CaptionCollection:
    """The captions of an index and their first-stage vectors, searchable by photo.

    Args:
        folder: The collection's folder.
        model: The model that encodes captions and query photos.
    """

    def __init__(self, folder: str | os.PathLike[str], model: TrainedModel) -> None:
        self.folder = Path(folder)
        self.model = model
        self.head = global_head(model)
        self.items: list[dict[str, Any]] = []
        self.next_id = 0
        self.index: FirstStageIndex | None = None
        self.repaired = 0  # captions the index missed or held extra when opened (a killed update)
        if (self.folder / CAPTIONS_FILE).exists():
            self._load()

    # ------------------------------------------------------------------ reading

    def _load(self) -> None:
        path = self.folder / CAPTIONS_FILE
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
                raise ValueError(f"not a {FORMAT} v{VERSION} file")
            items = manifest["items"]
            if not all(isinstance(i.get("id"), int) and isinstance(i.get("text"), str) for i in items):
                raise ValueError("an item lacks an integer id or a text")
            self.items, self.next_id = items, int(manifest["next_id"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise DataError(f"unreadable caption collection: {error}", path=path) from None
        self._by_id = {item["id"]: item for item in self.items}
        self.index = None
        index_path = self.folder / INDEX_FILE
        if index_path.exists():
            try:
                self.index = FirstStageIndex.load(index_path, expected_dim=int(self.model.config.model.embed_dim))
            except DataError:
                self.index = None  # derived data: rebuilt from the captions below
        self.repaired = self._reconcile()

    def _reconcile(self) -> int:
        """Make the index hold exactly the collection's captions; returns how many were fixed."""
        wanted = {item["id"] for item in self.items}
        if not wanted:
            self.index = None
            return 0
        have = set(self.index.ids.tolist()) if self.index is not None else set()
        missing = sorted(wanted - have)
        extra = sorted(have - wanted)
        if self.index is not None and extra:
            self.index.remove(extra)
        if missing:
            vectors = self._global_vectors([self._by_id[i]["text"] for i in missing])
            ids = np.asarray(missing, dtype=np.int64)
            if self.index is None:
                self.index = FirstStageIndex.build(vectors, ids)
            else:
                self.index.add(vectors, ids)
        return len(missing) + len(extra)

    def __len__(self) -> int:
        return len(self.items)

    def _global_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """`(M, D)` first-stage vectors of captions, encoded in batches."""
        out = []
        for start in range(0, len(texts), ENCODE_BATCH):
            words, _lengths, mask = encode_texts(self.model, texts[start : start + ENCODE_BATCH])
            out.append(global_text_vector(words, mask, self.head).numpy())
        return np.concatenate(out)  # (M, D)

    # ------------------------------------------------------------------ updates

    def add(self, captions: Sequence[tuple[str, str]]) -> int:
        """Add `(text, source)` captions, skipping texts already in (and blank ones); returns how many.

        Captions made only of words the model does not know are skipped too, with a warning:
        they would score the same against every photo.
        """
        import warnings

        known = {item["text"] for item in self.items}
        unk = getattr(self.model.tokenizer, "unk_id", None)
        fresh: list[dict[str, Any]] = []
        unknown = 0
        for text, source in captions:
            text = " ".join(str(text).split())
            if not text or text in known:
                continue
            inner = self.model.tokenizer.encode(text)[1:-1]
            if not inner or (unk is not None and all(t == unk for t in inner)):
                unknown += 1
                continue
            known.add(text)
            fresh.append({"id": self.next_id + len(fresh), "text": text, "source": str(source)})
        if unknown:
            warnings.warn(
                f"{unknown} caption(s) made only of words the model does not know were left out", stacklevel=2
            )
        if not fresh:
            return 0
        self.items = [*self.items, *fresh]
        self.next_id += len(fresh)
        self._by_id = {item["id"]: item for item in self.items}
        self._save()
        return len(fresh)

    def remove_sources(self, sources: set[str]) -> int:
        """Remove the captions whose source is one of `sources`; returns how many."""
        kept = [item for item in self.items if item["source"] not in sources]
        removed = len(self.items) - len(kept)
        if removed:
            self.items = kept
            self._by_id = {item["id"]: item for item in self.items}
            self._save()
        return removed

    def _save(self) -> None:
        """Captions first (the truth), then the index brought in line with them."""
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest = {"format": FORMAT, "version": VERSION, "next_id": self.next_id, "items": self.items}
        write_text_atomic(self.folder / CAPTIONS_FILE, json.dumps(manifest, ensure_ascii=False) + "\n")
        self._reconcile()
        if self.index is not None:
            self.index.save(self.folder / INDEX_FILE)
        else:
            for path in FirstStageIndex.files(self.folder / INDEX_FILE):
                path.unlink(missing_ok=True)

    def save_index(self) -> None:
        """Write the (repaired) index, so the next open does not repair it again."""
        if self.index is not None:
            self.index.save(self.folder / INDEX_FILE)

    # ------------------------------------------------------------------ search

    def search(
        self, regions: torch.Tensor, *, k: int = 10, shortlist: int = 100, exhaustive: bool = False
    ) -> list[CaptionHit]:
        """The `k` captions that best describe an encoded photo, best first, ranked by SCAN.

        Args:
            regions: `(1, R, D)` the query photo's encoded region vectors.
            k: Hits wanted (fewer when the collection is smaller).
            shortlist: Candidates the first stage passes to SCAN, >= k.
            exhaustive: Score every caption with SCAN and skip the first stage.

        Raises:
            ConfigError: the collection is empty.
        """
        if not self.items or self.index is None:
            raise ConfigError(
                f"{self.folder}: the index has no captions to search; add some with "
                "`scan index add INDEX --captions FILE`"
            )
        first: np.ndarray | None
        if exhaustive:
            candidates = np.asarray([item["id"] for item in self.items], dtype=np.int64)
            first = None
        else:
            query = global_image_vectors(regions, self.head).numpy()  # (1, D)
            first_scores, first_ids = self.index.search(query, int(shortlist))
            candidates, first = first_ids[0], first_scores[0]
        texts = [self._by_id[int(i)]["text"] for i in candidates.tolist()]
        blocks = []
        for start in range(0, len(texts), EXHAUSTIVE_BLOCK):
            words, lengths, _mask = encode_texts(self.model, texts[start : start + EXHAUSTIVE_BLOCK])
            blocks.append(score_rows(self.model, regions, words, lengths)[0])  # (n,)
        scores = np.concatenate(blocks)  # (s,)
        return [
            CaptionHit(
                id=int(candidates[i]),
                score=float(scores[i]),
                first_stage_score=None if first is None else float(first[i]),
                text=self._by_id[int(candidates[i])]["text"],
                source=self._by_id[int(candidates[i])]["source"],
            )
            for i in rank(scores, candidates, k)
        ]
