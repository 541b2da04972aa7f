"""Where a dataset's files are looked for, and how missing ones are fetched.

Search order for a dataset's files (the first directory that holds *all* of them wins):

1. ``data_dir`` handed to the task (``make_task(..., data_dir=...)`` / ``--data-dir``),
2. the environment variable ``FPT_DATA_DIR``,
3. the cache, ``$FPT_CACHE_DIR/<dataset>`` or else ``$XDG_CACHE_HOME/fpt/<dataset>`` or else
   ``~/.cache/fpt/<dataset>`` (downloads go here),
4. system directories a dataset knows about (e.g. Debian's ``/usr/share/datasets/fashion-mnist``).

In each of 1-3 the directory itself, ``<dir>/<dataset>`` and the dataset's usual sub-folders (e.g.
``cifar-10-batches-py``) are tried.

When the files are nowhere and the dataset has an official download, it is fetched into the cache
by ``pooch``: into a temporary file beside the target, its checksum checked (md5 or sha256 as the
source publishes it), retried on a mismatch, and only then moved into place, so a partial or corrupt
download is never used; a file already there is used only if its checksum matches. fpt adds what
pooch does not do: several mirrors per file (:func:`download` tries each in turn), the size check
against ``Content-Length`` (in :func:`fetch_url`, the one function that touches the network),
archives unpacked with path checks (no absolute paths, no ``..``, no links; pooch's ``Untar``
checks nothing before Python 3.12) and checked by the dataset before use. Set ``FPT_OFFLINE=1``
to never try the network. When the files are missing and cannot be fetched, one
:class:`MissingDataError` names the files, the directories searched and how to get them.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pooch

log = logging.getLogger("fpt.data")
pooch.get_logger().setLevel(logging.WARNING)  # pooch prints every download and hash at INFO on stderr

SYSTEM_DATA_ROOT = Path("/usr/share/datasets")


class MissingDataError(FileNotFoundError):
    """A dataset's files are not on disk and could not be fetched."""


class DownloadError(RuntimeError):
    """A download finished but failed its size or checksum check on every try."""


@dataclass(frozen=True)
class Remote:
    """One file of an official source: its name, mirror URLs and published checksum."""

    filename: str
    urls: tuple[str, ...]
    md5: str | None = None
    sha256: str | None = None
    extract: bool = False  # a .tar.gz / .tgz to unpack into the cache directory


@dataclass(frozen=True)
class Dataset:
    """What files a dataset needs and where they come from."""

    key: str  # cache folder name, e.g. "cifar10"
    files: tuple[tuple[str, ...], ...]  # each entry: accepted names of one required file (first is canonical)
    subdirs: tuple[str, ...] = ("",)  # sub-folders of a search directory that may hold the files
    system_dirs: tuple[str, ...] = ()  # extra directories, searched last
    remotes: tuple[Remote, ...] = ()  # official download (empty: no automatic download)
    how_to_get: str = ""  # instructions printed when the files are missing
    verify: Callable[[Path], None] | None = field(default=None, compare=False)  # check after download


