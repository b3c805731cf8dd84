"""Word-pair similarity evaluation over the API, and the Markdown reports of `embedlens eval`.

`evaluate_word_pairs` is gensim's `KeyedVectors.evaluate_word_pairs` (WordSim-353, SimLex-999):
the same file format, the same skipping of comments, bad lines and unknown words, the same
`restrict_vocab`, `case_insensitive` and `dummy4unknown` options, Spearman and Pearson against
the human scores. Vectors come from Lookup, so it works against any embedlens server.

The reports are plain Markdown with one bar chart beside them (drawn by `plots.charts`, which
needs matplotlib; the evaluation itself does not).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .client import Client

SIMLEX_COLUMN = "simlex999"  # the score column of the original SimLex-999 distribution


@dataclass(frozen=True)
class PairsReport:
    """How well a model's cosines rank word pairs the way people scored them."""

    path: str
    model: str
    pairs: int  # pairs scored (with dummy4unknown: including the unknown ones, as 0)
    oov: int  # pairs with a word the model does not know (or past restrict_vocab)
    oov_ratio: float  # percent, gensim's definition
    spearman: float
    spearman_p: float | None  # None without scipy
    pearson: float
    pearson_p: float | None
    gold: np.ndarray = field(repr=False)  # human scores of the scored pairs
    similarity: np.ndarray = field(repr=False)  # the model's cosines, same order
    words: tuple[tuple[str, str], ...] = field(repr=False, default=())


def read_pairs(path: str | Path, delimiter: str = "\t") -> list[tuple[str, str, float]]:
    """(word, word, score) lines of a WordSim-353 / SimLex-999 style file.

    As gensim: lines starting with '#' and lines that are not `word delim word delim number`
    are skipped. The original SimLex-999 file (a header row, the score in column `SimLex999`)
    is read too.
    """
    rows: list[tuple[str, str, float]] = []
    score_col: int | None = None
    first = True
    with open(path, encoding="utf8") as fin:
        for line in fin:
            if not line or line.startswith("#"):
                continue
            parts = line.rstrip("\r\n").split(delimiter)
            if first:
                first = False
                lowered = [p.strip().lower() for p in parts]
                if SIMLEX_COLUMN in lowered:
                    score_col = lowered.index(SIMLEX_COLUMN)
                    continue
            try:
                if score_col is not None:
                    a, b, sim = parts[0], parts[1], float(parts[score_col])
                else:
                    a, b, raw = parts  # exactly three fields, as gensim
                    sim = float(raw)
            except (ValueError, IndexError):
                continue
            rows.append((a.strip(), b.strip(), sim))
    return rows


def _variants(word: str, case_insensitive: bool) -> list[str]:
    if not case_insensitive:
        return [word]
    return list(dict.fromkeys([word, word.lower(), word.upper(), word.title()]))


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1 with ties averaged (scipy.stats.rankdata 'average')."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    denom = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y / denom) if denom else float("nan")


def _p_values(gold: np.ndarray, sim: np.ndarray) -> tuple[float | None, float | None]:
    """Two-sided p-values from scipy when it is installed (the client does not need it)."""
    try:
        from scipy import stats
    except ImportError:
        return None, None
    if len(gold) < 3:
        return None, None
    return float(stats.spearmanr(gold, sim).pvalue), float(stats.pearsonr(gold, sim).pvalue)


def evaluate_word_pairs(
    client: Client,
    path: str | Path,
    *,
    model: str | None = None,
    delimiter: str = "\t",
    restrict_vocab: int = 300000,
    case_insensitive: bool = True,
    dummy4unknown: bool = False,
    progress: bool = False,
) -> PairsReport:
    """Spearman and Pearson correlation of the model's cosines with human similarity scores.

    gensim's semantics over the API: a word is known if Lookup resolves it to a vocabulary token
    with id < restrict_vocab that equals the word (case-insensitive: equals it up to case; of
    several case variants, the lowest id wins, as gensim's "first occurrence"). gensim compares
    every key of the vocabulary; over the API the variants tried are the word as written,
    lower, UPPER and Title case.
    """
    from .plots.fetch import lookup_known

    rows = read_pairs(path, delimiter)
    if not rows:
        raise ValueError(
            f"no word pairs in {path}: expected lines 'word{delimiter}word{delimiter}score'"
        )
    name = client.info(model).name
    words = {w for a, b, _ in rows for w in (a, b)}
    asked = sorted({v for w in words for v in _variants(w, case_insensitive)})
    known = lookup_known(client, asked, model=model, progress=progress, label="looking up words")

    def resolve(word: str) -> np.ndarray | None:
        best: tuple[int, np.ndarray] | None = None
        for v in _variants(word, case_insensitive):
            if v not in known:
                continue
            vec, info = known[v]
            same = info.token.upper() == word.upper() if case_insensitive else info.token == word
            if same and 0 <= info.id < restrict_vocab and (best is None or info.id < best[0]):
                best = (info.id, vec)
        return None if best is None else best[1]

    vectors = {w: resolve(w) for w in words}
    gold: list[float] = []
    sim: list[float] = []
    used: list[tuple[str, str]] = []
    oov = 0
    for a, b, score in rows:
        va, vb = vectors[a], vectors[b]
        if va is None or vb is None:
            oov += 1
            if dummy4unknown:
                gold.append(score)
                sim.append(0.0)
                used.append((a, b))
            continue
        # gensim's similarity(): dot of float32 unit vectors
        ua = (va / np.linalg.norm(va)).astype(np.float32)
        ub = (vb / np.linalg.norm(vb)).astype(np.float32)
        gold.append(score)
        sim.append(float(ua @ ub))
        used.append((a, b))
    if not gold:
        raise ValueError(f"no pair of {path} has both words in model {name!r}")
    g = np.array(gold, dtype=np.float64)
    s = np.array(sim, dtype=np.float64)
    spearman_p, pearson_p = _p_values(g, s)
    oov_ratio = oov / len(gold) * 100 if dummy4unknown else oov / (len(gold) + oov) * 100
    return PairsReport(
        path=str(path),
        model=name,
        pairs=len(gold),
        oov=oov,
        oov_ratio=float(oov_ratio),
        spearman=_pearson(_ranks(g), _ranks(s)),
        spearman_p=spearman_p,
        pearson=_pearson(g, s),
        pearson_p=pearson_p,
        gold=g,
        similarity=s,
        words=tuple(used),
    )


