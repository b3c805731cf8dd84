"""Rows 2-4 against a running embedlens server: Nearest, Lookup, ContextualEmbed throughput."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import grpc
import numpy as np

from embedlens_client import Client

from . import throughput as tp
from .procs import start_echo
from .table import Row, rate_ratio

APPROX_TARGET = 0.75
EXACT_TARGET = 0.40
RECALL_TARGET = 0.98
LOOKUP_TARGET = 0.85
CONTEXTUAL_TARGET = 1.5


def query_tokens(vocab: list[str], special: frozenset[int], n: int, seed: int = 11) -> list[str]:
    """Single-token queries: whole, alphabetic words of 3+ letters, drawn at random."""
    pool = [t for i, t in enumerate(vocab) if i not in special and t.isalpha() and len(t) > 2]
    rng = np.random.default_rng(seed)
    return [str(t) for t in rng.choice(pool, size=min(n, len(pool)), replace=False)]


def _mean_size(target: str, method: str, requests: list[bytes]) -> int:
    return int(np.mean([len(tp.unary(target, method, r)) for r in requests[:50]]))


def measured_recall(client: Client, queries: list, k: int = 10) -> float:
    """Recall@k of the server's default (approximate) answers against its exact ones."""
    exact = client.nearest_batch(queries, k=k, exact=True)
    approx = client.nearest_batch(queries, k=k)
    hits = [len({n.id for n in a} & {n.id for n in e}) / k for a, e in zip(approx, exact)]
    return float(np.mean(hits))


# (row id, request set, description, target): rows 2a-2d.
_NEAREST_ROWS = (
    ("2a", "approx", "one token, default search (neighbour table)", APPROX_TARGET),
    ("2b", "exact", "one token, exact", EXACT_TARGET),
    ("2c", "vec_approx", "one raw vector, HNSW (tuned efSearch)", APPROX_TARGET),
    ("2d", "vec_exact", "one raw vector, exact (batched brute force)", EXACT_TARGET),
)


