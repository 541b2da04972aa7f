"""Where a dataset's files are looked for, and how missing ones are fetched.

Search order for a dataset's files (the first directory that holds *all* of them wins):

1. ``data_dir`` handed to the task (``make_task(..., data_dir=...)`` / ``--data-dir``),
2. the environment variable ``FPT_DATA_DIR``,
3. the cache, ``$FPT_CACHE_DIR/<dataset>`` or else ``$XDG_CACHE_HOME/fpt/<dataset>`` or else
   ``~/.cache/fpt/<dataset>`` (downloads go here),
4. system directories a dataset knows about (e.g. Debian's ``/usr/share/datasets/fashion-mnist``).

In each of 1-3 the directory itself, ``<dir>/<dataset>`` and the dataset's usual sub-folders (e.g.
``cifar-10-batches-py``) are tried.

When the files are nowhere and the dataset has an official download, it is fetched into the cache:
streamed to ``<name>.part``, its size checked against ``Content-Length``, its checksum checked
(md5 or sha256 as the source publishes it), retried on a mismatch, and only then renamed into place,
so a partial or corrupt download is never used. Archives are unpacked with path checks (no absolute
paths, no ``..``, no links). Set ``FPT_OFFLINE=1`` to never try the network. When the files are
missing and cannot be fetched, one :class:`MissingDataError` names the files, the directories
searched and how to get them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

log = logging.getLogger("fpt.data")

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
# The one function that touches the network; tests replace it.
def urlopen(url: str, timeout: float = 30.0):
    return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (http(s) URLs from our own table)


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _offline() -> bool:
    return os.environ.get("FPT_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def download(remote: Remote, dest_dir: Path, retries: int = 3, backoff_s: float = 1.0) -> Path:
    """Fetch ``remote`` into ``dest_dir`` and check it; returns the final path.

    Raises ``OSError`` (incl. ``urllib.error.URLError``) when no mirror can be reached, and
    :class:`DownloadError` when data arrived but never passed the size / checksum check.
    The ``.part`` file of a failed try is always deleted.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / remote.filename
    part = dest_dir / (remote.filename + ".part")
    problems: list[str] = []
    reached_any = False
    last_network_error: BaseException | None = None
    for attempt in range(retries):
        for url in remote.urls:
            try:
                with urlopen(url) as response:
                    reached_any = True
                    expected = response.headers.get("Content-Length") if hasattr(response, "headers") else None
                    size = 0
                    with open(part, "wb") as out:
                        for chunk in iter(lambda: response.read(1 << 20), b""):
                            out.write(chunk)
                            size += len(chunk)
                if expected is not None and int(expected) != size:
                    raise DownloadError(f"{url}: got {size} bytes, Content-Length says {expected} (interrupted?)")
                if remote.sha256 and file_digest(part, "sha256") != remote.sha256:
                    raise DownloadError(f"{url}: sha256 {file_digest(part, 'sha256')} != published {remote.sha256}")
                if remote.md5 and file_digest(part, "md5") != remote.md5:
                    raise DownloadError(f"{url}: md5 {file_digest(part, 'md5')} != published {remote.md5}")
                os.replace(part, final)
                return final
            except DownloadError as e:
                problems.append(str(e))
                log.warning("download check failed, retrying: %s", e)
            except (OSError, urllib.error.URLError, TimeoutError) as e:
                last_network_error = e
                problems.append(f"{url}: {e}")
                log.warning("download failed: %s: %s", url, e)
            finally:
                if part.exists():
                    part.unlink()
        if not reached_any:
            break  # nothing answered: offline, do not hammer
        time.sleep(backoff_s * (attempt + 1))
    if not reached_any and last_network_error is not None:
        raise OSError(f"could not reach {', '.join(remote.urls)}: {last_network_error}")
    raise DownloadError(f"{remote.filename}: every try failed (checksum, size or connection): " + "; ".join(problems[-3:]))


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


def _matches(path: Path, remote: Remote) -> bool:
    if remote.sha256:
        return file_digest(path, "sha256") == remote.sha256
    if remote.md5:
        return file_digest(path, "md5") == remote.md5
    return False


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
        raise DownloadError(f"{archive.name}: archive is corrupt or incomplete ({e}); deleted, run again to retry")
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
            have = dest / remote.filename
            if not remote.extract and have.is_file() and _matches(have, remote):
                continue  # fetched and checked by an earlier, interrupted run
            log.info("%s: downloading %s into %s", task, remote.filename, dest)
            path = download(remote, dest)
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
