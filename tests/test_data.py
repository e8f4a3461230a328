"""Data sets: spiral generators, digits, IDX reading and validation, npz, Dataset helpers."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from measure import peak_bytes

from hwq.data import (
    FASHION_MNIST_DIR,
    SPIRAL_PARAMS,
    Dataset,
    load_dataset,
    read_idx,
    spiral_points,
    write_idx,
)
from hwq.errors import DataError, UsageError

# ------------------------------------------------------------------------------ spirals


def test_spiral_is_deterministic_per_seed():
    a, b, c = load_dataset("spiral"), load_dataset("spiral"), load_dataset("spiral", seed=1)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()


@pytest.mark.parametrize("spec", sorted(SPIRAL_PARAMS))
def test_spiral_sizes_and_metadata(spec):
    d = load_dataset(spec)
    assert d.x_train.shape == d.x_test.shape == (400, 2)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert np.bincount(d.y_train).tolist() == np.bincount(d.y_test).tolist() == [200, 200]
    assert (d.n_classes, d.bounds, d.sample_shape) == (2, None, (2,))
    t_max, sigma = SPIRAL_PARAMS[spec]
    radius = np.hypot(*d.x_train.T)
    assert radius.max() <= 0.1 * t_max + 6 * sigma


def test_spiral_formula_without_noise():
    """x = s 0.1 t cos t, y = s 0.1 t sin t: radius 0.1 t, class 1 is class 0 mirrored."""
    rng = np.random.default_rng(3)
    xy, y = spiral_points(50, 10.0, 0.0, rng)
    t = np.random.default_rng(3).uniform(0, 10.0, size=(2, 50))
    np.testing.assert_allclose(np.hypot(*xy.T), 0.1 * t.ravel(), rtol=1e-12)
    np.testing.assert_allclose(xy[y == 0], 0.1 * t[0][:, None] * np.c_[np.cos(t[0]), np.sin(t[0])])
    np.testing.assert_allclose(xy[y == 1], -0.1 * t[1][:, None] * np.c_[np.cos(t[1]), np.sin(t[1])])


@pytest.mark.parametrize("sigma", [0.03, np.sqrt(0.03)])
def test_spiral_noise_has_the_stated_standard_deviation(sigma):
    clean, _ = spiral_points(2000, 20.0, 0.0, np.random.default_rng(0))
    noisy, _ = spiral_points(2000, 20.0, sigma, np.random.default_rng(0))
    assert np.std(noisy - clean) == pytest.approx(sigma, rel=0.05)


def test_spiral_paper_is_the_literal_equation():
    assert SPIRAL_PARAMS["spiral-paper"] == (100.0, pytest.approx(np.sqrt(0.03)))
    assert np.hypot(*load_dataset("spiral-paper").x_train.T).max() > 9


# ------------------------------------------------------------------------------- digits


def test_digits_shapes_bounds_and_stratified_split():
    d = load_dataset("digits")
    assert d.x_train.shape == (1437, 64) and d.x_test.shape == (360, 64)
    assert (d.n_classes, d.bounds, d.sample_shape) == (10, (0.0, 1.0), (8, 8))
    assert d.x_train.min() == 0 and d.x_train.max() == 1
    assert np.all(np.abs(np.bincount(d.y_test) - 36) <= 1)
    assert load_dataset("digits").fingerprint() == d.fingerprint()


def test_dataset_arrays_are_read_only():
    d = load_dataset("digits")
    with pytest.raises(ValueError):
        d.x_train[0, 0] = 1


def test_limit_keeps_the_first_test_inputs():
    d = load_dataset("digits")
    small = d.limit(10)
    assert small.x_test.shape == (10, 64)
    np.testing.assert_array_equal(small.y_test, d.y_test[:10])
    assert d.limit(None) is d
    assert small.fingerprint() != d.fingerprint()
    with pytest.raises(UsageError):
        d.limit(0)


def test_dataset_rejects_labels_out_of_range():
    x = np.zeros((4, 2))
    with pytest.raises(DataError, match="labels"):
        Dataset("bad", x, np.array([0, 1, 2, 0]), x, np.zeros(4), n_classes=2, bounds=None, sample_shape=(2,))


def test_unknown_spec_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown data set"):
        load_dataset("cifar")


# ---------------------------------------------------------------------------------- IDX


def _idx_bytes(array: np.ndarray) -> bytes:
    """Independent IDX writer for unsigned bytes: magic 0x00000803 (or 0801), dims, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(directory, n_train=6, n_test=4, gz=False):
    rng = np.random.default_rng(0)
    directory.mkdir(exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 3, 2)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 3, 2)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    for name, a in arrays.items():
        raw = _idx_bytes(a)
        (directory / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_idx_reader_reads_hand_written_files(tmp_path, gz):
    arrays = _write_mnist(tmp_path, gz=gz)
    suffix = ".gz" if gz else ""
    for name, a in arrays.items():
        got = read_idx(tmp_path / (name + suffix))
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, a)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, dtype, compress):
    a = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype == np.uint8:
        a = np.abs(a).astype(dtype)
    write_idx(tmp_path / "a.idx", a, compress=compress)
    got = read_idx(tmp_path / "a.idx")
    assert got.dtype == np.dtype(dtype) and got.shape == a.shape
    np.testing.assert_array_equal(got, a)


