"""Readers for pretrained static-vector files: word2vec, GloVe, fastText .vec, .npy, safetensors.

Every reader returns the same thing, a vocabulary (id -> token, in file order) and a float32
matrix, and `load_static_vectors` puts a float32 `.npy` cache in front of them (see cache.py), so
only the first start pays for parsing. See docs/formats.md for the rules each format follows.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import struct
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np
from tqdm import tqdm

from .cache import VectorCache, default_cache_dir

log = logging.getLogger(__name__)

FORMATS = ("word2vec-text", "word2vec-bin", "glove", "fasttext-vec", "npy", "safetensors")
SAFETENSORS_NAMES = ("embeddings", "weight", "vectors", "embedding", "word_embeddings", "wte")

_BLOCK = 1 << 24  # bytes read per step; text is parsed a block of whole lines at a time
_FASTTEXT_MAGIC = b"\xba\x16\x4f\x2f"  # 793712314 little-endian: a fastText .bin model


@dataclass(frozen=True)
class StaticVectors:
    """A vocabulary and its matrix, read from one pretrained file (plus its vocabulary file)."""

    vocab: list[str]  # id -> token, in file order
    vectors: np.ndarray  # (n, dim) float32, C-contiguous; may be a read-only np.memmap
    source: str  # path it came from
    fmt: str  # one of FORMATS
    content_hash: str  # sha256 of the source file(s) (hex), used as a cache key


class VectorFileError(ValueError):
    """A vector file that cannot be read as its format: says where and what was expected."""

    def __init__(
        self, path: str | Path, reason: str, *, line: int | None = None, offset: int | None = None
    ) -> None:
        self.path, self.reason, self.line, self.offset = str(path), reason, line, offset
        where = self.path + (f", line {line}" if line is not None else "")
        where += f", byte {offset}" if offset is not None else ""
        super().__init__(f"{where}: {reason}")

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild_error, (self.path, self.reason, self.line, self.offset)


def _rebuild_error(path: str, reason: str, line: int | None, offset: int | None) -> VectorFileError:
    return VectorFileError(path, reason, line=line, offset=offset)


def load_static_vectors(
    path: str | Path,
    fmt: str | None = None,
    *,
    cache_dir: Path | None = None,
    vocab_path: Path | None = None,
    progress: bool = True,
) -> StaticVectors:
    """Read a static-vector file, through the `.npy` cache keyed by the file's content hash.

    The first load parses the file and writes the cache; later loads memory-map the cache.
    `progress` shows tqdm bars on stderr when it is a terminal (never in logs or CI).
    Raises VectorFileError for a file that does not match its format, FileNotFoundError for a
    missing one.
    """
    path = Path(path).expanduser().absolute()
    if not path.is_file():
        raise FileNotFoundError(f"vector file {path} does not exist")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown vector format {fmt!r}; expected one of {', '.join(FORMATS)}")
    sources = [path]
    if fmt in ("npy", "safetensors"):
        vocab_path = _find_vocab(path, vocab_path)
        sources.append(vocab_path)
    cache = VectorCache(default_cache_dir() if cache_dir is None else Path(cache_dir))
    content_hash = cache.content_hash(sources, progress=progress)
    hit = cache.load(content_hash, fmt)
    if hit is not None:
        vocab, vectors = hit
        log.info("%s: %d x %d from the cache", path, *vectors.shape)
    else:
        vocab, vectors, dropped = _read(path, fmt, vocab_path, progress)
        info = {"source": str(path), "sources": [str(p) for p in sources], "dropped": dropped}
        try:
            vocab, vectors = cache.store(content_hash, fmt, vocab, vectors, info)
        except OSError as exc:  # a read-only or full cache costs speed, never correctness
            log.warning(
                "cannot write the vector cache under %s (%s); using memory", cache.root, exc
            )
    return StaticVectors(vocab, vectors, str(path), fmt, content_hash)


def read_static_vectors(
    path: str | Path,
    fmt: str | None = None,
    *,
    vocab_path: Path | None = None,
    progress: bool = False,
) -> tuple[list[str], np.ndarray]:
    """Parse a vector file without any cache: (vocab, float32 matrix), duplicates dropped."""
    path = Path(path)
    vocab, vectors, _ = _read(path, fmt or detect_format(path), vocab_path, progress)
    return vocab, vectors


def detect_format(path: Path) -> str:
    """The format of a vector file, from its extension and its first bytes."""
    path = Path(path)
    with _open(path) as (f, _):
        head = f.read(1 << 20)
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    ext = suffixes[-1] if suffixes else ""
    if ext == ".npy" or head.startswith(b"\x93NUMPY"):
        return "npy"
    if ext == ".safetensors" or _looks_like_safetensors(head):
        return "safetensors"
    if head.startswith(_FASTTEXT_MAGIC):
        raise VectorFileError(path, "a fastText .bin model is not supported; use its .vec file")
    if not head.strip():
        raise VectorFileError(path, "the file is empty", line=1)
    first, _, rest = head.partition(b"\n")
    header = _parse_header(first)
    if header is None:
        if _glove_dim(first) > 0:
            return "glove"
        raise VectorFileError(
            path,
            "cannot tell the format: expected a 'count dim' header or 'token v1 v2 ...'",
            line=1,
        )
    # Text if the first row reads as 'token v1 ... v_dim', or if there is no row at all. A row
    # with the wrong count of numbers is text too (so the text reader can name the line),
    # except in a .bin file, where float bytes could look like that by chance.
    second = rest.partition(b"\n")[0].split()
    numeric = len(second) > 1 and all(map(_is_number, second[1:]))
    if not second or (numeric and (len(second) == header[1] + 1 or ext != ".bin")):
        return "fasttext-vec" if ext == ".vec" else "word2vec-text"
    return "word2vec-bin"


def read_vocab_file(path: Path) -> list[str]:
    """One token per line, UTF-8; a final newline and CRLF line ends are allowed."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise VectorFileError(path, "expected UTF-8 text", line=line) from exc
    lines = text.removeprefix("\ufeff").split("\n")
    if lines[-1] == "":
        lines.pop()
    return [s[:-1] if s.endswith("\r") else s for s in lines]


