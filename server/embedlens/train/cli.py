"""`embedlens train` and `embedlens corpus`: argument parsing only; the work is in loop/corpus.

Nothing here imports torch at module level: `run_train` first asks OpenMP to wait passively,
which only takes effect if torch has not been loaded yet (see docs/training.md: with busy-wait
threads, two torch threads on a shared two-core machine ran several times slower than one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .tokenizer import KINDS

_HELP = "train a tokenizer and a tied-embedding LM (or SGNS vectors) on a text corpus"


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help=_HELP, description=_HELP)
    p.add_argument("--corpus", required=True, help="UTF-8 text, one document (sentence) a line")
    p.add_argument("--out", required=True, help="checkpoint folder to write (servable as is)")
    p.add_argument("--objective", choices=("lm", "sgns"), help="lm (default) or sgns")
    p.add_argument("--steps", type=int, help="optimizer steps in all (lm 2000, sgns 3000)")
    p.add_argument("--d-model", type=int, help="embedding width (lm 128, sgns 64)")
    p.add_argument("--layers", type=int, help="transformer blocks (2)")
    p.add_argument("--heads", type=int, help="attention heads (4)")
    p.add_argument("--context", type=int, help="tokens per training window, n_ctx (64)")
    p.add_argument("--d-mlp", type=int, help="MLP width (4 x d-model)")
    p.add_argument("--positional", choices=("learned", "sinusoidal", "rope"), help="(learned)")
    p.add_argument("--vocab-size", type=int, help="tokenizer vocabulary at most (8000)")
    p.add_argument("--tokenizer", choices=KINDS, help="(wordpiece); both use '##' continuations")
    p.add_argument("--batch-size", type=int, help="lm: windows per step (32); sgns: pairs (4096)")
    p.add_argument("--lr", type=float, help="peak learning rate (lm 3e-3, sgns 0.05)")
    p.add_argument("--seed", type=int, help="same seed, same corpus: identical weights (0)")
    p.add_argument("--window", type=int, help="sgns: largest context distance (5)")
    p.add_argument("--negatives", type=int, help="sgns: negative samples per pair (5)")
    p.add_argument("--eval-fraction", type=float, help="share of lines held out (0.05)")
    p.add_argument("--eval-every", type=int, help="steps between evaluations (steps/10, <= 200)")
    p.add_argument("--save-every", type=int, help="steps between checkpoints (500)")
    p.add_argument("--analogies", help="questions-words file: report analogy accuracy in metrics")
    p.add_argument("--threads", type=int, help="torch threads (the available cores, at most 2)")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    p.add_argument(
        "--stop-after",
        type=int,
        help="end this run at that step with a checkpoint; --resume continues it "
        "(the learning-rate schedule still follows --steps)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run_train(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from .loop import train
    from .options import TrainOptions

    given = {k: v for k, v in vars(args).items() if k in TrainOptions.__dataclass_fields__}
    t0 = time.perf_counter()
    try:
        metrics = train(TrainOptions(**given), stop_after=args.stop_after)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f"embedlens train: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"embedlens train: interrupted; checkpoint saved in {args.out}", file=sys.stderr)
        return 130
    summary = {k: v for k, v in metrics.items() if v is not None}
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(summary))
    return 0


def add_corpus_parser(sub: argparse._SubParsersAction) -> None:
    help_text = "write the synthetic corpus with planted relations (and its analogy questions)"
    p = sub.add_parser("corpus", help=help_text, description=help_text)
    p.add_argument("--out", required=True, help="text file to write, one sentence a line")
    p.add_argument("--lines", type=int, default=40_000, help="how many lines (40000)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same corpus (0)")
    p.add_argument("--analogies", help="also write the analogy questions (questions-words format)")


def run_corpus(args: argparse.Namespace) -> int:
    from ..corpus import write_corpus

    try:
        words = write_corpus(args.out, args.lines, args.seed, args.analogies)
    except (ValueError, OSError) as exc:
        print(f"embedlens corpus: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.lines} lines, {words} words to {args.out}", file=sys.stderr)
    return 0
