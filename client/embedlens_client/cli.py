"""Client-side commands: `embedlens query nearest|analogy|lookup|tokenize|contextual|info`.

`main` is the `embedlens-client` script: query, plot and eval without the server package.

Talks to a running server (--target HOST:PORT, default $EMBEDLENS_TARGET or localhost:50051).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from .client import Client, ContextualResult, Neighbor
from .errors import ClientError


def default_target() -> str:
    return os.environ.get("EMBEDLENS_TARGET", "localhost:50051")


def add_target_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target",
        default=default_target(),
        help="server address HOST:PORT [$EMBEDLENS_TARGET, default localhost:50051]",
    )
    p.add_argument("--model", default=None, help="model name (default: the server's default)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def parse_analogy(words: Sequence[str]) -> tuple[list[str], list[str]]:
    """'king - man + woman' (or 'king -man +woman') -> (['king', 'woman'], ['man'])."""
    positive: list[str] = []
    negative: list[str] = []
    sign = 1
    for w in words:
        for part in w.split():
            if part in ("+", "-"):
                sign = 1 if part == "+" else -1
                continue
            if part[0] in "+-" and len(part) > 1:
                sign, part = (1 if part[0] == "+" else -1), part[1:]
            (positive if sign > 0 else negative).append(part)
            sign = 1
    if not positive and not negative:
        raise ValueError("give an analogy such as: king - man + woman")
    return positive, negative


def add_query_parser(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("query", help="ask a running server")
    qs = q.add_subparsers(dest="query_command", required=True)
    n = qs.add_parser("nearest", help="nearest tokens to a token or id")
    n.add_argument("query", help="a token, or an id with --id")
    n.add_argument("--id", action="store_true", help="the query is a token id")
    n.add_argument("-k", type=int, default=10)
    n.add_argument("--exact", action="store_true", help="brute force instead of HNSW")
    n.add_argument("--metric", choices=("cosine", "dot"), default="cosine")
    n.add_argument("--whole-words", action="store_true", help="leave out ## word pieces")
    add_target_arguments(n)
    a = qs.add_parser("analogy", help="e.g. king - man + woman")
    a.add_argument("terms", nargs="+")
    a.add_argument("-k", type=int, default=10)
    a.add_argument("--method", choices=("3cosadd", "3cosmul"), default="3cosadd")
    a.add_argument("--exact", action="store_true")
    a.add_argument("--include-inputs", action="store_true", help="keep the input words in answers")
    add_target_arguments(a)
    lk = qs.add_parser("lookup", help="the vector of a token")
    lk.add_argument("token")
    lk.add_argument("--compose", action="store_true", help="average sub-word pieces if needed")
    add_target_arguments(lk)
    t = qs.add_parser("tokenize", help="text to tokens")
    t.add_argument("text")
    add_target_arguments(t)
    c = qs.add_parser(
        "contextual",
        help="run the transformer on a text: nearest static tokens at each stream point",
        description="For each chosen residual-stream point, the k nearest static tokens of E "
        "to a token's contextual vector (a logit lens through E), e.g. "
        "'embedlens query contextual \"we sat on the river bank\" --token bank'.",
    )
    c.add_argument("text")
    c.add_argument("--token", help="follow this token (default: every token of the text)")
    c.add_argument("--occurrence", type=int, default=0, help="which occurrence of --token")
    c.add_argument(
        "--points",
        nargs="+",
        default=["embed", "resid_post"],
        help="point names or per-block kinds (default: embed resid_post)",
    )
    c.add_argument("--layers", nargs="+", type=int, default=[], help="blocks; -1 is the last")
    c.add_argument("-k", type=int, default=5)
    c.add_argument("--skip-special", action="store_true", help="leave out [CLS] and [SEP]")
    add_target_arguments(c)
    i = qs.add_parser("info", help="what the server serves")
    add_target_arguments(i)


def _print_neighbors(ns: list[Neighbor], as_json: bool) -> None:
    if as_json:
        print(json.dumps([n.__dict__ for n in ns]))
        return
    width = max((len(n.token) for n in ns), default=5)
    for rank, n in enumerate(ns, 1):
        print(f"{rank:>3}  {n.token:<{width}}  {n.score:.4f}  (id {n.id})")


def _print_contextual(r: ContextualResult, token: str | None, occurrence: int, j: bool) -> None:
    positions = [r.position(token, occurrence)] if token else list(range(len(r.tokens)))
    if j:
        out = {
            f"{p}:{r.tokens[p].text}": {
                name: [n.__dict__ for n in lists[p]] for name, lists in r.nearest.items()
            }
            for p in positions
        }
        print(json.dumps(out))
        return
    width = max(len(name) for name in r.nearest)
    for p in positions:
        t = r.tokens[p]
        print(f"{t.text!r} at position {p} [{t.start}, {t.end}):")
        for name, lists in r.nearest.items():
            shown = "  ".join(f"{n.token} {n.score:.3f}" for n in lists[p])
            print(f"  {name:<{width}}  {shown}")


def run_query(args: argparse.Namespace) -> int:
    try:
        with Client(args.target, timeout=args.timeout, model=args.model) as c:
            cmd = args.query_command
            if cmd == "nearest":
                query: str | int = int(args.query) if args.id else args.query
                _print_neighbors(
                    c.nearest(
                        query,
                        args.k,
                        exact=args.exact,
                        metric=args.metric,
                        whole_words_only=args.whole_words,
                    ),
                    args.json,
                )
            elif cmd == "analogy":
                pos, neg = parse_analogy(args.terms)
                _print_neighbors(
                    c.analogy(
                        pos,
                        neg,
                        args.k,
                        method=args.method,
                        exact=args.exact,
                        exclude_inputs=not args.include_inputs,
                    ),
                    args.json,
                )
            elif cmd == "lookup":
                vec, items = c.lookup_items([args.token], compose_subwords=args.compose)
                how = (
                    f"composed of {[p.text for p in items[0].pieces]}"
                    if items[0].composed
                    else f"id {items[0].id}"
                )
                if args.json:
                    print(
                        json.dumps(
                            {"token": items[0].token, "id": items[0].id, "vector": vec[0].tolist()}
                        )
                    )
                else:
                    print(f"{items[0].token} ({how}), norm {float((vec[0] ** 2).sum()) ** 0.5:.4f}")
                    print(" ".join(f"{x:.4f}" for x in vec[0]))
            elif cmd == "tokenize":
                toks = c.tokenize(args.text)
                if args.json:
                    print(json.dumps([t.__dict__ for t in toks]))
                else:
                    for t in toks:
                        print(f"{t.id:>6}  {t.text!r:<16} [{t.start}, {t.end})")
            elif cmd == "contextual":
                (res,) = c.contextual_embed(
                    args.text,
                    points=args.points,
                    layers=args.layers,
                    nearest_k=args.k,
                    skip_special_tokens=args.skip_special,
                )
                _print_contextual(res, args.token, args.occurrence, args.json)
            elif cmd == "info":
                # --model names one model; without it, every served model is listed.
                for m in [c.info(args.model)] if args.model else c.models():
                    print(json.dumps(m.__dict__, default=lambda o: o.__dict__, indent=2))
    except ClientError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`embedlens-client`: query, plot and eval against a running server, no server package."""
    from .plots.cli import add_eval_parser, add_plot_parser, run_eval, run_plot

    parser = argparse.ArgumentParser(prog="embedlens-client", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_query_parser(sub)
    add_plot_parser(sub)
    add_eval_parser(sub)
    args = parser.parse_args(argv)
    run = {"query": run_query, "plot": run_plot, "eval": run_eval}[args.command]
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
