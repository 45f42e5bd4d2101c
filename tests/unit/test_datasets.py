"""Data sets: download once from a mirror (an HTTP server on a thread of this process),
verify, reuse; the registry's checksums refuse look-alike files; CIFAR-10 from its python
tarball; validation split, training-only normalisation statistics, FF's label embedding for
colour images; real MNIST from $FFBENCH_DATA and real Fashion-MNIST from Debian's
dataset-fashion-mnist when they are there. Runs on generated CIFAR-10 files are in
tests/app/test_datasets.py."""

import gzip
from pathlib import Path

import pytest
import torch
from helpers import (
    free_port,
    leftovers,
    make_cifar,
    make_mnist,
    md5,
    real_mnist,
    write_md5sums,
)

from ffbench import data, download
from ffbench.config import compose
from ffbench.download import Checksum, Source
from ffbench.errors import FFBenchError
from ffbench.ff_data import embed_labels, embed_neutral

IDX_NAMES = [f"{stem}.gz" for stem in download.IDX_STEMS]


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/"  # nothing listens there


def tiny_idx(tmp_path: Path) -> tuple[dict[str, bytes], Source]:
    """The four gzip IDX files of a tiny MNIST and a Source with their true checksums."""
    folder = make_mnist(tmp_path / "made", n_train=60, n_test=20)
    files = {name: (folder / name).read_bytes() for name in IDX_NAMES}
    sums = {n: Checksum(md5(b), md5(gzip.decompress(b))) for n, b in files.items()}
    return files, Source("tiny", sums, mirrors=("http://127.0.0.1:9/never/",))


@pytest.mark.parametrize("name", sorted(download.REGISTRY))
def test_the_registry_checksums_refuse_look_alike_files(name, tmp_path):
    """Files in the data set's real format that are not the data set (generated here) are
    refused by the built-in checksums: the first file is named with the MD5 it should have."""
    source = download.REGISTRY[name]
    first = next(iter(source.files))
    if source.archive:
        make_cifar(tmp_path)
        victim = tmp_path / source.archive_dir / first
    else:
        make_mnist(tmp_path, n_train=60, n_test=20)
        victim = tmp_path / first
    with pytest.raises(FFBenchError) as err:
        download.fetch(name, str(tmp_path))
    message = str(err.value)
    assert message.startswith(f"{victim} fails its checksum (MD5 {md5(victim.read_bytes())}")
    assert f"expected {source.files[first].md5}" in message and "\n" not in message


@pytest.mark.slow
def test_real_mnist_passes_the_registry_checksums():
    """The four files of real MNIST in $FFBENCH_DATA (published, compressed again or stored
    decompressed) pass the built-in checksums and hold every example."""
    files = download.fetch("mnist", real_mnist())
    sizes = {name: len(content) for name, content in files.items()}
    assert sizes == {
        "train-images-idx3-ubyte.gz": 16 + 60000 * 784,
        "train-labels-idx1-ubyte.gz": 8 + 60000,
        "t10k-images-idx3-ubyte.gz": 16 + 10000 * 784,
        "t10k-labels-idx1-ubyte.gz": 8 + 10000,
    }


def test_downloads_once_then_reuses_the_verified_copy(mirror, tmp_path):
    mirror.files, source = tiny_idx(tmp_path)
    root = tmp_path / "cache"
    first = download.fetch(source, str(root), mirror.url)
    assert sorted(mirror.hits) == sorted(IDX_NAMES)
    assert leftovers(root) == sorted(["tiny", *IDX_NAMES])  # in root/NAME, no temporary file
    again = download.fetch(source, str(root), mirror.url)
    assert len(mirror.hits) == 4 and again == first  # nothing downloaded the second time
    splits = data.idx_splits("tiny", first, val_size=10, seed=0)
    assert (len(splits.x_train), len(splits.x_val), len(splits.x_test)) == (50, 10, 20)


