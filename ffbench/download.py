"""Where each data set's files come from, the cache they live in, and their checksums.

`fetch` returns the verified contents of a data set's files. It looks for them in the cache
folder (dataset.root, else $FFBENCH_DATA, else ~/.cache/ffbench/NAME), accepting the files
there directly or in a NAME/ subfolder, then in the data set's system folders (Debian's
`dataset-fashion-mnist`), and downloads what is missing from the data set's mirrors into the
cache. Every file is checked against its MD5 before use: a file that fails is an error naming
it, never used. A download goes to a temporary file in the cache folder and is renamed to its
real name only once its checksum matches, so an interrupted or wrong download leaves nothing.
"""

import gzip
import hashlib
import http.client
import io
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ffbench.errors import FFBenchError

TIMEOUT_S = 30  # per network operation (connect, each read)
CHUNK = 1 << 20


@dataclass(frozen=True)
class Checksum:
    md5: str
    """MD5 of the file as the mirrors publish it."""
    raw_md5: str | None = None
    """For a .gz file: MD5 of its decompressed content, so that a copy compressed again (or
    stored decompressed) is verified too; None where no trustworthy value is known."""


@dataclass(frozen=True)
class Source:
    name: str
    files: dict[str, Checksum]
    """The files the loader reads, by name."""
    mirrors: tuple[str, ...]
    """Base URLs, tried in order; a file's URL is mirror + file name."""
    archive: tuple[str, Checksum] | None = None
    """One download that holds all `files` in its folder `archive_dir` (CIFAR-10's tarball)."""
    archive_dir: str = ""
    system_folders: tuple[str, ...] = ()
    """Read-only folders where a system package installs the files."""
    downloads: tuple[str, ...] = field(init=False)

    def __post_init__(self):
        names = (self.archive[0],) if self.archive else tuple(self.files)
        object.__setattr__(self, "downloads", names)


_IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
_IDX_TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IDX_STEMS = (*_IDX, *_IDX_TEST)


def _idx_files(*sums: tuple[str, str | None]) -> dict[str, Checksum]:
    return {f"{stem}.gz": Checksum(*pair) for stem, pair in zip(IDX_STEMS, sums, strict=True)}


