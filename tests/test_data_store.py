"""Finding data files, downloads (with a fake network), and the offline-missing-files message."""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.error

import numpy as np
import pytest

from fpt.data import sources, store
from fpt.data.fixtures import write_mnist_like
from fpt.data.store import Dataset, DownloadError, MissingDataError, Remote, ensure_files, safe_extract
from fpt.tasks import make_task


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    def refuse(*a, **k):
        raise AssertionError("tests must not touch the network")

    monkeypatch.setattr(store, "urlopen", refuse)
    monkeypatch.setenv("FPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FPT_DATA_DIR", raising=False)
    monkeypatch.delenv("FPT_OFFLINE", raising=False)
    monkeypatch.setattr("time.sleep", lambda s: None)  # pooch waits between retries


class _Response(io.BytesIO):
    def __init__(self, data: bytes, length: int | None = None):
        super().__init__(data)
        self.headers = {} if length is None else {"Content-Length": str(length)}


def _offline(*a, **k):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def _serve(monkeypatch, responses):
    """Fake network: each call returns the next (bytes, content_length) of ``responses``."""
    calls = []

    def fake(url, timeout=30.0):
        calls.append(url)
        data, length = responses[min(len(calls) - 1, len(responses) - 1)]
        return _Response(data, length)

    monkeypatch.setattr(store, "urlopen", fake)
    return calls


def _toy(tmp_path, payload: bytes, **kw) -> Dataset:
    return Dataset(key="toy", files=(("toy.bin",),),
                   remotes=(Remote("toy.bin", ("https://example.org/a/toy.bin", "https://example.org/b/toy.bin"),
                                   md5=hashlib.md5(payload).hexdigest()),), how_to_get="ask a friend", **kw)


# -- the message when offline ------------------------------------------------------------------
def test_offline_missing_message_names_files_dirs_and_how(monkeypatch, tmp_path):
    monkeypatch.setattr(store, "urlopen", _offline)
    with pytest.raises(MissingDataError) as info:
        make_task("mnist", data_dir=str(tmp_path / "mine")).train()
    msg = str(info.value)
    assert msg.count("mnist: data files not found") == 1
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert name in msg
    assert str(tmp_path / "mine") in msg and str(tmp_path / "cache" / "mnist") in msg
    assert "FPT_DATA_DIR" in msg and "--data-dir" in msg
    assert "yann.lecun.com" in msg  # how to fetch them
    assert "Temporary failure in name resolution" in msg and "offline?" in msg
    assert not any((tmp_path / "cache").rglob("*.part"))


def test_fpt_offline_skips_network(monkeypatch, tmp_path):
    monkeypatch.setenv("FPT_OFFLINE", "1")
    with pytest.raises(MissingDataError, match="FPT_OFFLINE is set"):
        ensure_files(sources.CIFAR10, None, task="cifar10")


def test_listops_missing_suggests_generator():
    with pytest.raises(MissingDataError, match=r"basic_train.tsv.*\n(.*\n)*.*source=generated"):
        make_task("listops").train()


# -- search order ------------------------------------------------------------------------------
def test_search_order(monkeypatch, tmp_path):
    for d in ("explicit", "env/mnist", "cache/mnist"):
        write_mnist_like(tmp_path / d, n_train=2, n_test=1)
    monkeypatch.setenv("FPT_DATA_DIR", str(tmp_path / "env"))
    assert ensure_files(sources.MNIST, tmp_path / "explicit")["train-images-idx3-ubyte"].parent == tmp_path / "explicit"
    assert ensure_files(sources.MNIST, None)["train-images-idx3-ubyte"].parent == tmp_path / "env" / "mnist"
    monkeypatch.delenv("FPT_DATA_DIR")
    assert ensure_files(sources.MNIST, None)["train-images-idx3-ubyte"].parent == tmp_path / "cache" / "mnist"


def test_incomplete_directory_is_not_used(tmp_path):
    write_mnist_like(tmp_path / "d", n_train=2, n_test=1)
    (tmp_path / "d" / "t10k-labels-idx1-ubyte.gz").unlink()
    no_download = Dataset(**{**sources.MNIST.__dict__, "remotes": ()})
    with pytest.raises(MissingDataError, match="t10k-labels-idx1-ubyte"):
        ensure_files(no_download, tmp_path / "d")


# -- downloads ---------------------------------------------------------------------------------
def test_download_checks_md5_and_lands_in_cache(monkeypatch, tmp_path):
    payload = b"the real bytes" * 100
    calls = _serve(monkeypatch, [(payload, len(payload))])
    found = ensure_files(_toy(tmp_path, payload))
    assert found["toy.bin"] == tmp_path / "cache" / "toy" / "toy.bin"
    assert found["toy.bin"].read_bytes() == payload and len(calls) == 1


