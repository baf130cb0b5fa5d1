"""Benchmark: how word-specific a trained model's attention is (the search issue's measure).

For every caption of a split, with its own image, takes each word's attention over the image's
regions (`SCAN.attention_weights`, the softmax the t2i score pools) and measures the words'
specificity: the mean pairwise Jensen-Shannon divergence between their distributions, in bits
(`scan.viz.specificity`; 0 when every word attends alike, 1 when all attend to disjoint regions).
Prints the mean over captions for all words and for content words only (stop words left out),
and two controls computed on the same captions: uniform attention (0 by construction) and each
word's attention taken from a random other caption's word over the same image (what specificity
a model gets by attending to the image, not by word).

    python benchmarks/attention_specificity.py --model reports/flickr8k-demo/models/scan_t2i \\
        --features reports/flickr8k-demo/features-bottomup --split test
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from scan.data.precomp import PrecompSplit
from scan.models.loading import load_model
from scan.viz.specificity import STOP_WORDS, mean_word_specificity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--features", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled control")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    model = load_model(Path(args.model), device="cpu")
    if model.model.attention.direction != "t2i":
        parser.error(f"{args.model} attends regions over words (i2t): word specificity needs a t2i model")
    split = PrecompSplit.open(Path(args.features), args.split)
    all_words, content_words, shuffled = [], [], []
    generator = np.random.default_rng(args.seed)
    with torch.no_grad():
        for image in range(split.num_images):
            features = torch.from_numpy(np.asarray(split.image_features(image), dtype=np.float32))
            rows = []
            for caption in range(image * split.captions_per_image, (image + 1) * split.captions_per_image):
                ids = model.tokenizer.encode(split.captions[caption])
                weights = model.model.attention_weights(features, torch.tensor(ids)).numpy()  # (W, R)
                tokens = model.tokenizer.tokens(ids)
                all_words.append(weights)
                content = [i for i, token in enumerate(tokens) if token.lower() not in STOP_WORDS]
                content_words.append(weights[content])
                rows.append(weights)
            # Control: every word's row replaced by a random word's row among this image's captions.
            pool = np.concatenate(rows)  # (sum W, R)
            for weights in rows:
                shuffled.append(pool[generator.integers(0, len(pool), size=len(weights))])

    figures = {
        "captions": len(all_words),
        "all words": mean_word_specificity(all_words),
        "content words": mean_word_specificity(content_words),
        "uniform attention (control)": mean_word_specificity(np.ones_like(w) for w in all_words),
        "rows drawn at random from the image's words (control)": mean_word_specificity(shuffled),
    }
    print(f"{args.model} on {args.split} ({figures['captions']} captions, each with its own image)")
    print("| attention | mean word specificity (bits) |")
    print("|---|---:|")
    for name, value in figures.items():
        if name != "captions":
            print(f"| {name} | {value:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