# ---- reading -------------------------------------------------------------------------------


def _read(
    path: Path, fmt: str, vocab_path: Path | None, progress: bool
) -> tuple[list[str], np.ndarray, int]:
    """Parse `path` as `fmt`: (vocab, vectors, number of duplicate rows dropped)."""
    with (
        _open(path) as (f, tick),
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc=f"reading {path.name}",
            disable=None if progress else True,
            leave=False,
        ) as bar,
    ):

        def step() -> None:
            bar.update(max(0, tick() - bar.n))

        if fmt in ("npy", "safetensors"):
            vectors = _read_npy(path) if fmt == "npy" else _read_safetensors(path)
            vocab_path = _find_vocab(path, vocab_path)
            vocab = read_vocab_file(vocab_path)
            if len(vocab) != len(vectors):
                raise VectorFileError(
                    vocab_path,
                    f"expected {len(vectors)} tokens (one per row of {path.name}), "
                    f"found {len(vocab)}",
                )
            _check_finite(path, vectors, first_line=None)
        elif fmt == "word2vec-bin":
            raw, vectors = _read_word2vec_bin(path, f, step)
            vocab = _decode_tokens(path, raw)
        else:
            raw, vectors = _read_text(path, f, step, glove=fmt == "glove")
            vocab = _decode_tokens(path, raw)
        step()
    if len(vectors) == 0:
        raise VectorFileError(path, "the file holds no vectors")
    return _drop_duplicates(path, vocab, vectors)


def _read_header(path: Path, f: BinaryIO) -> tuple[int, int]:
    line = f.readline(4096)
    header = _parse_header(line)
    if header is None or header[0] < 1 or header[1] < 1:
        raise VectorFileError(
            path,
            f"expected a header 'count dim' of two positive integers, got {line[:80]!r}",
            line=1,
        )
    return header