def test_mnist_directory_loads_and_scales(tmp_path):
    arrays = _write_mnist(tmp_path / "m", gz=True)
    d = load_dataset(f"mnist:{tmp_path / 'm'}")
    assert d.x_train.shape == (6, 6) and d.x_test.shape == (4, 6)
    assert d.sample_shape == (3, 2) and d.bounds == (0.0, 1.0)
    assert d.n_classes == 1 + max(arrays["train-labels-idx1-ubyte"].max(), 3)  # largest label
    np.testing.assert_allclose(d.x_test * 255, arrays["t10k-images-idx3-ubyte"].reshape(4, 6), rtol=1e-6)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda raw: raw[:-3], "truncated"),
        (lambda raw: raw + b"\0", "trailing"),
        (lambda raw: b"\x01" + raw[1:], "magic"),
        (lambda raw: raw[:2] + b"\x07" + raw[3:], "magic"),
        (lambda raw: raw[:6], "truncated"),
        (lambda raw: b"", "magic"),
    ],
)
def test_corrupt_idx_is_a_data_error_naming_the_file(tmp_path, damage, message):
    raw = _idx_bytes(np.zeros((4, 3, 2)))
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(damage(raw))
    with pytest.raises(DataError, match=message) as err:
        read_idx(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_truncated_gzip_is_a_data_error(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(_idx_bytes(np.zeros((4, 3))))[:-10])
    with pytest.raises(DataError, match="x.gz"):
        read_idx(path)


def test_missing_directory_and_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(f"mnist:{tmp_path / 'nowhere'}")
    _write_mnist(tmp_path / "m")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels"):
        load_dataset(f"mnist:{tmp_path / 'm'}")


def test_image_and_label_counts_must_agree(tmp_path):
    _write_mnist(tmp_path / "m")
    (tmp_path / "m" / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(5)))
    with pytest.raises(DataError, match="do not fit"):
        load_dataset(f"mnist:{tmp_path / 'm'}")


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_the_debian_package():
    d = load_dataset("fashion-mnist")
    assert d.x_train.shape == (60000, 784) and d.x_test.shape == (10000, 784)
    assert (d.n_classes, d.bounds, d.sample_shape) == (10, (0.0, 1.0), (28, 28))
    assert d.x_train.max() == 1.0


# ---------------------------------------------------------------------------------- npz


