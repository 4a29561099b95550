"""Benchmark data loaders (trainer.datasets); skipped when the shared data folder is absent."""
import numpy as np
import pytest

from trainer import datasets

try:
    ROOT = datasets.shared_root()
except datasets.DatasetError as exc:  # pragma: no cover - depends on the machine
    ROOT, REASON = None, str(exc)
else:
    REASON = ""

needs_shared = pytest.mark.skipif(ROOT is None, reason=f"shared data not available: {REASON}")


def test_missing_root_names_the_folder(tmp_path):
    with pytest.raises(datasets.DatasetError, match=str(tmp_path / "nope")):
        datasets.shared_root(tmp_path / "nope")


def test_bad_idx_header(tmp_path):
    p = tmp_path / "x.idx"
    p.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(datasets.DatasetError, match="not an idx uint8 file"):
        datasets.read_idx(p)


@needs_shared
def test_fashion_split_is_seeded_and_disjoint():
    a = datasets.fashion_mnist(n_train=50, n_test_normal=20, n_test_anomalous=20, seed=3)
    b = datasets.fashion_mnist(n_train=50, n_test_normal=20, n_test_anomalous=20, seed=3)
    assert a.train.shape == (50, 28, 28, 3) and a.train.dtype == np.uint8
    np.testing.assert_array_equal(a.train, b.train)
    assert a.test_labels.tolist() == [0] * 20 + [1] * 20


@needs_shared
def test_mnist_ones_split_without_overlap():
    d = datasets.mnist_test(seed=1)
    flat_tr = {x.tobytes() for x in d.train}
    normal_test = [x.tobytes() for x, lab in zip(d.test, d.test_labels) if lab == 0]
    assert not flat_tr.intersection(normal_test)
    assert d.info["n_test_anomalous"] == int(d.test_labels.sum())


@needs_shared
def test_magnetic_tile_split():
    d = datasets.magnetic_tile(seed=0)
    assert not set(d.train) & set(d.test)
    assert len(d.train) + d.info["n_test_normal"] == 952
    assert datasets.tile_mask(d.test[-1]).dtype == bool
