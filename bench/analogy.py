"""Row 1: the Google analogy set through embedlens versus gensim in-process, same vectors."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np

from embedlens_client import Client
from embedlens_client.eval import AnalogyReport, evaluate_analogies

from .table import Row, time_ratio

SPEEDUP_TARGET = 20.0
ACCURACY_TOLERANCE = 0.001  # 0.1 point


def questions_file() -> Path:
    from gensim.test.utils import datapath

    return Path(datapath("questions-words.txt"))


def answerable_keyed_vectors(vocab: list[str], matrix: np.ndarray, rows: np.ndarray) -> object:
    """gensim KeyedVectors holding exactly the rows embedlens can answer with, in id order."""
    from gensim.models import KeyedVectors

    kv = KeyedVectors(vector_size=matrix.shape[1])
    kv.add_vectors([vocab[i] for i in rows], np.asarray(matrix[rows], dtype=np.float32))
    return kv


def sample_file(path: Path, out: Path, every: int) -> int:
    """Every `every`-th question of `path` (section headers kept) into `out`; questions kept."""
    kept = 0
    n = 0
    with path.open("rb") as fin, out.open("wb") as fout:
        for line in fin:
            if line.startswith(b": "):
                fout.write(line)
                continue
            if n % every == 0:
                fout.write(line)
                kept += 1
            n += 1
    return kept


def gensim_cosmul_eval(kv: object, path: Path) -> tuple[float, list[dict[str, object]]]:
    """gensim's evaluate_word_analogies rules with most_similar_cosmul as the solver.

    gensim 4.4's evaluate_word_analogies always uses 3CosAdd; this is its loop (default
    restrict_vocab=300000, case_insensitive=True) with the 3CosMul call swapped in.
    """
    keys = kv.index_to_key[:300000]  # type: ignore[attr-defined]
    ok_vocab = {k.upper(): kv.get_index(k) for k in reversed(keys)}  # type: ignore[attr-defined]
    sections: list[dict[str, object]] = []
    section: dict[str, object] | None = None
    with path.open("rb") as fin:
        for raw in fin:
            line = raw.decode("utf-8")
            if line.startswith(": "):
                if section:
                    sections.append(section)
                section = {"section": line.lstrip(": ").strip(), "correct": [], "incorrect": []}
                continue
            assert section is not None
            try:
                a, b, c, expected = (w.upper() for w in line.split())
            except ValueError:
                continue
            if not all(w in ok_vocab for w in (a, b, c, expected)):
                continue
            original = kv.key_to_index  # type: ignore[attr-defined]
            kv.key_to_index = ok_vocab  # type: ignore[attr-defined]
            sims = kv.most_similar_cosmul(positive=[b, c], negative=[a], topn=5)  # type: ignore[attr-defined]
            kv.key_to_index = original  # type: ignore[attr-defined]
            predicted = None
            for word, _ in sims:
                predicted = word.upper()
                if predicted in ok_vocab and predicted not in {a, b, c}:
                    break
            key = "correct" if predicted == expected else "incorrect"
            section[key].append((a, b, c, expected))  # type: ignore[union-attr]
    if section:
        sections.append(section)
    correct = sum(len(s["correct"]) for s in sections)  # type: ignore[arg-type]
    total = correct + sum(len(s["incorrect"]) for s in sections)  # type: ignore[arg-type]
    sections.append(
        {
            "section": "Total accuracy",
            "correct": list(itertools.chain.from_iterable(s["correct"] for s in sections)),  # type: ignore[call-overload]
            "incorrect": list(itertools.chain.from_iterable(s["incorrect"] for s in sections)),  # type: ignore[call-overload]
        }
    )
    return (correct / total if total else 0.0), sections


def _compare(ours: AnalogyReport, theirs: list[dict[str, object]]) -> dict[str, object]:
    by_name = {str(s["section"]): s for s in theirs}
    per_section = []
    for s in ours.sections:
        g = by_name.get(s.name, {"correct": [], "incorrect": []})
        g_correct = len(g["correct"])  # type: ignore[arg-type]
        g_total = g_correct + len(g["incorrect"])  # type: ignore[arg-type]
        per_section.append(
            {
                "section": s.name,
                "ours": [s.correct, s.total],
                "gensim": [g_correct, g_total],
            }
        )
    return {"sections": per_section}


def run(
    client: Client,
    kv: object,
    path: Path,
    work: Path,
    *,
    cosmul_every: int,
) -> list[Row]:
    """1a (3CosAdd) and 1b (3CosMul) rows."""
    rows: list[Row] = []
    # Warm-up on a small sample so that one-time costs (first calls, caches) are not timed.
    warm = work / "analogy-warmup.txt"
    sample_file(path, warm, 50)
    evaluate_analogies(client, warm)

    t0 = time.perf_counter()
    ours = evaluate_analogies(client, path, method="3cosadd")
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    g_acc, g_sections = kv.evaluate_word_analogies(str(path))  # type: ignore[attr-defined]
    gensim_s = time.perf_counter() - t0
    diff = abs(ours.accuracy - g_acc)
    rows.append(
        Row(
            "1a",
            "analogy eval, 3CosAdd, whole Google set",
            ours_s,
            gensim_s,
            "s",
            "gensim evaluate_word_analogies",
            time_ratio(ours_s, gensim_s),
            SPEEDUP_TARGET,
            note=(
                f"accuracy {100 * ours.accuracy:.2f}% vs gensim {100 * g_acc:.2f}% "
                f"({ours.correct}/{ours.total}, {ours.skipped} skipped as OOV); "
                f"{'same within 0.1 point' if diff <= ACCURACY_TOLERANCE else 'ACCURACY DIFFERS'}"
            ),
            details={
                "ours_accuracy": ours.accuracy,
                "gensim_accuracy": g_acc,
                "accuracy_equal_within_0.1_point": diff <= ACCURACY_TOLERANCE,
                "questions": ours.total,
                "skipped": ours.skipped,
                **_compare(ours, g_sections),
            },
        )
    )

    t0 = time.perf_counter()
    ours_mul = evaluate_analogies(client, path, method="3cosmul")
    ours_mul_s = time.perf_counter() - t0
    # gensim's 3CosMul loop is slow; time it on every n-th question and scale up.
    sample = work / "analogy-sample.txt"
    n_sample = sample_file(path, sample, cosmul_every) if cosmul_every > 1 else 0
    timed = sample if cosmul_every > 1 else path
    t0 = time.perf_counter()
    g_mul_acc, g_mul_sections = gensim_cosmul_eval(kv, timed)
    g_mul_s = time.perf_counter() - t0
    ours_on_timed = evaluate_analogies(client, timed, method="3cosmul")
    # gensim's time goes into the in-vocabulary questions: scale by their number.
    sampled = ours_on_timed.total
    scale = ours_mul.total / sampled if cosmul_every > 1 and sampled else 1.0
    g_mul_full = g_mul_s * scale
    diff = abs(ours_on_timed.accuracy - g_mul_acc)
    where = f"on every {cosmul_every}th question ({n_sample})" if cosmul_every > 1 else "on all"
    rows.append(
        Row(
            "1b",
            "analogy eval, 3CosMul, whole Google set",
            ours_mul_s,
            g_mul_full,
            "s",
            "gensim most_similar_cosmul loop" + (" (scaled from a sample)" if scale != 1 else ""),
            time_ratio(ours_mul_s, g_mul_full),
            SPEEDUP_TARGET,
            note=(
                f"accuracy {100 * ours_mul.accuracy:.2f}%; {where}: ours "
                f"{100 * ours_on_timed.accuracy:.2f}% vs gensim {100 * g_mul_acc:.2f}% "
                f"({'same within 0.1 point' if diff <= ACCURACY_TOLERANCE else 'DIFFERS'})"
            ),
            details={
                "ours_accuracy": ours_mul.accuracy,
                "gensim_sample_seconds": g_mul_s,
                "sample_every": cosmul_every,
                "ours_sample_accuracy": ours_on_timed.accuracy,
                "gensim_sample_accuracy": g_mul_acc,
                "accuracy_equal_within_0.1_point": diff <= ACCURACY_TOLERANCE,
                **_compare(ours_on_timed, g_mul_sections),
            },
        )
    )
    return rows