def test_a_wrong_checksum_keeps_nothing(mirror, tmp_path):
    mirror.files, source = tiny_idx(tmp_path)
    mirror.files["t10k-images-idx3-ubyte.gz"] = gzip.compress(b"not the file")
    root = tmp_path / "cache"
    with pytest.raises(FFBenchError) as err:
        download.fetch(source, str(root), mirror.url)
    message = str(err.value)
    assert "t10k-images-idx3-ubyte.gz" in message and "checksum mismatch" in message
    assert "nothing of it was kept" in message and "\n" not in message
    assert "t10k-images-idx3-ubyte.gz" not in leftovers(root)
    assert not [n for n in leftovers(root) if n.endswith(".part")]


def test_an_interrupted_download_keeps_nothing(mirror, tmp_path):
    mirror.files, source = tiny_idx(tmp_path)
    mirror.truncate = {"train-images-idx3-ubyte.gz"}
    root = tmp_path / "cache"
    with pytest.raises(FFBenchError, match="train-images-idx3-ubyte.gz.*interrupted after"):
        download.fetch(source, str(root), mirror.url)
    assert leftovers(root) == []  # not even the folder it created


def test_offline_with_nothing_cached_names_the_files_and_the_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("FFBENCH_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with pytest.raises(FFBenchError) as err:
        download.fetch("kmnist", mirror=closed_port_url())
    message = str(err.value)
    assert "\n" not in message and "could not be downloaded" in message
    assert all(name in message for name in IDX_NAMES)
    assert str(tmp_path / "xdg" / "ffbench" / "kmnist") in message
    assert "dataset.root=" in message and "FFBENCH_DATA=" in message
    assert leftovers(tmp_path / "xdg") == []


def test_a_hand_made_folder_is_verified_flat_or_in_a_subfolder(tmp_path):
    files, source = tiny_idx(tmp_path)
    for folder in (tmp_path / "flat", tmp_path / "root" / "tiny"):
        folder.mkdir(parents=True)
        for name, raw in files.items():
            (folder / name).write_bytes(raw)
    assert download.fetch(source, str(tmp_path / "flat")) == download.fetch(
        source, str(tmp_path / "root")
    )
    victim = tmp_path / "flat" / "train-labels-idx1-ubyte.gz"
    victim.write_bytes(files[victim.name][:-5])
    with pytest.raises(FFBenchError, match=f"{victim} fails its checksum.*truncated"):
        download.fetch(source, str(tmp_path / "flat"))


def test_recompressed_or_decompressed_copies_pass_by_their_content(tmp_path):
    files, source = tiny_idx(tmp_path)
    folder = tmp_path / "copy"
    folder.mkdir()
    for i, (name, raw) in enumerate(files.items()):
        content = gzip.decompress(raw)
        if i % 2:  # stored decompressed
            (folder / name.removesuffix(".gz")).write_bytes(content)
        else:  # compressed again: other bytes, same content
            (folder / name).write_bytes(gzip.compress(content, compresslevel=1, mtime=1))
    got = download.fetch(source, str(folder))
    assert got == {name: gzip.decompress(raw) for name, raw in files.items()}
    victim = folder / "train-labels-idx1-ubyte"
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x07")
    with pytest.raises(FFBenchError, match=f"{victim} fails its checksum"):
        download.fetch(source, str(folder))


def test_an_idx_header_that_promises_more_is_named():
    raw = bytes([0, 0, 8, 1]) + (100).to_bytes(4, "big") + bytes(90)
    with pytest.raises(FFBenchError, match="labels is truncated: .* promises 100 bytes.* found 90"):
        data.parse_idx(raw, "labels")


def test_cifar10_from_the_tarball_or_the_extracted_folder(mirror, tmp_path):
    made = tmp_path / "made"
    members = make_cifar(made)
    sums = write_md5sums(made / "cifar-10-batches-py", tmp_path / "sums.md5")
    tarball = (made / "cifar-10-python.tar.gz").read_bytes()
    (tmp_path / "sums.md5").write_text(sums + f"{md5(tarball)}  cifar-10-python.tar.gz\n")
    mirror.files = {"cifar-10-python.tar.gz": tarball}
    root = tmp_path / "cache"
    got = download.fetch("cifar10", str(root), mirror.url, str(tmp_path / "sums.md5"))
    assert got == members and leftovers(root) == sorted(["cifar10", "cifar-10-python.tar.gz"])
    assert download.fetch("cifar10", str(made), checksums=str(tmp_path / "sums.md5")) == members
    splits = data.cifar10_splits("cifar10", got, val_size=20, seed=0)
    assert splits.x_train.shape == (180, 3072) and splits.x_test.shape == (40, 3072)
    assert (splits.channels, splits.image_shape) == (3, (32, 32))
    # planes in the files' order: the red plane's bright row gives the label
    rows = splits.x_test.view(-1, 3, 32, 32)[:, 0, :, 5].argmax(1)
    assert torch.equal(rows, 2 + 3 * splits.y_test)
    # with the built-in checksums the generated files are refused, naming the file
    with pytest.raises(FFBenchError, match="data_batch_1 fails its checksum"):
        download.fetch("cifar10", str(made / "cifar-10-batches-py"))


def test_normalisation_statistics_come_from_the_training_split_only(tmp_path):
    made = tmp_path / "made"
    members = make_cifar(made)
    files = download.Files(members, dict.fromkeys(members, made / "cifar-10-python.tar.gz"))
    splits = data.cifar10_splits("cifar10", files, val_size=20, seed=0)
    assert splits.sources["test"] == str(made / "cifar-10-python.tar.gz")
    planes = splits.x_train.view(-1, 3, 1024)
    assert torch.allclose(splits.mean, planes.mean(dim=(0, 2)), atol=1e-6)
    assert torch.allclose(splits.std, planes.permute(1, 0, 2).reshape(3, -1).std(1), atol=1e-5)
    scaled = splits.standardized()
    assert scaled.normalized and torch.equal(scaled.mean, splits.mean)
    train = scaled.x_train.view(-1, 3, 1024)
    assert torch.allclose(train.mean(dim=(0, 2)), torch.zeros(3), atol=1e-5)
    expected_test = (splits.x_test.view(-1, 3, 1024) - splits.mean.view(1, 3, 1)) / splits.std.view(
        1, 3, 1
    )
    assert torch.allclose(scaled.x_test, expected_test.view(-1, 3072))  # training statistics
    # MNIST keeps its pixels in [0, 1] by default; CIFAR-10 is standardised by default
    assert not compose(["dataset=mnist"]).dataset.normalize
    assert compose(["dataset=cifar10"]).dataset.normalize


def test_ff_writes_the_label_into_every_colour_channel():
    x = torch.rand(4, 3 * 16)
    labels = torch.tensor([0, 3, 9, 3])
    grey = embed_labels(x, labels, 10, 1.0)
    assert torch.equal(grey[:, :10], torch.nn.functional.one_hot(labels, 10).float())
    assert torch.equal(grey[:, 10:], x[:, 10:])
    colour = embed_labels(x, labels, 10, 1.0, channels=3).view(4, 3, 16)
    for channel in range(3):
        assert torch.equal(colour[:, channel, :10], grey[:, :10])
        assert torch.equal(colour[:, channel, 10:], x.view(4, 3, 16)[:, channel, 10:])
    neutral = embed_neutral(x, 10, channels=3).view(4, 3, 16)
    assert torch.all(neutral[:, :, :10] == 0.1)


DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not (DEBIAN / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_from_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.delenv("FFBENCH_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # an empty cache: nothing downloaded
    cfg = compose(["dataset=fashion_mnist", f"dataset.mirror={closed_port_url()}"])
    splits = data.load(cfg.dataset)
    assert (len(splits.x_train), len(splits.x_val), len(splits.x_test)) == (55000, 5000, 10000)
    assert splits.y_test[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]  # the official order
    assert splits.image_shape == (28, 28) and splits.channels == 1
    assert leftovers(tmp_path) == []
