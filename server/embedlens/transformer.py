"""The residual transformer: one readable file, pre-LN (GPT) and post-LN (BERT) blocks.

Every block reads the residual stream and adds to it. The points of the stream are named as in
TransformerLens (`embed`, `pos_embed`, `blocks.{i}.resid_pre`, `attn_out`, `resid_mid`,
`mlp_out`, `resid_post`, `final`) and `run_with_cache` keeps only the points a caller asks for,
because caching every point of every layer costs memory. See docs/residual-stream.md.

Pure torch + safetensors + numpy: the service layer converts to and from the wire.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

CONFIG_FILE = "transformer.json"  # our own checkpoints; distinct from a HF config.json
WEIGHTS_FILE = "transformer.safetensors"
BLOCK_POINTS = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")

NamesFilter = Collection[str] | Callable[[str], bool] | None


@dataclass(frozen=True)
class TransformerConfig:
    d_vocab: int
    d_model: int
    n_heads: int
    n_layers: int
    n_ctx: int
    d_mlp: int
    block_style: str = "pre_ln"  # "post_ln" (BERT) | "pre_ln" (GPT)
    positional: str = "learned"  # "learned" | "sinusoidal" | "rope"
    causal: bool = True
    layer_norm_eps: float = 1e-5
    activation: str = "gelu"  # "gelu" (exact erf, as BERT) | "gelu_new" (tanh approximation)
    n_token_types: int = 0  # 2 for BERT's segment embeddings, 0 for none
    tie_embeddings: bool = True  # unembed with E itself
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        choices = {
            "block_style": ("post_ln", "pre_ln"),
            "positional": ("learned", "sinusoidal", "rope"),
            "activation": ("gelu", "gelu_new"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("d_vocab", "d_model", "n_heads", "n_layers", "n_ctx", "d_mlp"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.positional == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"sinusoidal positions need an even d_model, got {self.d_model}")
        if self.positional == "rope" and self.d_head % 2:
            raise ValueError(f"rope needs an even head size, got {self.d_head}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransformerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; allowed: {sorted(known)}")
        return cls(**d)


def point_names(n_layers: int) -> list[str]:
    """Every valid residual-stream point name, in the order the forward pass produces them."""
    names = ["embed", "pos_embed"]
    names += [f"blocks.{i}.{p}" for i in range(n_layers) for p in BLOCK_POINTS]
    return [*names, "final"]


def validate_names(names: Collection[str], n_layers: int) -> list[str]:
    """Return names as a list, or raise ValueError naming the bad ones and what is allowed."""
    if isinstance(names, str):  # a lone string is a collection of characters: a classic trap
        names = [names]
    valid = set(point_names(n_layers))
    bad = [n for n in names if n not in valid]
    if bad:
        raise ValueError(
            f"unknown residual-stream point(s) {bad}; allowed: embed, pos_embed, "
            f"blocks.{{i}}.{{{'|'.join(BLOCK_POINTS)}}} for i in 0..{n_layers - 1}, final"
        )
    return list(names)


def mean_pool(hidden: Tensor, attention_mask: Tensor, normalize: bool = True) -> Tensor:
    """Average over real (mask 1) positions, as sentence-transformers does; then L2-normalise."""
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (batch, pos, 1)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (batch, d_model)
    return F.normalize(pooled, dim=-1) if normalize else pooled


def sinusoidal_table(n_ctx: int, d_model: int) -> Tensor:
    """Vaswani et al.: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(same)."""
    pos = torch.arange(n_ctx, dtype=torch.float32).unsqueeze(1)  # (n_ctx, 1)
    inv_freq = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))  # (d/2,)
    table = torch.zeros(n_ctx, d_model)  # (n_ctx, d_model)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq)
    return table


def rope_tables(n_ctx: int, d_head: int, base: float) -> tuple[Tensor, Tensor]:
    """cos and sin for rotary embeddings, laid out for rotate_half (GPT-NeoX / Llama style)."""
    inv_freq = 1.0 / base ** (torch.arange(0, d_head, 2, dtype=torch.float32) / d_head)
    angles = torch.outer(torch.arange(n_ctx, dtype=torch.float32), inv_freq)  # (n_ctx, d_head/2)
    angles = torch.cat([angles, angles], dim=-1)  # (n_ctx, d_head)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair of dims by a position-dependent angle: q·k then depends on offset only."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)  # (batch, n_heads, pos, d_head)
    return x * cos + rotated * sin  # (batch, n_heads, pos, d_head)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        # separate q, k, v (not one fused matrix) so BERT checkpoints map one-to-one
        self.q = nn.Linear(cfg.d_model, cfg.d_model)
        self.k = nn.Linear(cfg.d_model, cfg.d_model)
        self.v = nn.Linear(cfg.d_model, cfg.d_model)
        self.o = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: Tensor, allowed: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        B, T, _ = x.shape  # (batch, pos, d_model)
        nh, hs = self.cfg.n_heads, self.cfg.d_head
        q = self.q(x).view(B, T, nh, hs).transpose(1, 2)  # (batch, n_heads, pos, d_head)
        k = self.k(x).view(B, T, nh, hs).transpose(1, 2)  # (batch, n_heads, pos, d_head)
        v = self.v(x).view(B, T, nh, hs).transpose(1, 2)  # (batch, n_heads, pos, d_head)
        if rope is not None:
            cos, sin = rope  # (pos, d_head) each
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # allowed: (batch, 1, pos, pos) bool, True where a query may attend to a key
        z = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed
        )  # (batch, n_heads, pos, d_head)
        z = z.transpose(1, 2).reshape(B, T, nh * hs)  # (batch, pos, d_model)
        return self.o(z)  # (batch, pos, d_model)


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.fc_in = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.fc_out = nn.Linear(cfg.d_mlp, cfg.d_model)
        self.approximate = "tanh" if cfg.activation == "gelu_new" else "none"

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(self.fc_in(x), approximate=self.approximate)  # (batch, pos, d_mlp)
        return self.fc_out(h)  # (batch, pos, d_model)


Record = Callable[[str, Tensor], None]


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.post_ln = cfg.block_style == "post_ln"
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)

    def forward(
        self, x: Tensor, allowed: Tensor, rope: tuple[Tensor, Tensor] | None, record: Record
    ) -> Tensor:
        record("resid_pre", x)  # (batch, pos, d_model)
        if self.post_ln:
            # BERT: the sub-layer reads the raw stream and the sum is normalised afterwards
            attn_out = self.attn(x, allowed, rope)  # (batch, pos, d_model)
            resid_mid = self.ln1(x + attn_out)  # (batch, pos, d_model)
            mlp_out = self.mlp(resid_mid)  # (batch, pos, d_model)
            resid_post = self.ln2(resid_mid + mlp_out)  # (batch, pos, d_model)
        else:
            # GPT: the sub-layer reads a normalised copy; the stream itself is a pure sum
            attn_out = self.attn(self.ln1(x), allowed, rope)  # (batch, pos, d_model)
            resid_mid = x + attn_out  # (batch, pos, d_model)
            mlp_out = self.mlp(self.ln2(resid_mid))  # (batch, pos, d_model)
            resid_post = resid_mid + mlp_out  # (batch, pos, d_model)
        record("attn_out", attn_out)
        record("resid_mid", resid_mid)
        record("mlp_out", mlp_out)
        record("resid_post", resid_post)
        return resid_post


class Transformer(nn.Module):
    # fixed tables, present only for the matching cfg.positional (declared for mypy)
    pe: Tensor
    rope_cos: Tensor
    rope_sin: Tensor

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.d_vocab, cfg.d_model)  # E: one row per token
        self.wpe = nn.Embedding(cfg.n_ctx, cfg.d_model) if cfg.positional == "learned" else None
        self.wtt = nn.Embedding(cfg.n_token_types, cfg.d_model) if cfg.n_token_types else None
        # fixed tables are rebuilt from the config, so they are not saved (persistent=False)
        if cfg.positional == "sinusoidal":
            self.register_buffer("pe", sinusoidal_table(cfg.n_ctx, cfg.d_model), persistent=False)
        if cfg.positional == "rope":
            cos, sin = rope_tables(cfg.n_ctx, cfg.d_head, cfg.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        post = cfg.block_style == "post_ln"
        self.ln_emb = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if post else None
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_final = None if post else nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        # tied: the unembedding is E itself, so no second matrix exists (and none is saved)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.d_vocab, False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # GPT-2 / nanoGPT init; only matters for fresh models (tests, `embedlens train`)
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    # ---- the forward pass ------------------------------------------------------------------

    def forward(
        self,
        ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """Final residual stream (batch, pos, d_model); gradients flow (used for training)."""
        return self._run(ids, attention_mask, token_type_ids, lambda name, t: None)

    @torch.inference_mode()
    def run_with_cache(
        self,
        ids: Tensor | np.ndarray,
        attention_mask: Tensor | np.ndarray | None = None,
        token_type_ids: Tensor | np.ndarray | None = None,
        names_filter: NamesFilter = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Run without gradients; return (final, cache) holding only the requested points.

        names_filter: None (all points), a collection of names (validated), or a predicate.
        Positions whose attention_mask is 0 hold finite but meaningless values.
        """
        if names_filter is None:
            keep: Callable[[str], bool] = lambda name: True  # noqa: E731
        elif callable(names_filter):
            keep = names_filter
        else:
            wanted = set(validate_names(names_filter, self.cfg.n_layers))
            keep = wanted.__contains__
        cache: dict[str, Tensor] = {}

        def record(name: str, t: Tensor) -> None:
            if keep(name):
                cache[name] = t

        final = self._run(ids, attention_mask, token_type_ids, record)
        return final, cache

    def _run(
        self,
        ids: Tensor | np.ndarray,
        attention_mask: Tensor | np.ndarray | None,
        token_type_ids: Tensor | np.ndarray | None,
        record: Record,
    ) -> Tensor:
        cfg, dev = self.cfg, self.wte.weight.device
        ids = torch.as_tensor(ids, dtype=torch.long, device=dev)  # (batch, pos)
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(
                f"ids must have shape (batch, pos) with pos >= 1, got {tuple(ids.shape)}"
            )
        B, T = ids.shape
        if ids.shape[1] > cfg.n_ctx:
            raise ValueError(f"sequence of {T} tokens exceeds n_ctx={cfg.n_ctx}")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= cfg.d_vocab:
            raise ValueError(f"token ids must be in [0, {cfg.d_vocab}), got {lo}..{hi}")
        if attention_mask is None:
            mask = torch.ones(B, T, dtype=torch.bool, device=dev)  # (batch, pos)
        else:
            mask = torch.as_tensor(attention_mask, device=dev).bool()  # (batch, pos)
            if mask.shape != ids.shape:
                raise ValueError(f"attention_mask shape {tuple(mask.shape)} != ids {(B, T)}")

        embed = self.wte(ids)  # (batch, pos, d_model)
        record("embed", embed)
        # positions are 0..T-1 as in HF BERT, so padding must be on the right
        if self.wpe is not None:
            pos_embed = self.wpe.weight[:T].expand(B, T, -1)  # (batch, pos, d_model)
        elif cfg.positional == "sinusoidal":
            pos_embed = self.pe[:T].expand(B, T, -1)  # (batch, pos, d_model)
        else:  # RoPE rotates q and k inside attention and adds nothing to the stream
            pos_embed = torch.zeros_like(embed)  # (batch, pos, d_model)
        if self.wtt is not None:
            if token_type_ids is None:
                tt = torch.zeros_like(ids)  # (batch, pos)
            else:
                tt = torch.as_tensor(token_type_ids, dtype=torch.long, device=dev)
            pos_embed = pos_embed + self.wtt(tt)  # (batch, pos, d_model)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids given but this model has no token-type embeddings")
        record("pos_embed", pos_embed)
        x = embed + pos_embed  # (batch, pos, d_model)
        if self.ln_emb is not None:
            x = self.ln_emb(x)  # (batch, pos, d_model)

        allowed = mask[:, None, None, :]  # (batch, 1, 1, pos): keys that are real tokens
        if cfg.causal:
            tri = torch.ones(T, T, dtype=torch.bool, device=dev).tril()  # (pos, pos)
            allowed = allowed & tri  # (batch, 1, pos, pos)
        # a padded query may see no key at all (e.g. causal + left padding), which makes softmax
        # NaN; let pad queries see themselves. Real positions are unaffected.
        eye = torch.eye(T, dtype=torch.bool, device=dev)  # (pos, pos)
        allowed = allowed | (eye & ~mask[:, None, :, None])  # (batch, 1, pos, pos)
        rope = (self.rope_cos[:T], self.rope_sin[:T]) if cfg.positional == "rope" else None

        for i, block in enumerate(self.blocks):
            x = block(x, allowed, rope, lambda name, t, i=i: record(f"blocks.{i}.{name}", t))
        if self.ln_final is not None:
            x = self.ln_final(x)  # (batch, pos, d_model)
        record("final", x)
        return x

    # ---- E at both ends --------------------------------------------------------------------

    @property
    def W_U(self) -> Tensor:
        """Unembedding (d_vocab, d_model): E itself when tied."""
        return self.wte.weight if self.lm_head is None else self.lm_head.weight

    def logits(self, final: Tensor) -> Tensor:
        """Next-token logits (batch, pos, d_vocab) from the final stream; for pre-LN LMs.

        For a post-LN encoder such as BERT this is a logit lens through E, not its MLM head.
        """
        if final.is_inference():  # from run_with_cache: autograd may not touch it
            with torch.inference_mode():
                return final @ self.W_U.T  # (batch, pos, d_vocab)
        return final @ self.W_U.T  # (batch, pos, d_vocab)

    def embedding_matrix(self) -> np.ndarray:
        """E as a float32 numpy array (d_vocab, d_model), a copy the caller may keep."""
        return self.wte.weight.detach().to("cpu", torch.float32).numpy().copy()

    # ---- checkpoints -----------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write transformer.json (config) and transformer.safetensors (weights) into path."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(path / WEIGHTS_FILE))
        (path / CONFIG_FILE).write_text(json.dumps(self.cfg.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Transformer:
        """Load a checkpoint written by save(), in eval mode."""
        path = Path(path)
        cfg = TransformerConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
        model = cls(cfg)
        model.load_state_dict(load_file(str(path / WEIGHTS_FILE)), strict=True)
        return model.eval()

    @classmethod
    def from_dir(cls, path: str | Path) -> Transformer:
        """Load our own checkpoint if path has one, else a Hugging Face BERT-family directory."""
        return cls.load(path) if (Path(path) / CONFIG_FILE).exists() else cls.from_bert_dir(path)

    @classmethod
    def from_bert_dir(cls, path: str | Path) -> Transformer:
        """Load a HF BERT-family checkpoint (config.json + model.safetensors; never pickle)."""
        path = Path(path)
        hf = json.loads((path / "config.json").read_text())
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"only absolute BERT positions are supported, got {hf}")
        act = hf.get("hidden_act", "gelu")
        if act not in ("gelu", "gelu_new"):
            raise ValueError(f"hidden_act must be gelu or gelu_new, got {act!r}")
        cfg = TransformerConfig(
            d_vocab=hf["vocab_size"],
            d_model=hf["hidden_size"],
            n_heads=hf["num_attention_heads"],
            n_layers=hf["num_hidden_layers"],
            n_ctx=hf["max_position_embeddings"],
            d_mlp=hf["intermediate_size"],
            block_style="post_ln",
            positional="learned",
            causal=False,
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            activation=act,
            n_token_types=hf.get("type_vocab_size", 2),
            tie_embeddings=True,  # BERT ties its MLM decoder to E; logits() then is a logit lens
        )
        weights_file = path / "model.safetensors"
        if not weights_file.exists():
            raise FileNotFoundError(f"{weights_file} not found (pickled .bin is not loaded)")
        hf_state = load_file(str(weights_file))
        model = cls(cfg)
        model.load_state_dict(_from_bert_names(hf_state, cfg.n_layers), strict=True)
        return model.eval()


def _from_bert_names(hf_state: dict[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    """Rename HF BERT tensors to ours; the pooler, MLM head and position_ids are not needed."""
    rename = {
        "embeddings.word_embeddings.weight": "wte.weight",
        "embeddings.position_embeddings.weight": "wpe.weight",
        "embeddings.token_type_embeddings.weight": "wtt.weight",
        "embeddings.LayerNorm.weight": "ln_emb.weight",
        "embeddings.LayerNorm.bias": "ln_emb.bias",
    }
    per_layer = {
        "attention.self.query": "attn.q",
        "attention.self.key": "attn.k",
        "attention.self.value": "attn.v",
        "attention.output.dense": "attn.o",
        "attention.output.LayerNorm": "ln1",
        "intermediate.dense": "mlp.fc_in",
        "output.dense": "mlp.fc_out",
        "output.LayerNorm": "ln2",
    }
    for i in range(n_layers):
        for hf_name, ours in per_layer.items():
            for p in ("weight", "bias"):
                rename[f"encoder.layer.{i}.{hf_name}.{p}"] = f"blocks.{i}.{ours}.{p}"
    # checkpoints saved from BertForX carry a "bert." prefix; very old ones say gamma/beta
    state = {
        k.removeprefix("bert.")
        .replace("LayerNorm.gamma", "LayerNorm.weight")
        .replace("LayerNorm.beta", "LayerNorm.bias"): v
        for k, v in hf_state.items()
    }
    missing = sorted(k for k in rename if k not in state)
    if missing:
        raise ValueError(f"BERT checkpoint is missing tensors: {missing[:8]}")
    return {ours: state[k].to(torch.float32) for k, ours in rename.items()}
