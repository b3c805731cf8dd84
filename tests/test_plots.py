"""The pictures and reports of `embedlens plot` / `embedlens eval`, drawn from a real server.

Each plot is rendered on the default model into a temporary folder; the files must be valid
images, and the numbers written on them must be the API's answers.
"""

from __future__ import annotations

import io
import itertools
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from embedlens.server import EmbedlensServer
from embedlens_client import Client

matplotlib = pytest.importorskip("matplotlib")

from embedlens.cli import main as embedlens_main  # noqa: E402
from embedlens_client.cli import main as client_main  # noqa: E402
from embedlens_client.plots import (  # noqa: E402
    PlotDependencyError,
    figure_texts,
    plot_analogy,
    plot_direction,
    plot_layers,
    plot_neighbors,
    save_figure,
)
from embedlens_client.plots._mpl import require_matplotlib  # noqa: E402
from embedlens_client.plots.fetch import Progress, lookup_known, pca_2d  # noqa: E402
from embedlens_client.plots.neighbors import tsne_available  # noqa: E402
from embedlens_client.report import (  # noqa: E402
    evaluate_word_pairs,
    read_pairs,
    write_analogy_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BANK_TEXTS = ["we sat on the river bank", "the central bank raised rates"]


def assert_png(path: Path, min_side: int = 300) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) >= min_side, image.shape
    assert image[..., :3].std() > 0.05, "the image is (nearly) blank"


def assert_svg(path: Path) -> None:
    text = path.read_text(encoding="utf8")
    assert text.lstrip().startswith("<?xml") and "<svg" in text and text.rstrip().endswith("</svg>")


def drawn(fig: object) -> str:
    return "\n".join(figure_texts(fig))  # type: ignore[arg-type]


