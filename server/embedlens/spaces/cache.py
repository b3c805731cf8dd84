"""The converted-vector cache: float32 `.npy` + vocabulary + manifest, keyed by content hash.

Layout under the cache root (see docs/formats.md):

    vectors/<sha256>.<fmt>.v1/vectors.npy    float32, C order; later loads memory-map it
    vectors/<sha256>.<fmt>.v1/vocab.json     JSON list of tokens, id order
    vectors/<sha256>.<fmt>.v1/manifest.json  what it came from, shape, when
    sources/<sha256 of the path>.json        stat memo: (size, mtime, ctime, inode) -> sha256

An entry is written into a temporary folder and renamed into place in one step, so a reader
sees a whole entry or none, and two processes converting the same file at once both end up
with one good entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)

CACHE_VERSION = 1
# A stored hash is trusted only for a file last changed this long before it was hashed: a write
# in the same timestamp tick as the hashing could otherwise leave size and times unchanged
# (git's "racily clean" problem). Two seconds covers coarse clocks and a little NFS skew.
RACY_NS = 2_000_000_000
_STALE_TMP_S = 24 * 3600


def default_cache_dir() -> Path:
    """`$EMBEDLENS_CACHE_DIR`, else `~/.cache/embedlens`."""
    env = os.environ.get("EMBEDLENS_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "embedlens"


def sha256_file(path: Path, *, progress: bool = False) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with (
        path.open("rb") as f,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc=f"hashing {path.name}",
            disable=None if progress else True,
            leave=False,
        ) as bar,
    ):
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


class VectorCache:
    """Converted matrices under `root`; every method is safe to call from several processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def content_hash(self, paths: Sequence[Path], *, progress: bool = False) -> str:
        """sha256 of one file; for several, sha256 of their hex digests, one per line."""
        digests = [self.source_hash(p, progress=progress) for p in paths]
        if len(digests) == 1:
            return digests[0]
        return hashlib.sha256("".join(d + "\n" for d in digests).encode()).hexdigest()

    def source_hash(self, path: Path, *, progress: bool = False) -> str:
        """sha256 of a file, reusing the stored one while the file's stat has not changed."""
        path = Path(path).absolute()
        memo_path = self.root / "sources" / f"{_sha256_text(str(path))[:32]}.json"
        stat = _stat_key(path)
        try:
            memo = json.loads(memo_path.read_bytes())
            changed = max(stat["mtime_ns"], stat["ctime_ns"])
            if (
                memo["path"] == str(path)
                and memo["stat"] == stat
                and changed < memo["hashed_at_ns"] - RACY_NS
            ):
                return str(memo["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no memo, or one we cannot use: hash the file
        hashed_at = time.time_ns()
        digest = sha256_file(path, progress=progress)
        if _stat_key(path) == stat:  # unchanged while we read it
            memo = {"path": str(path), "stat": stat, "sha256": digest, "hashed_at_ns": hashed_at}
            try:
                _write_atomic(memo_path, json.dumps(memo, indent=1).encode())
            except OSError as exc:
                log.debug("cannot store the hash of %s: %s", path, exc)
        return digest

    def entry_dir(self, content_hash: str, fmt: str) -> Path:
        return self.root / "vectors" / f"{content_hash}.{fmt}.v{CACHE_VERSION}"

    def load(self, content_hash: str, fmt: str) -> tuple[list[str], np.ndarray] | None:
        """(vocab, read-only memmap) from the cache, or None when there is no usable entry."""
        entry = self.entry_dir(content_hash, fmt)
        try:
            manifest = json.loads((entry / "manifest.json").read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError) as exc:
            self._discard(entry, f"unreadable manifest ({exc})")
            return None
        try:
            if manifest["version"] != CACHE_VERSION or manifest["content_hash"] != content_hash:
                self._discard(entry, "manifest is for something else")
                return None
            vectors = np.load(entry / "vectors.npy", mmap_mode="r", allow_pickle=False)
            vocab = json.loads((entry / "vocab.json").read_bytes())
            shape = tuple(manifest["shape"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._discard(entry, f"unreadable entry ({exc})")
            return None
        if (
            vectors.dtype != np.float32
            or vectors.shape != shape
            or not vectors.flags.c_contiguous
            or not isinstance(vocab, list)
            or len(vocab) != shape[0]
        ):
            self._discard(entry, f"entry does not match its manifest {shape}")
            return None
        return vocab, vectors

    def store(
        self,
        content_hash: str,
        fmt: str,
        vocab: list[str],
        vectors: np.ndarray,
        info: dict[str, Any],
    ) -> tuple[list[str], np.ndarray]:
        """Write an entry (unless another process just did) and return it memory-mapped."""
        entry = self.entry_dir(content_hash, fmt)
        entry.parent.mkdir(parents=True, exist_ok=True)
        _sweep_stale(entry.parent)
        tmp = entry.parent / f".tmp-{entry.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            with (tmp / "vectors.npy").open("wb") as f:
                np.save(f, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            _write_synced(tmp / "vocab.json", json.dumps(vocab).encode())
            manifest = {
                "version": CACHE_VERSION,
                "content_hash": content_hash,
                "fmt": fmt,
                "shape": list(vectors.shape),
                "dtype": "float32",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **info,
            }
            _write_synced(tmp / "manifest.json", json.dumps(manifest, indent=1).encode())
            try:
                os.rename(tmp, entry)
                _sync_dir(entry.parent)
            except OSError:
                if not (entry / "manifest.json").exists():
                    raise
                log.info("%s: another process stored this entry first; using it", entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        hit = self.load(content_hash, fmt)
        if hit is None:
            raise OSError(f"the cache entry {entry} cannot be read back")
        return hit

    def _discard(self, entry: Path, why: str) -> None:
        """Move a broken entry out of the way (so a rebuild can take its name) and delete it."""
        log.warning("discarding the vector cache entry %s: %s", entry, why)
        trash = entry.parent / f".tmp-trash-{entry.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(entry, trash)
            shutil.rmtree(trash, ignore_errors=True)
        except OSError as exc:
            log.warning("cannot remove %s: %s", entry, exc)


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "inode": st.st_ino,
    }


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        _write_synced(tmp, data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _sync_dir(path: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sweep_stale(folder: Path) -> None:
    """Remove temporary folders that crashed writers left behind a day or more ago."""
    cutoff = time.time() - _STALE_TMP_S
    for tmp in folder.glob(".tmp-*"):
        try:
            if tmp.stat().st_mtime < cutoff:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass
