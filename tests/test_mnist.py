"""The MNIST loader, on small files in the mnist.npz layout that the tests write (nothing is downloaded)."""

import numpy as np
import pytest
import torch

from learning_dynamics.tasks import mnist


def write(path, n_train=30, n_test=12, **replace):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "y_train": rng.integers(0, 10, n_train), "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "y_test": rng.integers(0, 10, n_test)}
    arrays.update(replace)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


def test_load_reads_the_keras_layout_like_digits(tmp_path):
    arrays = write(tmp_path / "mnist.npz")
    x, y, x_test, y_test = mnist.load(tmp_path / "mnist.npz", dtype=torch.float64)
    assert x.shape == (30, 784) and x_test.shape == (12, 784) and y.dtype == torch.long
    np.testing.assert_array_equal(x.numpy(), arrays["x_train"].reshape(30, -1) / 255.0)
    np.testing.assert_array_equal(y_test.numpy(), arrays["y_test"])
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_n_train_is_a_seeded_subset(tmp_path):
    arrays = write(tmp_path / "mnist.npz")
    x, y, *_ = mnist.load(tmp_path / "mnist.npz", 20, seed=3)
    again = mnist.load(tmp_path / "mnist.npz", 20, seed=3)
    other = mnist.load(tmp_path / "mnist.npz", 20, seed=4)
    assert x.shape == (20, 784) and torch.equal(x, again[0]) and not torch.equal(x, other[0])
    rows = {tuple(r) for r in arrays["x_train"].reshape(30, -1)}
    assert all(tuple(np.rint(r * 255).astype(np.uint8)) in rows for r in x.numpy())
    with pytest.raises(ValueError, match="n_train must be at most the 30 training images"):
        mnist.load(tmp_path / "mnist.npz", 31)


@pytest.mark.parametrize("replace, message", [
    ({"y_test": None}, r"lacks \['y_test'\]"),
    ({"x_train": np.zeros((30, 28, 27), dtype=np.uint8)}, r"x_train must be \(N, 28, 28\) uint8"),
    ({"x_test": np.zeros((12, 28, 28))}, r"x_test must be \(N, 28, 28\) uint8 images; got shape \(12, 28, 28\), dtype float64"),
    ({"y_train": np.zeros(29, dtype=int)}, r"y_train must hold one integer label per image, shape \(30,\)"),
    ({"y_train": np.full(30, 10)}, r"y_train labels must lie in 0..9; got 10..10"),
])
def test_a_malformed_file_names_the_parameter(tmp_path, replace, message):
    write(tmp_path / "bad.npz", **replace)
    with pytest.raises(ValueError, match=r"mnist_file = '.*bad.npz': .*" + message):
        mnist.load(tmp_path / "bad.npz", name="mnist_file")


def test_a_missing_or_unreadable_file_names_the_parameter(tmp_path):
    with pytest.raises(ValueError, match=r"mnist_file = '.*nowhere.npz': no such file; pass the path of an mnist.npz"):
        mnist.load(tmp_path / "nowhere.npz", name="mnist_file")
    with pytest.raises(ValueError, match=r"mnist_file = None: no such file"):
        mnist.load(None, name="mnist_file")
    (tmp_path / "text.npz").write_text("not a zip file")
    with pytest.raises(ValueError, match=r"mnist_file = '.*text.npz': not a readable .npz file"):
        mnist.load(tmp_path / "text.npz", name="mnist_file")
