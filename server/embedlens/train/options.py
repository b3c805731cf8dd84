"""Options of `embedlens train`: what was given, the defaults, and what a resumed run may change."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Any

from .tokenizer import KINDS

OBJECTIVES = ("lm", "sgns")
POSITIONALS = ("learned", "sinusoidal", "rope")
# What a fresh run uses for options left unset; per objective where they differ.
DEFAULTS: dict[str, dict[str, Any]] = {
    "lm": {"steps": 2000, "d_model": 128, "batch_size": 32, "lr": 3e-3},
    "sgns": {"steps": 3000, "d_model": 64, "batch_size": 4096, "lr": 0.05},
}
COMMON: dict[str, Any] = {
    "layers": 2,
    "heads": 4,
    "context": 64,
    "positional": "learned",
    "vocab_size": 8000,
    "seed": 0,
    "tokenizer": "wordpiece",
    "window": 5,
    "negatives": 5,
    "eval_fraction": 0.05,
    "save_every": 500,
    "analogies": None,
}
# Options a resumed run may change; every other one must match the checkpoint.
PER_RUN = ("steps", "eval_every", "save_every", "threads", "analogies")


def available_cpus() -> int:
    """Cores this process may run on (its affinity mask, which containers set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class TrainOptions:
    """What `embedlens train` is told. None means: the default, or the checkpoint's on resume."""

    corpus: str
    out: str
    objective: str | None = None
    steps: int | None = None
    d_model: int | None = None
    layers: int | None = None
    heads: int | None = None
    context: int | None = None
    d_mlp: int | None = None
    positional: str | None = None
    vocab_size: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None
    tokenizer: str | None = None
    window: int | None = None
    negatives: int | None = None
    eval_fraction: float | None = None
    eval_every: int | None = None
    save_every: int | None = None
    analogies: str | None = None
    threads: int | None = None
    progress: bool = True
    resume: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """Every option decided; saved in embedlens.json so that a resumed run can check itself."""

    corpus: str
    out: str
    objective: str
    steps: int
    d_model: int
    layers: int
    heads: int
    context: int
    d_mlp: int
    positional: str
    vocab_size: int
    batch_size: int
    lr: float
    seed: int
    tokenizer: str
    window: int
    negatives: int
    eval_fraction: float
    eval_every: int
    save_every: int
    analogies: str | None
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve(opts: TrainOptions, saved: dict[str, Any] | None = None) -> TrainConfig:
    """Fill unset options from the checkpoint's (on resume) or the defaults, and check them."""
    given = {f.name: getattr(opts, f.name) for f in fields(TrainConfig)}
    if saved is not None:
        clash = [
            f"--{k.replace('_', '-')} {v} (the checkpoint has {saved.get(k)})"
            for k, v in given.items()
            if v is not None and k not in (*PER_RUN, "corpus", "out") and v != saved.get(k)
        ]
        if clash:
            raise ValueError(
                "--resume continues the same run: only --steps, --eval-every, --save-every, "
                f"--threads and --analogies may change, not {', '.join(clash)}"
            )
        base = dict(saved)
    else:
        objective = given["objective"] or "lm"
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        base = {**COMMON, **DEFAULTS[objective], "objective": objective}
        base["d_mlp"] = 4 * int(given["d_model"] or base["d_model"])
        base["eval_every"] = max(1, min(200, int(given["steps"] or base["steps"]) // 10))
        base["threads"] = available_cpus()
    merged: dict[str, Any] = {k: (v if v is not None else base.get(k)) for k, v in given.items()}
    cfg = TrainConfig(**merged)
    _check(cfg)
    return cfg


def _check(c: TrainConfig) -> None:
    choices = {"objective": OBJECTIVES, "tokenizer": KINDS, "positional": POSITIONALS}
    for name, allowed in choices.items():
        if getattr(c, name) not in allowed:
            raise ValueError(f"--{name} must be one of {allowed}, got {getattr(c, name)!r}")
    at_least_one = ("d_model", "layers", "heads", "context", "d_mlp", "vocab_size", "batch_size",
                    "window", "negatives", "eval_every", "save_every", "threads")  # fmt: skip
    for name in at_least_one:
        if getattr(c, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(c, name)}")
    if c.steps < 0:
        raise ValueError(f"--steps must be >= 0, got {c.steps}")
    if not c.lr > 0:
        raise ValueError(f"--lr must be > 0, got {c.lr}")
    if not 0.0 <= c.eval_fraction < 1.0:
        raise ValueError(f"--eval-fraction must be in [0, 1), got {c.eval_fraction}")
    if c.objective == "lm" and c.d_model % c.heads:
        raise ValueError(f"--d-model {c.d_model} must be divisible by --heads {c.heads}")