def test_npz_with_test_split(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "set.npz"
    np.savez(
        path, x=rng.random((20, 2, 3)), y=rng.integers(0, 3, 20), x_test=rng.random((5, 2, 3)), y_test=np.arange(5) % 3
    )
    d = load_dataset(str(path))
    assert d.name == "set" and d.x_train.shape == (20, 6) and d.x_test.shape == (5, 6)
    assert (d.n_classes, d.bounds, d.sample_shape) == (3, (0.0, 1.0), (2, 3))


def test_npz_without_test_split_holds_out_a_seeded_fifth(tmp_path):
    path = tmp_path / "set.npz"
    np.savez(path, x=np.arange(100.0).reshape(50, 2) - 10, y=np.arange(50) % 2)
    d, again, other = (load_dataset(str(path), seed=s) for s in (0, 0, 1))
    assert d.x_train.shape == (40, 2) and d.x_test.shape == (10, 2)
    assert d.bounds is None and d.n_classes == 2
    assert d.fingerprint() == again.fingerprint() != other.fingerprint()
    together = np.sort(np.concatenate([d.x_train[:, 0], d.x_test[:, 0]]))
    np.testing.assert_array_equal(together, np.arange(0.0, 100, 2) - 10)


def test_bad_npz_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((3, 2)))
    with pytest.raises(DataError, match="'y'"):
        load_dataset(str(tmp_path / "nolabels.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="junk.npz"):
        load_dataset(str(tmp_path / "junk.npz"))
    np.savez(tmp_path / "neg.npz", x=np.zeros((10, 2)), y=-np.ones(10))
    with pytest.raises(DataError, match="labels"):
        load_dataset(str(tmp_path / "neg.npz"))


# ------------------------------------------------- hostile data files (issue 17: M10, M11, LOW)


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


RNG = np.random.default_rng(7)
X, Y = RNG.random((50, 4)), RNG.integers(0, 3, 50)


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(x=X, y=Y[:49]), "50 samples but y 49 labels"),
        (dict(x=X, y=np.stack([Y, Y], 1)), r"labels y must have shape \(N,\)"),
        (dict(x=np.float64(3.0), y=Y), "single value"),
        (dict(x=np.array(["a"] * 50), y=Y), "<U1"),
        (dict(x=X.astype(object), y=Y), "object"),
        (dict(x=np.zeros((50, 0)), y=Y), "no features"),
        (dict(x=X, y=Y, x_test=np.zeros((0, 4)), y_test=np.zeros(0, int)), "test set is empty"),
        (dict(x=np.zeros((0, 4)), y=np.zeros(0, int), x_test=X, y_test=Y), "training set is empty"),
        (dict(x=X[:4], y=Y[:4]), "too few to hold out a test set"),
        (dict(x=X[:1], y=Y[:1]), "too few to hold out a test set"),
        (dict(x=X + 1j * X, y=Y), "complex"),
        (dict(x=X, y=Y, x_test=X[:10]), "x_test without y_test"),
        (dict(x=X, y=Y, y_test=Y[:10]), "y_test without x_test"),
        (dict(x=X, y=Y, x_test=X[:10, :3], y_test=Y[:10]), "differ from x's"),
        (dict(x=X, y=Y, x_test=X[:10], y_test=Y[:9]), "x_test holds 10 samples but y_test 9"),
        (dict(x=X, y=np.r_[Y[:49], 10**9]), r"labels must lie in 0..65535, got 0..1e\+09"),
        (dict(x=X, y=np.r_[Y[:49], 2.5]), "non-negative integers"),
        (dict(x=X, y=np.r_[Y[:49], np.nan]), "non-negative integers"),
        (dict(x=X, y=Y.astype("U1")), "values of type <U1"),
        (dict(x=np.r_[X[:49], [[1e300] * 4]], y=Y), "float32's range"),
        (dict(x=np.r_[X[:49], [[np.inf] * 4]], y=Y), "NaN or Inf"),
    ],
)
def test_ill_formed_npz_is_one_data_error(tmp_path, arrays, message):
    """Each was a traceback, a silent coercion (complex -> real, x_test without y_test ignored,
    1e300 -> inf) or an allocation of 1e9 classes before the fix."""
    with pytest.raises(DataError, match=message) as err:
        load_dataset(_npz(tmp_path / "d.npz", **arrays))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04", b"hello, not a zip", b"\x93NUMPY"])
def test_non_zip_npz_is_a_data_error_not_an_interrupt(tmp_path, content):
    """A 0-byte file made np.load raise EOFError, which click reports as 'interrupted' (130)."""
    (tmp_path / "d.npz").write_bytes(content)
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset(str(tmp_path / "d.npz"))


def test_plain_npy_under_an_npz_name_is_a_data_error(tmp_path):
    np.save(tmp_path / "d.npy", X)
    (tmp_path / "d.npy").rename(tmp_path / "d.npz")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset(str(tmp_path / "d.npz"))