def run_nearest_lookup(
    target: str,
    client: Client,
    tokens: list[str],
    vectors: np.ndarray,
    log_dir: Path,
    *,
    seconds: float,
    rounds: int,
    concurrency: int = 32,
    channels: int = 1,
    server_processes: int = 1,
) -> list[Row]:
    """2a-2d (Nearest) and 3 (Lookup), each against the echo server.

    Token queries (2a, 2b: the issue's workload) are answered from the server's precomputed
    neighbour table; raw-vector queries (2c, 2d: the same tokens' vectors) always search, so
    they measure the HNSW graph and the batched exact engine.

    The targets are against one bare echo server. When embedlens runs several processes, 2e
    and 3b also set 2a and 3 against an echo server with as many processes (report only): what
    the extra processes would give a server that does no work at all.
    """
    nearest_m = tp.SERVICE + "Nearest"
    lookup_m = tp.SERVICE + "Lookup"
    req = {
        "approx": tp.nearest_requests(tokens, 10, exact=False),
        "exact": tp.nearest_requests(tokens, 10, exact=True),
        "vec_approx": tp.nearest_vector_requests(vectors, 10, exact=False),
        "vec_exact": tp.nearest_vector_requests(vectors, 10, exact=True),
        "lookup": tp.lookup_requests(tokens),
    }
    sizes = {
        "Nearest": _mean_size(target, nearest_m, req["approx"]),
        "Lookup": _mean_size(target, lookup_m, req["lookup"]),
    }
    recall = {
        "approx": measured_recall(client, tokens[:1000]),
        "vec_approx": measured_recall(client, list(vectors[:1000])),
    }
    same = server_processes > 1
    echo_names = ("echo_n", "echo_l") + (("echo_n_same", "echo_l_same") if same else ())
    results: dict[str, list[tp.Load]] = {k: [] for k in (*echo_names, *req)}
    with contextlib.ExitStack() as stack:
        echo = stack.enter_context(start_echo(log_dir, sizes))
        # Alternate baseline and ours, so slow phases of a shared machine hit both alike.
        plan = [
            ("echo_n", echo.target, nearest_m, req["approx"]),
            ("approx", target, nearest_m, req["approx"]),
            ("exact", target, nearest_m, req["exact"]),
            ("vec_approx", target, nearest_m, req["vec_approx"]),
            ("vec_exact", target, nearest_m, req["vec_exact"]),
            ("echo_l", echo.target, lookup_m, req["lookup"]),
            ("lookup", target, lookup_m, req["lookup"]),
        ]
        if same:
            echo_same = stack.enter_context(start_echo(log_dir, sizes, processes=server_processes))
            plan += [
                ("echo_n_same", echo_same.target, nearest_m, req["approx"]),
                ("echo_l_same", echo_same.target, lookup_m, req["lookup"]),
            ]
        for _ in range(rounds):
            for name, tgt, method, reqs in plan:
                results[name].append(
                    tp.drive(
                        tgt,
                        method,
                        reqs,
                        concurrency=concurrency,
                        seconds=seconds,
                        channels=channels,
                    )
                )

    def mean(name: str) -> tp.Load:
        loads = results[name]
        return tp.Load(
            rps=float(np.mean([x.rps for x in loads])),
            p50_ms=float(np.mean([x.p50_ms for x in loads])),
            p99_ms=float(np.mean([x.p99_ms for x in loads])),
            calls=sum(x.calls for x in loads),
            errors=sum(x.errors for x in loads),
            seconds=sum(x.seconds for x in loads),
        )

    echo_n, echo_l = mean("echo_n"), mean("echo_l")
    rows = []
    for rid, name, what, target_ratio in _NEAREST_ROWS:
        ours = mean(name)
        r = recall.get(name)
        extra = f"; recall@10 {r:.3f} (target ≥ {RECALL_TARGET})" if r is not None else ""
        rows.append(
            Row(
                rid,
                f"Nearest k=10, {what}, {concurrency} concurrent",
                ours.rps,
                echo_n.rps,
                "req/s",
                f"gRPC echo, {sizes['Nearest']} B replies",
                rate_ratio(ours.rps, echo_n.rps),
                target_ratio,
                condition=r is None or r >= RECALL_TARGET,
                note=f"p50 {ours.p50_ms:.1f} ms, p99 {ours.p99_ms:.1f} ms "
                f"(echo p50 {echo_n.p50_ms:.1f}, p99 {echo_n.p99_ms:.1f}){extra}"
                + (f"; {ours.errors} errors" if ours.errors else ""),
                details={"ours": ours.as_dict(), "echo": echo_n.as_dict(), "recall_at_10": r}
                | {"rounds": [x.as_dict() for x in results[name]]},
            )
        )
    lk = mean("lookup")
    rows.append(
        Row(
            "3",
            f"Lookup, one token, {concurrency} concurrent",
            lk.rps,
            echo_l.rps,
            "req/s",
            f"gRPC echo, {sizes['Lookup']} B replies",
            rate_ratio(lk.rps, echo_l.rps),
            LOOKUP_TARGET,
            note=f"p50 {lk.p50_ms:.1f} ms, p99 {lk.p99_ms:.1f} ms "
            f"(echo p50 {echo_l.p50_ms:.1f}, p99 {echo_l.p99_ms:.1f})"
            + (f"; {lk.errors} errors" if lk.errors else ""),
            details={"ours": lk.as_dict(), "echo": echo_l.as_dict()},
        )
    )
    if same:
        for rid, name, echo_name, what in (
            ("2e", "approx", "echo_n_same", "Nearest k=10, one token, default search"),
            ("3b", "lookup", "echo_l_same", "Lookup, one token"),
        ):
            ours, base = mean(name), mean(echo_name)
            rows.append(
                Row(
                    rid,
                    f"{what}, {concurrency} concurrent, vs an echo server with as many processes",
                    ours.rps,
                    base.rps,
                    "req/s",
                    f"gRPC echo, {server_processes} processes",
                    rate_ratio(ours.rps, base.rps),
                    note=f"report only (the targets are against one echo server); echo p50 "
                    f"{base.p50_ms:.1f} ms, p99 {base.p99_ms:.1f} ms",
                    details={"ours": ours.as_dict(), "echo": base.as_dict()},
                )
            )
    return rows