def test_corrupt_download_is_retried_then_used(monkeypatch, tmp_path):
    payload = b"good" * 50
    calls = _serve(monkeypatch, [(b"evil" * 50, None), (payload[:-10], len(payload)), (payload, len(payload))])
    found = ensure_files(_toy(tmp_path, payload))
    assert found["toy.bin"].read_bytes() == payload and len(calls) == 3


def test_always_corrupt_download_is_never_used(monkeypatch, tmp_path):
    payload = b"good" * 50
    _serve(monkeypatch, [(b"bad!" * 50, None)])
    with pytest.raises(MissingDataError,
                       match=r"every try failed \(checksum, size or connection\).*md5 [0-9a-f]{32} != published"):
        ensure_files(_toy(tmp_path, payload))
    assert not (tmp_path / "cache" / "toy" / "toy.bin").exists()
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_truncated_download_detected(monkeypatch, tmp_path):
    payload = b"x" * 1000
    _serve(monkeypatch, [(payload[:400], 1000)])
    with pytest.raises(MissingDataError, match=r"got 400 bytes, Content-Length says 1000"):
        ensure_files(Dataset(key="t", files=(("t.bin",),), remotes=(Remote("t.bin", ("https://e.org/t.bin",)),)))
    assert not list((tmp_path / "cache").rglob("t.bin*"))


def _tarball(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_archive_download_extracted(monkeypatch, tmp_path):
    blob = _tarball({"pack/a.txt": b"A", "pack/b.txt": b"B"})
    _serve(monkeypatch, [(blob, len(blob))])
    ds = Dataset(key="arch", files=(("a.txt",), ("b.txt",)), subdirs=("pack",),
                 remotes=(Remote("pack.tar.gz", ("https://e.org/pack.tar.gz",), sha256=hashlib.sha256(blob).hexdigest(),
                                 extract=True),))
    found = ensure_files(ds)
    assert found["b.txt"].read_bytes() == b"B"
    assert not (tmp_path / "cache" / "arch" / "pack.tar.gz").exists()  # archive removed after unpacking


def test_archive_failing_its_check_is_removed(monkeypatch, tmp_path):
    blob = _tarball({"pack/a.txt": b"A", "pack/b.txt": b"{truncated json"})

    def verify(directory):
        raise ValueError("b.txt does not parse")

    _serve(monkeypatch, [(blob, len(blob))])
    ds = Dataset(key="arch", files=(("a.txt",), ("b.txt",)), subdirs=("pack",), verify=verify,
                 remotes=(Remote("pack.tar.gz", ("https://e.org/pack.tar.gz",), extract=True),))
    with pytest.raises(MissingDataError, match="archive is corrupt or incomplete .*b.txt does not parse"):
        ensure_files(ds)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # nothing left to be used later


def test_safe_extract_refuses_escapes(tmp_path):
    for name in ("../evil.txt", "/abs/evil.txt"):
        path = tmp_path / "bad.tar.gz"
        path.write_bytes(_tarball({name: b"x"}))
        with pytest.raises(DownloadError, match="refusing unsafe path"):
            safe_extract(path, tmp_path / "out")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        link = tarfile.TarInfo("link")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    (tmp_path / "l.tar.gz").write_bytes(buf.getvalue())
    with pytest.raises(DownloadError, match="refusing non-regular member"):
        safe_extract(tmp_path / "l.tar.gz", tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_mnist_download_path_with_fake_network(monkeypatch, tmp_path):
    # Serve files whose md5 matches a patched table, through the real MNIST dataset definition.
    write_mnist_like(tmp_path / "src", n_train=20, n_test=10)
    blobs = {p.name: p.read_bytes() for p in (tmp_path / "src").iterdir()}
    remotes = tuple(Remote(r.filename, r.urls, md5=hashlib.md5(blobs[r.filename]).hexdigest())
                    for r in sources.MNIST.remotes)
    monkeypatch.setattr(sources, "MNIST", Dataset(**{**sources.MNIST.__dict__, "remotes": remotes}))
    import fpt.tasks.images as images
    monkeypatch.setattr(images.MNIST, "dataset", sources.MNIST)

    def fake(url, timeout=30.0):
        data = blobs[url.rsplit("/", 1)[1]]
        return _Response(data, len(data))

    monkeypatch.setattr(store, "urlopen", fake)
    task = make_task("mnist", {"val_fraction": 0.25})
    assert len(task.train()) == 15 and len(task.val()) == 5 and len(task.test()["test"]) == 10
    assert (tmp_path / "cache" / "mnist" / "train-images-idx3-ubyte.gz").is_file()
    assert np.isfinite(task.train().batch(np.arange(4))["x"].numpy()).all()
