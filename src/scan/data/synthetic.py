"""A small synthetic data set in the precomputed-feature layout, for tests and quick demos.

Real region features are gigabytes and need a detector, so tests and the end-to-end smoke run use
this instead. It is built to exercise what SCAN (Sec. 3) does: align words to regions. Each image
shows a few objects (3 of 24 by default), each in a colour; every object is one region, a noisy
mix of the object's prototype vector and its colour's, and the remaining regions are distractors
(background prototypes plus noise) that no caption mentions. Each of the 5 captions names all of
the image's objects, in a shuffled order, with real-looking filler ("A photo of a red dog next to
a ball and a tree in the park ."), mentioning colours only sometimes. Matching is therefore
learnable only by relating words to the right regions, and not trivial: images share objects,
regions are noisy and in random order, and colours are optional evidence. The same seed always
writes the same files; each split has its own random stream, so changing ``num_train`` leaves
the dev and test splits unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from scan.data.vocab import build_vocabulary, save_vocabulary

__all__ = ["CAPTIONS_PER_IMAGE", "COLOURS", "OBJECTS", "write_synthetic_precomp"]

CAPTIONS_PER_IMAGE = 5
OBJECTS: tuple[str, ...] = (
    "dog", "cat", "ball", "tree", "car", "bicycle", "horse", "boat", "bench", "umbrella",
    "kite", "guitar", "hat", "bird", "chair", "table", "cup", "book", "train", "flower",
    "frisbee", "surfboard", "skateboard", "house", "bus", "sheep", "cake", "lamp", "bottle",
    "clock", "elephant", "giraffe",
)  # fmt: skip
COLOURS: tuple[str, ...] = ("red", "blue", "green", "yellow", "black", "white", "orange", "brown")
_BACKGROUNDS = 6  # distractor prototypes (sky, grass, road, ...) that captions never name
_COLOUR_WEIGHT = 0.5  # how strongly an object's colour shows in its region
_COLOUR_MENTION = 0.4  # chance a caption names an object's colour
_OPENINGS = ("", "a photo of", "there is", "an image showing", "close up of", "we can see",
             "in this picture ,")  # fmt: skip
_LINKS = ("and", "next to", "near", "with", "beside", "behind", "in front of", ",")
_ENDINGS = ("", "in the park", "on a sunny day", "in the background", "outside", "at night")


def write_synthetic_precomp(
    folder: str | os.PathLike[str],
    *,
    num_train: int = 1000,
    num_dev: int = 100,
    num_test: int = 100,
    regions: int = 8,
    feature_dim: int = 32,
    concepts: int = 24,
    concepts_per_image: int = 3,
    noise: float = 0.6,
    seed: int = 0,
) -> None:
    """Write ``train``, ``dev`` and ``test`` splits and a ``vocab.json`` to ``folder``.

    Per split: ``{split}_ims.npy`` float32 ``(N, R, F)``, ``{split}_caps.txt`` (5 lines per image),
    ``{split}_boxes.npy`` float32 ``(N, R, 4)`` (random pixel boxes in a 640x480 frame, for
    drawing) and ``{split}_ids.txt``. ``vocab.json`` is built from the train captions with
    threshold 1, so every word of the generator that train uses is known.

    Args:
        folder: Created if needed; existing files of the same names are overwritten.
        num_train: Training images (each with 5 captions).
        num_dev: Validation images.
        num_test: Test images.
        regions: Regions ``R`` per image; at least ``concepts_per_image``.
        feature_dim: Feature dims ``F``.
        concepts: How many distinct objects exist (at most ``len(OBJECTS)``).
        concepts_per_image: Objects per image, each in its own region.
        noise: Standard deviation of the per-dim Gaussian noise on every region, relative to
            unit-variance prototypes; higher is harder.
        seed: Seeds everything.
    """
    if not 1 <= concepts <= len(OBJECTS):
        raise ValueError(f"concepts must be in 1..{len(OBJECTS)}, got {concepts}")
    if not 1 <= concepts_per_image <= min(concepts, regions):
        raise ValueError(
            f"concepts_per_image must be in 1..min(concepts, regions) = "
            f"{min(concepts, regions)}, got {concepts_per_image}"
        )
    if min(num_train, num_dev, num_test) < 1:
        raise ValueError("every split needs at least one image")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    prototype_seed, *split_seeds = np.random.SeedSequence(seed).spawn(4)
    rng = np.random.default_rng(prototype_seed)
    objects = rng.standard_normal((concepts, feature_dim))  # (C, F)
    colours = rng.standard_normal((len(COLOURS), feature_dim))  # (K, F)
    backgrounds = rng.standard_normal((_BACKGROUNDS, feature_dim))  # (G, F)

    train_captions: list[str] = []
    for name, size, split_seed in zip(
        ("train", "dev", "test"), (num_train, num_dev, num_test), split_seeds, strict=False
    ):
        rng = np.random.default_rng(split_seed)
        features = np.empty((size, regions, feature_dim), dtype=np.float32)  # (N, R, F)
        captions: list[str] = []
        for i in range(size):
            chosen = rng.choice(concepts, size=concepts_per_image, replace=False)  # (c,)
            tints = rng.integers(len(COLOURS), size=concepts_per_image)  # (c,)
            clutter = rng.integers(_BACKGROUNDS, size=regions - concepts_per_image)
            clean = np.concatenate([objects[chosen] + _COLOUR_WEIGHT * colours[tints], backgrounds[clutter]])  # (R, F)
            noisy = clean + noise * rng.standard_normal((regions, feature_dim))  # (R, F)
            features[i] = noisy[rng.permutation(regions)]  # regions in random order
            for _ in range(CAPTIONS_PER_IMAGE):
                captions.append(_caption(rng, [OBJECTS[c] for c in chosen], [COLOURS[t] for t in tints]))
        boxes = _random_boxes(rng, size=size, regions=regions)  # (N, R, 4)
        np.save(folder / f"{name}_ims.npy", features)
        np.save(folder / f"{name}_boxes.npy", boxes)
        (folder / f"{name}_caps.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
        ids = "\n".join(f"synthetic_{name}_{i:05d}" for i in range(size)) + "\n"
        (folder / f"{name}_ids.txt").write_text(ids, encoding="utf-8")
        if name == "train":
            train_captions = captions
    save_vocabulary(build_vocabulary(train_captions, threshold=1), folder / "vocab.json")


def _caption(rng: np.random.Generator, nouns: list[str], colours: list[str]) -> str:
    """One caption naming every object once, in random order with random filler."""
    order = rng.permutation(len(nouns))
    phrases = []
    for j in order:
        words = [colours[j], nouns[j]] if rng.random() < _COLOUR_MENTION else [nouns[j]]
        article = "an" if words[0][0] in "aeiou" else "a"
        phrases.append(" ".join([article, *words]))
    parts = [_pick(rng, _OPENINGS), phrases[0]]
    for phrase in phrases[1:-1]:
        parts += [_pick(rng, _LINKS), phrase]
    if len(phrases) > 1:
        parts += [_pick(rng, ("and", "with", "near")), phrases[-1]]
    parts += [_pick(rng, _ENDINGS), "."]
    text = " ".join(part for part in parts if part)
    return text[0].upper() + text[1:]


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    """One of ``options``, uniformly (faster than ``rng.choice`` on a tuple)."""
    return options[int(rng.integers(len(options)))]


def _random_boxes(rng: np.random.Generator, *, size: int, regions: int) -> np.ndarray:
    """Plausible pixel boxes ``(N, R, 4)`` x1, y1, x2, y2 inside a 640x480 frame."""
    corner = rng.uniform(0, 1, (size, regions, 2)) * np.array([560.0, 400.0])  # (N, R, 2)
    extent = rng.uniform([40.0, 40.0], [640.0, 480.0], (size, regions, 2))  # (N, R, 2)
    far = np.minimum(corner + extent, np.array([640.0, 480.0]))  # (N, R, 2)
    return np.concatenate([corner, far], axis=-1).astype(np.float32)  # (N, R, 4)
