"""The raw files of torchvision's datasets: where they lie, whether they are whole, fetching
them (failing fast offline) and decoding them once into a uint8 cache next to them."""

from __future__ import annotations

import contextlib
import math
import os
import socket
import struct
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torchvision import datasets
from torchvision.datasets.utils import check_integrity

CACHE_FILE = "gradwatch_uint8.pt"
CACHE_VERSION = 1
#: Seconds to wait for a download server to answer before declaring ourselves offline.
CONNECT_TIMEOUT_S = 5.0
#: Socket timeout while downloading, so a stalled connection fails instead of hanging.
DOWNLOAD_TIMEOUT_S = 60.0


REPLACE_ADVICE = "Delete it and run again to download a fresh copy, or replace it with a good one."


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are missing and cannot be downloaded."""


class CorruptDatasetError(ValueError):
    """A raw file (or the decoded result) is not what the format says."""


@dataclass(frozen=True)
class VisionFiles:
    """Where a torchvision dataset keeps its raw files and how to check them.

    ``folder`` and ``archives`` are relative to the data directory; ``archives`` are the
    downloaded files torchvision can extract without the network.
    """

    name: str
    torchvision_class: type
    folder: str
    files: tuple[str, ...]
    archives: tuple[str, ...]
    urls: tuple[str, ...]
    check_file: Callable[[VisionFiles, Path], None]

    def folder_in(self, root: Path) -> Path:
        return root / self.folder


# -- format checks: each names the bad file ------------------------------------------------
def check_idx(files: VisionFiles, path: Path) -> None:
    """An IDX file of unsigned bytes whose size matches the dimensions in its header."""
    size = path.stat().st_size
    with path.open("rb") as f:
        magic = f.read(4)
        if len(magic) < 4 or magic[:3] != b"\x00\x00\x08" or not 1 <= magic[3] <= 3:
            raise CorruptDatasetError(
                f"{files.name} file {path} is not an IDX file of unsigned bytes "
                f"(header {magic!r}). {REPLACE_ADVICE}"
            )
        header = f.read(4 * magic[3])
    if len(header) < 4 * magic[3]:
        raise CorruptDatasetError(
            f"{files.name} file {path} is truncated in its header. {REPLACE_ADVICE}"
        )
    dims = struct.unpack(f">{magic[3]}I", header)
    expected = 4 + 4 * len(dims) + math.prod(dims)
    if size != expected:
        raise CorruptDatasetError(
            f"{files.name} file {path} is truncated or corrupt: its header describes "
            f"{' x '.join(map(str, dims))} bytes of data ({expected} bytes in all) but the file "
            f"has {size} bytes. {REPLACE_ADVICE}"
        )


def check_md5(files: VisionFiles, path: Path) -> None:
    """The file's MD5 is the one torchvision lists for it."""
    cls = files.torchvision_class
    md5s = dict(cls.train_list + cls.test_list)
    md5s[cls.meta["filename"]] = cls.meta["md5"]
    if not check_integrity(str(path), md5s[path.name]):
        raise CorruptDatasetError(
            f"{files.name} file {path} is corrupt or truncated (its MD5 is not the one "
            f"torchvision expects). {REPLACE_ADVICE}"
        )


def mnist_files(name: str, cls: type) -> VisionFiles:
    folder = f"{cls.__name__}/raw"  # torchvision's raw_folder, relative to root
    archives = tuple(f"{folder}/{filename}" for filename, _ in cls.resources)
    files = tuple(os.path.splitext(filename)[0] for filename, _ in cls.resources)
    return VisionFiles(name, cls, folder, files, archives, tuple(cls.mirrors), check_idx)


def cifar_files(name: str, cls: type) -> VisionFiles:
    files = (*(f for f, _ in cls.train_list + cls.test_list), cls.meta["filename"])
    return VisionFiles(name, cls, cls.base_folder, files, (cls.filename,), (cls.url,), check_md5)


MNIST = mnist_files("MNIST", datasets.MNIST)
FASHION_MNIST = mnist_files("Fashion-MNIST", datasets.FashionMNIST)
CIFAR10 = cifar_files("CIFAR-10", datasets.CIFAR10)


