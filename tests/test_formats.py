"""Static-vector readers (spaces/formats.py) and their .npy cache (spaces/cache.py).

Reference: gensim's KeyedVectors.load_word2vec_format on the fixture files gensim ships.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import pickle
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from embedlens.spaces import cache as cache_mod
from embedlens.spaces.formats import (
    VectorFileError,
    detect_format,
    load_static_vectors,
    read_static_vectors,
)

gensim_utils = pytest.importorskip("gensim.test.utils")
KeyedVectors = pytest.importorskip("gensim.models").KeyedVectors


SERVER_DIR = Path(__file__).resolve().parent.parent / "server"


def datapath(name: str) -> Path:
    return Path(gensim_utils.datapath(name))


# (fixture, format we detect); gensim reads all of these with binary = fmt == "word2vec-bin".
TEXT_FIXTURES = [
    ("word2vec_pre_kv_c", "word2vec-text"),
    ("high_precision.kv.txt", "word2vec-text"),
    ("EN.1-10.cbow1_wind5_hs0_neg10_size300_smpl1e-05.txt", "word2vec-text"),
    ("IT.1-10.cbow1_wind5_hs0_neg10_size300_smpl1e-05.txt", "word2vec-text"),
    ("w2v_keyedvectors_load_test.modeldata", "word2vec-text"),  # tokens cut mid-character
    ("crime-and-punishment.vec", "fasttext-vec"),  # Cyrillic
    ("lee_fasttext.vec", "fasttext-vec"),
    ("pang_lee_polarity_fasttext.vec", "fasttext-vec"),  # some tokens are not valid UTF-8
    ("toy-model.vec", "fasttext-vec"),
]
BINARY_FIXTURES = [
    ("euclidean_vectors.bin", "word2vec-bin"),
    ("poincare_vectors.bin", "word2vec-bin"),
    ("high_precision.kv.bin", "word2vec-bin"),
]


def gensim_load(path: Path, **kwargs: object) -> tuple[list[str], np.ndarray]:
    # 'replace' is what we do with bytes that are not UTF-8 (gensim's default would raise).
    kv = KeyedVectors.load_word2vec_format(str(path), unicode_errors="replace", **kwargs)
    return list(kv.index_to_key), kv.vectors


def assert_same(got_vocab: list[str], got: np.ndarray, want_vocab: list[str], want: np.ndarray):
    assert got_vocab == want_vocab
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# ---- equal to gensim ----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "fmt"), TEXT_FIXTURES + BINARY_FIXTURES)
def test_matches_gensim_on_its_fixtures(name: str, fmt: str, cache_dir: Path) -> None:
    path = datapath(name)
    assert detect_format(path) == fmt
    sv = load_static_vectors(path, cache_dir=cache_dir, progress=False)
    assert sv.fmt == fmt and sv.source == str(path)
    assert_same(sv.vocab, sv.vectors, *gensim_load(path, binary=fmt == "word2vec-bin"))


def test_glove_file_matches_gensim_no_header(cache_dir: Path) -> None:
    path = datapath("test_glove.txt")
    assert detect_format(path) == "glove"
    sv = load_static_vectors(path, cache_dir=cache_dir, progress=False)
    assert sv.vectors.shape == (76, 50)
    assert_same(sv.vocab, sv.vectors, *gensim_load(path, no_header=True))


def test_word2vec_fixture_without_header_reads_as_glove(tmp_path: Path) -> None:
    src = datapath("word2vec_pre_kv_c")
    glove = tmp_path / "vectors.txt"
    glove.write_bytes(src.read_bytes().split(b"\n", 1)[1])
    assert detect_format(glove) == "glove"
    vocab, vectors = read_static_vectors(glove)
    assert_same(vocab, vectors, *gensim_load(glove, no_header=True))
    assert_same(vocab, vectors, *gensim_load(src))


def test_binary_written_by_gensim_and_rows_ending_in_newline(tmp_path: Path) -> None:
    kv = KeyedVectors.load_word2vec_format(str(datapath("crime-and-punishment.vec")))
    plain = tmp_path / "plain.bin"
    kv.save_word2vec_format(str(plain), binary=True)
    # The other binary layout: a newline after every row (word2vec.c writes one).
    with_newlines = tmp_path / "newlines.bin"
    with with_newlines.open("wb") as f:
        f.write(f"{len(kv)} {kv.vector_size}\n".encode())
        for token, row in zip(kv.index_to_key, kv.vectors, strict=True):
            f.write(token.encode() + b" " + row.astype("<f4").tobytes() + b"\n")
    for path in (plain, with_newlines):
        assert detect_format(path) == "word2vec-bin"
        vocab, vectors = read_static_vectors(path)
        assert_same(vocab, vectors, *gensim_load(path, binary=True))
        assert_same(vocab, vectors, list(kv.index_to_key), kv.vectors)


def test_gzipped_files_read_the_same(tmp_path: Path) -> None:
    for name in ("lee_fasttext.vec", "euclidean_vectors.bin"):
        gz = tmp_path / f"{name}.gz"
        gz.write_bytes(gzip.compress(datapath(name).read_bytes()))
        assert detect_format(gz) == detect_format(datapath(name))
        assert_same(*read_static_vectors(gz), *read_static_vectors(datapath(name)))


def test_glove_tokens_with_spaces_keep_the_last_dim_fields_as_numbers(tmp_path: Path) -> None:
    path = tmp_path / "glove.840B.tiny.txt"
    path.write_text(". . . 0.5 -1 2\nat name@domain.com 1 2 3\nthe 4 5 6\n\n")
    vocab, vectors = read_static_vectors(path)
    assert vocab == [". . .", "at name@domain.com", "the"]
    np.testing.assert_array_equal(vectors, [[0.5, -1, 2], [1, 2, 3], [4, 5, 6]])


def test_duplicate_tokens_keep_the_first_row_like_gensim(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "dups.txt"
    path.write_text("5 2\na 1 1\nb 2 2\na 3 3\nc 4 4\nb 5 5\n")
    with caplog.at_level(logging.WARNING, logger="embedlens.spaces.formats"):
        vocab, vectors = read_static_vectors(path)
    assert vocab == ["a", "b", "c"]
    np.testing.assert_array_equal(vectors, [[1, 1], [2, 2], [4, 4]])
    assert "2 duplicate tokens" in caplog.text
    # gensim 4.4 keeps the same first rows but leaves the slots it preallocated at the end
    # (None keys, zero rows); we drop them.
    want_vocab, want = gensim_load(path)
    assert want_vocab[3:] == [None, None]
    assert_same(vocab, vectors, want_vocab[:3], want[:3])


def test_large_text_file_spans_several_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Small blocks force lines to straddle block edges, and a bad line into a later block.
    from embedlens.spaces import formats

    monkeypatch.setattr(formats, "_BLOCK", 4096)
    src = datapath("lee_fasttext.vec")
    assert_same(*read_static_vectors(src), *gensim_load(src))
    lines = src.read_bytes().split(b"\n")
    lines[1500] = lines[1500].replace(b" ", b" x ", 1)
    bad = tmp_path / "bad.vec"
    bad.write_bytes(b"\n".join(lines))
    with pytest.raises(VectorFileError) as err:
        read_static_vectors(bad)
    assert err.value.line == 1501


# ---- .npy and safetensors -----------------------------------------------------------------


def test_npy_with_sibling_vocab_round_trip(tmp_path: Path, cache_dir: Path) -> None:
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((50, 8))  # float64 on disk: converted to float32
    vocab = [f"tok{i}" for i in range(49)] + ["naïve token"]
    np.save(tmp_path / "emb.npy", matrix)
    (tmp_path / "emb.vocab").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    sv = load_static_vectors(tmp_path / "emb.npy", cache_dir=cache_dir, progress=False)
    assert sv.fmt == "npy"
    assert_same(sv.vocab, sv.vectors, vocab, matrix.astype(np.float32))
    # vocab.txt in the same folder, and an explicit vocab_path (CRLF line ends).
    (tmp_path / "emb.vocab").rename(tmp_path / "vocab.txt")
    assert load_static_vectors(tmp_path / "emb.npy", cache_dir=cache_dir).vocab == vocab
    other = tmp_path / "words.lst"
    other.write_bytes("\r\n".join(vocab).encode())
    assert read_static_vectors(tmp_path / "emb.npy", vocab_path=other)[0] == vocab


def test_npy_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "emb.npy", np.zeros((3, 2), np.float32))
    with pytest.raises(VectorFileError, match="no vocabulary file"):
        read_static_vectors(tmp_path / "emb.npy")
    (tmp_path / "emb.vocab").write_text("a\nb\n")
    with pytest.raises(VectorFileError, match="expected 3 tokens"):
        read_static_vectors(tmp_path / "emb.npy")
    np.save(tmp_path / "emb.npy", np.zeros(2, np.float32))
    with pytest.raises(VectorFileError, match="2-D"):
        read_static_vectors(tmp_path / "emb.npy")


def write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    """A safetensors file by hand, so that bfloat16 (which numpy lacks) can be written too."""
    header: dict[str, object] = {"__metadata__": {"format": "np"}}
    blobs, offset = [], 0
    for name, (dtype, arr) in tensors.items():
        blob = arr.tobytes()
        header[name] = {
            "dtype": dtype,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def test_safetensors_round_trips(tmp_path: Path, cache_dir: Path) -> None:
    from safetensors.numpy import save_file

    matrix = np.random.default_rng(1).standard_normal((20, 6)).astype(np.float32)
    vocab = [f"w{i}" for i in range(20)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    save_file({"only": matrix}, str(tmp_path / "single.safetensors"))
    save_file(
        {"embeddings": matrix, "other": matrix[:3].copy(), "bias": matrix[0].copy()},
        str(tmp_path / "named.safetensors"),
    )
    save_file({"weight": matrix.astype(np.float16)}, str(tmp_path / "half.safetensors"))
    bf16 = (matrix.view(np.uint32) >> 16).astype(np.uint16)  # truncated to bfloat16
    write_safetensors(tmp_path / "bf16.safetensors", {"weight": ("BF16", bf16)})
    for name, want in [
        ("single", matrix),
        ("named", matrix),
        ("half", matrix.astype(np.float16).astype(np.float32)),
        ("bf16", (bf16.astype(np.uint32) << 16).view(np.float32)),
    ]:
        path = tmp_path / f"{name}.safetensors"
        assert detect_format(path) == "safetensors"
        sv = load_static_vectors(path, cache_dir=cache_dir, progress=False)
        assert_same(sv.vocab, sv.vectors, vocab, want)
    np.testing.assert_allclose(want, matrix, rtol=1e-2)
    save_file({"a": matrix, "b": matrix}, str(tmp_path / "two.safetensors"))
    with pytest.raises(VectorFileError, match="one 2-D tensor"):
        read_static_vectors(tmp_path / "two.safetensors")


# ---- bad files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        (b"2 3\na 1 2 3\nb 1 2\n", 3, "expected 3 numbers after the token, found 2"),
        (b"2 3\na 1 2 3\nb 1 2 3 4\n", 3, "expected 3 numbers after the token, found 4"),
        (b"2 3\na 1 2\nb 1 2 3\n", 2, "expected 3 numbers"),
        (b"2 3\na 1 2 3\nb 1 x 3\n", 3, "expected a number, got 'x'"),
        (b"3 3\na 1 2 3\nb 1 2 3\n", 4, "the file ends after 2 rows; the header announced 3"),
        (b"2 3\n", 2, "the file ends after 0 rows"),
        (b"1 3\na 1 2 3\nb 1 2 3\n", 3, "more rows than the header's count 1"),
        (b"2 3\na 1 2 3\n\nb 1 2 3\n\nc 1 2 3\n", 6, "more rows than the header's count 2"),
        (b"2 3\na 1 2 3\nb nan 2 3\n", 3, "NaN or infinity"),
        (b"2 3\na 1 2 3\nb 1 inf 3\n", 3, "NaN or infinity"),
        (b"", 1, "the file is empty"),
        (b"\n\n", 1, "the file is empty"),
        (b"hello world\n", 1, "cannot tell the format"),
        (b"x 3\na 1 2 3\n", 2, "expected 1 numbers after the token, found 3"),  # GloVe, dim 1
        (b"a 1 2 3\nb 1 2\n", 2, "expected 3 numbers after the token, found 2"),  # GloVe
        (b"a 1 2 3\nb 1 2 3 4\n", 2, "expected 3 numbers after the token, found 4"),
        (b"a 1 2 3\n\nb 1 two 3\n", 3, "expected a number, got 'two'"),
    ],
)
def test_bad_text_files_say_which_line(
    tmp_path: Path, content: bytes, line: int, message: str
) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(VectorFileError) as err:
        load_static_vectors(path, cache_dir=tmp_path / "cache", progress=False)
    assert isinstance(err.value, ValueError)
    assert err.value.line == line and message in err.value.reason
    assert str(path) in str(err.value) and f"line {line}" in str(err.value)


def test_truncated_binary_says_which_row_and_byte(tmp_path: Path) -> None:
    data = datapath("euclidean_vectors.bin").read_bytes()
    path = tmp_path / "cut.bin"
    path.write_bytes(data[: len(data) - 10])
    with pytest.raises(VectorFileError, match=r"byte \d+: the file ends inside row 2747 of 2747"):
        read_static_vectors(path)
    # A header dim that is too small leaves bytes over: refused, not read as garbage.
    path.write_bytes(data.replace(b"2747 10\n", b"2747 9\n", 1))
    with pytest.raises(VectorFileError, match="dim 9"):
        read_static_vectors(path, "word2vec-bin")


def test_fasttext_model_bin_is_refused_with_advice() -> None:
    with pytest.raises(VectorFileError, match=r"use its \.vec file"):
        detect_format(datapath("lee_fasttext_new.bin"))


def test_error_pickles_and_missing_file(tmp_path: Path) -> None:
    err = VectorFileError("/x.txt", "expected 3 numbers", line=7)
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.line, str(back)) == ("/x.txt", 7, "/x.txt, line 7: expected 3 numbers")
    with pytest.raises(FileNotFoundError):
        load_static_vectors(tmp_path / "nope.txt", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown vector format"):
        load_static_vectors(datapath("toy-model.vec"), "word3vec", cache_dir=tmp_path)


# ---- the cache ----------------------------------------------------------------------------


def copy_fixture(name: str, dest: Path) -> Path:
    shutil.copyfile(datapath(name), dest)
    old = time.time() - 3600  # written an hour ago, like any downloaded file
    os.utime(dest, (old, old))
    return dest


def test_second_load_is_a_memmap_of_the_same_values(tmp_path: Path, cache_dir: Path) -> None:
    path = copy_fixture("lee_fasttext.vec", tmp_path / "lee.vec")
    first = load_static_vectors(path, cache_dir=cache_dir, progress=False)
    second = load_static_vectors(path, cache_dir=cache_dir, progress=False)
    for sv in (first, second):
        assert isinstance(sv.vectors, np.memmap) and not sv.vectors.flags.writeable
    assert second.content_hash == first.content_hash == cache_mod.sha256_file(path)
    assert_same(second.vocab, second.vectors, first.vocab, np.asarray(first.vectors))
    assert_same(second.vocab, second.vectors, *gensim_load(path))
    entry = cache_mod.VectorCache(cache_dir).entry_dir(first.content_hash, "fasttext-vec")
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["shape"] == [1762, 10] and manifest["source"] == str(path)


def count_hashing(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = cache_mod.sha256_file
    monkeypatch.setattr(cache_mod, "sha256_file", lambda p, **kw: calls.append(p) or real(p, **kw))
    return calls


def test_stored_hash_is_reused_until_the_file_changes(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = copy_fixture("toy-model.vec", tmp_path / "toy.vec")
    calls = count_hashing(monkeypatch)
    monkeypatch.setattr(cache_mod, "RACY_NS", 0)  # the file's ctime is "now" (copy, utime)
    for _ in range(3):
        load_static_vectors(path, cache_dir=cache_dir, progress=False)
    assert len(calls) == 1
    os.utime(path, None)  # touched: size, mtime or ctime no longer match what was hashed
    load_static_vectors(path, cache_dir=cache_dir, progress=False)
    assert len(calls) == 2


def test_a_file_changed_just_before_hashing_is_hashed_again(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = copy_fixture("toy-model.vec", tmp_path / "toy.vec")
    calls = count_hashing(monkeypatch)
    for _ in range(3):
        load_static_vectors(path, cache_dir=cache_dir, progress=False)
    assert len(calls) == 3  # changed < RACY_NS before hashing: stat alone cannot be trusted


def test_modified_source_invalidates_the_cache(tmp_path: Path, cache_dir: Path) -> None:
    path = tmp_path / "v.txt"
    path.write_text("2 3\na 1 2 3\nb 4 5 6\n")
    first = load_static_vectors(path, cache_dir=cache_dir, progress=False)
    np.testing.assert_array_equal(first.vectors[1], [4, 5, 6])
    path.write_text("2 3\na 1 2 3\nb 4 5 7\n")  # same size, likely the same mtime tick
    second = load_static_vectors(path, cache_dir=cache_dir, progress=False)
    assert second.content_hash != first.content_hash
    np.testing.assert_array_equal(second.vectors[1], [4, 5, 7])


def test_broken_entry_is_rebuilt(tmp_path: Path, cache_dir: Path) -> None:
    path = copy_fixture("toy-model.vec", tmp_path / "toy.vec")
    first = load_static_vectors(path, cache_dir=cache_dir, progress=False)
    entry = cache_mod.VectorCache(cache_dir).entry_dir(first.content_hash, first.fmt)
    (entry / "vocab.json").write_text('["just one"]')
    again = load_static_vectors(path, cache_dir=cache_dir, progress=False)
    assert again.vocab == first.vocab
    assert json.loads((entry / "vocab.json").read_text()) == first.vocab


def test_losing_the_race_to_store_uses_the_winner(tmp_path: Path, cache_dir: Path) -> None:
    cache = cache_mod.VectorCache(cache_dir)
    vectors = np.arange(6, dtype=np.float32).reshape(3, 2)
    cache.store("ab" * 32, "npy", ["a", "b", "c"], vectors, {})
    _, got = cache.store("ab" * 32, "npy", ["a", "b", "c"], vectors * 0, {})  # the loser
    np.testing.assert_array_equal(got, vectors)
    assert not list((cache_dir / "vectors").glob(".tmp-*"))


def test_two_processes_converting_at_once_share_one_entry(tmp_path: Path, cache_dir: Path):
    path = copy_fixture("pang_lee_polarity_fasttext.vec", tmp_path / "pl.vec")
    code = (
        "import sys, numpy as np; from embedlens.spaces.formats import load_static_vectors as f;"
        "sv = f(sys.argv[1], cache_dir=sys.argv[2], progress=False);"
        "print(sv.content_hash, float(np.asarray(sv.vectors, np.float64).sum()))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SERVER_DIR), *sys.path])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(path), str(cache_dir)],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs[0] == outputs[1]
    assert len(list((cache_dir / "vectors").iterdir())) == 1  # one entry, no temporary left
    sv = load_static_vectors(path, cache_dir=cache_dir, progress=False)
    assert_same(sv.vocab, sv.vectors, *gensim_load(path))


def test_unwritable_cache_falls_back_to_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("")
    sv = load_static_vectors(datapath("toy-model.vec"), cache_dir=blocker / "c", progress=False)
    assert not isinstance(sv.vectors, np.memmap)
    assert_same(sv.vocab, sv.vectors, *gensim_load(datapath("toy-model.vec")))


def test_default_cache_dir_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMBEDLENS_CACHE_DIR", str(tmp_path / "envcache"))
    assert cache_mod.default_cache_dir() == tmp_path / "envcache"
    sv = load_static_vectors(datapath("toy-model.vec"), progress=False)
    assert (tmp_path / "envcache" / "vectors" / f"{sv.content_hash}.fasttext-vec.v1").is_dir()
    monkeypatch.delenv("EMBEDLENS_CACHE_DIR")
    assert cache_mod.default_cache_dir() == Path.home() / ".cache" / "embedlens"


# ---- the measurement behind docs/formats.md -----------------------------------------------


def write_synthetic_word2vec(path: Path, n: int, dim: int, seed: int = 0) -> None:
    """Seeded word2vec text with fixed-width values ('0.123456', '-0.12345'), built by numpy."""
    rng = np.random.default_rng(seed)
    with path.open("wb") as f:
        f.write(f"{n} {dim}\n".encode())
        for start in range(0, n, 10_000):
            m = min(10_000, n - start)
            q = rng.integers(-99_999, 1_000_000, size=(m, dim))
            neg, mag = q < 0, np.abs(q)
            cells = np.empty((m, dim, 9), dtype=np.uint8)  # ' ' + 8 characters
            cells[..., 0] = ord(" ")
            cells[..., 1] = np.where(neg, ord("-"), ord("0"))
            cells[..., 2] = np.where(neg, ord("0"), ord("."))
            for k in range(6):
                cells[..., 8 - k] = ord("0") + (mag // 10**k) % 10
            cells[..., 3] = np.where(neg, ord("."), cells[..., 3])
            tokens = np.array([f"w{i:07d}" for i in range(start, start + m)], dtype="S8")
            rows = [tokens.view(np.uint8).reshape(m, 8), cells.reshape(m, -1)]
            rows.append(np.full((m, 1), ord("\n"), np.uint8))
            f.write(np.concatenate(rows, axis=1).tobytes())


def test_synthetic_writer_is_valid_word2vec(tmp_path: Path) -> None:
    path = tmp_path / "synthetic.txt"
    write_synthetic_word2vec(path, 300, 7)
    vocab, vectors = read_static_vectors(path)
    assert len(set(map(tuple, vectors.tolist()))) == 300 and vectors.min() < 0 < vectors.max()
    assert_same(vocab, vectors, *gensim_load(path))


@pytest.mark.slow
def test_second_start_is_at_least_10x_faster(tmp_path: Path) -> None:
    path = tmp_path / "w2v-200000x300.txt"
    write_synthetic_word2vec(path, 200_000, 300)
    # A file changed less than RACY_NS before it was hashed is re-hashed at the next start;
    # a real pretrained file is older than that.
    time.sleep(cache_mod.RACY_NS / 1e9 + 0.1)
    t0 = time.perf_counter()
    first = load_static_vectors(path, cache_dir=tmp_path / "cache", progress=False)
    t1 = time.perf_counter()
    second = load_static_vectors(path, cache_dir=tmp_path / "cache", progress=False)
    t2 = time.perf_counter()
    cold, warm = t1 - t0, t2 - t1
    print(
        f"\n200000 x 300 word2vec text ({path.stat().st_size / 1e6:.0f} MB): "
        f"first load {cold:.2f} s, second load {warm * 1000:.1f} ms, ratio {cold / warm:.0f}x"
    )
    assert isinstance(second.vectors, np.memmap) and second.vectors.shape == (200_000, 300)
    assert second.vocab == first.vocab
    assert cold / warm >= 10
