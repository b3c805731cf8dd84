"""The language-model objective: a small pre-LN causal transformer with tied embeddings.

Next-token cross-entropy through `Transformer.logits`, which multiplies the final stream by E
itself (Press & Wolf 2017): the matrix the server searches is the one the loss shaped at both
ends. Held-out perplexity is exp(mean next-token loss) on fixed windows of the held-out split;
the unigram perplexity of the same targets (training-split token frequencies) is the baseline a
model that ignores context would reach.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ..transformer import WEIGHTS_FILE, Transformer, TransformerConfig
from .data import lm_batch, lm_eval_windows, unigram_log_probs

MAX_EVAL_TOKENS = 100_000
EVAL_BATCH = 32


class LMObjective:
    unit = "token"

    def __init__(
        self,
        cfg: TransformerConfig,
        train_stream: np.ndarray,
        heldout_stream: np.ndarray,
        counts: np.ndarray,
        batch_size: int,
        lr: float,
        weight_decay: float = 0.1,
    ) -> None:
        if len(train_stream) <= cfg.n_ctx + 1:
            raise ValueError(
                f"the training split has {len(train_stream)} tokens, fewer than one window of "
                f"{cfg.n_ctx + 1}: use a larger corpus or a shorter --context"
            )
        self.cfg, self.stream, self.batch_size = cfg, train_stream, batch_size
        self.model = Transformer(cfg).train()  # initialised from torch's seeded global RNG
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=lr,
            betas=(0.9, 0.95),
        )
        self.eval_x: np.ndarray | None = None
        self.eval_y: np.ndarray | None = None
        if len(heldout_stream):
            self.eval_x, self.eval_y = lm_eval_windows(heldout_stream, cfg.n_ctx, MAX_EVAL_TOKENS)
        self.unigram = unigram_log_probs(counts)

    def step_loss(self, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        x, y = lm_batch(self.stream, self.cfg.n_ctx, self.batch_size, rng)
        logits = self.model.logits(self.model(torch.from_numpy(x)))  # (batch, pos, d_vocab)
        loss = F.cross_entropy(
            logits.reshape(-1, self.cfg.d_vocab), torch.from_numpy(y).reshape(-1)
        )
        return loss, int(x.size)

    def clip(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.eval_x is None or self.eval_y is None:
            return {}
        self.model.eval()
        nll, n = 0.0, 0
        for i in range(0, len(self.eval_x), EVAL_BATCH):
            x = torch.from_numpy(self.eval_x[i : i + EVAL_BATCH])
            y = torch.from_numpy(self.eval_y[i : i + EVAL_BATCH])
            logits = self.model.logits(self.model(x))  # (batch, pos, d_vocab)
            nll += float(
                F.cross_entropy(
                    logits.reshape(-1, self.cfg.d_vocab), y.reshape(-1), reduction="sum"
                )
            )
            n += y.numel()
        self.model.train()
        uni = -float(self.unigram[self.eval_y].mean())
        return {
            "heldout_loss": nll / n,
            "ppl": math.exp(nll / n),
            "unigram_ppl": math.exp(uni),
            "heldout_tokens": float(n),
        }

    def embedding_matrix(self) -> np.ndarray:
        return self.model.embedding_matrix()

    def save(self, folder: Path) -> None:
        self.model.save(folder)

    def load(self, folder: Path) -> None:
        self.model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
