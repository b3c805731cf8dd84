"""`embedlens train`: the training loop, evaluation, checkpoints and resume.

Determinism: the tokenizer is trained on the seeded split, torch's RNG is seeded before the
weights are created, and every batch is drawn from one numpy Generator whose state goes into
each checkpoint. Same corpus, seed, options and thread count: the same weights, bit for bit,
and a run stopped and resumed ends where an uninterrupted one does.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm import tqdm

from ..corpus import read_questions
from ..transformer import TransformerConfig
from .analogies import analogy_accuracy
from .data import encode, read_lines, split_lines, token_counts
from .lm import LMObjective
from .options import TrainConfig, TrainOptions, resolve
from .sgns import SGNSObjective
from .state import (
    COUNTS,
    MARKER,
    METRICS,
    OPTIMIZER,
    TOKENIZER,
    TRAINER_STATE,
    load_optimizer,
    read_json,
    read_marker,
    save_counts,
    save_optimizer,
    write_checkpoint,
    write_json,
)
from .tokenizer import special_ids, train_tokenizer, vocabulary, whole_word_mask

Objective = LMObjective | SGNSObjective


def lr_at(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over the first 10% (at most 100 steps), then cosine decay to 10%."""
    warmup = min(100, steps // 10)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.45 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_objective(
    c: TrainConfig, tok: Tokenizer, train_lines: list[str], held_lines: list[str]
) -> tuple[Objective, np.ndarray]:
    """The objective with freshly initialised (seeded) weights, and the training token counts."""
    vocab = vocabulary(tok)
    torch.manual_seed(c.seed)
    lm = c.objective == "lm"
    train_data = encode(tok, train_lines, with_bos=lm)
    held_data = encode(tok, held_lines, with_bos=lm)
    counts = token_counts(train_data.ids, len(vocab))
    if lm:
        cfg = TransformerConfig(
            d_vocab=len(vocab),
            d_model=c.d_model,
            n_heads=c.heads,
            n_layers=c.layers,
            n_ctx=c.context,
            d_mlp=c.d_mlp,
            block_style="pre_ln",
            positional=c.positional,
            causal=True,
            tie_embeddings=True,
        )
        return LMObjective(cfg, train_data.ids, held_data.ids, counts, c.batch_size, c.lr), counts
    sgns = SGNSObjective(
        len(vocab), c.d_model, train_data, held_data, counts, special_ids(tok),
        c.window, c.negatives, c.batch_size, c.lr, c.seed,
    )  # fmt: skip
    return sgns, counts