def test_npz_reads_what_numpy_writes(tmp_path):
    """Compressed, Fortran-order, big-endian, bool and integer inputs and float labels read as
    numpy reads them."""
    x = np.asfortranarray(RNG.integers(0, 2, (30, 3, 2)).astype(">i2"))
    xte = RNG.random((6, 3, 2)) > 0.5
    np.savez_compressed(tmp_path / "d.npz", x=x, y=(np.arange(30) % 4).astype(float), x_test=xte,
                        y_test=np.arange(6) % 4)
    d = load_dataset(str(tmp_path / "d.npz"))
    np.testing.assert_array_equal(d.x_train, x.reshape(30, 6).astype(np.float32))
    np.testing.assert_array_equal(d.x_test, xte.reshape(6, 6))
    np.testing.assert_array_equal(d.y_train, np.arange(30) % 4)
    assert d.n_classes == 4 and d.bounds == (0.0, 1.0) and d.sample_shape == (3, 2)


def test_npz_header_declaring_more_than_the_member_holds_is_refused(tmp_path):
    """The .npy header (shape x dtype) is checked against the member's size before any
    allocation: here it declares 10^9 values for 160 KB of data."""
    _npz(tmp_path / "d.npz", x=np.zeros((5000, 4)), y=np.zeros(5000, int))  # beyond zipfile's first read
    raw = (tmp_path / "d.npz").read_bytes()
    old, new = b"'shape': (5000, 4), }" + b" " * 5, b"'shape': (5000, 200000), }"  # same length
    assert raw.count(old) == 1 and len(old) == len(new)
    (tmp_path / "d.npz").write_bytes(raw.replace(old, new))
    with pytest.raises(DataError, match=r"shape \(5000, 200000\) of float64 needs"):
        load_dataset(str(tmp_path / "d.npz"))


def _deflated_zeros_npz(path, n_zero_rows, width):
    """An honest decompression bomb: ``x`` of zeros deflates about 1000:1."""
    import io
    import zipfile

    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "|u1", "fortran_order": False,
                                                "shape": (n_zero_rows, width)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("x.npy", "w") as f:
            f.write(head.getvalue())
            for _ in range(n_zero_rows):
                f.write(bytes(width))
        y = io.BytesIO()
        np.save(y, np.zeros(n_zero_rows, np.uint8))
        zf.writestr("y.npy", y.getvalue())
    return str(path)


def test_npz_bomb_is_refused_before_inflating(tmp_path, monkeypatch):
    """64 MB of deflated zeros (a 64 KB file) with the limit lowered to 1M values: refused from
    the headers, without inflating (before the fix np.load inflated all of it, then the
    Dataset made a float32 copy)."""
    monkeypatch.setattr("hwq.data.MAX_DATA_VALUES", 1_000_000)
    path = _deflated_zeros_npz(tmp_path / "bomb.npz", 64, 1 << 20)
    assert (tmp_path / "bomb.npz").stat().st_size < 200_000

    def load():
        with pytest.raises(DataError, match="more than the 1000000 a data set may hold"):
            load_dataset(path)

    assert peak_bytes(load) < 4_000_000


def _gzip_idx(path, dims, payload_bytes):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(f">BBBB{len(dims)}I", 0, 0, 8, len(dims), *dims))
        for _ in range(payload_bytes >> 20):
            f.write(bytes(1 << 20))
        f.write(bytes(payload_bytes % (1 << 20)))


def test_gzip_idx_bomb_is_refused_from_its_dims(tmp_path, monkeypatch):
    monkeypatch.setattr("hwq.data.MAX_DATA_VALUES", 1_000_000)
    _gzip_idx(tmp_path / "a.gz", (64, 1024, 1024), 64 << 20)

    def load():
        with pytest.raises(DataError, match="declare 67108864 values, more than the 1000000"):
            read_idx(tmp_path / "a.gz")

    assert peak_bytes(load) < 4_000_000


def test_gzip_idx_is_inflated_no_further_than_its_dims(tmp_path):
    """Dims of 100 values followed by 64 MB of zeros: inflated in chunks up to the declared size
    plus one byte (before the fix gzip.decompress inflated all 64 MB first)."""
    _gzip_idx(tmp_path / "a.gz", (10, 10), 64 << 20)

    def load():
        with pytest.raises(DataError, match="has trailing bytes"):
            read_idx(tmp_path / "a.gz")

    assert peak_bytes(load) < 8_000_000


