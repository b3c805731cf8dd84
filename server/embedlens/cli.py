"""The `embedlens` command: serve, query."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from embedlens_client.cli import add_query_parser, run_query
from embedlens_client.eval import add_eval_parser, run_eval
from embedlens_client.plots.cli import add_plot_parser, run_plot

from . import __version__
from .train.cli import add_corpus_parser, add_train_parser, run_corpus, run_train


def build_parser() -> argparse.ArgumentParser:
    from .config import add_serve_arguments

    parser = argparse.ArgumentParser(prog="embedlens", description=__doc__)
    parser.add_argument("--version", action="version", version=f"embedlens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="run the gRPC server", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_serve_arguments(serve)
    add_query_parser(sub)
    add_eval_parser(sub)
    add_plot_parser(sub)
    add_train_parser(sub)
    add_corpus_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from .config import from_args
        from .server import serve

        try:
            config = from_args(args)
        except ValueError as exc:
            print(f"embedlens serve: {exc}", file=sys.stderr)
            return 2
        logging.basicConfig(
            level=config.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        return serve(config)
    if args.command == "query":
        return run_query(args)
    if args.command == "eval":
        return run_eval(args)
    if args.command == "plot":
        return run_plot(args)
    if args.command == "train":
        return run_train(args)
    if args.command == "corpus":
        return run_corpus(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
