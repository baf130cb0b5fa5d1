"""`scan serve`: a retrieval service over an index, and a web page that shows why a photo matched.

    scan serve photos.index                 # http://127.0.0.1:8000, this machine only
    scan serve photos.index --host 0.0.0.0 --token "$(openssl rand -hex 16)"

The page (`/`) searches by sentence, shows the photos found with their SCAN scores, and draws
where each word of the sentence looked in a photo (its top boxes and a heat map, per word); an
upload finds the captions that best describe a photo. The JSON API under `/api` is what the page
uses, documented at `/api/docs`. See `scan.serve.app` for the routes and `ServeSettings` for the
limits every request obeys.

This package is an application layer, like `scan.cli`: it uses the library (`scan.search`) and
nothing above it uses it except the command line.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from scan.errors import MissingDependencyError
from scan.serve.settings import ServeSettings, is_loopback

if TYPE_CHECKING:
    from fastapi import FastAPI

    from scan.search.index import Index

__all__ = ["ServeSettings", "create_app", "is_loopback", "run"]


def create_app(index: Index, settings: ServeSettings | None = None) -> FastAPI:
    """See `scan.serve.app.create_app` (imported on use: FastAPI is an optional part)."""
    from scan.serve.app import create_app as make

    return make(index, settings)


def run(index_folder: str | os.PathLike[str], settings: ServeSettings, *, model: str = "") -> None:
    """Open the index and serve it until interrupted (Ctrl-C or SIGTERM stop it cleanly).

    Raises:
        ConfigError: settings that would expose the collection (see `ServeSettings.check`).
        DataError, ModelMismatchError: the index cannot be opened.
        MissingDependencyError: FastAPI or uvicorn is not installed (the `serve` extra).
    """
    settings.check()
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401  (python-multipart: the photo upload's form parser)
        import uvicorn
    except ImportError as error:
        raise MissingDependencyError(
            f"scan serve needs FastAPI, uvicorn and python-multipart: pip install 'scan[serve]' ({error.name} is missing)"
        ) from error

    from scan.search.index import Index
    from scan.serve.app import create_app as make

    index = Index.open(Path(index_folder), model=model or None)
    app = make(index, settings)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    where = f"http://{host}:{settings.port}/"
    print(f"scan serve: {len(index)} photos, {len(index.captions)} captions from {index.folder}", file=sys.stderr)
    if settings.token:
        print(
            f"scan serve: open {where}#token=<your token> (API clients send 'Authorization: Bearer ...')",
            file=sys.stderr,
        )
    else:
        print(f"scan serve: open {where}  (API docs: {where}api/docs)", file=sys.stderr)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)