# ---- analogy reports: performance's AnalogyReport, read by shape ---------------------------


@dataclass(frozen=True)
class SectionRow:
    name: str
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def _get(obj: Any, *names: str) -> Any:
    for n in names:
        if isinstance(obj, dict) and n in obj:
            return obj[n]
        if hasattr(obj, n):
            return getattr(obj, n)
    return None


def _count(x: Any) -> int:
    return len(x) if isinstance(x, (list, tuple)) else int(x or 0)


def section_rows(report: Any) -> list[SectionRow]:
    """Per-section (name, correct, total) of an analogy report, without the grand total.

    Reads embedlens' AnalogyReport (sections with correct/total counts) and gensim's
    `evaluate_word_analogies` sections (dicts of 'section', 'correct' and 'incorrect' lists).
    """
    rows = []
    for sec in _get(report, "sections") or []:
        name = str(_get(sec, "name", "section") or "")
        correct = _count(_get(sec, "correct"))
        total = _get(sec, "total")
        if total is None:
            total = correct + _count(_get(sec, "incorrect"))
        if name.lower().startswith("total"):
            continue
        rows.append(SectionRow(name, correct, _count(total)))
    return rows


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def analogy_markdown(
    report: Any, *, source: str, model: str, chart: str | None, settings: dict[str, Any]
) -> str:
    """The Markdown text of an analogy report (`chart` is the image's relative path)."""
    rows = section_rows(report)
    correct = _count(_get(report, "correct"))
    total = _count(_get(report, "total"))
    skipped = _count(_get(report, "skipped"))
    accuracy = _get(report, "accuracy")
    accuracy = float(accuracy) if accuracy is not None else (correct / total if total else 0.0)
    lines = [
        f"# Analogy evaluation: {Path(source).name}",
        "",
        f"- model: `{model}`",
        *(f"- {k}: `{v}`" for k, v in settings.items()),
        f"- questions answered: {total} ({skipped} skipped: a word the model does not know)",
        f"- **accuracy: {_pct(accuracy)}** ({correct} of {total})",
        "",
    ]
    if chart:
        lines += [f"![accuracy per section]({chart})", ""]
    lines += ["| section | correct | total | accuracy |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r.name} | {r.correct} | {r.total} | {_pct(r.accuracy)} |" for r in rows]
    lines += [f"| **all** | **{correct}** | **{total}** | **{_pct(accuracy)}** |", ""]
    return "\n".join(lines)


def _p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.2g}"


def pairs_markdown(
    reports: Sequence[PairsReport], *, chart: str | None, settings: dict[str, Any]
) -> str:
    """The Markdown text of a word-pair report, one row per file."""
    names = ", ".join(Path(r.path).name for r in reports)
    lines = [
        f"# Word-pair similarity: {names}",
        "",
        f"- model: `{reports[0].model}`",
        *(f"- {k}: `{v}`" for k, v in settings.items()),
        "- similarity: cosine of the two words' rows of E; correlation with the human scores",
        "",
    ]
    if chart:
        lines += [f"![correlation per file]({chart})", ""]
    lines += [
        "| file | pairs | unknown | Spearman ρ | p | Pearson r | p |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {Path(r.path).name} | {r.pairs} | {r.oov} ({r.oov_ratio:.1f} %) | "
        f"{r.spearman:.4f} | {_p(r.spearman_p)} | {r.pearson:.4f} | {_p(r.pearson_p)} |"
        for r in reports
    ]
    lines.append("")
    return "\n".join(lines)


def chart_path(report_path: str | Path) -> Path:
    """The PNG written next to a report: out.md -> out.png."""
    return Path(report_path).with_suffix(".png")


def write_analogy_report(
    report: Any,
    out: str | Path,
    *,
    source: str,
    model: str,
    settings: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write out (Markdown) and its per-section accuracy bar chart beside it; both paths."""
    from .plots.charts import analogy_chart

    out = Path(out)
    png = chart_path(out)
    analogy_chart(section_rows(report), title=f"{Path(source).name} on {model}", out=png)
    text = analogy_markdown(
        report, source=source, model=model, chart=png.name, settings=settings or {}
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf8")
    return out, png


def write_pairs_report(
    reports: Sequence[PairsReport], out: str | Path, *, settings: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write out (Markdown) and its correlation chart beside it; both paths."""
    from .plots.charts import pairs_chart

    out = Path(out)
    png = chart_path(out)
    pairs_chart(reports, out=png)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        pairs_markdown(reports, chart=png.name, settings=settings or {}), encoding="utf8"
    )
    return out, png
