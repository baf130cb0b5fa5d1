"""Shared fixtures: where the real data lies, the synthetic recipe, and a small learnable data set.

Tests are laid out like `src/scan/` (tests/data for scan.data, tests/similarity for
scan.similarity, ...); everything more than one folder needs lives here.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from photo_models import NUM_PHOTOS, make_photo_folder, make_photo_model
from scan.data.raw import read_kaggle_captions
from scan.data.synthetic import write_synthetic_precomp

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
FLICKR8K_800 = SHARED_DATA / "flickr8k-800"  # 800 real photos, 5 captions each (read-only)
SYNTHETIC_CONFIG = REPO / "configs" / "synthetic.yaml"


@pytest.fixture(scope="session")
def flickr8k_800() -> Path:
    """The real photos beside the repository; tests that need them skip where they are absent."""
    if not FLICKR8K_800.exists():
        pytest.skip("../shared/data/flickr8k-800 is not beside the repository")
    return FLICKR8K_800


@pytest.fixture(scope="session")
def synthetic_config() -> Path:
    return SYNTHETIC_CONFIG


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """A learnable precomputed data set (300 train, 50 dev, 100 test images); never written to."""
    folder = tmp_path_factory.mktemp("synthetic-shared")
    write_synthetic_precomp(folder, num_train=300, num_dev=50, num_test=100, seed=0)
    return folder


TINY = ("model.embed_dim=16", "model.word_dim=16", "train.epochs=1", "train.max_steps=4", "train.progress=false")


@pytest.fixture(scope="session")
def tiny_run(synthetic_data, tmp_path_factory) -> Path:
    """A run directory trained for a few steps on `synthetic_data`: a loadable model, fast. Read-only."""
    from scan.config import load_config
    from scan.train import recipe

    run_dir = tmp_path_factory.mktemp("tiny-run")
    config = load_config(SYNTHETIC_CONFIG, [f"data.path={synthetic_data}", f"train.run_dir={run_dir}", *TINY])
    recipe.train(recipe.setup(config))
    return run_dir


def _hold_folder_lock(folder: str, purpose: str, ready, release) -> None:
    from scan.atomic import FolderLock

    with FolderLock(folder, purpose=purpose):
        ready.set()
        release.wait(60)


@contextmanager
def _locked_elsewhere(folder: str | Path, purpose: str) -> Iterator[None]:
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_folder_lock, args=(str(folder), purpose, ready, release))
    holder.start()
    try:
        assert ready.wait(60), "the lock-holding process did not start"
        yield
    finally:
        release.set()
        holder.join(30)


@pytest.fixture
def locked_elsewhere() -> Callable[[str | Path, str], AbstractContextManager[None]]:
    """`with locked_elsewhere(folder, "scan train"):` another process holds the folder's lock inside."""
    return _locked_elsewhere


# -- photo indexes: a small untrained model that reads real photos' grid features --------------
# Indexing mechanics (hashing, caching, atomic updates, repairs, errors) need no trained model;
# search quality is tested on the trained tiny run (tests/search/test_two_stage.py).


@pytest.fixture(scope="session")
def flickr_records(flickr8k_800):
    return read_kaggle_captions(flickr8k_800)[:NUM_PHOTOS]


@pytest.fixture(scope="session")
def photo_model(flickr_records, tmp_path_factory) -> Path:
    captions = [caption for record in flickr_records for caption in record.captions]
    return make_photo_model(tmp_path_factory.mktemp("photo-model") / "model", captions)


@pytest.fixture
def photos(flickr_records, tmp_path) -> Path:
    """A folder of 12 real photos, a third of them in a subfolder, with a captions.txt beside them."""
    return make_photo_folder(flickr_records, tmp_path)


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory) -> Path:
    """One region-feature cache for the whole session: each photo is extracted once."""
    return tmp_path_factory.getbasetemp() / "region-cache"


# -- the served index (tests/serve): the 12 photos and their 60 captions, indexed once --------------


@pytest.fixture(scope="session")
def served_folder(photo_model, flickr_records, feature_cache, tmp_path_factory) -> Path:
    """`photos/`, `captions.txt` and `photos.index` in one folder (read-only for the tests)."""
    pytest.importorskip("faiss")
    from scan.search.index import Index

    folder = tmp_path_factory.mktemp("served")
    photos = make_photo_folder(flickr_records, folder)
    Index.build(
        photo_model,
        photos,
        folder / "photos.index",
        captions=folder / "captions.txt",
        cache=feature_cache,
        progress=False,
        workers=1,
    )
    return folder


@pytest.fixture(scope="session")
def served_index(served_folder):
    from scan.search.index import Index

    return Index.open(served_folder / "photos.index")
