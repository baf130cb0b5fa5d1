"""Datasets and collation, and a training DataLoader built from them as the recipe builds it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from scan.data.collate import (
    Batch,
    CaptionDataset,
    ImageDataset,
    TextDataset,
    collate_captions,
    collate_images,
    collate_texts,
    pad_token_ids,
)
from scan.data.precomp import PrecompSplit
from scan.data.vocab import END_ID, PAD_ID, START_ID, build_vocabulary
from scan.errors import DataError

N, R, F = 6, 3, 4  # images, regions, feature dims
WORDS = ["dog", "cat", "ball", "tree", "car", "boat"]


def _captions() -> list[str]:
    """5 captions per image of varied lengths: caption k has k % 4 + 1 filler words."""
    return [f"a {WORDS[k // 5]} " + " ".join(["near"] * (k % 4 + 1)) for k in range(5 * N)]


def _split(folder: Path, captions: list[str] | None = None) -> PrecompSplit:
    features = np.arange(N * R * F, dtype=np.float32).reshape(N, R, F)  # (N, R, F)
    np.save(folder / "train_ims.npy", features)
    (folder / "train_caps.txt").write_text("\n".join(captions or _captions()) + "\n")
    return PrecompSplit.open(folder, "train")


@pytest.fixture
def split(tmp_path: Path) -> PrecompSplit:
    return _split(tmp_path)


@pytest.fixture
def vocab():
    return build_vocabulary(_captions(), threshold=1)


def test_caption_dataset_items(split: PrecompSplit, vocab) -> None:
    dataset = CaptionDataset(split, vocab)
    assert len(dataset) == 5 * N
    features, ids, k, image = dataset[13]
    assert features.dtype == torch.float32 and features.shape == (R, F)
    assert torch.equal(features, torch.from_numpy(split.image_features(2)))
    assert (k, image) == (13, 2)
    assert ids.dtype == torch.long
    assert ids.tolist() == vocab.encode(split.captions[13])
    assert ids[0] == START_ID and ids[-1] == END_ID and len(ids) == 2 + 2 + 13 % 4 + 1


def test_collate_captions_pads_and_masks(split: PrecompSplit, vocab) -> None:
    dataset = CaptionDataset(split, vocab)
    batch = collate_captions([dataset[k] for k in (3, 0, 9)])
    lengths = [len(dataset[k][1]) for k in (3, 0, 9)]  # 8, 5, 6
    assert batch.images.shape == (3, R, F) and batch.images.dtype == torch.float32
    assert batch.tokens.shape == (3, max(lengths)) and batch.tokens.dtype == torch.long
    assert batch.lengths.tolist() == lengths and batch.lengths.dtype == torch.long
    assert batch.mask.dtype == torch.bool
    for b, length in enumerate(lengths):
        assert batch.mask[b].tolist() == [True] * length + [False] * (max(lengths) - length)
        assert (batch.tokens[b, length:] == PAD_ID).all()
        assert (batch.tokens[b, :length] != PAD_ID).all()
        assert batch.tokens[b, length - 1] == END_ID
    assert batch.caption_ids.tolist() == [3, 0, 9] and batch.image_ids.tolist() == [0, 0, 1]
    assert len(batch) == 3
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and torch.equal(moved.tokens, batch.tokens)


def test_pad_token_ids_empty_and_single() -> None:
    tokens, lengths, mask = pad_token_ids([torch.tensor([1, 5, 2])])
    assert tokens.tolist() == [[1, 5, 2]] and lengths.tolist() == [3] and mask.all()


def test_image_and_text_datasets(split: PrecompSplit, vocab) -> None:
    images = ImageDataset(split)
    assert len(images) == N
    stacked, ids = collate_images([images[i] for i in range(N)])
    assert stacked.shape == (N, R, F) and ids.tolist() == list(range(N))
    np.testing.assert_array_equal(stacked.numpy(), np.asarray(split.features))
    texts = TextDataset(["a dog", "a zebra near a tree .", "qwerty"], vocab)
    tokens, lengths, mask, caption_ids = collate_texts([texts[k] for k in range(3)])
    assert caption_ids.tolist() == [0, 1, 2]
    assert lengths.tolist() == [4, 8, 3]
    assert mask.sum(1).tolist() == lengths.tolist()
    assert tokens[2, :3].tolist() == [START_ID, 3, END_ID]  # all-unknown queries are kept
    with pytest.raises(DataError, match="caption 1 .* has no tokens"):
        TextDataset(["fine", "  "], vocab)


def test_caption_without_known_words_names_file_and_line(tmp_path: Path) -> None:
    captions = _captions()
    captions[8] = "zebra giraffe"
    split = _split(tmp_path, captions)
    vocab = build_vocabulary(_captions(), threshold=1)
    with pytest.raises(DataError) as caught:
        CaptionDataset(split, vocab)
    message = str(caught.value)
    assert "train_caps.txt:9" in message and "no word of caption 'zebra giraffe'" in message
    captions[8] = "..."  # has tokens, none known
    with pytest.raises(DataError, match=r"train_caps\.txt:9"):
        CaptionDataset(_split(tmp_path, captions), vocab)


class _CharEncoder:
    """A tokenizer that is not a Vocabulary: letters a-z are ids 11-36, all else unknown (99)."""

    unk_id = 99

    def encode(self, text: str) -> list[int]:
        return [1, *(ord(c) - 86 if "a" <= c <= "z" else 99 for c in text.replace(" ", "")), 2]

    def __len__(self) -> int:
        return 100


def test_datasets_accept_any_caption_encoder(split: PrecompSplit) -> None:
    dataset = CaptionDataset(split, _CharEncoder())
    assert dataset[0][1].tolist() == _CharEncoder().encode(split.captions[0])
    assert TextDataset(["ab"], _CharEncoder())[0][0].tolist() == [1, 11, 12, 2]
    captions = _captions()
    captions[2] = "42"  # only unknown characters for this encoder
    with pytest.raises(DataError, match=r"train_caps\.txt:3: no word"):
        CaptionDataset(_split(split.folder, captions), _CharEncoder())


def _loader(dataset: CaptionDataset, *, batch_size: int, seed: int, epoch: int, workers: int) -> DataLoader:
    """The training loader as scan.train.recipe builds it: a seeded batch order per epoch."""
    from scan.train.schedule import EpochBatches

    batches = EpochBatches(num_items=len(dataset), batch_size=batch_size, seed=seed, epoch=epoch)
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate_captions, num_workers=workers)


def _epochs(dataset: CaptionDataset, *, workers: int = 0, seed: int = 0, count: int = 2) -> list[list[Batch]]:
    return [list(_loader(dataset, batch_size=7, seed=seed, epoch=e, workers=workers)) for e in range(count)]


def _same(a: list[list[Batch]], b: list[list[Batch]]) -> bool:
    return all(
        torch.equal(x.caption_ids, y.caption_ids)
        and torch.equal(x.tokens, y.tokens)
        and torch.equal(x.images, y.images)
        and torch.equal(x.mask, y.mask)
        for ea, eb in zip(a, b, strict=True)
        for x, y in zip(ea, eb, strict=True)
    )


def test_loader_is_seeded_and_worker_independent(split: PrecompSplit, vocab) -> None:
    dataset = CaptionDataset(split, vocab)
    single = _epochs(dataset)
    assert _same(single, _epochs(dataset, workers=1))  # batches do not depend on worker processes
    assert _same(single, _epochs(dataset))  # rerun
    order = [torch.cat([b.caption_ids for b in epoch]) for epoch in single]
    assert sorted(order[0].tolist()) == list(range(5 * N))  # every caption once per epoch
    assert not torch.equal(order[0], order[1])  # a new order each epoch
    assert not _same(single, _epochs(dataset, seed=1))
    assert [len(b) for b in single[0]] == [7, 7, 7, 7, 2]
    for batch in single[0]:
        assert torch.equal(batch.image_ids, batch.caption_ids // 5)
        features = torch.stack([torch.from_numpy(split.image_features(int(i))) for i in batch.image_ids])
        assert torch.equal(batch.images, features)  # each row's features are its caption's image


def test_loader_in_file_order_pins_memory(split: PrecompSplit, vocab) -> None:
    loader = DataLoader(CaptionDataset(split, vocab), batch_size=4, collate_fn=collate_captions, drop_last=True)
    batches = list(loader)
    assert len(batches) == (5 * N) // 4
    assert torch.cat([b.caption_ids for b in batches]).tolist() == list(range(4 * len(batches)))
    if torch.cuda.is_available():  # Batch.pin_memory lets DataLoader(pin_memory=True) work
        assert batches[0].pin_memory().images.is_pinned()


def test_no_loader_factory_beside_the_recipe() -> None:
    import scan.data.collate

    # The training recipe builds its own resumable loader; a second factory here had no caller.
    assert not hasattr(scan.data.collate, "make_caption_loader")