def _read_text(
    path: Path, f: BinaryIO, step: Callable[[], None], *, glove: bool
) -> tuple[list[bytes], np.ndarray]:
    """word2vec text / fastText .vec (header 'n dim') or GloVe (no header; dim from line 1)."""
    if glove:
        n, exact = _count_lines(f), False  # an upper bound: blank lines are skipped
        f.seek(0)
        dim, lineno = _glove_dim(f.readline()), 1
        f.seek(0)
        if dim < 1:
            raise VectorFileError(path, "expected 'token v1 v2 ...' on the first line", line=1)
    else:
        (n, dim), exact, lineno = _read_header(path, f), True, 2
    out = np.empty((n, dim), dtype=np.float32)
    tokens: list[bytes] = []
    for block in _line_blocks(f, step):
        toks, values, row_lines = _parse_block(path, block, dim, lineno, glove)
        if len(tokens) + len(toks) > n:
            line = row_lines[n - len(tokens)]
            raise VectorFileError(path, f"more rows than the header's count {n}", line=line)
        out[len(tokens) : len(tokens) + len(toks)] = values
        tokens += toks
        lineno += block.count(b"\n")
    if exact and len(tokens) < n:
        raise VectorFileError(
            path, f"the file ends after {len(tokens)} rows; the header announced {n}", line=lineno
        )
    return tokens, out[: len(tokens)]


def _parse_block(
    path: Path, block: bytes, dim: int, lineno: int, glove: bool
) -> tuple[list[bytes], np.ndarray, Sequence[int]]:
    """Whole lines, the first being line `lineno` -> (tokens, values, line of each row)."""
    # Fast path: blank out the tokens and let numpy's C parser read the numbers; any surprise
    # (blank line, wrong count, bad number, token with spaces) sends the block to _parse_lines.
    masked = bytearray(block)
    toks: list[bytes] = []
    start = 0
    for end in np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10).tolist():
        tok_end = block.find(b" ", start, end)
        tok_end = end if tok_end < 0 else tok_end
        toks.append(block[start:tok_end])
        masked[start:tok_end] = b" " * (tok_end - start)
        start = end + 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
            values = np.loadtxt(
                io.StringIO(masked.decode("latin-1")),
                dtype=np.float32,
                comments=None,
                quotechar=None,
                ndmin=2,
            )
    except ValueError:
        values = np.empty((0, 0), np.float32)
    if values.shape != (len(toks), dim):
        return _parse_lines(path, block, dim, lineno, glove)
    _check_finite(path, values, first_line=lineno)
    return toks, values, range(lineno, lineno + len(toks))


def _parse_lines(
    path: Path, block: bytes, dim: int, lineno: int, glove: bool
) -> tuple[list[bytes], np.ndarray, list[int]]:
    """The slow, exact path: one line at a time, with an error that names the line."""
    tokens: list[bytes] = []
    rows: list[list[float]] = []
    row_lines: list[int] = []
    for i, line in enumerate(block.split(b"\n")[:-1]):
        text = line.rstrip()
        if not text:
            continue  # blank lines carry nothing
        token, _, rest = text.partition(b" ")
        fields = rest.split()
        if glove and len(fields) > dim and not all(map(_is_number, fields[: len(fields) - dim])):
            # GloVe 840B has tokens with spaces ('. . .'): the last dim fields are the numbers.
            token, *fields = text.rsplit(None, dim)
        if len(fields) != dim:
            raise VectorFileError(
                path,
                f"expected {dim} numbers after the token, found {len(fields)}",
                line=lineno + i,
            )
        try:
            row = [float(x) for x in fields]
        except ValueError:
            bad = next(x for x in fields if not _is_number(x))
            raise VectorFileError(
                path,
                f"expected a number, got {bad[:40].decode('utf-8', 'replace')!r}",
                line=lineno + i,
            ) from None
        if not all(map(math.isfinite, row)):
            raise VectorFileError(path, "NaN or infinity; expected finite numbers", line=lineno + i)
        rows.append(row)
        tokens.append(token)
        row_lines.append(lineno + i)
    return tokens, np.array(rows, dtype=np.float32).reshape(len(rows), dim), row_lines


