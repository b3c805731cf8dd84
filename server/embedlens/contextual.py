"""ContextualEmbed: run a space's transformer on texts and keep only the requested stream points.

Point selection (see docs/residual-stream.md for what each point is):
- full names: `embed`, `pos_embed`, `blocks.{i}.{kind}`, `final`;
- per-block kinds (`resid_pre`, `attn_out`, `resid_mid`, `mlp_out`, `resid_post`), taken at every
  block in `layers` (negative layers count from the end; no layers: every block);
- no points at all: `resid_post` at the chosen layers.

The model always reads the special tokens it was trained with ([CLS] ... [SEP] for BERT);
`skip_special_tokens` only leaves them out of what is returned. Pooling reads the whole model
input, so the mean-pooled vector is sentence-transformers' sentence embedding either way.

Every limit is checked before the model runs: `prepare` checks and tokenizes one request,
`embed_prepared` runs the texts of one or more prepared requests with the same options as one
set of forward passes (the service merges concurrent calls this way, see batching.py) and
splits the results back. Pure numpy/torch: no grpc here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from .cancellation import checkpoint
from .config import Limits
from .errors import FailedPrecondition, InvalidArgument, ResourceExhausted, quote_list
from .index import COSINE, unit_rows
from .spaces import EmbeddingSpace, TokenSpan
from .transformer import BLOCK_POINTS, Transformer, point_names

POOLINGS = ("mean", "first", "last")
# Padded positions per forward pass. Texts are sorted by length and cut into passes of at most
# this many (batch x pos) positions: bounds the (batch, n_heads, pos, pos) attention scores.
PASS_POSITIONS = 4096
# What one more pass costs, in padded positions: each pass reads every weight once however few
# rows it has. Measured for MiniLM-L6 on one core: ~12 ms a pass plus ~0.5 ms a position
# (1x8: 19 ms, 1x32: 28 ms, 16x8: 61 ms, 16x32: 282 ms), so a pass is worth ~25 positions of
# padding; a new pass is started only where it saves more padding than that.
PASS_OVERHEAD_POSITIONS = 32
# torch (OpenMP) threads for the forward passes, set in the calling thread only. Measured on
# this 2-core machine, batches of 16 texts of 8-32 tokens ('final'), with a busy-looping
# process on one core (as the bench's load generator is): 1 thread 51 texts/s, 2 threads 11
# (OpenMP's barriers spin waiting for the taken core); one text at a time 19 against 6. Idle,
# 2 threads win only 70 -> 94. Half the cores leaves the rest to gRPC, tokenizing and encoding.
# (Two 1-thread passes side by side were no faster here: each pass slowed by 1.2-1.4x.)
FORWARD_THREADS = max(1, len(os.sched_getaffinity(0)) // 2)
F16_MAX = float(np.finfo(np.float16).max)
# Rough wire cost of one neighbour (token text, id, score, framing) for the size check.
_NEIGHBOR_BYTES = 24


@dataclass(frozen=True)
class ContextualOptions:
    points: tuple[str, ...] = ()
    layers: tuple[int, ...] = ()
    skip_special_tokens: bool = False
    nearest_k: int = 0
    pooling: str | None = None  # None | "mean" | "first" | "last"
    normalize: bool = False  # L2-normalise the pooled vector (nothing to do without pooling)
    half_precision: bool = False  # only sizes the response here; the wire cast is the caller's
    exact: bool = True  # nearest tokens by brute force (the logit lens should not be approximate)


@dataclass(frozen=True)
class Point:
    name: str
    layer: int  # block index; -1 for embed, pos_embed and final


@dataclass(frozen=True)
class PointValues:
    point: Point
    values: np.ndarray  # (n_tokens, d_model) float32
    nearest_scores: np.ndarray | None  # (n_tokens, k) cosine, best first; None unless asked
    nearest_ids: np.ndarray | None  # (n_tokens, k) rows of E, -1 where fewer than k exist


@dataclass(frozen=True)
class ContextualText:
    tokens: list[TokenSpan]
    points: list[PointValues]
    pooled: np.ndarray | None  # (d_model,) float32 when pooling was asked for


@dataclass(frozen=True)
class Prepared:
    """One request, checked against every limit and tokenized: ready for a forward pass."""

    points: tuple[Point, ...]
    spans: tuple[list[TokenSpan], ...]  # per text, special tokens included
    keep: tuple[list[int], ...]  # per text, the positions returned


def transformer_of(space: EmbeddingSpace) -> Transformer:
    """The space's transformer, or FAILED_PRECONDITION for a static-only model."""
    tr = space.transformer
    if tr is None:
        raise FailedPrecondition(
            f"model {space.name!r} is static-only (format {space.fmt!r}, no transformer), so it "
            "has no residual stream; ContextualEmbed needs a model with a transformer "
            "(see Info: transformer)"
        )
    return tr  # type: ignore[no-any-return]


