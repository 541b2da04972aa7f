"""The official datasets: required files, usual folders, download URLs and published checksums."""

from __future__ import annotations

import json
from pathlib import Path

from fpt.data.store import SYSTEM_DATA_ROOT, Dataset, Remote, alternatives
from fpt.data.tape import SPLIT_FILES

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_remotes(bases: tuple[str, ...], md5s: dict[str, str]) -> tuple[Remote, ...]:
    return tuple(
        Remote(f"{name}.gz", tuple(base + f"{name}.gz" for base in bases), md5=md5s[name]) for name in _IDX_FILES
    )


# MD5s as published with the datasets (and used by torchvision).
MNIST = Dataset(
    key="mnist",
    files=tuple(alternatives(n) for n in _IDX_FILES),
    subdirs=("", "mnist", "MNIST/raw"),
    remotes=_idx_remotes(
        (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        {
            "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    how_to_get="the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
               "t10k-labels-idx1-ubyte.gz, gzipped or not) from http://yann.lecun.com/exdb/mnist/ or the mirror "
               "https://ossci-datasets.s3.amazonaws.com/mnist/.",
)

FASHION_MNIST = Dataset(
    key="fashion-mnist",
    files=tuple(alternatives(n) for n in _IDX_FILES),
    subdirs=("", "fashion-mnist", "fashion", "FashionMNIST/raw"),
    system_dirs=(str(SYSTEM_DATA_ROOT / "fashion-mnist"),),
    remotes=_idx_remotes(
        (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        {
            "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    how_to_get="on Debian/Ubuntu `apt-get install dataset-fashion-mnist` (installs them in "
               "/usr/share/datasets/fashion-mnist), or download the four IDX .gz files from "
               "https://github.com/zalandoresearch/fashion-mnist (data/fashion/).",
)

CIFAR10 = Dataset(
    key="cifar10",
    files=tuple((f"data_batch_{i}",) for i in range(1, 6)) + (("test_batch",),),
    subdirs=("cifar-10-batches-py", ""),
    remotes=(
        Remote("cifar-10-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
               md5="c58f30108f718f92721af3b95e74349a", extract=True),
    ),
    how_to_get="download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (CIFAR-10 python version, "
               "md5 c58f30108f718f92721af3b95e74349a) and unpack it: it holds cifar-10-batches-py/ with "
               "data_batch_1..5 and test_batch.",
)

LISTOPS = Dataset(
    key="listops",
    files=(("basic_train.tsv",), ("basic_val.tsv",), ("basic_test.tsv",)),
    subdirs=("", "listops-1000", "lra_release/listops-1000", "lra_release/lra_release/listops-1000"),
    remotes=(),  # only inside LRA's ~7 GB lra_release.gz, which has no published checksum: no automatic download
    how_to_get="they are in Long Range Arena's release archive https://storage.googleapis.com/long-range-arena/lra_release.gz "
               "(several GB) under lra_release/listops-1000/; or make them with LRA's generator "
               "(lra_benchmarks/data/listops.py). To train without them, use the built-in generator with the same "
               "grammar: --task-option source=generated.",
)


def _verify_tape(directory: Path) -> None:
    for name in SPLIT_FILES.values():
        hits = list(directory.rglob(name))
        if not hits:
            raise ValueError(f"{name} missing from the archive")
        with open(hits[0], encoding="utf-8") as f:
            json.load(f)  # a truncated / corrupt file fails here


REMOTE_HOMOLOGY = Dataset(
    key="remote-homology",
    files=tuple((name,) for name in (
        "remote_homology_train.json", "remote_homology_valid.json", "remote_homology_test_fold_holdout.json",
        "remote_homology_test_superfamily_holdout.json", "remote_homology_test_family_holdout.json",
    )),
    subdirs=("", "remote_homology", "tape/remote_homology", "data/remote_homology"),
    # TAPE publishes no checksum: the download is checked for completeness (Content-Length, the gzip
    # CRC while unpacking) and every JSON file must parse; a failed check deletes it.
    remotes=(
        Remote("remote_homology.tar.gz", ("https://s3.amazonaws.com/proteindata/data_raw/remote_homology.tar.gz",),
               extract=True),
    ),
    verify=_verify_tape,
    how_to_get="TAPE's raw (JSON) remote homology data: download "
               "https://s3.amazonaws.com/proteindata/data_raw/remote_homology.tar.gz and unpack it "
               "(see https://github.com/songlab-cal/tape#raw-data).",
)

DATASETS = {d.key: d for d in (MNIST, FASHION_MNIST, CIFAR10, LISTOPS, REMOTE_HOMOLOGY)}


# -- the UCR / UEA / TSER time-series archives (the timeseries task) -----------------------------------
TIMESERIES_HOME = "https://www.timeseriesclassification.com (UCR/UEA) and https://zenodo.org/communities/tsml"


def zenodo_urls(record: int, filename: str) -> tuple[str, ...]:
    """A file of a Zenodo record: the download link, then the API's content link as a mirror."""
    return (f"https://zenodo.org/records/{record}/files/{filename}?download=1",
            f"https://zenodo.org/api/records/{record}/files/{filename}/content")


def timeseries_problem(name: str) -> Dataset:
    """An archive problem's two files (``NAME_TRAIN.ts``, ``NAME_TEST.ts``), the folders they are looked
    for in (``--data-dir``, ``$FPT_DATA_DIR``, the cache ``timeseries/<Name>``, then the aeon wheel's
    bundled data) and, when its Zenodo record is known (aeon's tables, :func:`fpt.data.ts.zenodo_record`),
    the download. The archive publishes no checksums: a download is checked for completeness
    (Content-Length) by :mod:`fpt.data.store` and must parse (:func:`fpt.data.ts.find_problem`)."""
    from fpt.data.aeon import aeon_data_root, base_name, zenodo_record

    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ValueError(f"timeseries: {name!r} is not a problem name (e.g. GunPoint); for your own files use "
                         "-o path=FILE_OR_DIR")
    files = ((f"{name}_TRAIN.ts",), (f"{name}_TEST.ts",))
    base = base_name(name)
    root = aeon_data_root()
    system = tuple(str(root / d) for d in dict.fromkeys((name, base)) if (root / d).is_dir()) if root else ()
    record = zenodo_record(base)
    remotes = tuple(Remote(f[0], zenodo_urls(record, f[0])) for f in files) if record else ()
    if record:
        how = (f"they are downloaded automatically from Zenodo record {record} when online (the archive publishes "
               "no checksums: the download is checked for completeness and must parse); or get them from "
               f"{TIMESERIES_HOME}")
    else:
        how = (f"download {name}_TRAIN.ts and {name}_TEST.ts from {TIMESERIES_HOME}"
               + ("" if root else "; with the aeon wheel installed (pip install --no-deps aeon) fpt knows each "
                                 "problem's Zenodo record and downloads it itself"))
    subdirs = tuple(dict.fromkeys(("", name, base, f"Univariate_ts/{base}", f"Multivariate_ts/{base}")))
    return Dataset(key=f"timeseries/{base}", files=files, subdirs=subdirs, system_dirs=system, remotes=remotes,
                   how_to_get=how)