def _read_word2vec_bin(
    path: Path, f: BinaryIO, step: Callable[[], None]
) -> tuple[list[bytes], np.ndarray]:
    """Header line, then per row: token, b' ', dim little-endian float32 (like gensim)."""
    n, dim = _read_header(path, f)
    nbytes = 4 * dim
    out = np.empty((n, dim), dtype=np.float32)
    tokens: list[bytes] = []
    buf, pos, consumed = b"", 0, f.tell()  # consumed: file offset of buf[0]
    while len(tokens) < n:
        space = buf.find(b" ", pos)
        if space == -1 or len(buf) - space - 1 < nbytes:
            more = f.read(_BLOCK)
            step()
            if not more:
                raise VectorFileError(
                    path,
                    f"the file ends inside row {len(tokens) + 1} of {n} (expected a token, "
                    f"a space and {nbytes} bytes of float32)",
                    offset=consumed + pos,
                )
            consumed += pos
            buf, pos = buf[pos:] + more, 0
            continue
        token = buf[pos:space].lstrip(b"\n")  # some writers end each row with a newline
        if b"\n" in token or len(token) > 10_000:
            raise VectorFileError(
                path,
                f"row {len(tokens) + 1} has no sensible token; is the header dim {dim} right?",
                offset=consumed + pos,
            )
        out[len(tokens)] = np.frombuffer(buf, dtype="<f4", count=dim, offset=space + 1)
        tokens.append(token)
        pos = space + 1 + nbytes
    if (buf[pos:] + f.read(1 << 16)).strip():
        raise VectorFileError(
            path,
            f"unexpected data after the {n} rows the header announced",
            offset=consumed + pos,
        )
    _check_finite(path, out, first_line=None)
    return tokens, out


def _read_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise VectorFileError(path, f"expected a .npy array ({exc})") from exc
    if arr.ndim != 2 or arr.dtype.kind not in "fiu":
        raise VectorFileError(path, f"expected a 2-D numeric array, got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _read_safetensors(path: Path) -> np.ndarray:
    """One 2-D tensor: the only one in the file, or the first of SAFETENSORS_NAMES present."""
    with path.open("rb") as f:
        try:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        except (struct.error, ValueError) as exc:
            raise VectorFileError(path, f"expected a safetensors header ({exc})") from exc
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        matrices = [k for k, v in tensors.items() if len(v["shape"]) == 2]
        name = next((k for k in SAFETENSORS_NAMES if k in matrices), None)
        if name is None and len(matrices) == 1:
            name = matrices[0]
        if name is None:
            raise VectorFileError(
                path,
                f"expected one 2-D tensor or one named {'/'.join(SAFETENSORS_NAMES)}; "
                f"found {sorted(tensors)}",
            )
        spec = tensors[name]
        dtypes = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "BF16": "<u2"}
        if spec["dtype"] not in dtypes:
            raise VectorFileError(path, f"tensor {name!r}: unsupported dtype {spec['dtype']}")
        start, end = spec["data_offsets"]
        f.seek(8 + size + start)
        data = f.read(end - start)
    rows, dim = spec["shape"]
    if len(data) != rows * dim * int(dtypes[spec["dtype"]][-1]):
        raise VectorFileError(path, f"tensor {name!r} is truncated", offset=8 + size + start)
    arr = np.frombuffer(data, dtype=dtypes[spec["dtype"]]).reshape(rows, dim)
    if spec["dtype"] == "BF16":  # bfloat16 is the top half of a float32
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return np.ascontiguousarray(arr, dtype=np.float32)


# ---- helpers -------------------------------------------------------------------------------