# -- fetching --------------------------------------------------------------------------
def _not_found(files: VisionFiles, root: Path, reason: str) -> DatasetNotFoundError:
    folder = files.folder_in(root)
    archive_dir = (root / files.archives[0]).parent
    archives = ", ".join(Path(a).name for a in files.archives)
    reason = " ".join(reason.split())  # one line, however many lines the cause had
    return DatasetNotFoundError(
        f"{files.name} is not in {folder} and cannot be downloaded ({reason}). Expected files "
        f"there: {', '.join(files.files)} (or the downloaded {archives} in {archive_dir}). "
        f"Offline? Train on the bundled digits instead (data=digits), or place the files in "
        f"{folder} (data.data_dir=... moves the data directory) and run again."
    )


def _reachable(url: str, timeout: float) -> str | None:
    """None when ``url``'s server accepts a connection within ``timeout`` seconds, else why.

    Runs in a daemon thread because name resolution ignores socket timeouts.
    """
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout).close()
            result.append(None)
        except OSError as err:
            result.append(f"{parsed.hostname}: {err}")

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else f"{parsed.hostname}: no answer within {timeout:g} s"


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def ensure_files(files: VisionFiles, root: Path, download: bool) -> None:
    """Make sure every raw file is present (downloading or extracting them if allowed) and
    whole; raise a clear error otherwise."""
    folder = files.folder_in(root)
    if any(not (folder / f).is_file() for f in files.files):
        have_archives = all((root / a).is_file() for a in files.archives)
        if not download:
            raise _not_found(files, root, "data.download=false")
        if not have_archives:
            reasons = [_reachable(url, CONNECT_TIMEOUT_S) for url in files.urls]
            if all(reasons):
                raise _not_found(files, root, f"no connection: {reasons[0]}")
        try:
            with _socket_timeout(DOWNLOAD_TIMEOUT_S):
                files.torchvision_class(str(root), train=True, download=True)
        except Exception as err:
            raise _not_found(files, root, f"{type(err).__name__}: {err}".strip()) from err
        missing = [f for f in files.files if not (folder / f).is_file()]
        if missing:
            raise _not_found(files, root, f"still missing after download: {', '.join(missing)}")
    for f in files.files:
        files.check_file(files, folder / f)


# -- decoding and the cache ------------------------------------------------------------
def _signature(files: VisionFiles, root: Path) -> dict[str, list[int]]:
    folder = files.folder_in(root)
    signature = {}
    for f in files.files:
        stat = (folder / f).stat() if (folder / f).is_file() else None
        signature[f] = [stat.st_size, stat.st_mtime_ns] if stat else [-1, -1]
    return signature


def decode(files: VisionFiles, root: Path) -> dict[str, torch.Tensor]:
    """Both splits through torchvision's own class, as ``uint8 (N, C, H, W)`` and labels."""
    out = {}
    for split, train in (("train", True), ("test", False)):
        try:
            dataset = files.torchvision_class(str(root), train=train, download=False)
        except Exception as err:
            raise CorruptDatasetError(
                f"torchvision could not read {files.name} from {files.folder_in(root)}: "
                f"{type(err).__name__}: {err}"
            ) from err
        x = torch.as_tensor(dataset.data)
        x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)  # CIFAR keeps HWC
        out[f"{split}_x"] = x.contiguous()
        out[f"{split}_y"] = torch.as_tensor(dataset.targets, dtype=torch.long)
    return out


def _read_cache(path: Path, signature: dict) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # a half-written or damaged cache is rebuilt, never trusted
        warnings.warn(
            f"Ignoring the unreadable cache {path} ({err}); decoding again.", stacklevel=3
        )
        return None
    if cache.get("version") != CACHE_VERSION or cache.get("source") != signature:
        return None
    return cache["tensors"]


def _write_cache(path: Path, signature: dict, tensors: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        torch.save({"version": CACHE_VERSION, "source": signature, "tensors": tensors}, tmp)
        os.replace(tmp, path)  # atomic: parallel jobs never read a half-written cache
    except OSError as err:
        tmp.unlink(missing_ok=True)
        warnings.warn(
            f"Could not write the cache {path} ({err}); will decode again next run.", stacklevel=3
        )


def load_cached(files: VisionFiles, root: Path, download: bool) -> dict[str, torch.Tensor]:
    """The decoded dataset: from the cache next to the raw files when it matches them,
    otherwise fetched/checked, decoded and cached."""
    cache_path = files.folder_in(root) / CACHE_FILE
    cached = _read_cache(cache_path, _signature(files, root))
    if cached is not None:
        return cached
    ensure_files(files, root, download)
    tensors = decode(files, root)
    _write_cache(cache_path, _signature(files, root), tensors)
    return tensors
