"""Skip-gram with negative sampling (word2vec; Mikolov et al. 2013), written with torch.

Each token has an input vector (a row of E, what is served) and a context vector. For a center
word w, a context word c seen near it and k negatives n drawn from unigram^(3/4):
    loss = -log σ(E[w]·C[c]) - Σ log σ(-E[w]·C[n])
Levy & Goldberg (2014) showed this factorises the shifted PMI matrix, which is why vector
offsets carry relations. Inputs start uniform in ±0.5/d and contexts at zero, as in word2vec.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .data import Encoded, PairSampler
from .state import EMBEDDINGS

EVAL_PAIRS = 50_000


class SkipGram(nn.Module):
    def __init__(self, d_vocab: int, d_model: int) -> None:
        super().__init__()
        self.E = nn.Embedding(d_vocab, d_model)  # input vectors: the space that is served
        self.C = nn.Embedding(d_vocab, d_model)  # context vectors
        nn.init.uniform_(self.E.weight, -0.5 / d_model, 0.5 / d_model)
        nn.init.zeros_(self.C.weight)

    def forward(
        self, center: torch.Tensor, context: torch.Tensor, neg: torch.Tensor
    ) -> torch.Tensor:
        """Mean loss over the pairs: center (n,), context (n,), neg (n, k)."""
        w = self.E(center)  # (n, d_model)
        pos = (w * self.C(context)).sum(-1)  # (n,)
        # a broadcast product, not bmm: batched (k x d) @ (d x 1) products are slow on CPU
        negs = (self.C(neg) * w.unsqueeze(1)).sum(-1)  # (n, k)
        return -(F.logsigmoid(pos) + F.logsigmoid(-negs).sum(-1)).mean()


class SGNSObjective:
    unit = "pair"

    def __init__(
        self,
        d_vocab: int,
        d_model: int,
        train: Encoded,
        heldout: Encoded,
        counts: np.ndarray,
        special: set[int],
        window: int,
        negatives: int,
        batch_size: int,
        lr: float,
        seed: int,
    ) -> None:
        self.model = SkipGram(d_vocab, d_model)
        self.sampler = PairSampler(train, counts, window, negatives, special)
        self.batch_size = batch_size
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.eval_pairs: tuple[torch.Tensor, ...] | None = None
        if len(heldout.ids):
            held = PairSampler(heldout, counts, window, negatives, special)
            # its own generator: evaluating never moves the training sampler's RNG
            c, x, n = held.batch(np.random.default_rng(seed + 1), EVAL_PAIRS)
            self.eval_pairs = (torch.from_numpy(c), torch.from_numpy(x), torch.from_numpy(n))

    def step_loss(self, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        c, x, n = self.sampler.batch(rng, self.batch_size)
        loss = self.model(torch.from_numpy(c), torch.from_numpy(x), torch.from_numpy(n))
        return loss, len(c)

    def clip(self) -> None:
        pass

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.eval_pairs is None:
            return {}
        return {"heldout_loss": float(self.model(*self.eval_pairs))}

    def embedding_matrix(self) -> np.ndarray:
        return self.model.E.weight.detach().numpy().copy()

    def save(self, folder: Path) -> None:
        save_file(
            {
                "E": self.model.E.weight.detach().contiguous(),
                "context": self.model.C.weight.detach().contiguous(),
            },
            str(folder / EMBEDDINGS),
        )

    def load(self, folder: Path) -> None:
        w = load_file(str(folder / EMBEDDINGS))
        self.model.load_state_dict({"E.weight": w["E"], "C.weight": w["context"]}, strict=True)
