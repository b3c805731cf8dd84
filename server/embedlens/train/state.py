"""The checkpoint folder: what is written, in which files, and how a run resumes from it.

A checkpoint folder holds
  embedlens.json          marker + metadata: objective, tokenizer kind, step, resolved options
  tokenizer.json          the Hugging Face tokenizer
  transformer.json        } LM objective: the TransformerConfig and the weights (E is wte.weight;
  transformer.safetensors }   the unembedding is E itself, so nothing else is stored)
  embeddings.safetensors  SGNS objective: E (the word vectors) and the context vectors
  token_counts.safetensors how often each token occurs in the training split
  metrics.json            step, loss, held-out perplexity, unigram perplexity, history
  optimizer.safetensors   } only for --resume: optimizer tensors, and the JSON of
  trainer_state.json      }   hyper-parameters, step and the sampler's RNG state
Nothing is pickled: tensors go through safetensors, everything else through JSON.
Files are written to a staging folder and moved into place one by one, embedlens.json last, so a
folder with an embedlens.json always holds a complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

MARKER = "embedlens.json"
TOKENIZER = "tokenizer.json"
EMBEDDINGS = "embeddings.safetensors"
COUNTS = "token_counts.safetensors"
METRICS = "metrics.json"
OPTIMIZER = "optimizer.safetensors"
TRAINER_STATE = "trainer_state.json"
FORMAT = "embedlens-checkpoint"
VERSION = 1


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def write_checkpoint(out: Path, write: Callable[[Path], None], marker: dict[str, Any]) -> None:
    """Let write() fill a staging folder, then move its files into out; the marker goes last."""
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write(staging)
    for f in sorted(staging.iterdir()):
        f.chmod(0o644)  # safetensors creates files owner-only; a server may run as another user
        os.replace(f, out / f.name)
    staging.rmdir()
    tmp = out / (MARKER + ".tmp")
    write_json(tmp, {"format": FORMAT, "version": VERSION, **marker})
    os.replace(tmp, out / MARKER)


def read_marker(path: Path) -> dict[str, Any]:
    """The embedlens.json of a checkpoint folder, checked."""
    marker = read_json(path / MARKER)
    if marker.get("format") != FORMAT or marker.get("version") != VERSION:
        raise ValueError(
            f"{path / MARKER}: not an {FORMAT} version {VERSION} checkpoint "
            f"(format {marker.get('format')!r}, version {marker.get('version')!r})"
        )
    return marker


def save_counts(path: Path, counts: np.ndarray) -> None:
    save_numpy({"counts": np.ascontiguousarray(counts, dtype=np.int64)}, str(path))


def load_counts(path: Path) -> np.ndarray:
    return load_numpy(str(path))["counts"]


# ---- optimizer state without pickle ------------------------------------------------------


def save_optimizer(opt: torch.optim.Optimizer, path: Path) -> list[dict[str, Any]]:
    """Write the optimizer's tensors to path; return its param groups for the JSON state."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"optimizer state {pid}.{key} is a {type(value).__name__}")
            tensors[f"{pid}.{key}"] = value.detach().contiguous().cpu()
    save_file(tensors, str(path))
    return [
        {k: list(v) if isinstance(v, tuple) else v for k, v in g.items()}
        for g in sd["param_groups"]
    ]


def load_optimizer(opt: torch.optim.Optimizer, path: Path, groups: list[dict[str, Any]]) -> None:
    """Restore what save_optimizer wrote."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in load_file(str(path)).items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = t
    param_groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
        for g in groups
    ]
    opt.load_state_dict({"state": state, "param_groups": param_groups})
