"""`evaluate_analogies` and `embedlens eval analogies` against gensim's evaluate_word_analogies.

A small word2vec-format model makes the rules visible: mixed case, a lower-case duplicate of
some words (case folding keeps the first), close case variants of input words (gensim passes
over them), restrict_vocab. The same vectors go into gensim, which has no special tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bench.analogy import answerable_keyed_vectors, gensim_cosmul_eval, sample_file

from embedlens.config import ModelSpec
from embedlens.server import EmbedlensServer
from embedlens_client import Client
from embedlens_client.eval import AnalogyReport, evaluate_analogies, format_report

from .conftest import make_config, start_server

gensim_models = pytest.importorskip("gensim.models")
gensim_utils = pytest.importorskip("gensim.test.utils")

SECTIONS = {
    "capital-common-countries": [("Athens", "Greece"), ("Berlin", "Germany"), ("Paris", "France"),
                                 ("Rome", "Italy"), ("Oslo", "Norway"), ("Madrid", "Spain")],
    "family": [("boy", "girl"), ("brother", "sister"), ("father", "mother"), ("king", "queen"),
               ("son", "daughter"), ("uncle", "aunt")],
}  # fmt: skip


def _questions(path: Path) -> None:
    lines = []
    for name, pairs in SECTIONS.items():
        lines.append(f": {name}")
        for a, b in pairs:
            lines += [f"{a} {b} {c} {d}" for c, d in pairs if (c, d) != (a, b)]
    lines += ["Athens Greece Zanzibar Tanzania", "a line that is not a question"]
    path.write_text("\n".join(lines) + "\n")


def _vectors(path: Path) -> list[str]:
    """Structured vectors: each pair's second word = first + the section's offset + noise."""
    rng = np.random.default_rng(42)
    d = 24
    words: list[str] = []
    vecs: list[np.ndarray] = []
    for pairs in SECTIONS.values():
        offset = rng.normal(size=d) * 1.5
        for a, b in pairs:
            va = rng.normal(size=d)
            words += [a, b]
            vecs += [va, va + offset + rng.normal(scale=0.9, size=d)]
    # Case variants: a lower-case "greece" close to "Greece" (passed over when Greece is an
    # input), a later "PARIS" (folding keeps the first, "Paris"), and "GERMANY" close to
    # "Germany" (with case folding it is the right answer; without, a wrong one).
    words += ["greece", "PARIS", "GERMANY"]
    vecs += [vecs[1] + rng.normal(scale=0.05, size=d), rng.normal(size=d)]
    vecs += [vecs[3] + rng.normal(scale=0.05, size=d)]
    words += [f"filler{i}" for i in range(200)]
    vecs += list(rng.normal(size=(200, d)))
    with path.open("w") as f:
        f.write(f"{len(words)} {d}\n")
        for w, v in zip(words, vecs):
            f.write(w + " " + " ".join(f"{x:.6f}" for x in v) + "\n")
    return words


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[EmbedlensServer, Path, object]:
    root = tmp_path_factory.mktemp("eval")
    _vectors(root / "tiny.txt")
    _questions(root / "questions.txt")
    app = start_server(
        make_config(models=(ModelSpec("tiny", str(root / "tiny.txt")),), cache_dir=root / "cache")
    )
    kv = gensim_models.KeyedVectors.load_word2vec_format(str(root / "tiny.txt"))
    yield app, root / "questions.txt", kv
    app.stop(0)


def _gensim_counts(sections: list[dict[str, object]]) -> list[tuple[str, int, int]]:
    out = []
    for s in sections:
        correct = len(s["correct"])  # type: ignore[arg-type]
        out.append((str(s["section"]), correct, correct + len(s["incorrect"])))  # type: ignore[arg-type]
    return out


def _ours(r: AnalogyReport) -> list[tuple[str, int, int]]:
    return [(s.name, s.correct, s.total) for s in r.sections] + [
        ("Total accuracy", r.correct, r.total)
    ]


@pytest.mark.parametrize("restrict_vocab", [300000, 14])
@pytest.mark.parametrize("case_insensitive", [True, False])
def test_3cosadd_equals_gensim(tiny, restrict_vocab: int, case_insensitive: bool) -> None:
    app, questions, kv = tiny
    with Client(f"127.0.0.1:{app.port}", timeout=60) as c:
        ours = evaluate_analogies(
            c, questions, restrict_vocab=restrict_vocab, case_insensitive=case_insensitive
        )
    score, sections = kv.evaluate_word_analogies(
        str(questions), restrict_vocab=restrict_vocab, case_insensitive=case_insensitive
    )
    assert _ours(ours) == _gensim_counts(sections)
    assert ours.accuracy == pytest.approx(score)
    assert ours.invalid_lines == 1
    assert ours.total > 0 and 0 < ours.correct < ours.total  # a test that can fail both ways
    if restrict_vocab == 14:
        assert ours.skipped > 0


def test_3cosmul_equals_gensim_cosmul(tiny) -> None:
    app, questions, kv = tiny
    with Client(f"127.0.0.1:{app.port}", timeout=60) as c:
        ours = evaluate_analogies(c, questions, method="3cosmul")
    score, sections = gensim_cosmul_eval(kv, questions)
    assert _ours(ours) == _gensim_counts(sections)
    assert ours.accuracy == pytest.approx(score)


def test_case_variants_of_inputs_are_passed_over(tiny, tmp_path: Path) -> None:
    """'greece' (a near copy of Greece) would win Athens:Greece::Oslo:? unless passed over."""
    app, _, kv = tiny
    f = tmp_path / "q.txt"
    f.write_text(": one\nOslo Norway Athens Greece\nAthens Greece Oslo Norway\n")
    with Client(f"127.0.0.1:{app.port}", timeout=60) as c:
        ours = evaluate_analogies(c, f)
    _, sections = kv.evaluate_word_analogies(str(f))
    assert _ours(ours) == _gensim_counts(sections)


def test_minilm_sample_equals_gensim(client: Client, server: EmbedlensServer, tmp_path) -> None:
    """Every 20th Google question on the real model: same counts in every section."""
    sample = tmp_path / "sample.txt"
    sample_file(Path(gensim_utils.datapath("questions-words.txt")), sample, 20)
    space = server.registry.get("minilm")
    kv = answerable_keyed_vectors(space.vocab, np.asarray(space.matrix), space.index.rows)
    ours = evaluate_analogies(client, sample)
    _, sections = kv.evaluate_word_analogies(str(sample))  # type: ignore[attr-defined]
    assert _ours(ours) == _gensim_counts(sections)
    assert ours.total > 500 and ours.skipped > 0


def test_cli_prints_json_and_table(tiny, capsys: pytest.CaptureFixture[str]) -> None:
    from embedlens.cli import main

    app, questions, _ = tiny
    target = f"127.0.0.1:{app.port}"
    assert main(["eval", "analogies", str(questions), "--target", target, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "tiny" and data["method"] == "3cosadd"
    assert [s["name"] for s in data["sections"]] == list(SECTIONS)
    assert data["total"] == sum(s["total"] for s in data["sections"])
    rc = main(["eval", "analogies", str(questions), "--target", target, "--method", "3cosmul"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Total accuracy" in out and "3cosmul" in out


def test_question_before_a_section_is_an_error(tiny, tmp_path: Path, capsys) -> None:
    from embedlens.cli import main

    app, _, _ = tiny
    bad = tmp_path / "bad.txt"
    bad.write_text("Athens Greece Oslo Norway\n")
    assert main(["eval", "analogies", str(bad), "--target", f"127.0.0.1:{app.port}"]) == 2
    assert "section header" in capsys.readouterr().err


def test_format_report_lists_every_section() -> None:
    from embedlens_client.eval import Section

    r = AnalogyReport([Section("a", 1, 2), Section("b", 0, 0)], 1, 2, 3, 0.5, seconds=0.1)
    text = format_report(r)
    assert "a " in text and "50.0%" in text and "skipped 3" in text
    assert r.sections[1].accuracy == 0.0
