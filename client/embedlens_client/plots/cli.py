"""`embedlens plot analogy|layers|neighbors|direction` and `embedlens eval pairs` (+ reports).

Every command talks to a running server (--target HOST:PORT, default $EMBEDLENS_TARGET or
localhost:50051) and draws client-side; --out picks PNG or SVG by extension.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..client import Client
from ..errors import ClientError
from ._mpl import PlotDependencyError, check_out_path, require_matplotlib, save_figure


def _default_target() -> str:
    from ..cli import default_target

    return default_target()


def _add_connection(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target",
        default=_default_target(),
        help="server address HOST:PORT [$EMBEDLENS_TARGET, default localhost:50051]",
    )
    p.add_argument("--model", default=None, help="model name (default: the server's default)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar on stderr while fetching"
    )


def _add_common(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument(
        "--out",
        "-o",
        default=default_out,
        help=f"output file, .png or .svg (default {default_out})",
    )
    p.add_argument("--dpi", type=float, default=150.0, help="PNG resolution (default 150)")
    _add_connection(p)


def add_plot_parser(sub: argparse._SubParsersAction) -> None:
    """Register `plot` and its four pictures on the `embedlens` subcommands."""
    p = sub.add_parser(
        "plot",
        help="draw the chapter's pictures from a running server (needs the 'plot' extra)",
        description=__doc__,
    )
    ps = p.add_subparsers(dest="plot_command", required=True)

    a = ps.add_parser(
        "analogy",
        help="A − B + C ≈ D in 2-D, e.g. king man woman queen",
        description="A − B + C ≈ D (king man woman queen): the four words in 2-D, the two "
        "relations as arrows, the predicted point A − B + C, and the cosines and 3CosAdd "
        "rank from the server. D defaults to the server's 3CosAdd answer.",
    )
    a.add_argument("words", nargs="+", metavar="WORD", help="A B C [D]")
    a.add_argument(
        "--projection",
        choices=("pca", "relations"),
        default="pca",
        help="pca: PCA of the words and their neighbours (default); relations: the plane of "
        "the two relation directions",
    )
    a.add_argument(
        "--neighbors", type=int, default=3, help="nearest whole words of each word drawn in grey"
    )
    _add_common(a, "analogy.png")

    lay = ps.add_parser(
        "layers",
        help="a token's residual stream compared across texts",
        description="Cosine between a token's vectors in several texts at every residual-stream "
        "point (embed, resid_pre of each block, final), and the norms of what attention "
        "and the MLP wrote at each block.",
    )
    lay.add_argument("texts", nargs="+", metavar="TEXT", help="two or more texts")
    lay.add_argument("--token", required=True, help="the token to follow, e.g. bank")
    lay.add_argument(
        "--occurrence", type=int, default=0, help="which occurrence of the token (0: the first)"
    )
    _add_common(lay, "layers.png")

    n = ps.add_parser(
        "neighbors",
        help="words and their nearest neighbours on a 2-D map (PCA, t-SNE)",
        description="Query words and their k nearest neighbours on a PCA map, and a t-SNE map "
        "beside it when scikit-learn is installed; coloured by query.",
    )
    n.add_argument("words", nargs="+", metavar="WORD")
    n.add_argument("-k", type=int, default=8, help="neighbours per word (default 8)")
    n.add_argument(
        "--all-pieces", action="store_true", help="allow ## word pieces among the neighbours"
    )
    n.add_argument("--no-tsne", action="store_true", help="PCA only")
    _add_common(n, "neighbors.png")

    d = ps.add_parser(
        "direction",
        help="words projected on directions given by word pairs",
        description="Project words on one or two directions defined by word pairs "
        "(--axis man:woman --axis small:large), the Embedding Projector's custom projection.",
    )
    d.add_argument("words", nargs="+", metavar="WORD")
    d.add_argument(
        "--axis",
        action="append",
        required=True,
        metavar="FROM:TO",
        help="a direction, e.g. man:woman (once or twice)",
    )
    _add_common(d, "direction.png")


def _progress(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def _draw(args: argparse.Namespace, c: Client) -> Any:
    from .analogy import plot_analogy
    from .direction import parse_axis, plot_direction
    from .layers import plot_layers
    from .neighbors import plot_neighbors

    cmd = args.plot_command
    if cmd == "analogy":
        if len(args.words) not in (3, 4):
            raise ValueError(
                f"give three or four words, A B C [D] for A − B + C ≈ D, got {len(args.words)}"
            )
        return plot_analogy(
            c,
            *args.words,
            model=args.model,
            projection=args.projection,
            neighbors=args.neighbors,
            progress=_progress(args),
        )
    if cmd == "layers":
        return plot_layers(c, args.token, args.texts, occurrence=args.occurrence, model=args.model)
    if cmd == "neighbors":
        return plot_neighbors(
            c,
            args.words,
            k=args.k,
            model=args.model,
            whole_words_only=not args.all_pieces,
            tsne=False if args.no_tsne else None,
            progress=_progress(args),
        )
    if cmd == "direction":
        axes = [parse_axis(a) for a in args.axis]
        return plot_direction(c, axes, args.words, model=args.model, progress=_progress(args))
    raise ValueError(f"unknown plot {cmd!r}")


def _fail(err: Exception, code: int) -> int:
    print(f"error: {err}", file=sys.stderr)
    return code


def run_plot(args: argparse.Namespace) -> int:
    """Run `embedlens plot ...`; 0 on success, 1 for a server error, 2 for bad input."""
    try:
        check_out_path(args.out)
        require_matplotlib()  # before any work
        with Client(args.target, timeout=args.timeout, model=args.model) as c:
            plot = _draw(args, c)
        path = save_figure(plot.figure, args.out, dpi=args.dpi)
    except PlotDependencyError as err:
        return _fail(err, 3)
    except ClientError as err:
        return _fail(err, 1)
    except (ValueError, OSError) as err:
        return _fail(err, 2)
    print(f"wrote {path}")
    return 0


# ---- eval: word pairs, and Markdown reports ------------------------------------------------


def add_report_argument(p: argparse.ArgumentParser) -> None:
    """--report OUT.md: a Markdown report with its bar chart (OUT.png) beside it."""
    p.add_argument(
        "--report",
        metavar="OUT.md",
        default=None,
        help="also write a Markdown report, with a bar chart OUT.png beside it "
        "(needs the 'plot' extra)",
    )


def add_eval_parser(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Register `eval` with `pairs`, and `analogies` where the client has it; its subparsers."""
    ev = sub.add_parser("eval", help="evaluate the served embeddings on word-pair and analogy sets")
    es = ev.add_subparsers(dest="eval_command", required=True)
    add_pairs_parser(es)
    try:
        from ..eval import add_analogies_parser
    except ImportError:  # a client without the analogy evaluation: pairs only
        pass
    else:
        add_analogies_parser(es)
    return es