def unitv(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(unitv(a) @ unitv(b))


# ---- analogy --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def analogy(client: Client):  # type: ignore[no-untyped-def]
    return plot_analogy(client, "king", "man", "woman", "queen")


def test_analogy_numbers_are_the_apis(analogy, client: Client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    answers = client.analogy(["king", "woman"], ["man"], k=50, exact=True)
    kept = client.analogy(["king", "woman"], ["man"], k=50, exact=True, exclude_inputs=False)
    rank = next(i for i, n in enumerate(answers, 1) if n.token == "queen")
    rank_kept = next(i for i, n in enumerate(kept, 1) if n.token == "queen")
    assert analogy.rank == rank and analogy.rank_with_inputs == rank_kept
    assert analogy.answers[0] == answers[0] and analogy.answers_with_inputs[0] == kept[0]
    # cos(king − man + woman, queen) on unit vectors is exactly the server's 3CosAdd score
    queen_score = answers[rank - 1].score
    assert analogy.cos_prediction == pytest.approx(queen_score, abs=1e-5)
    k, m, w, q = client.lookup(["king", "man", "woman", "queen"])
    k, m, w, q = unitv(k), unitv(m), unitv(w), unitv(q)
    assert analogy.cos_first == pytest.approx(cos(k - m, q - w), abs=1e-6)
    assert analogy.cos_second == pytest.approx(cos(w - m, q - k), abs=1e-6)

    text = drawn(analogy.figure)
    for line in analogy.texts:
        assert line in text
    for number in (analogy.cos_first, analogy.cos_second, analogy.cos_prediction, queen_score):
        assert f"{number:.3f}" in text
    assert f"queen ranks {rank}" in text and f"{kept[0].token} ({kept[0].score:.3f})" in text
    # arrows and the predicted point are in the legend
    assert "man→king, woman→queen" in text and "man→woman, king→queen" in text

    out = save_figure(analogy.figure, tmp_path / "analogy.png")
    assert_png(out)


@pytest.mark.parametrize("projection", ["pca", "relations"])
def test_analogy_predicted_point_completes_the_parallelogram(
    client: Client, projection: str
) -> None:
    p = plot_analogy(client, "paris", "france", "germany", projection=projection, neighbors=2)
    assert p.words[3] == p.answers[0].token  # D defaults to the 3CosAdd answer
    pts = {w: np.array(xy) for w, xy in p.points.items()}
    a, b, c, _ = p.words
    np.testing.assert_allclose(p.predicted, pts[a] - pts[b] + pts[c], atol=1e-9)
    if projection == "relations":
        # x runs along b→c (+ a→d), y along b→a (+ c→d): the arrows point right and up
        assert pts[c][0] > pts[b][0] and pts[a][1] > pts[b][1]
    assert len(p.context) > 0


def test_same_inputs_give_identical_bytes(client: Client, tmp_path: Path) -> None:
    for ext in ("svg", "png"):
        first = plot_analogy(client, "king", "man", "woman", "queen")
        second = plot_analogy(client, "king", "man", "woman", "queen")
        a = save_figure(first.figure, tmp_path / f"a.{ext}").read_bytes()
        b = save_figure(second.figure, tmp_path / f"b.{ext}").read_bytes()
        assert a == b, ext
    assert_svg(tmp_path / "a.svg")
    svg = (tmp_path / "a.svg").read_bytes()
    assert b"<dc:date>" not in svg and b"Matplotlib v" not in svg  # no date, no version


# ---- layers ---------------------------------------------------------------------------------


def test_layers_cosines_and_norms_are_the_apis(client: Client, tmp_path: Path) -> None:
    p = plot_layers(client, "bank", BANK_TEXTS)
    n_layers = client.info().n_layers
    assert p.points == ("embed", *(f"blocks.{i}.resid_pre" for i in range(n_layers)), "final")
    results = client.contextual_embed(
        BANK_TEXTS, points=["embed", "resid_pre", "attn_out", "mlp_out", "final"]
    )
    i, j = (r.position("bank") for r in results)
    series = p.cosines[(0, 1)]
    # the chapter's point: the same row of E in both texts, then the layers pull them apart
    assert series[0] == pytest.approx(1.0, abs=1e-6)
    for name, got in zip(p.points, series):
        want = cos(results[0].activations[name][i], results[1].activations[name][j])
        assert got == pytest.approx(want, abs=1e-5), name
    assert series[-1] < 0.95
    for b in range(n_layers):
        assert p.attn_norms[1][b] == pytest.approx(
            float(np.linalg.norm(results[1].activations[f"blocks.{b}.attn_out"][j])), rel=1e-5
        )
        assert p.mlp_norms[0][b] == pytest.approx(
            float(np.linalg.norm(results[0].activations[f"blocks.{b}.mlp_out"][i])), rel=1e-5
        )
    text = drawn(p.figure)
    assert p.texts_drawn == tuple(f"{c:.2f}" for c in series)
    for number in p.texts_drawn:
        assert number in text
    assert "embed" in text and "final" in text and "‖attn_out‖, text 1" in text
    assert p.final_nearest[0][0] == "bank"
    out = save_figure(p.figure, tmp_path / "layers.png")
    assert_png(out)


def test_layers_names_the_missing_token(client: Client) -> None:
    with pytest.raises(ValueError, match=r"'banks'.*text 1.*river bank"):
        plot_layers(client, "banks", BANK_TEXTS)
    with pytest.raises(ValueError, match="at least two texts"):
        plot_layers(client, "bank", BANK_TEXTS[:1])


# ---- neighbors ------------------------------------------------------------------------------


def test_neighbors_map(client: Client, tmp_path: Path) -> None:
    words = ["king", "paris", "dog"]
    p = plot_neighbors(client, words, k=5)
    lists = client.nearest_batch(words, 5, exact=True, whole_words_only=True)
    assert p.tokens[:3] == tuple(words)
    for q, ns in zip(words, lists):
        assert {n.token: n.score for n in ns} == pytest.approx(p.scores[q])
        for n in ns:
            assert n.token in p.tokens
            # a neighbour wears the colour of the query it is nearest to
            owner = p.group[p.tokens.index(n.token)]
            assert p.scores[words[owner]][n.token] >= n.score - 1e-6 or n.token in words
    assert p.pca.shape == (len(p.tokens), 2)
    vectors = client.lookup(list(p.tokens))
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    coords, _, _ = pca_2d(unit)
    np.testing.assert_allclose(p.pca, coords, atol=1e-6)
    if tsne_available():
        assert p.tsne is not None and p.tsne.shape == p.pca.shape
    text = drawn(p.figure)
    for token in p.tokens:
        assert token in text
    out = save_figure(p.figure, tmp_path / "neighbors.svg")
    assert_svg(out)
    assert_png(save_figure(p.figure, tmp_path / "neighbors.png"))


def test_neighbors_pca_only_is_deterministic(client: Client, tmp_path: Path) -> None:
    a = plot_neighbors(client, ["cat", "car"], k=4, tsne=False)
    b = plot_neighbors(client, ["cat", "car"], k=4, tsne=False)
    assert a.tsne is None
    assert (
        save_figure(a.figure, tmp_path / "a.svg").read_bytes()
        == save_figure(b.figure, tmp_path / "b.svg").read_bytes()
    )


# ---- direction ------------------------------------------------------------------------------


def test_direction_projection_is_the_apis(client: Client, tmp_path: Path) -> None:
    words = ["king", "queen", "girl", "boy", "tiny", "giant"]
    p = plot_direction(client, [("man", "woman"), ("small", "large")], words)
    vec = dict(
        zip(
            ["man", "woman", "small", "large", *words],
            map(unitv, client.lookup(["man", "woman", "small", "large", *words])),
        )
    )
    d1 = unitv(vec["woman"] - vec["man"])
    d2 = unitv(vec["large"] - vec["small"])
    m1 = (vec["woman"] + vec["man"]) / 2
    m2 = (vec["large"] + vec["small"]) / 2
    for w, (x, y) in zip(words, p.coords):
        assert x == pytest.approx(float((vec[w] - m1) @ d1), abs=1e-6)
        assert y == pytest.approx(float((vec[w] - m2) @ d2), abs=1e-6)
    assert p.pole_coords["man"][0] < 0 < p.pole_coords["woman"][0]
    assert p.pole_coords["small"][1] < 0 < p.pole_coords["large"][1]
    assert p.axes_cosine == pytest.approx(float(d1 @ d2), abs=1e-6)
    text = drawn(p.figure)
    assert f"{p.axes_cosine:.3f}" in text and all(w in text for w in words)
    assert_png(save_figure(p.figure, tmp_path / "direction.png"))

    one = plot_direction(client, [("man", "woman")], words)
    assert one.coords.shape == (len(words), 1)
    np.testing.assert_allclose(one.coords[:, 0], p.coords[:, 0])
    assert_svg(save_figure(one.figure, tmp_path / "direction1.svg"))


# ---- the commands ---------------------------------------------------------------------------


def test_plot_commands_write_files(target: str, tmp_path: Path) -> None:
    common = ["--target", target, "--no-progress"]
    runs = {
        "analogy.svg": ["plot", "analogy", "king", "man", "woman", "queen"],
        "analogy-relations.png": [
            "plot",
            "analogy",
            "paris",
            "france",
            "germany",
            "--projection",
            "relations",
        ],
        "layers.png": ["plot", "layers", "--token", "bank", *BANK_TEXTS],
        "neighbors.png": ["plot", "neighbors", "king", "queen", "-k", "4", "--no-tsne"],
        "direction.svg": ["plot", "direction", "--axis", "man:woman", "king", "queen"],
    }
    for i, (name, argv) in enumerate(runs.items()):
        out = tmp_path / name
        main = client_main if i % 2 else embedlens_main  # both scripts have `plot`
        assert main([*argv, *common, "--out", str(out)]) == 0, argv
        (assert_svg if name.endswith(".svg") else assert_png)(out)


def test_unknown_word_is_named_with_its_model(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.png"
    argv = ["plot", "analogy", "king", "man", "qqzzxxw", "--target", target, "--out", str(out)]
    assert embedlens_main(argv) == 1
    err = capsys.readouterr().err
    assert "qqzzxxw" in err and "minilm" in err and "NOT_FOUND" in err
    assert not out.exists()
    argv = ["plot", "neighbors", "qqzzxxw", "--target", target, "--out", str(out)]
    assert embedlens_main(argv) == 1
    assert "qqzzxxw" in capsys.readouterr().err


def test_bad_arguments_are_explained(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--target", target]
    assert embedlens_main(["plot", "analogy", "king", "man", *base, "--out", "x.pdf"]) == 2
    assert ".png or .svg" in capsys.readouterr().err
    assert embedlens_main(["plot", "analogy", "king", "man", *base, "--out", "x.png"]) == 2
    assert "three or four words" in capsys.readouterr().err
    argv = ["plot", "direction", "--axis", "man", "king", *base, "--out", "x.png"]
    assert embedlens_main(argv) == 2
    assert "man:woman" in capsys.readouterr().err


def test_missing_matplotlib_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PlotDependencyError, match=r"pip install .*\[plot\]"):
        require_matplotlib()
    argv = ["plot", "analogy", "king", "man", "woman", "--target", target]
    assert embedlens_main([*argv, "--out", str(tmp_path / "x.png")]) == 3
    assert "plot' extra" in capsys.readouterr().err


def test_progress_bar_and_lookup_known(client: Client) -> None:
    stream = io.StringIO()
    bar = Progress(4, "fetching", stream=stream)
    bar.update(2)
    bar.update(2)
    bar.close()
    assert "2/4" in stream.getvalue() and "4/4" in stream.getvalue()
    assert "[" + "#" * 30 + "]" in stream.getvalue()
    words = ["king", "qqzzxxw", "queen", "zzqqyyv", "dog"]
    found = lookup_known(client, words)
    assert sorted(found) == ["dog", "king", "queen"]
    np.testing.assert_array_equal(found["queen"][0], client.lookup("queen"))


# ---- eval pairs and reports -----------------------------------------------------------------

gensim_utils = pytest.importorskip("gensim.test.utils")


@pytest.fixture(scope="module")
def kv(server: EmbedlensServer) -> object:
    from gensim.models import KeyedVectors

    space = server.registry.get("minilm")
    kv = KeyedVectors(vector_size=space.d_model)
    kv.add_vectors(space.vocab, np.asarray(space.matrix))
    return kv


@pytest.mark.parametrize("name", ["wordsim353.tsv", "simlex999.txt"])
@pytest.mark.parametrize(
    ("restrict", "case_insensitive"), [(300000, True), (5000, True), (300000, False)]
)
def test_word_pairs_equal_gensim(
    client: Client, kv: object, name: str, restrict: int, case_insensitive: bool
) -> None:
    path = gensim_utils.datapath(name)
    ours = evaluate_word_pairs(
        client, path, restrict_vocab=restrict, case_insensitive=case_insensitive
    )
    pearson, spearman, oov_ratio = kv.evaluate_word_pairs(  # type: ignore[attr-defined]
        path, restrict_vocab=restrict, case_insensitive=case_insensitive
    )
    assert ours.spearman == pytest.approx(spearman.statistic, abs=1e-6)
    assert ours.pearson == pytest.approx(pearson.statistic, abs=1e-6)
    assert ours.oov_ratio == pytest.approx(oov_ratio, abs=1e-9)
    assert ours.spearman_p == pytest.approx(spearman.pvalue, rel=1e-3)


def test_word_pairs_dummy4unknown_equals_gensim(client: Client, kv: object) -> None:
    path = gensim_utils.datapath("wordsim353.tsv")
    ours = evaluate_word_pairs(client, path, case_insensitive=False, dummy4unknown=True)
    _, spearman, oov_ratio = kv.evaluate_word_pairs(  # type: ignore[attr-defined]
        path, case_insensitive=False, dummy4unknown=True
    )
    assert ours.oov > 0
    assert ours.spearman == pytest.approx(spearman.statistic, abs=1e-6)
    assert ours.oov_ratio == pytest.approx(oov_ratio, abs=1e-9)


def test_read_pairs_formats(tmp_path: Path) -> None:
    f = tmp_path / "pairs.tsv"
    f.write_text("# comment\nold\tnew\t1.58\nbad line\nsmart\tintelligent\t9.2\tx\na\tb\tnan-ish\n")
    assert read_pairs(f) == [("old", "new", 1.58)]
    simlex = tmp_path / "SimLex-999.txt"
    simlex.write_text(
        "word1\tword2\tPOS\tSimLex999\tconc(w1)\n"
        "old\tnew\tA\t1.58\t2.72\nsmart\tintelligent\tA\t9.2\t1.75\n"
    )
    assert read_pairs(simlex) == [("old", "new", 1.58), ("smart", "intelligent", 9.2)]


def test_eval_pairs_command_and_report(
    target: str, client: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = gensim_utils.datapath("wordsim353.tsv")
    report = tmp_path / "pairs.md"
    argv = ["eval", "pairs", path, "--target", target, "--report", str(report)]
    assert client_main(argv) == 0  # the client-only `embedlens-client` script
    printed = capsys.readouterr().out
    ours = evaluate_word_pairs(client, path)
    assert f"{ours.spearman:.4f}" in printed and f"{ours.pearson:.4f}" in printed
    md = report.read_text()
    assert "![correlation per file](pairs.png)" in md
    assert f"| wordsim353.tsv | {ours.pairs} | {ours.oov} " in md
    assert f"{ours.spearman:.4f}" in md and f"{ours.pearson:.4f}" in md
    assert_png(tmp_path / "pairs.png")


@dataclass(frozen=True)
class _Section:
    name: str
    correct: int
    total: int


@dataclass(frozen=True)
class _AnalogyReport:
    sections: list[_Section]
    correct: int
    total: int
    skipped: int
    accuracy: float


def test_analogy_report(tmp_path: Path) -> None:
    sections = [_Section("capital-common-countries", 400, 506), _Section("family", 300, 420)]
    report = _AnalogyReport(sections, 700, 926, 74, 700 / 926)
    md, png = write_analogy_report(
        report,
        tmp_path / "out.md",
        source="questions-words.txt",
        model="minilm",
        settings={"method": "3cosadd"},
    )
    assert png == tmp_path / "out.png"
    text = md.read_text()
    assert "![accuracy per section](out.png)" in text
    assert "| capital-common-countries | 400 | 506 | 79.1 % |" in text
    assert "| family | 300 | 420 | 71.4 % |" in text
    assert "**accuracy: 75.6 %** (700 of 926)" in text and "74 skipped" in text
    assert_png(png, min_side=200)
    # gensim's evaluate_word_analogies sections read the same way
    gensim_like = {
        "sections": [
            {"section": "family", "correct": [("a", "b", "c", "d")] * 3, "incorrect": [()] * 1},
            {"section": "Total accuracy", "correct": [()] * 3, "incorrect": [()] * 1},
        ]
    }
    md2, _ = write_analogy_report(gensim_like, tmp_path / "g.md", source="q.txt", model="m")
    assert "| family | 3 | 4 | 75.0 % |" in md2.read_text()
    assert "Total accuracy" not in md2.read_text()


def test_chart_bytes_are_deterministic(tmp_path: Path) -> None:
    sections = [_Section(f"section-{i}", i * 10, 100) for i in range(1, 6)]
    report = _AnalogyReport(sections, 150, 500, 0, 0.3)
    pngs = []
    for name in ("a", "b"):
        _, png = write_analogy_report(report, tmp_path / f"{name}.md", source="q.txt", model="m")
        pngs.append(png.read_bytes())
    assert pngs[0] == pngs[1]


def test_neighbor_owner_is_the_nearest_query(client: Client) -> None:
    p = plot_neighbors(client, ["king", "queen"], k=6, tsne=False)
    for token, g in zip(p.tokens[2:], p.group[2:]):
        scores = {q: p.scores[q].get(token, -2.0) for q in p.queries}
        assert p.queries[g] == max(scores, key=lambda q: scores[q]), token
    assert len(set(itertools.chain.from_iterable(p.scores.values()))) >= len(p.tokens) - 2
    assert re.search(r"2 words and their 6 nearest neighbours", drawn(p.figure))


def test_analogy_report_of_a_real_evaluation(client: Client, tmp_path: Path) -> None:
    evaluation = pytest.importorskip("embedlens_client.eval")
    lines = Path(gensim_utils.datapath("questions-words.txt")).read_text().splitlines()
    keep: list[str] = []
    for start in (i for i, line in enumerate(lines) if line.startswith(": ")):
        keep += lines[start : start + 25]  # a header and 24 questions of every section
    small = tmp_path / "questions-small.txt"
    small.write_text("\n".join(keep) + "\n")
    report = evaluation.evaluate_analogies(client, small)
    md, png = write_analogy_report(
        report, tmp_path / "analogies.md", source=str(small), model=report.model
    )
    text = md.read_text()
    for s in report.sections:
        if s.total:
            assert f"| {s.name} | {s.correct} | {s.total} | {100 * s.accuracy:.1f} % |" in text
    assert f"({report.correct} of {report.total})" in text
    assert f"{report.skipped} skipped" in text
    assert_png(png, min_side=200)


def test_eval_analogies_report_command(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("embedlens_client.eval")
    lines = Path(gensim_utils.datapath("questions-words.txt")).read_text().splitlines()
    small = tmp_path / "q.txt"
    family = lines.index(": family")
    small.write_text("\n".join(lines[:30] + lines[family : family + 30]) + "\n")  # 2 sections
    report = tmp_path / "out" / "analogies.md"
    argv = ["eval", "analogies", str(small), "--target", target, "--report", str(report)]
    assert embedlens_main(argv) == 0
    printed = capsys.readouterr().out
    total = re.search(r"Total accuracy\s+(\d+)\s+(\d+)", printed)
    assert total is not None
    text = report.read_text()
    assert f"({total.group(1)} of {total.group(2)})" in text
    assert "![accuracy per section](analogies.png)" in text
    assert_png(tmp_path / "out" / "analogies.png", min_side=150)
    # `eval pairs` sits beside `eval analogies` in the server's command too
    path = gensim_utils.datapath("wordsim353.tsv")
    assert embedlens_main(["eval", "pairs", path, "--target", target, "--json"]) == 0
    assert '"spearman"' in capsys.readouterr().out
    # and the client-only script has both
    assert client_main(["eval", "analogies", str(small), "--target", target, "--json"]) == 0
    assert f'"correct": {total.group(1)}' in capsys.readouterr().out
