"""Word-analogy evaluation through a server: `embedlens eval analogies FILE`.

The rules are those of gensim's `KeyedVectors.evaluate_word_analogies(path,
restrict_vocab=300000, case_insensitive=True)`, so the two give the same accuracy on the same
vectors:

- The file has `: section name` lines and `a b c expected` lines (the Google set,
  questions-words.txt). A line that is not four words is skipped; a question before the first
  section header is an error.
- The vocabulary is the model's first `restrict_vocab` token ids. With case folding, every word
  and every token is upper-cased and a folded word means its first token in id order.
- A question with any of its four words outside that vocabulary is skipped (counted in
  `skipped`, not in any total).
- The answer is the best 3CosAdd (or 3CosMul) token among ids below `restrict_vocab`, leaving
  out the three input tokens; as gensim does, a candidate whose folded form equals a folded
  input word (another case variant of it) is passed over, within gensim's five best.

The server never answers with special tokens ([PAD], [unused0], ...), so the figures equal
gensim's on a KeyedVectors holding exactly the rows the server can answer with, in id order.
`restrict_vocab` counts ids of the model's vocabulary (special ones included), as the server's
`restrict_vocab` search option does.

Questions go to the server as token ids, many thousand per Analogy call, with exact search.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .client import Client
from .errors import ClientError
from .pb.embedlens.v1 import embedlens_pb2 as pb

METHODS = ("3cosadd", "3cosmul")
GENSIM_TOPN = 5  # gensim looks at its five best answers when passing over case variants
_IN_FLIGHT = 2  # Analogy calls in flight: the client encodes one while the server computes one

_METHOD_ENUM = {"3cosadd": pb.ANALOGY_METHOD_COS_ADD, "3cosmul": pb.ANALOGY_METHOD_COS_MUL}

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Section:
    name: str
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        """correct / total; 0.0 for a section without questions (as gensim)."""
        return self.correct / self.total if self.total else 0.0


@dataclass(frozen=True)
class AnalogyReport:
    """Per-section and total accuracy; `skipped` questions had an out-of-vocabulary word."""

    sections: list[Section]
    correct: int
    total: int
    skipped: int
    accuracy: float
    method: str = "3cosadd"
    model: str = ""
    restrict_vocab: int = 300000
    case_insensitive: bool = True
    invalid_lines: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["sections"] = [{**asdict(s), "accuracy": s.accuracy} for s in self.sections]
        return d


@dataclass(slots=True)
class _Question:
    section: int
    ids: tuple[int, int, int]  # a, b, c as token ids
    expected: str  # folded
    ignore: frozenset[str]  # folded a, b, c
    k: int


@dataclass
class _Parsed:
    names: list[str] = field(default_factory=list)
    questions: list[_Question] = field(default_factory=list)
    skipped: int = 0
    invalid: int = 0


def evaluate_analogies(
    client: Client,
    path: str | Path,
    *,
    method: str = "3cosadd",
    restrict_vocab: int = 300000,
    case_insensitive: bool = True,
    progress: Progress | None = None,
    model: str | None = None,
    batch_size: int = 0,
) -> AnalogyReport:
    """Evaluate an analogy file (questions-words.txt format) against a server's model.

    progress(done, total) is called after each batch of questions is answered.
    batch_size: questions per Analogy call (0: the server's max_batch).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if restrict_vocab < 1:
        raise ValueError(f"restrict_vocab must be at least 1, got {restrict_vocab}")
    t0 = time.perf_counter()
    info = client.info(model)
    n_vocab = min(restrict_vocab, info.vocab_size)
    max_batch = info.limits.max_batch if info.limits is not None else 1024
    batch = min(batch_size or max_batch, max_batch)
    with ThreadPoolExecutor(1) as pool:  # read the file while the vocabulary arrives
        vocab_job = pool.submit(fetch_vocab, client, n_vocab, batch, info.name)
        read = _read(Path(path), case_insensitive)
        vocab = vocab_job.result()
    parsed = _parse(Path(path), vocab, case_insensitive, read)
    fold = str.upper if case_insensitive else _same
    correct = [0] * len(parsed.names)
    total = [0] * len(parsed.names)
    done = 0
    server_restrict = n_vocab if n_vocab < info.vocab_size else 0
    with ThreadPoolExecutor(_IN_FLIGHT) as pool:
        jobs = [
            (chunk, pool.submit(_ask, client, chunk, method, server_restrict, info.name))
            for chunk in _batches(parsed.questions, batch)
        ]
        for chunk, job in jobs:
            for q, answers in zip(chunk, job.result()):
                predicted = None
                for token in answers:
                    predicted = fold(token)
                    if predicted not in q.ignore:
                        break
                total[q.section] += 1
                correct[q.section] += predicted == q.expected
            done += len(chunk)
            if progress is not None:
                progress(done, len(parsed.questions))
    sections = [Section(n, c, t) for n, c, t in zip(parsed.names, correct, total)]
    n_correct, n_total = sum(correct), sum(total)
    return AnalogyReport(
        sections=sections,
        correct=n_correct,
        total=n_total,
        skipped=parsed.skipped,
        accuracy=n_correct / n_total if n_total else 0.0,
        method=method,
        model=info.name,
        restrict_vocab=restrict_vocab,
        case_insensitive=case_insensitive,
        invalid_lines=parsed.invalid,
        seconds=time.perf_counter() - t0,
    )


def fetch_vocab(client: Client, n: int, batch: int = 4096, model: str | None = None) -> list[str]:
    """The texts of token ids 0..n-1 (Lookup by id, a few calls in flight)."""

    def one(start: int) -> list[str]:
        request = pb.LookupRequest(
            model=model or client.model,
            items=[pb.Query(id=i) for i in range(start, min(n, start + batch))],
        )
        return [item.token for item in client._call("Lookup", request).items]

    with ThreadPoolExecutor(_IN_FLIGHT) as pool:
        parts = list(pool.map(one, range(0, n, batch)))
    return [t for part in parts for t in part]


def _same(word: str) -> str:
    return word


def _read(path: Path, case_insensitive: bool) -> tuple[list[str], list[tuple[int, list[str]]], int]:
    """Section names, (section, folded words) per line, and the number of invalid lines."""
    fold = str.upper if case_insensitive else _same
    names: list[str] = []
    lines: list[tuple[int, list[str]]] = []
    invalid = 0
    with path.open("rb") as fin:
        for line_no, raw in enumerate(fin):
            line = raw.decode("utf-8")
            if line.startswith(": "):
                names.append(line.lstrip(": ").strip())
                continue
            if not names:
                raise ValueError(f"missing section header before line #{line_no} in {path}")
            words = [fold(w) for w in line.split()]
            if len(words) != 4:
                invalid += 1
                continue
            lines.append((len(names) - 1, words))
    return names, lines, invalid


def _parse(
    path: Path,
    vocab: list[str],
    case_insensitive: bool,
    read: tuple[list[str], list[tuple[int, list[str]]], int] | None = None,
) -> _Parsed:
    """The questions of `path` as token ids, with gensim's vocabulary rules."""
    fold = str.upper if case_insensitive else _same
    names, lines, invalid = read or _read(path, case_insensitive)
    first: dict[str, int] = {}
    for i in range(len(vocab) - 1, -1, -1):  # reversed: the first occurrence wins
        first[fold(vocab[i])] = i
    variants = Counter(fold(t) for t in vocab)  # how many tokens fold to each word
    out = _Parsed(names=names, invalid=invalid)
    for section, words in lines:
        a, b, c, expected = words
        if not all(w in first for w in words):
            out.skipped += 1
            continue
        ignore = frozenset((a, b, c))
        others = sum(variants[w] - 1 for w in ignore)  # case variants not excluded by id
        out.questions.append(
            _Question(
                section,
                (first[a], first[b], first[c]),
                expected,
                ignore,
                min(GENSIM_TOPN, 1 + others),
            )
        )
    return out


def _batches(questions: list[_Question], size: int) -> Iterator[list[_Question]]:
    """Questions grouped by k (one k per call), in calls of at most `size`."""
    by_k: dict[int, list[_Question]] = {}
    for q in questions:
        by_k.setdefault(q.k, []).append(q)
    for group in by_k.values():
        for start in range(0, len(group), size):
            yield group[start : start + size]


def _ask(
    client: Client, chunk: list[_Question], method: str, restrict_vocab: int, model: str
) -> list[list[str]]:
    """One Analogy call for a chunk of questions (ids in, token texts out)."""
    request = pb.AnalogyRequest(
        model=model,
        queries=[
            pb.AnalogyQuery(positive=[pb.Query(id=b), pb.Query(id=c)], negative=[pb.Query(id=a)])
            for a, b, c in (q.ids for q in chunk)
        ],
        method=_METHOD_ENUM[method],
        options=pb.SearchOptions(k=chunk[0].k, exact=True, restrict_vocab=restrict_vocab),
    )
    response = client._call("Analogy", request, timeout=max(client.timeout, 300.0))
    return [[n.token for n in r.neighbors] for r in response.results]


# ---- the command ---------------------------------------------------------------------------


def add_eval_parser(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Register `embedlens eval` (analogies, and pairs from plots/cli.py); its subparsers."""
    from .plots.cli import add_eval_parser as add_eval_with_pairs

    eval_sub = add_eval_with_pairs(sub)
    if "analogies" not in eval_sub.choices:
        add_analogies_parser(eval_sub)
    return eval_sub


def run_eval(args: argparse.Namespace) -> int:
    """Run `embedlens eval ...`: analogies here, the other subcommands in plots/cli.py."""
    if args.eval_command == "analogies":
        return run_eval_analogies(args)
    from .plots.cli import run_eval as run_other

    return run_other(args)


def add_analogies_parser(eval_sub: argparse._SubParsersAction) -> None:
    """Register `analogies FILE ...` on the `embedlens eval` subcommands."""
    from .cli import add_target_arguments
    from .plots.cli import add_report_argument

    a = eval_sub.add_parser(
        "analogies",
        help="word-analogy accuracy (questions-words.txt format), with gensim's rules",
        description="Accuracy per section and in total, with the rules of gensim's "
        "evaluate_word_analogies: questions with an unknown word are skipped, input words are "
        "never the answer, words and tokens are upper-cased unless --case-sensitive.",
    )
    a.add_argument("file", help="analogy file: ': section' lines and 'a b c expected' lines")
    a.add_argument("--method", choices=METHODS, default="3cosadd")
    a.add_argument(
        "--restrict-vocab",
        type=int,
        default=300000,
        help="only the first N token ids count as vocabulary and as answers (gensim's option)",
    )
    a.add_argument(
        "--case-insensitive",
        dest="case_insensitive",
        action="store_true",
        default=True,
        help="upper-case words and tokens before matching (default, as gensim)",
    )
    a.add_argument("--case-sensitive", dest="case_insensitive", action="store_false")
    a.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_report_argument(a)
    add_target_arguments(a)


def run_eval_analogies(args: argparse.Namespace) -> int:
    """`embedlens eval analogies`: 0, 1 for a server error, 2 for bad input."""
    progress = None if args.quiet or args.json or not sys.stderr.isatty() else _print_progress
    try:
        with Client(args.target, timeout=args.timeout, model=args.model) as c:
            report = evaluate_analogies(
                c,
                args.file,
                method=args.method,
                restrict_vocab=args.restrict_vocab,
                case_insensitive=args.case_insensitive,
                progress=progress,
                model=args.model,
            )
    except ClientError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if progress is not None:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_report(report))
    if getattr(args, "report", None):
        from .plots.cli import write_analogy_report_for

        return write_analogy_report_for(args, report, report.model)
    return 0


def _print_progress(done: int, total: int) -> None:
    print(f"\ranswered {done}/{total} questions", end="", file=sys.stderr, flush=True)


def format_report(r: AnalogyReport) -> str:
    """The per-section table, then the total, as plain text."""
    width = max([len(s.name) for s in r.sections] + [len("Total accuracy")])
    lines = [f"{'section':<{width}}  {'correct':>7}  {'total':>6}  accuracy"]
    for s in r.sections:
        lines.append(f"{s.name:<{width}}  {s.correct:>7}  {s.total:>6}  {100 * s.accuracy:6.1f}%")
    lines.append(
        f"{'Total accuracy':<{width}}  {r.correct:>7}  {r.total:>6}  {100 * r.accuracy:6.1f}%"
    )
    asked = r.total + r.skipped
    share = 100 * r.skipped / asked if asked else 0.0
    lines.append(
        f"model {r.model!r}, {r.method}, restrict_vocab={r.restrict_vocab}, "
        f"case {'in' if r.case_insensitive else ''}sensitive; skipped {r.skipped} questions "
        f"with out-of-vocabulary words ({share:.1f}%); {r.seconds:.2f}s"
    )
    return "\n".join(lines)