@contextmanager
def _open(path: Path) -> Iterator[tuple[BinaryIO, Callable[[], int]]]:
    """(file, tick): the file for binary reading, through gzip when it is gzipped; tick() is
    how far into the file on disk we are, for the progress bar."""
    with path.open("rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        if not gzipped:
            yield raw, raw.tell
            return
        with gzip.GzipFile(fileobj=raw) as unzipped:
            yield cast(BinaryIO, unzipped), raw.tell


def _line_blocks(f: BinaryIO, step: Callable[[], None]) -> Iterator[bytes]:
    """Blocks of whole lines, each ending in a newline, about _BLOCK bytes each."""
    rest = b""
    while data := f.read(_BLOCK):
        step()
        data = rest + data
        cut = data.rfind(b"\n") + 1
        rest = data[cut:]
        if cut:
            yield data[:cut]
    if rest:
        yield rest + b"\n"


def _count_lines(f: BinaryIO) -> int:
    count, last = 0, b"\n"
    while data := f.read(_BLOCK):
        count, last = count + data.count(b"\n"), data[-1:]
    return count + (last != b"\n")


def _parse_header(line: bytes) -> tuple[int, int] | None:
    fields = line.removeprefix(b"\xef\xbb\xbf").split()
    if len(fields) == 2 and all(x.isdigit() for x in fields):
        return int(fields[0]), int(fields[1])
    return None


def _glove_dim(line: bytes) -> int:
    """The number of values on a GloVe line: trailing numeric fields after the token."""
    fields = line.split()
    dim = 0
    while dim < len(fields) - 1 and _is_number(fields[-1 - dim]):
        dim += 1
    return dim


def _is_number(field: bytes) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _looks_like_safetensors(head: bytes) -> bool:
    return (
        len(head) > 9 and head[8:10] in (b'{"', b"{ ") and int.from_bytes(head[:8], "little") < 1e8
    )


def _check_finite(path: Path, values: np.ndarray, first_line: int | None) -> None:
    # NaN or Inf in E would poison every search that touches it; refuse the file instead.
    for start in range(0, len(values), 65536):
        bad = ~np.isfinite(values[start : start + 65536]).all(axis=1)
        if bad.any():
            row = start + int(np.argmax(bad))
            line = None if first_line is None else first_line + row
            raise VectorFileError(
                path, f"row {row + 1} holds NaN or infinity; expected finite numbers", line=line
            )


def _decode_tokens(path: Path, raw: list[bytes]) -> list[str]:
    """UTF-8 tokens; invalid bytes (word2vec.c cuts long words mid-character) become U+FFFD."""
    vocab: list[str] = []
    bad = 0
    for token in raw:
        try:
            vocab.append(token.decode("utf-8"))
        except UnicodeDecodeError:
            vocab.append(token.decode("utf-8", errors="replace"))
            bad += 1
    if bad:
        log.warning("%s: %d tokens were not valid UTF-8; bad bytes became U+FFFD", path, bad)
    return vocab


def _drop_duplicates(
    path: Path, vocab: list[str], vectors: np.ndarray
) -> tuple[list[str], np.ndarray, int]:
    """Keep the first row of each token, as gensim does; log how many were dropped."""
    if len(set(vocab)) == len(vocab):
        return vocab, vectors, 0
    first: dict[str, int] = {}
    for i, token in enumerate(vocab):
        first.setdefault(token, i)
    dropped = len(vocab) - len(first)
    log.warning("%s: %d duplicate tokens; kept the first row of each", path, dropped)
    keep = np.fromiter(first.values(), dtype=np.int64, count=len(first))
    return list(first), np.ascontiguousarray(vectors[keep]), dropped


def _find_vocab(path: Path, vocab_path: Path | None) -> Path:
    if vocab_path is not None:
        return Path(vocab_path).expanduser().absolute()
    stem = path.name.removesuffix(path.suffix)
    candidates = [path.with_name(f"{stem}.vocab"), path.with_name(f"{stem}.vocab.txt")]
    candidates.append(path.with_name("vocab.txt"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    names = ", ".join(c.name for c in candidates)
    raise VectorFileError(path, f"no vocabulary file: pass vocab_path or add one of {names}")
