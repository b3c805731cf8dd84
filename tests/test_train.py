"""`embedlens train`: learning is real (planted analogies through the real server, perplexity
against the unigram baseline), checkpoints serve, same seed gives the same weights, and
--resume continues the same run. Training runs through the CLI, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from embedlens.config import ModelSpec
from embedlens.corpus import analogy_questions, sentences, write_corpus
from embedlens.server import EmbedlensServer
from embedlens.spaces import load_space
from embedlens.train.loop import train
from embedlens.train.options import TrainOptions, resolve
from embedlens.train.tokenizer import (
    KINDS,
    special_ids,
    train_tokenizer,
    vocabulary,
    whole_word_mask,
)
from embedlens_client import Client
from embedlens_client.errors import FailedPreconditionError

from .conftest import make_config, start_server

# Sizes picked to learn within seconds on two cores; see docs/training.md for longer runs.
SGNS_ARGS = ("--objective", "sgns", "--steps", "200", "--lr", "0.1")
LM_ARGS = ("--steps", "300", "--d-model", "64", "--context", "32", "--batch-size", "16")


def embedlens_train(corpus: Path, out: Path, *args: str) -> dict:
    """Run `embedlens train` in a fresh process, as a user would; return its JSON summary."""
    cmd = [sys.executable, "-m", "embedlens", "train", "--corpus", str(corpus), "--out", str(out)]
    proc = subprocess.run([*cmd, *args, "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def corpus(workdir: Path) -> Path:
    path = workdir / "corpus.txt"
    write_corpus(path, 20_000, seed=0)
    return path


@pytest.fixture(scope="module")
def small_corpus(workdir: Path) -> Path:
    path = workdir / "small.txt"
    write_corpus(path, 2_000, seed=1)
    return path


@pytest.fixture(scope="module")
def sgns(corpus: Path, workdir: Path) -> Path:
    embedlens_train(corpus, workdir / "sgns", *SGNS_ARGS)
    return workdir / "sgns"


@pytest.fixture(scope="module")
def sgns_untrained(corpus: Path, workdir: Path) -> Path:
    """The same architecture and seed at step 0: E as initialised."""
    embedlens_train(corpus, workdir / "sgns0", *(a if a != "200" else "0" for a in SGNS_ARGS))
    return workdir / "sgns0"


@pytest.fixture(scope="module")
def lm(corpus: Path, workdir: Path) -> Path:
    embedlens_train(corpus, workdir / "lm", *LM_ARGS, "--eval-every", "100")
    return workdir / "lm"


@pytest.fixture(scope="module")
def served(sgns: Path, sgns_untrained: Path, lm: Path) -> Iterator[EmbedlensServer]:
    models = (
        ModelSpec("mine", str(sgns)),
        ModelSpec("untrained", str(sgns_untrained)),
        ModelSpec("lm", str(lm)),
    )
    app = start_server(make_config(models=models))
    yield app
    app.stop(0)


@pytest.fixture(scope="module")
def client(served: EmbedlensServer) -> Iterator[Client]:
    with Client(f"127.0.0.1:{served.port}", timeout=120.0) as c:
        yield c


def top_k_accuracy(client: Client, model: str, k: int = 5) -> tuple[float, dict[str, float]]:
    """Share of planted analogies whose answer is in the top k (inputs excluded), overall and
    per relation, asked through the real server in one batch."""
    questions = analogy_questions()
    results = client.analogy_batch(
        [([q.b, q.c], [q.a]) for q in questions],
        k=k,
        model=model,
        exact=True,
        whole_words_only=True,
    )
    hits = [q.d in [n.token for n in r] for q, r in zip(questions, results)]
    sections = {q.section for q in questions}
    per = {
        s: float(np.mean([h for q, h in zip(questions, hits) if q.section == s])) for s in sections
    }
    return float(np.mean(hits)), per


def test_learned_E_solves_the_planted_analogies_and_untrained_E_does_not(client: Client) -> None:
    trained, per_relation = top_k_accuracy(client, "mine")
    untrained, _ = top_k_accuracy(client, "untrained")
    print(f"\nplanted analogies, top-5, inputs excluded: trained {trained:.1%}, "
          f"untrained {untrained:.1%}; per relation {per_relation}")  # fmt: skip
    assert trained >= 0.7
    assert min(per_relation.values()) >= 0.5, per_relation
    assert untrained <= 0.05
    best = client.analogy(["king", "woman"], ["man"], k=1, model="mine", whole_words_only=True)
    assert best[0].token == "queen"


def test_lm_held_out_perplexity_falls_far_below_the_unigram_baseline(lm: Path) -> None:
    m = json.loads((lm / "metrics.json").read_text())
    print(f"\nLM step {m['step']}: held-out ppl {m['ppl']:.1f}, unigram {m['unigram_ppl']:.1f}")
    assert m["step"] == 300
    assert m["ppl"] < m["unigram_ppl"] / 5
    ppls = [h["ppl"] for h in m["history"]]
    assert ppls == sorted(ppls, reverse=True) and len(ppls) == 3


def test_lm_checkpoint_serves_its_tied_E_and_its_pre_ln_causal_transformer(
    lm: Path, client: Client
) -> None:
    space = load_space(ModelSpec("lm", str(lm)), make_config())
    tr = space.transformer
    assert tr is not None and space.fmt == "embedlens-lm"
    assert (tr.cfg.block_style, tr.cfg.causal, tr.cfg.tie_embeddings) == ("pre_ln", True, True)
    assert tr.lm_head is None, "the unembedding is E itself"
    wte = load_file(str(lm / "transformer.safetensors"))["wte.weight"]
    assert "lm_head.weight" not in load_file(str(lm / "transformer.safetensors"))
    np.testing.assert_array_equal(space.matrix, wte)
    i = space.token_id("queen")
    np.testing.assert_array_equal(client.lookup("queen", model="lm"), wte[i])
    assert [t.text for t in space.tokenize("the queen")] == ["[BOS]", "the", "queen"]


def test_sgns_checkpoint_is_static_only(sgns: Path, client: Client) -> None:
    space = load_space(ModelSpec("mine", str(sgns)), make_config())
    assert space.transformer is None and space.fmt == "embedlens-sgns"
    with pytest.raises(FailedPreconditionError):
        client.contextual_embed(["the king"], model="mine")


def test_search_leaves_out_special_tokens_pieces_and_unseen_tokens(sgns: Path) -> None:
    space = load_space(ModelSpec("mine", str(sgns)), make_config())
    counts = load_file(str(sgns / "token_counts.safetensors"))["counts"]
    seen = (counts > 0) & ~np.isin(np.arange(len(counts)), list(space.special_ids))
    assert space.index.size == int(seen.sum()) < space.vocab_size
    words = {w for line in sentences(200) for w in line.split()}
    ids = [space.token_id(w) for w in words]
    assert all(seen[ids]), "every corpus word is a single, searchable token"
    _, found = space.index.search(space.matrix[ids], 50, whole_words_only=False)
    assert set(found[found >= 0].tolist()) <= set(np.flatnonzero(seen).tolist())


@pytest.mark.parametrize("objective", ["lm", "sgns"])
def test_same_seed_same_weights_and_resume_continues_the_same_run(
    objective: str, small_corpus: Path, tmp_path: Path
) -> None:
    """In-process runs (one thread) of the function the CLI calls; --stop-after is stop_after."""
    size = {"d_model": 32, "context": 16, "batch_size": 4} if objective == "lm" else {}
    weights = "transformer.safetensors" if objective == "lm" else "embeddings.safetensors"

    def run(out: str, stop_after: int | None = None, **kw: object) -> dict:
        opts = {"objective": objective, "steps": 8, "threads": 1, "progress": False, **size}
        opts.update(kw)
        options = TrainOptions(corpus=str(small_corpus), out=str(tmp_path / out), **opts)
        return train(options, stop_after=stop_after)

    run("whole")
    assert run("parts", stop_after=3)["step"] == 3
    parts = TrainOptions(
        corpus=str(small_corpus), out=str(tmp_path / "parts"), resume=True, progress=False
    )
    resumed = train(parts)
    assert resumed["step"] == 8

    def data(out: str, name: str) -> bytes:
        return (tmp_path / out / name).read_bytes()

    for f in (weights, "optimizer.safetensors", "tokenizer.json"):
        assert data("whole", f) == data("parts", f), f
    run("seed1", seed=1)
    assert data("whole", weights) != data("seed1", weights)


def test_checkpoint_holds_only_json_and_safetensors(lm: Path, sgns: Path) -> None:
    for folder in (lm, sgns):
        names = {p.name for p in folder.iterdir()}
        assert {"embedlens.json", "tokenizer.json", "metrics.json"} <= names
        assert all(n.endswith((".json", ".safetensors")) for n in names), names
        for p in folder.glob("*.json"):
            json.loads(p.read_text())
        for p in folder.glob("*.safetensors"):
            assert load_file(str(p))
        metrics = json.loads((folder / "metrics.json").read_text())
        assert {"step", "loss", "heldout_loss", "train_seconds", "history"} <= set(metrics)


def test_resume_refuses_another_run_and_train_refuses_to_overwrite(
    small_corpus: Path, tmp_path: Path
) -> None:
    saved = resolve(TrainOptions(corpus="c", out="o", d_model=32)).to_dict()
    with pytest.raises(ValueError, match="--d-model 64 \\(the checkpoint has 32\\)"):
        resolve(TrainOptions(corpus="c", out="o", d_model=64, resume=True), saved)
    assert resolve(TrainOptions(corpus="c", out="o", steps=9, resume=True), saved).steps == 9
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        train(TrainOptions(corpus=str(small_corpus), out=str(tmp_path), resume=True))
    (tmp_path / "embedlens.json").write_text("{}")
    with pytest.raises(FileExistsError, match="--resume"):
        train(TrainOptions(corpus=str(small_corpus), out=str(tmp_path)))
    with pytest.raises(ValueError, match="--heads"):
        resolve(TrainOptions(corpus="c", out="o", d_model=30, heads=4))


@pytest.mark.parametrize("kind", KINDS)
def test_tokenizer_is_deterministic_and_words_are_whole_tokens(kind: str) -> None:
    lines = list(sentences(2_000))
    tok = train_tokenizer(lines, kind, vocab_size=2_000)
    assert tok.to_str() == train_tokenizer(lines, kind, vocab_size=2_000).to_str()
    vocab = vocabulary(tok)
    assert vocab[:3] == ["[PAD]", "[UNK]", "[BOS]"] and special_ids(tok) == {0, 1, 2}
    mask = whole_word_mask(tok, vocab)
    assert all(mask[i] != t.startswith("##") for i, t in enumerate(vocab))
    assert tok.encode("Queens of PARIS").tokens == ["[BOS]", "queen", "##s", "of", "paris"]
    assert tok.decode(tok.encode("the queens of paris").ids) == "the queens of paris"


def test_whole_word_mask_follows_a_byte_level_tokenizer() -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.train_from_iterator(
        list(sentences(300)),
        trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    vocab = vocabulary(tok)
    mask = whole_word_mask(tok, vocab)
    assert mask[vocab.index("Ġthe")] and not mask[vocab.index("e")]
    assert all(mask[i] == t.startswith("Ġ") for i, t in enumerate(vocab))