class Run:
    """One training run's mutable state, and how it is evaluated and saved."""

    def __init__(self, c: TrainConfig, tok: Tokenizer, corpus_hash: str) -> None:
        self.c, self.tok, self.corpus_hash = c, tok, corpus_hash
        self.out = Path(c.out)
        train_lines, held_lines = split_lines(read_lines(c.corpus), c.eval_fraction, c.seed)
        self.objective, self.counts = build_objective(c, tok, train_lines, held_lines)
        self.rng = np.random.default_rng(c.seed)  # every batch comes from here
        self.step, self.tokens_seen, self.train_seconds = 0, 0, 0.0
        self.history: list[dict[str, Any]] = []
        self.recent: list[float] = []  # training losses since the last evaluation
        vocab = vocabulary(tok)
        self.token_to_id = {t: i for i, t in enumerate(vocab)}
        self.searchable = whole_word_mask(tok, vocab) & (self.counts > 0)
        self.searchable[list(special_ids(tok))] = False
        self.questions = read_questions(c.analogies) if c.analogies else []

    def restore(self) -> None:
        """Weights, optimizer, sampler RNG and counters from the checkpoint in out."""
        st = read_json(self.out / TRAINER_STATE)
        self.objective.load(self.out)
        load_optimizer(self.objective.optimizer, self.out / OPTIMIZER, st["param_groups"])
        self.rng.bit_generator.state = st["rng"]
        self.step, self.tokens_seen = int(st["step"]), int(st["tokens_seen"])
        self.train_seconds, self.history = float(st["train_seconds"]), list(st["history"])

    def evaluate(self) -> dict[str, Any]:
        m: dict[str, Any] = {"step": self.step}
        m["loss"] = float(np.mean(self.recent)) if self.recent else None
        m.update(self.objective.evaluate())
        if self.questions:
            matrix = self.objective.embedding_matrix()
            m.update(analogy_accuracy(matrix, self.token_to_id, self.searchable, self.questions))
        self.recent.clear()
        self.history.append(m)
        return m

    def save(self, metrics: dict[str, Any]) -> None:
        unit = self.objective.unit

        def write(folder: Path) -> None:
            self.tok.save(str(folder / TOKENIZER))
            self.objective.save(folder)
            save_counts(folder / COUNTS, self.counts)
            groups = save_optimizer(self.objective.optimizer, folder / OPTIMIZER)
            state = {
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "train_seconds": self.train_seconds,
                "rng": self.rng.bit_generator.state,
                "param_groups": groups,
                "history": self.history,
            }
            write_json(folder / TRAINER_STATE, state)
            speed = round(self.tokens_seen / max(self.train_seconds, 1e-9))
            summary = {
                "objective": self.c.objective,
                **metrics,
                "tokens_seen": self.tokens_seen,
                "train_seconds": round(self.train_seconds, 3),
                f"{unit}s_per_second": speed,
                "history": self.history,
            }
            write_json(folder / METRICS, summary)

        marker = {
            "objective": self.c.objective,
            "tokenizer": self.c.tokenizer,
            "step": self.step,
            "vocab_size": self.tok.get_vocab_size(),
            "d_model": self.c.d_model,
            "corpus_sha256": self.corpus_hash,
            "options": self.c.to_dict(),
        }
        write_checkpoint(self.out, write, marker)

    def train_step(self) -> tuple[float, int, float]:
        """One optimizer step; returns (loss, tokens or pairs, seconds)."""
        opt = self.objective.optimizer
        for group in opt.param_groups:
            group["lr"] = lr_at(self.step, self.c.steps, self.c.lr)
        t0 = time.perf_counter()
        loss, n = self.objective.step_loss(self.rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        self.objective.clip()
        opt.step()
        dt = time.perf_counter() - t0
        self.step, self.tokens_seen, self.train_seconds = (
            self.step + 1, self.tokens_seen + n, self.train_seconds + dt,
        )  # fmt: skip
        value = float(loss.detach())
        self.recent.append(value)
        return value, n, dt


def train(opts: TrainOptions, *, stop_after: int | None = None) -> dict[str, Any]:
    """Train and write a servable checkpoint folder; return the final metrics.

    stop_after ends this run at that step (with a checkpoint) as an interruption would; the
    learning-rate schedule still follows the total --steps, so `--resume` continues the run.
    """
    out = Path(opts.out)
    saved: dict[str, Any] | None = None
    if opts.resume:
        if not (out / MARKER).exists() or not (out / TRAINER_STATE).exists():
            raise FileNotFoundError(f"--resume: {out} holds no checkpoint to resume")
        saved = read_marker(out)
    elif (out / MARKER).exists():
        raise FileExistsError(
            f"{out} already holds a checkpoint; pass --resume to continue it, or another --out"
        )
    c = resolve(opts, saved["options"] if saved else None)
    torch.set_num_threads(c.threads)
    corpus_hash = file_sha256(c.corpus)
    if saved:
        if saved.get("corpus_sha256") != corpus_hash:
            raise ValueError(
                f"--resume: {c.corpus} is not the corpus the checkpoint was trained on"
            )
        tok = Tokenizer.from_file(str(out / TOKENIZER))
    else:
        train_lines, _ = split_lines(read_lines(c.corpus), c.eval_fraction, c.seed)
        tok = train_tokenizer(train_lines, c.tokenizer, c.vocab_size)
    run = Run(c, tok, corpus_hash)
    if saved:
        run.restore()
    return _loop(run, opts.progress, c.steps if stop_after is None else min(c.steps, stop_after))


def _loop(run: Run, progress: bool, end: int) -> dict[str, Any]:
    c, unit = run.c, run.objective.unit
    metrics: dict[str, Any] | None = None
    ema: float | None = None  # smoothed loss and this run's throughput, for the progress bar
    run_n, run_seconds = 0, 0.0
    bar = tqdm(
        total=c.steps, initial=run.step, disable=not progress, unit="step", dynamic_ncols=True
    )
    try:
        while run.step < end:
            loss, n, dt = run.train_step()
            ema = loss if ema is None else 0.95 * ema + 0.05 * loss
            run_n, run_seconds = run_n + n, run_seconds + dt
            at_save = run.step % c.save_every == 0 and run.step < end
            metrics = None
            if run.step % c.eval_every == 0 or run.step == end or at_save:
                metrics = run.evaluate()
            postfix = {"loss": f"{ema:.3f}", f"{unit}s/s": f"{run_n / run_seconds:,.0f}"}
            if run.history and "ppl" in run.history[-1]:
                postfix["ppl"] = f"{run.history[-1]['ppl']:.1f}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
            if at_save and metrics is not None:
                run.save(metrics)
    except KeyboardInterrupt:
        bar.close()
        run.save({**(run.history[-1] if run.history else {}), "step": run.step})
        raise
    bar.close()
    if metrics is None:  # no step ran (--steps 0, or resumed at the end): evaluate what is there
        metrics = run.evaluate()
    run.save(metrics)
    return metrics