def resolve_points(points: Sequence[str], layers: Sequence[int], n_layers: int) -> list[Point]:
    """The requested points in forward-pass order, or INVALID_ARGUMENT saying what is allowed."""
    bad_layers = [layer for layer in layers if not -n_layers <= layer < n_layers]
    if bad_layers:
        raise InvalidArgument(
            f"layer(s) {', '.join(map(str, bad_layers))} out of range: the model has "
            f"{n_layers} blocks, so layers are 0..{n_layers - 1} (or -{n_layers}..-1 from the end)"
        )
    requested = list(points) or ["resid_post"]
    if layers and not any(p in BLOCK_POINTS for p in requested):
        raise InvalidArgument(
            "layers select blocks for per-block kinds "
            f"({', '.join(BLOCK_POINTS)}), but points names none of them"
        )
    blocks = sorted({layer % n_layers for layer in layers}) if layers else range(n_layers)
    valid = set(point_names(n_layers))
    wanted: set[str] = set()
    bad: list[str] = []
    for p in requested:
        if p in BLOCK_POINTS:
            wanted.update(f"blocks.{i}.{p}" for i in blocks)
        elif p in valid:
            wanted.add(p)
        else:
            bad.append(p)
    if bad:
        raise InvalidArgument(
            f"unknown point(s) {quote_list(bad)}; allowed: embed, pos_embed, final, "
            f"blocks.{{i}}.{{{'|'.join(BLOCK_POINTS)}}} for i in 0..{n_layers - 1}, "
            f"or a kind alone ({', '.join(BLOCK_POINTS)}) taken at every block in `layers`"
        )
    return [Point(n, _layer_of(n)) for n in point_names(n_layers) if n in wanted]


def _layer_of(name: str) -> int:
    return int(name.split(".")[1]) if name.startswith("blocks.") else -1


def contextual_embed(
    space: EmbeddingSpace, texts: Sequence[str], opts: ContextualOptions, limits: Limits
) -> list[ContextualText]:
    """Run the transformer on `texts` (one or more batched passes); one result per text."""
    return embed_prepared(space, opts, [prepare(space, texts, opts, limits)])[0]


def prepare(
    space: EmbeddingSpace, texts: Sequence[str], opts: ContextualOptions, limits: Limits
) -> Prepared:
    """Check one request against every limit and tokenize it; nothing runs the model yet."""
    tr = transformer_of(space)
    cfg = tr.cfg
    if not texts:
        raise InvalidArgument("texts must not be empty: send at least one text")
    if len(texts) > limits.max_texts:
        raise ResourceExhausted(
            f"{len(texts)} texts is over this server's limit max_texts={limits.max_texts}"
        )
    points = resolve_points(opts.points, opts.layers, cfg.n_layers)
    _check_options(opts, limits)
    spans = [_tokenize(space, t, i, cfg.n_ctx, limits) for i, t in enumerate(texts)]
    keep = [_output_positions(s, opts.skip_special_tokens) for s in spans]
    _check_response_size(sum(len(k) for k in keep), len(points), space.d_model, opts, limits)
    return Prepared(tuple(points), tuple(spans), tuple(keep))


def embed_prepared(
    space: EmbeddingSpace, opts: ContextualOptions, requests: Sequence[Prepared]
) -> list[list[ContextualText]]:
    """Run the texts of every request (all prepared with `opts`) as one set of forward passes,
    grouped by length across requests; the results, one list per request, in order."""
    tr = transformer_of(space)
    points = requests[0].points
    spans = [s for r in requests for s in r.spans]
    keep = [k for r in requests for k in r.keep]
    names = [p.name for p in points]
    values: list[dict[str, np.ndarray]] = [{} for _ in spans]
    pooled: list[np.ndarray | None] = [None] * len(spans)
    with _torch_threads(FORWARD_THREADS), torch.inference_mode():
        for chunk in _passes([len(s) for s in spans]):
            checkpoint()  # stop between passes if every caller has gone away
            _forward(tr, chunk, spans, keep, names, opts, values, pooled)

    if opts.half_precision:
        _check_float16_range(values)
    nearest = _nearest(space, values, names, opts) if opts.nearest_k else None
    results = []
    for i, s in enumerate(spans):
        pvs = []
        for p in points:
            sc, ix = nearest[i][p.name] if nearest is not None else (None, None)
            pvs.append(PointValues(p, values[i][p.name], sc, ix))
        results.append(ContextualText([s[j] for j in keep[i]], pvs, pooled[i]))
    out, start = [], 0
    for r in requests:
        out.append(results[start : start + len(r.spans)])
        start += len(r.spans)
    return out