# MD5s as torchvision lists them (the archives as published); the MNIST and Fashion-MNIST
# ones of the decompressed files were checked against a local copy of MNIST and Debian's
# dataset-fashion-mnist, whose .gz files were compressed again and so differ from the archives.
REGISTRY = {
    "mnist": Source(
        "mnist",
        _idx_files(
            ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
            ("d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
            ("9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
            ("ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
        ),
        (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
    ),
    "fashion_mnist": Source(
        "fashion_mnist",
        _idx_files(
            ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
            ("25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
            ("bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
            ("bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"),
        ),
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        system_folders=("/usr/share/datasets/fashion-mnist",),
    ),
    "kmnist": Source(
        "kmnist",
        _idx_files(
            ("bdb82020997e1d708af4cf47b453dcf7", None),
            ("e144d726b3acfaa3e44228e80efcd344", None),
            ("5c965bf0a639b31b8f53240b1b52f4d7", None),
            ("7320c461ea6c1c855c0b718fb2a4b134", None),
        ),
        ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
    ),
    "cifar10": Source(
        "cifar10",
        {
            "data_batch_1": Checksum("c99cafc152244af753f735de768cd75f"),
            "data_batch_2": Checksum("d4bba439e000b95fd0a9bffe97cbabec"),
            "data_batch_3": Checksum("54ebc095f3ab1f0389bbae665268c751"),
            "data_batch_4": Checksum("634d18415352ddfa80567beed471001a"),
            "data_batch_5": Checksum("482c414d41f54cd18b22e5b47cb7c3cb"),
            "test_batch": Checksum("40351d587109b95175f43aff81a1287e"),
            "batches.meta": Checksum("5ff9c542aee3614f3951f8cda6e48888"),
        },
        ("https://www.cs.toronto.edu/~kriz/",),
        archive=("cifar-10-python.tar.gz", Checksum("c58f30108f718f92721af3b95e74349a")),
        archive_dir="cifar-10-batches-py",
    ),
}


class Files(dict):
    """The verified contents of a data set's files by name (a dict of bytes), and `paths`:
    the file each was read from (an archive, for a member of one), so that a run can name
    the files its data came from."""

    def __init__(self, contents: dict[str, bytes], paths: dict[str, Path]):
        super().__init__(contents)
        self.paths = paths


def read_manifest(path: str | os.PathLike) -> dict[str, str]:
    """Checksums in `md5sum` format ("MD5  FILE" a line), replacing the registry's: for data
    sets written in the same format by hand (tests, a private copy)."""
    path = Path(path).expanduser()
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise FFBenchError(f"dataset.checksums={path} cannot be read ({err.strerror})") from None
    sums = {}
    for line in lines:
        if line.strip():
            md5, _, name = line.strip().partition(" ")
            sums[Path(name.strip().lstrip("*")).name] = md5.lower()
    return sums


def cache_home() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ffbench"


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


_FIX = "delete it to download it again, or replace it with an intact copy"


def _mismatch(path: Path, got: str, expected: str, hint: str = "") -> FFBenchError:
    return FFBenchError(
        f"{path} fails its checksum (MD5 {got}, expected {expected}): it is corrupt, truncated "
        f"or another file; {hint or _FIX}"
    )


def verified(path: Path, name: str, checksum: Checksum, manifest: dict | None) -> bytes:
    """The content of `path` (decompressed if gzip) once its MD5 matches; else an error naming
    it. `name` is the registry's file name; `path` is that file or, for a .gz name, possibly
    the file decompressed. A manifest's checksum is of the file as it is on disk."""
    data = path.read_bytes()
    got = _md5(data)
    gz = path.suffix == ".gz"
    if manifest is not None:
        expected = manifest.get(path.name)
        if expected is None:
            raise FFBenchError(f"dataset.checksums lists no checksum for {path}: add its MD5")
        if got != expected:
            raise _mismatch(path, got, expected)
        return _gunzip(path, data, got, expected) if gz else data
    if path.name == name and got == checksum.md5:  # the file as published
        return _gunzip(path, data, got, checksum.md5) if gz else data
    if checksum.raw_md5 is None:  # no way to verify a copy that was compressed again
        hint = f"only the published {name} can be verified: put it there"
        raise _mismatch(path, got, checksum.md5, hint if path.name != name or gz else "")
    expected = f"{checksum.md5}, or {checksum.raw_md5} decompressed"
    raw = _gunzip(path, data, got, expected) if gz else data
    if _md5(raw) != checksum.raw_md5:
        raise _mismatch(path, f"{got}, {_md5(raw)} decompressed" if gz else got, expected)
    return raw


def _gunzip(path: Path, data: bytes, got: str, expected: str) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise _mismatch(path, got, expected, f"it does not decompress ({err}); {_FIX}") from None


def _present(folder: Path, name: str) -> Path | None:
    """`name` in `folder`, or for a .gz name the decompressed file."""
    candidates = [folder / name]
    if name.endswith(".gz"):
        candidates.append(folder / name[: -len(".gz")])
    return next((p for p in candidates if p.is_file()), None)


def _found(source: Source, folder: Path) -> dict[str, Path] | None:
    """Where `folder` holds every file of `source` (directly, or the archive's folder, or the
    archive itself: then each name maps to the archive), else None."""
    for place in (folder, folder / source.archive_dir) if source.archive_dir else (folder,):
        paths = {name: _present(place, name) for name in source.files}
        if all(paths.values()):
            return paths
    if source.archive and (folder / source.archive[0]).is_file():
        return {name: folder / source.archive[0] for name in source.files}
    return None


def _read(source: Source, paths: dict[str, Path], manifest: dict | None) -> dict[str, bytes]:
    archives = {p for p in paths.values() if source.archive and p.name == source.archive[0]}
    if not archives:
        return {
            name: verified(path, name, source.files[name], manifest) for name, path in paths.items()
        }
    [archive] = archives
    name, checksum = source.archive
    data = archive.read_bytes()
    expected = manifest.get(archive.name) if manifest is not None else checksum.md5
    if expected is None:
        raise FFBenchError(f"dataset.checksums lists no checksum for {archive}: add its MD5")
    if _md5(data) != expected:
        raise _mismatch(archive, _md5(data), expected)
    contents = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            for member in source.files:
                handle = tar.extractfile(f"{source.archive_dir}/{member}")
                contents[member] = handle.read()
    except (KeyError, tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise FFBenchError(f"{archive} lacks the expected files ({err}): {_FIX}") from None
    return contents


def folders(source: Source, root: str | None) -> tuple[list[Path], Path]:
    """(folders to look in, folder to download into) for dataset.root `root`."""
    root = root or os.environ.get("FFBENCH_DATA")
    if not root:
        cache = cache_home() / source.name
        return [cache], cache
    root = Path(root).expanduser().resolve()
    sub = root / source.name
    holds_some = root.is_dir() and any(
        _present(root, n) for n in (*source.files, *source.downloads)
    )
    return [root, sub], root if holds_some else sub


def fetch(
    source: Source | str,
    root: str | None = None,
    mirror: str | None = None,
    checksums: str | None = None,
) -> Files:
    """The verified contents of a data set's files (gzip files decompressed), by file name,
    found locally or downloaded once, with the paths they were read from. `source` is a
    Source or a name in REGISTRY; `mirror` replaces its mirrors; `checksums` names an
    md5sum-format file that replaces its checksums."""
    source = REGISTRY[source] if isinstance(source, str) else source
    manifest = read_manifest(checksums) if checksums else None
    look_in, target = folders(source, root)
    for folder in [*look_in, *map(Path, source.system_folders)]:
        paths = _found(source, folder)
        if paths:
            return Files(_read(source, paths, manifest), paths)
    mirrors = (mirror,) if mirror else source.mirrors
    for file in source.downloads:
        if _present(target, file) is None:
            checksum = source.archive[1] if source.archive else source.files[file]
            expected = manifest.get(file) if manifest is not None else checksum.md5
            _download(source, file, expected, mirrors, target)
    paths = _found(source, target)
    assert paths is not None
    return Files(_read(source, paths, manifest), paths)


def _download(source: Source, file: str, md5: str | None, mirrors, target: Path) -> None:
    created = target  # the outermost folder this call creates, removed again if left empty
    while not created.parent.exists():
        created = created.parent
    created = None if target.exists() else created
    reasons = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + file
        try:
            target.mkdir(parents=True, exist_ok=True)
            print(f"downloading {url} into {target}", flush=True)
            _download_one(url, target / file, md5)
            return
        except (OSError, http.client.HTTPException, ValueError, _ChecksumError) as err:
            reasons.append(f"{url}: {_reason(err)}")
    folder = target
    while created is not None and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        if folder == created:
            break
        folder = folder.parent
    wanted = ", ".join(source.downloads)
    raise FFBenchError(
        f"{source.name}: {file} is not here and could not be downloaded ({'; '.join(reasons)}); "
        f"nothing of it was kept. Put {wanted} into {target}, or set dataset.root=/path/to/folder "
        f"or FFBENCH_DATA=/path/to/folder (a folder holding them, or a {source.name}/ "
        "subfolder with them)"
    )


class _ChecksumError(Exception):
    pass


def _reason(err: Exception) -> str:
    if isinstance(err, http.client.IncompleteRead):
        return f"interrupted after {len(err.partial)} bytes, {err.expected} more expected"
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    return str(err) or type(err).__name__


def _download_one(url: str, dest: Path, md5: str | None) -> None:
    """Stream `url` into a temporary file beside `dest`; rename it to `dest` only if complete
    and its MD5 is `md5`. Whatever happens, no temporary file is left."""
    fd, part = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest = hashlib.md5(usedforsecurity=False)
        received = 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            length = resp.headers.get("Content-Length")
            while chunk := resp.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
        if length is not None and received != int(length):
            raise _ChecksumError(f"interrupted after {received} of {length} bytes")
        if md5 is None:
            raise _ChecksumError("dataset.checksums lists no checksum for it")
        if digest.hexdigest() != md5:
            raise _ChecksumError(f"checksum mismatch, MD5 {digest.hexdigest()}, expected {md5}")
        os.replace(part, dest)
    finally:
        if os.path.exists(part):
            os.unlink(part)
