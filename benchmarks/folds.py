"""Benchmark helper: k folds of a features folder's train and dev photos, for choosing with less noise.

One 100-photo dev split cannot separate configurations a few rsum apart (docs/RESULTS.md: the
demo's dev and test splits ranked two region choices in opposite orders). Cross-validation over
the photos that are not test photos averages over k held-out sets instead. This writes, for each
fold f, a folder `OUT/fold{f}` whose `train` split is every other fold's photos and whose `dev`
split is fold f's, in SCAN's precomputed layout (the extraction record is copied, so trained
models remember how the photos were featurised). The test split is never read.

    python benchmarks/folds.py --features reports/flickr8k-demo/features-grid --out reports/folds/grid --k 3
    python benchmarks/recipe_variants.py --splits dev --features reports/folds/grid/fold0 ...

Photos are dealt to folds by a seeded permutation, the same for every features folder of the same
photos (so two region choices are compared on the same folds).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from scan.cli.common import report_user_errors
from scan.data.precomp import PrecompSplit
from scan.errors import DataError


def write_split(folder: Path, split: str, sources: list[tuple[PrecompSplit, np.ndarray]]) -> None:
    """`folder/{split}_*` from the given photos (rows) of opened splits, captions and ids with them."""
    ims, boxes, ids, caps = [], [], [], []
    for source, rows in sources:
        if source.image_ids is None:
            raise DataError("missing; folds need each photo's id (scan extract writes it)", path=source.ids_path)
        per = source.captions_per_image
        ims.append(np.load(source.features_path, mmap_mode="r")[rows])
        boxes.append(np.load(source.boxes_path, mmap_mode="r")[rows])
        ids += [source.image_ids[r] for r in rows]
        caps += [caption for r in rows for caption in source.captions[r * per : (r + 1) * per]]
    np.save(folder / f"{split}_ims.npy", np.concatenate(ims))
    np.save(folder / f"{split}_boxes.npy", np.concatenate(boxes))
    (folder / f"{split}_ids.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    (folder / f"{split}_caps.txt").write_text("\n".join(caps) + "\n", encoding="utf-8")


@report_user_errors
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", required=True, help="a features folder with train and dev splits")
    parser.add_argument("--out", required=True)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    features, out = Path(args.features), Path(args.out)
    splits = {name: PrecompSplit.open(features, name) for name in ("train", "dev")}
    pool = [(name, i) for name, opened in splits.items() for i in range(opened.num_images)]
    order = np.random.default_rng(args.seed).permutation(len(pool))
    folds = np.array_split(order, args.k)
    for f, held_out in enumerate(folds):
        folder = out / f"fold{f}"
        folder.mkdir(parents=True, exist_ok=True)
        rest = np.sort(np.concatenate([fold for g, fold in enumerate(folds) if g != f]))
        for split, chosen in (("train", rest), ("dev", np.sort(held_out))):
            sources = [
                (opened, np.array([pool[p][1] for p in chosen if pool[p][0] == name], dtype=np.int64))
                for name, opened in splits.items()
            ]
            write_split(folder, split, [(opened, rows) for opened, rows in sources if len(rows)])
            shutil.copy(features / "train_extract.json", folder / f"{split}_extract.json")
        print(f"{folder}: {len(rest)} train photos, {len(held_out)} dev photos")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