def _forward(
    tr: Transformer,
    chunk: list[int],
    spans: list[list[TokenSpan]],
    keep: list[list[int]],
    names: list[str],
    opts: ContextualOptions,
    values: list[dict[str, np.ndarray]],
    pooled: list[np.ndarray | None],
) -> None:
    """One forward pass over texts `chunk` (longest first); fills their values and pooled."""
    T = len(spans[chunk[0]])
    ids = np.zeros((len(chunk), T), dtype=np.int64)  # (batch, pos), right-padded
    mask = np.zeros((len(chunk), T), dtype=np.int64)  # (batch, pos)
    for b, i in enumerate(chunk):
        ids[b, : len(spans[i])] = [s.id for s in spans[i]]
        mask[b, : len(spans[i])] = 1
    final, cache = tr.run_with_cache(ids, mask, names_filter=names)
    for b, i in enumerate(chunk):
        for name in names:
            values[i][name] = _rows(cache[name][b], keep[i])  # (n_out, d_model)
        if opts.pooling is not None:
            pooled[i] = _pool(final[b, : len(spans[i])], opts.pooling, opts.normalize)


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads for this thread's forward passes, restored afterwards.

    With OpenMP the count is per OS thread (set_num_threads also sets the default that threads
    starting later pick up, hence the restore), so other handler threads are not affected.
    """
    before = torch.get_num_threads()
    if before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_options(opts: ContextualOptions, limits: Limits) -> None:
    k = opts.nearest_k
    if k < 0:
        raise InvalidArgument(f"nearest_k must be between 0 (none) and {limits.max_k}, got {k}")
    if k > limits.max_k:
        raise ResourceExhausted(f"nearest_k={k} is over this server's limit max_k={limits.max_k}")
    if opts.pooling is not None and opts.pooling not in POOLINGS:
        raise InvalidArgument(f"pooling must be one of {POOLINGS} or unset, got {opts.pooling!r}")


def _tokenize(
    space: EmbeddingSpace, text: str, i: int, n_ctx: int, limits: Limits
) -> list[TokenSpan]:
    spans = space.tokenize(text, add_special_tokens=True)
    if not spans:
        raise InvalidArgument(
            f"text {i} ({text[:40]!r}) has no tokens for model {space.name!r}; "
            "send text the tokenizer turns into at least one token"
        )
    n = len(spans)
    if n > limits.max_tokens:
        raise ResourceExhausted(
            f"text {i} has {n} tokens (special tokens included), over this server's limit "
            f"max_tokens={limits.max_tokens}"
        )
    if n > n_ctx:
        raise ResourceExhausted(
            f"text {i} has {n} tokens (special tokens included), over model {space.name!r}'s "
            f"n_ctx={n_ctx} positions"
        )
    return spans


def _output_positions(spans: list[TokenSpan], skip_special: bool) -> list[int]:
    return [j for j, s in enumerate(spans) if not (skip_special and s.special)]


def _check_response_size(
    n_tokens: int, n_points: int, d_model: int, opts: ContextualOptions, limits: Limits
) -> None:
    """Refuse, before running the model, what would not fit in one response or one search."""
    n_vectors = n_tokens * n_points
    if opts.nearest_k and n_vectors > limits.max_batch:
        raise ResourceExhausted(
            f"nearest_k asks for neighbours of {n_vectors} vectors ({n_tokens} tokens x "
            f"{n_points} points), over this server's limit max_batch={limits.max_batch}; "
            "ask for fewer points, layers or texts"
        )
    itemsize = 2 if opts.half_precision else 4
    size = n_vectors * (d_model * itemsize + opts.nearest_k * _NEIGHBOR_BYTES)
    if size > limits.max_response_bytes:
        raise ResourceExhausted(
            f"the response would hold {n_vectors} vectors ({n_tokens} tokens x {n_points} "
            f"points), about {size / 2**20:.0f} MiB, over this server's limit "
            f"max_response_bytes={limits.max_response_bytes}; ask for fewer points, layers or "
            "texts, or set half_precision"
        )


def _check_float16_range(values: list[dict[str, np.ndarray]]) -> None:
    """float16 turns anything past 65504 into inf: refuse instead of sending infinities."""
    big = [(n, float(np.abs(v).max())) for d in values for n, v in d.items() if v.size]
    over = [(n, m) for n, m in big if m > F16_MAX]
    if over:
        name, m = max(over, key=lambda t: t[1])
        raise InvalidArgument(
            f"half_precision cannot carry these values: {name} reaches {m:.4g}, past float16's "
            f"largest {F16_MAX:.0f}; ask for float32 (half_precision false)"
        )


def _passes(lengths: list[int]) -> list[list[int]]:
    """Text indices grouped into forward passes, longest first, so little padding is wasted.

    Texts are sorted by length; a pass is a run of them padded to its first (longest) one and
    holds at most PASS_POSITIONS padded positions. Where the runs are cut is chosen to minimise
    padded positions plus PASS_OVERHEAD_POSITIONS per pass (dynamic programming over the cuts
    between texts of different lengths): one long text among short ones gets a pass of its own,
    texts of similar lengths share one.
    """
    if not lengths:
        return []
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    # cut candidates: where the length changes (cutting inside a run of equal lengths saves no
    # padding), and the end
    cuts = [j for j in range(1, n) if lengths[order[j]] != lengths[order[j - 1]]] + [n]
    starts = [0, *cuts[:-1]]
    # best[c]: least cost of the texts before cuts[c - 1] (best[0]: nothing yet)
    best = [0.0] + [float("inf")] * len(cuts)
    back = [0] * (len(cuts) + 1)
    for a, start in enumerate(starts):  # a pass group starts at run a ...
        head = lengths[order[start]]
        cap = max(1, PASS_POSITIONS // head)  # texts per pass at this padded length
        for b in range(a, len(cuts)):  # ... and ends before cuts[b]
            count = cuts[b] - start
            cost = best[a] + -(-count // cap) * PASS_OVERHEAD_POSITIONS + count * head
            if cost < best[b + 1]:
                best[b + 1], back[b + 1] = cost, a
    groups: list[tuple[int, int]] = []
    c = len(cuts)
    while c > 0:
        a = back[c]
        groups.append((starts[a], cuts[c - 1]))
        c = a
    passes: list[list[int]] = []
    for lo, hi in reversed(groups):
        cap = max(1, PASS_POSITIONS // lengths[order[lo]])
        passes += [order[j : min(j + cap, hi)] for j in range(lo, hi, cap)]
    return passes


def _rows(t: torch.Tensor, keep: list[int]) -> np.ndarray:
    """Rows `keep` of a (pos, d_model) tensor as a float32 array the caller owns."""
    return np.ascontiguousarray(t[keep].to(torch.float32).cpu().numpy())  # (n_out, d_model)


def _pool(final: torch.Tensor, pooling: str, normalize: bool) -> np.ndarray:
    """final: (n_tokens, d_model), the text's real positions only -> (d_model,) float32."""
    if pooling == "mean":
        v = final.mean(0)  # (d_model,): mean over real tokens, specials included, as ST does
    elif pooling == "first":
        v = final[0]  # (d_model,)
    else:
        v = final[-1]  # (d_model,)
    if normalize:
        v = torch.nn.functional.normalize(v, dim=0)
    return v.to(torch.float32).cpu().numpy().copy()


def _nearest(
    space: EmbeddingSpace,
    values: list[dict[str, np.ndarray]],
    names: list[str],
    opts: ContextualOptions,
) -> list[dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The nearest rows of E (cosine) for every returned vector, in one index search."""
    queries = unit_rows(np.concatenate([v[n] for v in values for n in names]))
    if len(queries):
        scores, ids = space.index.search(queries, opts.nearest_k, metric=COSINE, exact=opts.exact)
    else:
        scores = np.zeros((0, opts.nearest_k), np.float32)
        ids = np.zeros((0, opts.nearest_k), np.int64)
    out: list[dict[str, tuple[np.ndarray, np.ndarray]]] = []
    start = 0
    for per_text in values:
        d = {}
        for n in names:
            stop = start + len(per_text[n])
            d[n] = (scores[start:stop], ids[start:stop])
            start = stop
        out.append(d)
    return out
