"""Benchmark: what two-stage search loses against exhaustive SCAN, by shortlist size.

Indexes a split's images (their precomputed region features) and captions with a trained model,
through the same `scan.search.Index` that `scan index` and `scan search` use, then runs every
caption of the split as a text query (and every image as a photo query against the captions)
and reports recall at 1, 5 and 10:

- first stage alone: ranked by the global vectors' cosine (the faiss index), no SCAN;
- two-stage at each shortlist k: the first stage's k candidates re-ranked by SCAN;
- exhaustive: SCAN over the whole collection (the reference).

    python benchmarks/search_quality.py --model reports/flickr8k-demo/models/scan_t2i \\
        --features reports/flickr8k-demo/features-bottomup --split test
    python benchmarks/search_quality.py ... --split test --split dev      # a bigger collection
    python benchmarks/search_quality.py ... --regions pq                  # product-quantised regions

A t2i query counts as found at K when its own image is in the top K; an i2t query when any of
the image's own captions is.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from scan.data.precomp import PrecompSplit
from scan.models.loading import load_model
from scan.search.index import Index
from scan.search.two_stage import encode_texts, global_text_vector

RECALLS = (1, 5, 10)


def recall(ranks: np.ndarray) -> dict[str, float]:
    """R@1/5/10 in percent from 0-based ranks of the first correct hit (a large rank: not found)."""
    return {f"R@{k}": float(100.0 * np.mean(ranks < k)) for k in RECALLS}


def build(model, splits: list[PrecompSplit], folder: Path, regions: str):
    """Index the splits' images and captions; returns the index, each caption's image id, each image's caption ids."""
    index = Index.create(folder, model, regions=regions)
    caption_image: list[int] = []
    image_captions: dict[int, list[int]] = {}
    texts: list[tuple[str, str]] = []
    for split in splits:
        features = np.stack([split.image_features(i) for i in range(split.num_images)])  # (N, R, F)
        boxes = np.stack([split.image_boxes(i) for i in range(split.num_images)]) if split.boxes is not None else None
        names = [f"{split.split}/{split.image_ids[i] if split.image_ids else i}" for i in range(split.num_images)]
        ids = index.add_features(features, boxes, names, names)  # a name is unique: it serves as the hash
        for caption in range(split.num_captions):
            image_id = ids[split.image_of_caption(caption)]
            caption_image.append(image_id)
            texts.append((split.captions[caption], str(image_id)))
    added = index.add_captions(texts)
    if added != len(texts):
        print(f"note: {len(texts) - added} repeated or all-unknown captions were not indexed", file=sys.stderr)
    for item in index.captions.items:
        image_captions.setdefault(int(item["source"]), []).append(item["id"])
    return index, texts, caption_image, image_captions


def first_correct(found: list[int], correct: set[int]) -> int:
    return next((rank for rank, item in enumerate(found) if item in correct), 10**9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--features", required=True, help="precomputed layout folder")
    parser.add_argument("--split", action="append", help="split(s) to index together (default: test)")
    parser.add_argument("--shortlists", type=int, nargs="+", default=[10, 20, 50, 100, 200])
    parser.add_argument("--regions", default="float16", choices=("float16", "pq"))
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load_model(args.model)
    splits = [PrecompSplit.open(args.features, name) for name in (args.split or ["test"])]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        index, texts, caption_image, image_captions = build(model, splits, Path(tmp) / "index", args.regions)
        n_images, n_captions = len(index), len(texts)
        print(
            f"# {n_images} images, {n_captions} captions ({' + '.join(s.split for s in splits)}), "
            f"model {args.model}, regions {args.regions}, first stage "
            f"{'trained global head' if index.head is not None else 'mean pooling (no global head)'}",
            flush=True,
        )
        rows: dict[str, dict[str, dict[str, float]]] = {}

        # text -> image
        t2i: dict[str, list[int]] = {}
        words_all, _lengths, mask_all = encode_texts(model, [text for text, _ in texts])
        query_globals = global_text_vector(words_all, mask_all, index.head).numpy()  # (M, D)
        assert index.images is not None
        _, first_ids = index.images.search(query_globals, n_images)  # (M, N)
        t2i["first stage only"] = [first_correct(first_ids[q].tolist(), {caption_image[q]}) for q in range(n_captions)]
        for k in [*args.shortlists, 0]:
            name = "exhaustive SCAN" if k == 0 else f"two-stage, shortlist {k}"
            ranks = []
            for q, (text, _) in enumerate(texts):
                hits = index.search(
                    text, k=min(10, n_images), shortlist=None if k == 0 else max(10, k), exhaustive=k == 0
                )
                ranks.append(first_correct([h.id for h in hits], {caption_image[q]}))
            t2i[name] = ranks
        # image -> text
        i2t: dict[str, list[int]] = {}
        image_ids = index.store.ids()
        for k in [*args.shortlists, 0]:
            name = "exhaustive SCAN" if k == 0 else f"two-stage, shortlist {k}"
            ranks = []
            for image_id in image_ids:
                regions = torch.from_numpy(np.asarray(index.store.vectors([image_id]), dtype=np.float32))
                hits = index.captions.search(regions, k=10, shortlist=max(10, k), exhaustive=k == 0)
                ranks.append(first_correct([h.id for h in hits], set(image_captions.get(image_id, []))))
            i2t[name] = ranks
        for name in t2i:
            rows[name] = {"t2i": recall(np.asarray(t2i[name]))}
            if name in i2t:
                rows[name]["i2t"] = recall(np.asarray(i2t[name]))

    print("\n| ranking | t2i R@1 | R@5 | R@10 | i2t R@1 | R@5 | R@10 |\n|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        t = row["t2i"]
        i = row.get("i2t")
        right = " | ".join(f"{i[f'R@{k}']:.1f}" for k in RECALLS) if i else "- | - | -"
        print(f"| {name} | " + " | ".join(f"{t[f'R@{k}']:.1f}" for k in RECALLS) + f" | {right} |")
    print(f"\n({time.perf_counter() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"images": n_images, "captions": n_captions, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
