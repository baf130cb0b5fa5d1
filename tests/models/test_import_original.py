"""`scan import-original`: a checkpoint written in the authors' format scores as their code scores it.

The checkpoint is made here by a faithful copy of their `EncoderImagePrecomp`,
`EncoderImageWeightNormPrecomp` and `EncoderText` (kuanghuei/SCAN model.py, with Python 3's `//`
for their `/` on sizes and the old `weight_norm` they used), saved as their `train.py` saves it:
`torch.save({"epoch", "model": [img_enc.state_dict(), txt_enc.state_dict()], "best_rsum", "opt":
argparse.Namespace, "Eiters"})`. Its vocabulary is pickled from a `vocab.Vocabulary` class that
exists only while pickling, as it did for their users. Then our imported model's scores are
compared with `benchmarks/original_port.py` (their evaluation) on the original encoders' outputs.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import original_port
from scan import load_model
from scan.cli.main import main
from scan.errors import CheckpointError, DataError
from scan.models.original import read_original_vocabulary, write_imported_model

# ------------------------------------------------------------------ their classes, copied faithfully


def l2norm(X, dim, eps=1e-8):
    norm = torch.pow(X, 2).sum(dim=dim, keepdim=True).sqrt() + eps
    return torch.div(X, norm)


class EncoderImagePrecomp(nn.Module):
    def __init__(self, img_dim, embed_size, no_imgnorm=False):
        super().__init__()
        self.embed_size = embed_size
        self.no_imgnorm = no_imgnorm
        self.fc = nn.Linear(img_dim, embed_size)
        r = np.sqrt(6.0) / np.sqrt(self.fc.in_features + self.fc.out_features)
        self.fc.weight.data.uniform_(-r, r)
        self.fc.bias.data.fill_(0)

    def forward(self, images):
        features = self.fc(images)
        if not self.no_imgnorm:
            features = l2norm(features, dim=-1)
        return features


class EncoderImageWeightNormPrecomp(nn.Module):
    def __init__(self, img_dim, embed_size, no_imgnorm=False):
        super().__init__()
        self.embed_size = embed_size
        self.no_imgnorm = no_imgnorm
        self.fc = torch.nn.utils.weight_norm(nn.Linear(img_dim, embed_size), dim=None)

    def forward(self, images):
        features = self.fc(images)
        if not self.no_imgnorm:
            features = l2norm(features, dim=-1)
        return features


class EncoderText(nn.Module):
    def __init__(self, vocab_size, word_dim, embed_size, num_layers, use_bi_gru=False, no_txtnorm=False):
        super().__init__()
        self.embed_size = embed_size
        self.no_txtnorm = no_txtnorm
        self.embed = nn.Embedding(vocab_size, word_dim)
        self.use_bi_gru = use_bi_gru
        self.rnn = nn.GRU(word_dim, embed_size, num_layers, batch_first=True, bidirectional=use_bi_gru)
        self.embed.weight.data.uniform_(-0.1, 0.1)

    def forward(self, x, lengths):
        x = self.embed(x)
        packed = pack_padded_sequence(x, lengths, batch_first=True)
        out, _ = self.rnn(packed)
        cap_emb, cap_len = pad_packed_sequence(out, batch_first=True)
        if self.use_bi_gru:
            cap_emb = (cap_emb[:, :, : cap_emb.size(2) // 2] + cap_emb[:, :, cap_emb.size(2) // 2 :]) / 2
        if not self.no_txtnorm:
            cap_emb = l2norm(cap_emb, dim=-1)
        return cap_emb, cap_len


WORDS = ["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "runs", "on", "the", "beach", "two", "men", "play", "."]


def their_options(**changes) -> argparse.Namespace:
    """The options their train.py parses, with the values of the F30K t2i recipe (small sizes)."""
    options = dict(
        data_path="./data/", data_name="f30k_precomp", vocab_path="./vocab/", margin=0.2, num_epochs=30,
        batch_size=128, word_dim=12, embed_size=16, grad_clip=2.0, num_layers=1, learning_rate=0.0002,
        lr_update=15, workers=10, log_step=10, val_step=500, logger_name="./runs/log", model_name="./runs/ckpt",
        resume="", max_violation=True, img_dim=20, no_imgnorm=False, no_txtnorm=False,
        raw_feature_norm="clipped_l2norm", agg_func="Mean", cross_attn="t2i", precomp_enc_type="basic",
        bi_gru=True, lambda_lse=6.0, lambda_softmax=9.0,
    )  # fmt: skip
    options.update(changes)
    return argparse.Namespace(**options)


def save_their_checkpoint(folder: Path, opt: argparse.Namespace, seed: int = 0):
    torch.manual_seed(seed)
    image_class = EncoderImageWeightNormPrecomp if opt.precomp_enc_type == "weight_norm" else EncoderImagePrecomp
    img_enc = image_class(opt.img_dim, opt.embed_size, opt.no_imgnorm)
    txt_enc = EncoderText(len(WORDS), opt.word_dim, opt.embed_size, opt.num_layers, opt.bi_gru, opt.no_txtnorm)
    if opt.precomp_enc_type == "weight_norm":
        with torch.no_grad():  # move g away from |v| so that the two tensors are told apart
            img_enc.fc.weight_g.mul_(1.7)
    path = folder / "model_best.pth.tar"
    state = {"epoch": 12, "model": [img_enc.state_dict(), txt_enc.state_dict()], "best_rsum": 480.5, "opt": opt}
    torch.save({**state, "Eiters": 27000}, path)
    return path, img_enc.eval(), txt_enc.eval()


def pickle_their_vocabulary(path: Path) -> None:
    """Pickle a `vocab.Vocabulary` as their build_vocab made it; the class is gone afterwards."""
    module = types.ModuleType("vocab")

    class Vocabulary:
        def __init__(self):
            self.word2idx, self.idx2word, self.idx = {}, {}, 0

        def add_word(self, word):
            if word not in self.word2idx:
                self.word2idx[word] = self.idx
                self.idx2word[self.idx] = word
                self.idx += 1

    Vocabulary.__module__, Vocabulary.__qualname__ = "vocab", "Vocabulary"
    module.Vocabulary = Vocabulary
    sys.modules["vocab"] = module
    try:
        vocab = Vocabulary()
        for word in WORDS:
            vocab.add_word(word)
        path.write_bytes(pickle.dumps(vocab, protocol=2))
    finally:
        del sys.modules["vocab"]


# ------------------------------------------------------------------ the tests


def their_scores(img_enc, txt_enc, features, tokens, lengths, opt) -> np.ndarray:
    """Their evaluation: encode, then `shard_xattn_*` (benchmarks/original_port.py) in float64."""
    order = torch.argsort(lengths, descending=True)  # their collate sorts captions by length
    with torch.no_grad():
        images = img_enc(features).double().numpy()
        words, _ = txt_enc(tokens[order], lengths[order].tolist())
    captions = np.zeros((len(order), int(lengths.max()), opt.embed_size))
    captions[order.numpy(), : words.shape[1]] = words.double().numpy()
    port_options = original_port.Options(
        raw_feature_norm=opt.raw_feature_norm, lambda_softmax=opt.lambda_softmax, agg_func=opt.agg_func,
        lambda_lse=opt.lambda_lse,
    )  # fmt: skip
    return original_port.shard_xattn(images, captions, lengths.tolist(), port_options, direction=opt.cross_attn)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"cross_attn": "i2t", "agg_func": "LogSumExp", "lambda_softmax": 4.0, "lambda_lse": 5.0},
        {"precomp_enc_type": "weight_norm", "bi_gru": False, "num_layers": 2, "raw_feature_norm": "l2norm"},
    ],
)
def test_an_imported_checkpoint_scores_as_their_code_does(tmp_path, changes):
    opt = their_options(**changes)
    checkpoint, img_enc, txt_enc = save_their_checkpoint(tmp_path, opt)
    pickle_their_vocabulary(tmp_path / "vocab.pkl")
    assert (
        main(
            ["import-original", str(checkpoint), "--vocab", str(tmp_path / "vocab.pkl"), "--out", str(tmp_path / "run")]
        )
        == 0
    )
    trained = load_model(tmp_path / "run")
    assert trained.config.model.direction == opt.cross_attn and trained.config.model.embed_dim == opt.embed_size

    generator = torch.Generator().manual_seed(5)
    features = torch.randn(6, 7, opt.img_dim, generator=generator)  # (N, R, F): fresh random features
    lengths = torch.randint(3, 9, (11,), generator=generator)
    tokens = torch.randint(4, len(WORDS), (11, int(lengths.max())), generator=generator)
    tokens[torch.arange(tokens.shape[1])[None, :] >= lengths[:, None]] = 0
    with torch.no_grad():
        images = trained.model.encode_image(features)
        words, _mask = trained.model.encode_text(tokens, lengths)
        ours = trained.model.score_matrix(images, words, lengths, precision="fp32").numpy()
    theirs = their_scores(img_enc, txt_enc, features, tokens, lengths, opt)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    assert json.loads((tmp_path / "run" / "imported.json").read_text())["epoch"] == 12


def test_their_json_vocabulary_is_read_too(tmp_path):
    document = {"word2idx": {w: i for i, w in enumerate(WORDS)}, "idx2word": {str(i): w for i, w in enumerate(WORDS)}}
    (tmp_path / "f30k_precomp_vocab.json").write_text(json.dumps({**document, "idx": len(WORDS)}))
    pickle_their_vocabulary(tmp_path / "vocab.pkl")
    from_json = read_original_vocabulary(tmp_path / "f30k_precomp_vocab.json")
    assert from_json == read_original_vocabulary(tmp_path / "vocab.pkl")
    assert from_json.encode("a dog runs") == [1, 4, 5, 6, 2]


class Payload:
    """Stands for code a malicious file would run: unpickling it calls `print`."""

    def __reduce__(self):
        return (print, ("pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, capsys):
    (tmp_path / "vocab.pkl").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(DataError, match=r"builtins.print is not allowed"):
        read_original_vocabulary(tmp_path / "vocab.pkl")
    torch.save({"model": [{}, {}], "opt": Payload()}, tmp_path / "evil.pth.tar")
    pickle_their_vocabulary(tmp_path / "ok.pkl")
    with pytest.raises(CheckpointError, match="refused"):
        write_imported_model(tmp_path / "evil.pth.tar", tmp_path / "ok.pkl", tmp_path / "out")
    assert "pwned" not in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"no_imgnorm": True}, "no_imgnorm"),
        ({"raw_feature_norm": "softmax_l2"}, "raw_feature_norm"),
        ({"agg_func": "Median"}, "agg_func"),
        ({"cross_attn": "both"}, "cross_attn"),
    ],
)
def test_options_our_model_does_not_implement_are_refused_by_name(tmp_path, changes, message, capsys):
    checkpoint, _, _ = save_their_checkpoint(tmp_path, their_options(**changes))
    pickle_their_vocabulary(tmp_path / "vocab.pkl")
    assert (
        main(
            ["import-original", str(checkpoint), "--vocab", str(tmp_path / "vocab.pkl"), "--out", str(tmp_path / "run")]
        )
        == 2
    )
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_vocabulary_of_another_size_or_a_foreign_file_is_refused(tmp_path, capsys):
    checkpoint, _, _ = save_their_checkpoint(tmp_path, their_options())
    (tmp_path / "small.json").write_text(
        json.dumps(
            {
                "word2idx": {w: i for i, w in enumerate(WORDS[:6])},
                "idx2word": {str(i): w for i, w in enumerate(WORDS[:6])},
                "idx": 6,
            }
        )
    )
    assert (
        main(
            ["import-original", str(checkpoint), "--vocab", str(tmp_path / "small.json"), "--out", str(tmp_path / "a")]
        )
        == 2
    )
    assert "6 words, but the checkpoint's word embedding has 14 rows" in capsys.readouterr().err
    torch.save(OrderedDict(weight=torch.zeros(2)), tmp_path / "other.pth")
    pickle_their_vocabulary(tmp_path / "vocab.pkl")
    assert (
        main(
            [
                "import-original",
                str(tmp_path / "other.pth"),
                "--vocab",
                str(tmp_path / "vocab.pkl"),
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 2
    )
    assert "not a SCAN checkpoint" in capsys.readouterr().err