def sentences(vocab: list[str], tokenizer: object, n: int, seed: int = 13) -> list[str]:
    """Texts of 8-32 tokens ([CLS] and [SEP] included) from common whole words."""
    rng = np.random.default_rng(seed)
    words = [t for t in vocab[1000:8000] if t.isalpha()]
    out = []
    while len(out) < n:
        text = " ".join(rng.choice(words, size=int(rng.integers(5, 28))))
        n_tok = len(tokenizer.encode(text).ids)  # type: ignore[attr-defined]
        if 8 <= n_tok <= 32:
            out.append(text)
    return out


def run_contextual(
    target: str,
    client: Client,
    model_dir: Path,
    texts: list[str],
    *,
    seconds: float,
    concurrency: int = 16,
    channels: int = 1,
) -> Row:
    """4: ContextualEmbed ('final' point) against HF BertModel, one text at a time."""
    name = f"ContextualEmbed, {concurrency} concurrent, 8–32 tokens"
    try:
        client.contextual_embed(texts[0], points="final")
    except Exception as exc:  # UNIMPLEMENTED / FAILED_PRECONDITION: nothing to measure
        code = getattr(exc, "code", None)
        return Row(
            "4",
            name,
            target=CONTEXTUAL_TARGET,
            skipped=f"not available on this server ({code or type(exc).__name__}: {exc})",
        )
    import torch
    from transformers import AutoTokenizer, BertModel

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    bert = BertModel.from_pretrained(str(model_dir), local_files_only=True).eval()

    def hf(text: str) -> np.ndarray:
        with torch.inference_mode():
            enc = tok(text, return_tensors="pt")
            return bert(**enc).last_hidden_state[0].numpy()

    worst = 0.0
    for text in texts[:20]:
        (r,) = client.contextual_embed(text, points="final")
        worst = max(worst, float(np.abs(r.activations["final"] - hf(text)).max()))

    # Baseline: one text at a time in this process; torch's default threads and one thread,
    # the faster of the two (on a busy 2-core machine one thread often wins).
    threads = torch.get_num_threads()
    base = {}
    for n_threads in sorted({threads, 1}):
        torch.set_num_threads(n_threads)
        for text in texts[:5]:
            hf(text)
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            hf(texts[done % len(texts)])
            done += 1
        base[n_threads] = done / (time.perf_counter() - t0)
    torch.set_num_threads(threads)
    baseline = max(base.values())

    req = tp.contextual_requests(texts, ("final",))
    try:
        ours = tp.drive(
            target,
            tp.SERVICE + "ContextualEmbed",
            req,
            concurrency=concurrency,
            seconds=seconds,
            channels=channels,
        )
    except grpc.RpcError as exc:  # pragma: no cover - reported, not hidden
        return Row("4", name, target=CONTEXTUAL_TARGET, skipped=f"load run failed: {exc}")
    return Row(
        "4",
        name,
        ours.rps,
        baseline,
        "texts/s",
        "HF BertModel, one text at a time, in-process",
        rate_ratio(ours.rps, baseline),
        CONTEXTUAL_TARGET,
        condition=worst <= 1e-4,
        note=f"max |ours − HF| on 20 texts {worst:.1e} (≤ 1e-4 required); p50 "
        f"{ours.p50_ms:.1f} ms, p99 {ours.p99_ms:.1f} ms; HF texts/s by torch threads "
        + ", ".join(f"{k}: {v:.1f}" for k, v in base.items())
        + (f"; {ours.errors} errors" if ours.errors else ""),
        details={"ours": ours.as_dict(), "hf_by_threads": base, "max_abs_diff": worst},
    )