def run_eval(args: argparse.Namespace) -> int:
    """Run `embedlens eval ...` for the subcommands registered by add_eval_parser."""
    if args.eval_command == "pairs":
        return run_eval_pairs(args)
    if args.eval_command == "analogies":
        from ..eval import run_eval_analogies

        return run_eval_analogies(args)
    raise ValueError(f"unknown eval command {args.eval_command!r}")


def add_pairs_parser(eval_sub: argparse._SubParsersAction) -> None:
    """Register `pairs` on the `embedlens eval` subcommands."""
    p = eval_sub.add_parser(
        "pairs",
        help="word-similarity correlation (WordSim-353, SimLex-999)",
        description="Spearman and Pearson correlation between the model's cosines and human "
        "similarity scores, with gensim's evaluate_word_pairs semantics. FILE lines are "
        "'word<TAB>word<TAB>score'; '#' lines are comments; the original SimLex-999 file "
        "(header row, score column SimLex999) works too.",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--delimiter", default="\t", help="field separator (default: tab)")
    p.add_argument(
        "--restrict-vocab",
        type=int,
        default=300000,
        help="only words with id below N count as known (gensim's option; default 300000)",
    )
    p.add_argument(
        "--case-sensitive",
        action="store_true",
        help="match words exactly (gensim's case_insensitive=False)",
    )
    p.add_argument(
        "--dummy4unknown",
        action="store_true",
        help="score pairs with unknown words as 0 instead of skipping them",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_report_argument(p)
    _add_connection(p)


def run_eval_pairs(args: argparse.Namespace) -> int:
    """Run `embedlens eval pairs`; prints one row per file, writes --report if asked."""
    from ..report import evaluate_word_pairs, write_pairs_report

    settings = {
        "restrict_vocab": args.restrict_vocab,
        "case_insensitive": not args.case_sensitive,
        "dummy4unknown": args.dummy4unknown,
    }
    try:
        if args.report:
            require_matplotlib()  # fail before the work, not after it
        with Client(args.target, timeout=args.timeout, model=args.model) as c:
            reports = [
                evaluate_word_pairs(
                    c,
                    f,
                    model=args.model,
                    delimiter=args.delimiter,
                    progress=_progress(args),
                    **settings,
                )
                for f in args.files
            ]
        if args.report:
            out, png = write_pairs_report(reports, args.report, settings=settings)
            print(f"wrote {out} and {png}", file=sys.stderr)
    except PlotDependencyError as err:
        return _fail(err, 3)
    except ClientError as err:
        return _fail(err, 1)
    except (ValueError, OSError) as err:
        return _fail(err, 2)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "file": r.path,
                        "model": r.model,
                        "pairs": r.pairs,
                        "oov": r.oov,
                        "oov_ratio": r.oov_ratio,
                        "spearman": r.spearman,
                        "spearman_p": r.spearman_p,
                        "pearson": r.pearson,
                        "pearson_p": r.pearson_p,
                    }
                    for r in reports
                ]
            )
        )
        return 0
    width = max(len(Path(r.path).name) for r in reports)
    print(f"{'file':<{width}}  pairs  unknown  spearman  pearson   (model {reports[0].model})")
    for r in reports:
        print(
            f"{Path(r.path).name:<{width}}  {r.pairs:>5}  {r.oov:>4} ({r.oov_ratio:4.1f}%)"
            f"  {r.spearman:8.4f}  {r.pearson:7.4f}"
        )
    return 0


def write_analogy_report_for(args: argparse.Namespace, report: Any, model: str) -> int:
    """After `eval analogies FILE --report OUT.md`: write the report; 0, or 3 without matplotlib."""
    from ..report import write_analogy_report

    settings = {
        k: getattr(args, k)
        for k in ("method", "restrict_vocab", "case_insensitive")
        if getattr(args, k, None) is not None
    }
    try:
        out, png = write_analogy_report(
            report, args.report, source=args.file, model=model, settings=settings
        )
    except PlotDependencyError as err:
        return _fail(err, 3)
    except (ValueError, OSError) as err:
        return _fail(err, 2)
    print(f"wrote {out} and {png}", file=sys.stderr)
    return 0