# -- directories -------------------------------------------------------------------------------
def cache_root() -> Path:
    if os.environ.get("FPT_CACHE_DIR"):
        return Path(os.environ["FPT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fpt"


def cache_dir(key: str) -> Path:
    return cache_root() / key


def search_roots(dataset: Dataset, data_dir: str | os.PathLike | None) -> list[Path]:
    """The base directories searched, in order (before sub-folders are appended)."""
    roots: list[Path] = []
    for base in (data_dir, os.environ.get("FPT_DATA_DIR") or None):
        if base:
            base = Path(base).expanduser()
            roots += [base, base / dataset.key]
    roots.append(cache_dir(dataset.key))
    roots += [Path(d) for d in dataset.system_dirs]
    seen, out = set(), []
    for r in roots:
        if str(r) not in seen:
            seen.add(str(r))
            out.append(r)
    return out


def candidate_dirs(dataset: Dataset, data_dir) -> list[Path]:
    out, seen = [], set()
    for root in search_roots(dataset, data_dir):
        for sub in dataset.subdirs:
            d = root / sub if sub else root
            if str(d) not in seen:
                seen.add(str(d))
                out.append(d)
    return out


def _find_in(directory: Path, dataset: Dataset) -> dict[str, Path] | None:
    if not directory.is_dir():
        return None
    found = {}
    for names in dataset.files:
        hit = next((directory / n for n in names if (directory / n).is_file()), None)
        if hit is None:
            return None
        found[names[0]] = hit
    return found


def find_files(dataset: Dataset, data_dir=None) -> dict[str, Path] | None:
    """``{canonical name: path}`` from the first directory that holds every file, or None."""
    for d in candidate_dirs(dataset, data_dir):
        found = _find_in(d, dataset)
        if found is not None:
            return found
    return None


# -- downloading -------------------------------------------------------------------------------
def urlopen(url: str, timeout: float = 30.0):
    """The one function that touches the network; tests replace it."""
    return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (http(s) URLs from our own table)


class IncompleteDownload(ValueError):
    """Fewer bytes arrived than the server announced (a ValueError, so pooch retries it like a bad checksum)."""


def fetch_url(url: str, output_file, pooch_instance=None) -> None:
    """A pooch downloader: stream ``url`` into ``output_file`` and check the size against ``Content-Length``."""
    with urlopen(url) as response, open(output_file, "wb") as out:
        expected = response.headers.get("Content-Length") if hasattr(response, "headers") else None
        size = 0
        for chunk in iter(lambda: response.read(1 << 20), b""):
            out.write(chunk)
            size += len(chunk)
    if expected is not None and int(expected) != size:
        raise IncompleteDownload(f"{url}: got {size} bytes, Content-Length says {expected} (interrupted?)")


def _known_hash(remote: Remote) -> str | None:
    return f"sha256:{remote.sha256}" if remote.sha256 else (f"md5:{remote.md5}" if remote.md5 else None)


_POOCH_MISMATCH = re.compile(r"(\w+) hash of downloaded file .* expected (?:\w+:)?(\w+) but got (\w+)")


def _check_failed(url: str, err: ValueError) -> str:
    """pooch's checksum message in fpt's words (``URL: md5 GOT != published EXPECTED``)."""
    match = _POOCH_MISMATCH.search(str(err))
    if match:
        algorithm, expected, got = match.groups()
        return f"{url}: {algorithm.lower()} {got} != published {expected}"
    return str(err) if str(err).startswith(url) else f"{url}: {err}"


def _offline() -> bool:
    return os.environ.get("FPT_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def download(remote: Remote, dest_dir: Path, retries: int = 3) -> Path:
    """Fetch ``remote`` into ``dest_dir`` with pooch (checksum, retries, temporary file), mirror after mirror.

    Raises ``OSError`` (incl. ``urllib.error.URLError``) when no mirror can be reached, and
    :class:`DownloadError` when data arrived but never passed the size / checksum check.
    """
    problems: list[str] = []
    network_errors: list[str] = []
    for url in remote.urls:
        fetcher = pooch.create(path=dest_dir, base_url="", registry={remote.filename: _known_hash(remote)},
                               urls={remote.filename: url}, retry_if_failed=retries - 1, allow_updates=True)
        try:
            return Path(fetcher.fetch(remote.filename, downloader=fetch_url))
        except ValueError as err:  # a bad checksum or size on every try at this mirror
            problems.append(_check_failed(url, err))
            log.warning("download check failed: %s", problems[-1])
        except (OSError, urllib.error.URLError, TimeoutError) as err:  # this mirror cannot be reached
            network_errors.append(f"{url}: {err}")
            log.warning("download failed: %s: %s", url, err)
    if not problems:
        raise OSError(f"could not reach {', '.join(remote.urls)}: {network_errors[-1].split(': ', 1)[1]}")
    raise DownloadError(f"{remote.filename}: every try failed (checksum, size or connection): "
                        + "; ".join((problems + network_errors)[-3:]))


def safe_extract(archive: Path, dest: Path) -> None:
    """Unpack a tar archive, refusing absolute paths, ``..``, links and special files."""
    dest = dest.resolve()
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()  # reads the whole stream: a truncated / corrupt gzip fails here
        for m in members:
            target = (dest / m.name).resolve()
            if m.name.startswith(("/", "\\")) or ".." in Path(m.name).parts or not str(target).startswith(str(dest)):
                raise DownloadError(f"{archive.name}: refusing unsafe path {m.name!r} in archive")
            if not (m.isfile() or m.isdir()):
                raise DownloadError(f"{archive.name}: refusing non-regular member {m.name!r} in archive")
        for m in members:
            target = dest / m.name
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            tmp = target.with_name(target.name + ".part")
            with src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)
            os.replace(tmp, target)


def _unpack_checked(archive: Path, dest: Path, dataset: Dataset) -> None:
    """Unpack into a scratch folder, run the dataset's check, and only then move the files in place."""
    scratch = dest / f".{archive.name}.unpacking"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        safe_extract(archive, scratch)
        if dataset.verify is not None:
            dataset.verify(scratch)
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        shutil.rmtree(scratch, ignore_errors=True)
        archive.unlink(missing_ok=True)
        raise DownloadError(f"{archive.name}: archive is corrupt or incomplete ({e}); deleted, run again to retry") from None
    for item in scratch.iterdir():
        target = dest / item.name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        os.replace(item, target)
    shutil.rmtree(scratch, ignore_errors=True)
    archive.unlink(missing_ok=True)  # keep only the unpacked files


def missing_message(dataset: Dataset, data_dir, task: str, reason: str | None = None) -> str:
    names = ", ".join(" or ".join(n) if len(n) > 1 else n[0] for n in dataset.files)
    dirs = "\n".join(f"  - {d}" for d in candidate_dirs(dataset, data_dir))
    msg = (
        f"{task}: data files not found: {names}.\n"
        f"Searched these directories (the first one holding all files is used):\n{dirs}\n"
        f"Put the files in one of them, e.g. pass --data-dir DIR / make_task(..., data_dir=DIR), "
        f"set FPT_DATA_DIR=DIR, or place them in {cache_dir(dataset.key)}.\n"
    )
    if dataset.how_to_get:
        msg += f"How to get them: {dataset.how_to_get}\n"
    if reason:
        msg += f"Automatic download did not work: {reason}\n"
    return msg.rstrip()


def ensure_files(dataset: Dataset, data_dir=None, task: str | None = None, download_ok: bool = True) -> dict[str, Path]:
    """Find the dataset's files, downloading them into the cache when missing and possible."""
    task = task or dataset.key
    found = find_files(dataset, data_dir)
    if found is not None:
        log.info("%s: using files in %s", task, next(iter(found.values())).parent)
        return found
    if not dataset.remotes:
        raise MissingDataError(missing_message(dataset, data_dir, task))
    if _offline() or not download_ok:
        why = "FPT_OFFLINE is set" if _offline() else "downloads are switched off (download=false)"
        raise MissingDataError(missing_message(dataset, data_dir, task, why))
    dest = cache_dir(dataset.key)
    try:
        for remote in dataset.remotes:
            log.info("%s: fetching %s into %s", task, remote.filename, dest)
            path = download(remote, dest)  # a file fetched and checked by an earlier, interrupted run is kept
            if remote.extract:
                _unpack_checked(path, dest, dataset)
    except DownloadError as e:
        raise MissingDataError(missing_message(dataset, data_dir, task, str(e))) from None
    except OSError as e:
        raise MissingDataError(missing_message(dataset, data_dir, task, f"{e} (offline?)")) from None
    found = find_files(dataset, data_dir)
    if found is None:
        raise MissingDataError(missing_message(dataset, data_dir, task, "downloaded, but the expected files were not in it"))
    return found


def alternatives(name: str, suffixes: Sequence[str] = ("", ".gz")) -> tuple[str, ...]:
    return tuple(name + s for s in suffixes)
