"""The SCAN model with a split interface: encode each side once, score many pairs.

`encode_image` and `encode_text` map raw inputs to sets of unit vectors; `similarity` scores
every image of one set against every caption of another with Stacked Cross Attention (paper
section 3.1 for i2t, 3.2 for t2i). Evaluation and retrieval encode a gallery once and call
`score_matrix`; training calls `forward`, which returns the batch's `(B, B)` score matrix, or
`forward_with_global`, which also returns the cosines of the trained global vectors
(`GlobalHead`, the first stage of two-stage search) from the same encoding of the batch.

With `model.learn_lambda` the attention softmax's inverse temperature lambda_1 is trained with
the model: `SCAN` holds it as `log_lambda` (so it stays positive), `similarity` passes it to the
scores as a tensor so the loss reaches it, and `attention` reports its current value, so that
evaluation, search and drawing score with the lambda_1 that was learned.

`GlobalEmbedding` is the VSE++-style baseline the paper compares against: regions and words
mean-pooled into one vector each, scored by cosine. It shares the encoders and the interface
(an embedding is a "set" of one vector), so the same recipe trains and evaluates both.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from scan.config import ModelConfig
from scan.errors import ConfigError
from scan.models.global_head import GlobalHead
from scan.models.image_encoder import ImageEncoder
from scan.models.registry import text_encoder
from scan.similarity import dispatch
from scan.similarity.functional import attend
from scan.similarity.options import AttentionOptions


def build_text_encoder(config: ModelConfig) -> nn.Module:
    """The text encoder named by `config.text_encoder`, built by its registry entry.

    Raises:
        ConfigError: An unknown encoder name, or a GRU encoder without `vocab_size`.
    """
    return text_encoder(config.text_encoder).build_encoder(config)


def attention_options(config: ModelConfig) -> AttentionOptions:
    """The config's attention fields as one checked `AttentionOptions`.

    Raises:
        ConfigError: Naming the `model.*` field whose value is invalid.
    """
    return config.attention()


class SCAN(nn.Module):
    """Stacked Cross Attention between image regions and caption words."""

    # Whether `model.global_head` builds a `GlobalHead` for this architecture.
    supports_global_head: ClassVar[bool] = True
    # Whether `model.learn_lambda` trains lambda_1: only an architecture that attends has one.
    supports_learned_lambda: ClassVar[bool] = True

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        # Built (and so checked) once: a bad option fails here, not at the first scored batch.
        self._attention: AttentionOptions = attention_options(config)
        self.image_encoder = ImageEncoder(
            image_dim=config.image_dim, embed_dim=config.embed_dim, weight_norm=config.image_weight_norm
        )
        self.text_encoder = build_text_encoder(config)
        # Built after the encoders and without drawing random numbers: their initialisation under
        # a seed is the same with and without the head.
        self.global_head: GlobalHead | None = (
            GlobalHead(config.embed_dim) if config.global_head and self.supports_global_head else None
        )
        # lambda_1 in log space, so no step can make it negative; a constant, not a random draw, so
        # the encoders' initialisation under a seed is unchanged. Without `learn_lambda` there is no
        # parameter at all: state-dict keys, and so older checkpoints, stay as they were.
        self.log_lambda: nn.Parameter | None = (
            nn.Parameter(torch.tensor(math.log(self._attention.smooth)))
            if config.learn_lambda and self.supports_learned_lambda
            else None
        )
        self.scoring_backend = "auto"  # set by the caller: "auto", "torch" or "triton"
        self.scoring_precision = "auto"  # "auto", "fp32" (exact), "tf32" or "bf16"

    @property
    def attention(self) -> AttentionOptions:
        """The options every score and drawing uses: the config's, with lambda_1 as learned so far.

        With `learn_lambda`, `smooth` is the current `exp(log_lambda)` as a float (read from the
        device on each access): callers that score without gradients (evaluation, search,
        drawing) then use the learned value without knowing it is learned.
        """
        if self.log_lambda is None:
            return self._attention
        return dataclasses.replace(self._attention, smooth=float(self.log_lambda.detach().exp()))

    def learned_smooth(self) -> torch.Tensor | None:
        """lambda_1 as a 0-dim tensor the scores differentiate through, or None when it is not learned."""
        return None if self.log_lambda is None else self.log_lambda.exp()

    def encode_image(self, features: torch.Tensor) -> torch.Tensor:
        """`(N, R, F)` region features -> `(N, R, D)` unit region vectors."""
        return self.image_encoder(features)

    def encode_text(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(M, W)` token ids and `(M,)` lengths -> `(M, W, D)` unit word vectors and `(M, W)` mask."""
        return self.text_encoder(tokens, lengths)

    def similarity(self, images: torch.Tensor, captions: torch.Tensor, caption_mask: torch.Tensor) -> torch.Tensor:
        """Differentiable `(N, M)` scores of encoded images against encoded captions."""
        # A learned lambda_1 goes in as a tensor, overriding the options' float, so the loss's
        # gradient reaches `log_lambda` (on the PyTorch path: the Triton kernels have none for it).
        return dispatch.batch_scores(
            images.float(),
            captions.float(),
            caption_mask,
            self._attention,
            backend=self.scoring_backend,
            precision=self.scoring_precision,
            smooth=self.learned_smooth(),
        )

    @torch.no_grad()
    def score_matrix(
        self, images: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor, **kwargs
    ) -> torch.Tensor:
        """`(N, M)` float32 CPU scores of a whole encoded gallery, tiled to bounded memory.

        Args:
            images: `(N, R, D)` encoded images.
            captions: `(M, W, D)` encoded captions, padded.
            lengths: `(M,)` real words of each caption.
            **kwargs: `backend`, `precision`, `memory_budget_mb`, `device` of
                `dispatch.score_matrix` (backend and precision default to the model's).
        """
        kwargs.setdefault("backend", self.scoring_backend)
        kwargs.setdefault("precision", self.scoring_precision)
        return dispatch.score_matrix(images, captions, lengths, self.attention, **kwargs)

    @torch.no_grad()
    def attention_weights(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Where one caption looks in one image, for drawing (paper Fig. 1 and 5).

        Args:
            features: `(R, F)` region features of the image.
            tokens: `(W,)` token ids of the caption.

        Returns:
            t2i: `(W, R)`, each word's attention over the regions; i2t: `(R, W)`, each region's
            attention over the words.
        """
        regions = self.encode_image(features[None])  # (1, R, D)
        words, mask = self.encode_text(tokens[None], torch.tensor([len(tokens)], device=tokens.device))  # (1, W, D)
        a = self.attention
        if a.direction == "t2i":
            _, weights = attend(words, regions, query_mask=mask, norm=a.norm, smooth=a.smooth)
        else:
            _, weights = attend(regions, words, context_mask=mask, norm=a.norm, smooth=a.smooth)
        return weights[0].float()

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """A training batch (caption k paired with image k) -> its `(B, B)` score matrix."""
        images = self.encode_image(features)  # (B, R, D)
        captions, mask = self.encode_text(tokens, lengths)  # (B, W, D), (B, W)
        return self.similarity(images, captions, mask)

    def forward_with_global(
        self, features: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A training batch -> its `(B, B)` SCAN scores and `(B, B)` global cosines (None without a head).

        Both come from one encoding of the batch, so the head's loss also trains the encoders
        SCAN scores with, at the cost of two small matrix products.
        """
        images = self.encode_image(features)  # (B, R, D)
        captions, mask = self.encode_text(tokens, lengths)  # (B, W, D), (B, W)
        scores = self.similarity(images, captions, mask)  # (B, B)
        if self.global_head is None:
            return scores, None
        image_vectors = self.global_head.image(images).float()  # (B, D)
        caption_vectors = self.global_head.text(captions, mask).float()  # (B, D)
        return scores, image_vectors @ caption_vectors.T  # (B, B)


class GlobalEmbedding(SCAN):
    """VSE++-style baseline: mean-pooled regions and words, one unit vector each, cosine score."""

    supports_global_head = False  # its score already is a global cosine: nothing to add
    supports_learned_lambda = False  # no attention, so no lambda_1 to learn

    def encode_image(self, features: torch.Tensor) -> torch.Tensor:
        regions = self.image_encoder(features)  # (N, R, D)
        return F.normalize(regions.mean(dim=1, keepdim=True), dim=-1)  # (N, 1, D)

    def encode_text(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        words, mask = self.text_encoder(tokens, lengths)  # (M, W, D), (M, W)
        summed = (words * mask[..., None]).sum(dim=1, keepdim=True)  # (M, 1, D)
        pooled = F.normalize(summed / mask.sum(dim=1)[:, None, None].clamp(min=1), dim=-1)
        return pooled, torch.ones(pooled.shape[:2], dtype=torch.bool, device=pooled.device)

    def similarity(self, images: torch.Tensor, captions: torch.Tensor, caption_mask: torch.Tensor) -> torch.Tensor:
        return images[:, 0].float() @ captions[:, 0].float().T  # (N, M)

    @torch.no_grad()
    def score_matrix(
        self, images: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor, **kwargs
    ) -> torch.Tensor:
        return (images[:, 0].float() @ captions[:, 0].float().T).cpu()

    def attention_weights(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("the global-embedding baseline pools regions and words; it has no attention to draw")


ARCHITECTURES = {"scan": SCAN, "vse": GlobalEmbedding}


def build_model(config: ModelConfig) -> SCAN:
    """The model of `config.architecture` (`scan` or the `vse` baseline).

    Raises:
        ConfigError: An unknown architecture, text encoder or attention option.
    """
    if config.architecture not in ARCHITECTURES:
        raise ConfigError(f"model.architecture: {config.architecture!r} is not one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[config.architecture](config)
