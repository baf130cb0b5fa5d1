"""Shared fixtures: where the real data lies, the synthetic recipe, and a small learnable data set.

Tests are laid out like `src/scan/` (tests/data for scan.data, tests/similarity for
scan.similarity, ...); everything more than one folder needs lives here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

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
