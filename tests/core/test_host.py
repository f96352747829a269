"""core/host.py: host buffers a CPU jax array adopts instead of copying."""
import jax
import ml_dtypes
import numpy as np
import pytest

from jaxshare.core import host


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.uint8])
@pytest.mark.parametrize("shape", [(3, 1000, 257), (64, 1024, 65), (0, 4), ()])  # 17 MB: a mapping of its own
def test_buffers_are_aligned_and_adopted_without_a_copy(shape, dtype):
    x = host.empty(shape, dtype)
    assert x.shape == shape and x.dtype == dtype and (x.ctypes.data % host.ALIGN == 0 or not x.size)
    z = host.zeros(shape, dtype)
    assert not np.any(z.astype(np.float32))
    if x.size:
        x[...] = np.arange(x.size, dtype=np.float32).reshape(shape).astype(dtype)
        a = host.adopt(x)
        assert a.unsafe_buffer_pointer() == x.ctypes.data  # the same memory, not a copy
        np.testing.assert_array_equal(np.asarray(a), x)


def test_large_buffers_are_mappings_of_their_own_and_start_zeroed():
    """Not numpy allocations, for which numpy asks for huge pages (see core/host.py)."""
    import mmap

    def owner(a):
        while isinstance(a, (np.ndarray, memoryview)):
            a = a.base if isinstance(a, np.ndarray) else a.obj
        return a

    x = host.zeros((64, 1024, 65), np.float32)
    assert isinstance(owner(x), mmap.mmap) and x.ctypes.data % mmap.PAGESIZE == 0 and not np.any(x)
    assert not isinstance(owner(host.empty((3, 1000, 257), np.float32)), mmap.mmap)  # below the threshold


def test_numpys_own_large_buffers_are_not_aligned_enough_which_is_why_this_exists():
    x = np.empty((64, 1024, 64), np.float32)  # 16 MB: glibc mmap plus a 16-byte header
    if x.ctypes.data % host.ALIGN == 0:
        pytest.skip("this allocator happens to align: nothing to show")
    assert jax.device_put(x, may_alias=True).unsafe_buffer_pointer() != x.ctypes.data


def test_a_loaded_checkpoint_holds_each_leaf_once(tmp_path, monkeypatch):
    from jaxshare.core.params import init_params
    from jaxshare.io.native import load_native, save_native
    from tests.tiny_model import TRAIN_CFG

    save_native(tmp_path / "m", TRAIN_CFG, init_params(TRAIN_CFG, jax.random.key(0)))
    adopted = []
    real = host.adopt

    def spy(x):
        a = real(x)
        adopted.append(a.unsafe_buffer_pointer() == x.ctypes.data)
        return a

    monkeypatch.setattr(host, "adopt", spy)
    _, params, _ = load_native(tmp_path / "m")
    assert len(adopted) == len(jax.tree_util.tree_leaves(params)) and all(adopted)