@pytest.mark.parametrize("dims", [(2**32 - 1,) * 3, (2**32 - 1,) * 8, (2**16, 2**16, 2**16, 2**16)])
def test_idx_dims_that_overflow_int64_are_refused(tmp_path, dims):
    """np.prod of these dims wrapped around int64 (to a negative or small size) before the fix."""
    path = tmp_path / "x.idx"
    path.write_bytes(struct.pack(f">BBBB{len(dims)}I", 0, 0, 8, len(dims), *dims))
    with pytest.raises(DataError, match="more than the"):
        read_idx(path)


def test_idx_dims_whose_int64_product_wraps_to_the_file_size_are_refused(tmp_path):
    """4 x 2^62 items wrap int64 to 0 items: the old size check passed a header-only file, and
    reshape raised ValueError."""
    path = tmp_path / "x.idx"
    path.write_bytes(struct.pack(">BBBB4I", 0, 0, 8, 4, 2**31, 2**31, 2**31, 8))
    with pytest.raises(DataError, match="more than the"):
        read_idx(path)


@pytest.mark.parametrize("split", ["train", "test"])
def test_empty_idx_split_is_a_data_error(tmp_path, split):
    _write_mnist(tmp_path / "m")
    prefix = "train" if split == "train" else "t10k"
    (tmp_path / "m" / f"{prefix}-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((0, 3, 2))))
    (tmp_path / "m" / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(0)))
    with pytest.raises(DataError, match=f"the {split} set is empty"):
        load_dataset(f"mnist:{tmp_path / 'm'}")


def test_idx_float_labels_must_be_integral(tmp_path):
    """A float32 label file was truncated to int64 (2.7 -> 2) without a word."""
    _write_mnist(tmp_path / "m")
    write_idx(tmp_path / "m" / "t10k-labels-idx1-ubyte", np.array([0, 1, 2.7, 3], np.float32))
    with pytest.raises(DataError, match="non-negative integers"):
        load_dataset(f"mnist:{tmp_path / 'm'}")


def test_negative_data_seed_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="non-negative"):
        load_dataset("spiral", seed=-1)
    with pytest.raises(UsageError, match="non-negative"):
        load_dataset(_npz(tmp_path / "d.npz", x=X, y=Y), seed=-1)


def test_zip_directory_that_lost_members_is_refused(tmp_path):
    """A comment length of 65535 in y's central directory entry made zipfile skip x_test and
    y_test: the file then loaded with a seeded 20 % held out instead of its own test set (found
    by tests/test_audit_data.py)."""
    import zipfile

    path = _npz(tmp_path / "d.npz", x=X, y=Y, x_test=X[:10], y_test=Y[:10])
    with zipfile.ZipFile(path) as zf:
        assert [i.filename for i in zf.infolist()] == ["x.npy", "y.npy", "x_test.npy", "y_test.npy"]
    raw = bytearray((tmp_path / "d.npz").read_bytes())
    entry = raw.find(b"PK\x01\x02", raw.find(b"PK\x01\x02") + 4)  # y.npy's entry
    raw[entry + 32 : entry + 34] = (65535).to_bytes(2, "little")
    (tmp_path / "d.npz").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="declares 4 members, 2 were read"):
        load_dataset(path)


def test_idx_images_of_two_types_are_refused_and_other_types_are_not_bounded(tmp_path):
    """Train images as signed bytes and test images as unsigned: the scale was chosen from the
    train file alone, so test pixels were divided by 255 and train pixels not; bounds were
    (0, 1) for values up to 127."""
    arrays = _write_mnist(tmp_path / "m")
    write_idx(tmp_path / "m" / "train-images-idx3-ubyte", (arrays["train-images-idx3-ubyte"] // 2).astype(np.int8))
    with pytest.raises(DataError, match="train images are int8, test images uint8"):
        load_dataset(f"mnist:{tmp_path / 'm'}")
    write_idx(tmp_path / "m" / "t10k-images-idx3-ubyte", (arrays["t10k-images-idx3-ubyte"] // 2).astype(np.int8))
    d = load_dataset(f"mnist:{tmp_path / 'm'}")
    assert d.bounds is None and d.x_train.max() == arrays["train-images-idx3-ubyte"].max() // 2
