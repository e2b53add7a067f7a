"""Host tables start on a 64-byte boundary however a sketch is made.

NumPy only promises 16 bytes; ``jax.numpy.from_dlpack(table, copy=False)``
imports host memory without a copy only when it is aligned as XLA's CPU
buffers are, so the host backends allocate every table 64-byte aligned.
(``from_table`` wraps the caller's memory as it is.)
"""
import numpy as np
import pytest

from sketchlib import CountSketch


def aligned(sk):
    """Whether a sketch's table is C-contiguous and starts on a 64-byte boundary."""
    return sk.table.flags.c_contiguous and sk.table.ctypes.data % 64 == 0


@pytest.mark.parametrize("cols", [16, 7, 13])      # 7 and 13: tables whose bytes are not a multiple of 64
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_way_of_making_a_sketch_gives_an_aligned_table(host_backend, cols, dtype, tmp_path):
    d, rows = 50, 3
    sk = CountSketch(d, rows, cols, dtype=dtype, backend=host_backend)
    x = np.linspace(-1, 1, d).astype(dtype)
    sk.insert(x)
    stack = np.stack([x, -x, 2 * x, x[::-1], x])
    sk.save(tmp_path / "s.sketch")
    made = {
        "new": sk,
        "empty_like": sk.empty_like(),
        "copy": sk.copy(),
        "to": sk.to(host_backend),
        "to numpy": sk.to("numpy"),
        "from_bytes": CountSketch.from_bytes(sk.to_bytes(), backend=host_backend),
        "load": CountSketch.load(tmp_path / "s.sketch", backend=host_backend),
        "add": sk + sk,
        "sub": sk - sk,
        "mul": sk * 3.0,
        "neg": -sk,
    }
    for i, each in enumerate(sk.sketch_each(stack)):
        made[f"sketch_each[{i}]"] = each
    bad = [name for name, s in made.items() if not aligned(s)]
    assert bad == []
    # the padded sketch_each tables hold the right sketches (each equals its own insert)
    for row, each in zip(stack, sk.sketch_each(stack)):
        np.testing.assert_allclose(each.table, sk.empty_like().insert(row).table, rtol=1e-5, atol=1e-6)


def test_jax_sees_the_table_itself_without_a_copy():
    """``jnp.from_dlpack(export_table(sketch), copy=False)`` imports the aligned table zero-copy, so
    JAX sees every later insert (a copy would go stale)."""
    jnp = pytest.importorskip("jax.numpy", reason="JAX is not installed (pip install jax)")
    from adapters import dlpack

    sk = CountSketch(1000, 3, 64, backend="numpy")
    view = jnp.from_dlpack(dlpack.export_table(sk), copy=False)
    assert view.unsafe_buffer_pointer() == sk.table.ctypes.data
    x = np.zeros(1000, np.float32)
    x[7] = 5.0
    sk.insert(x)
    np.testing.assert_array_equal(np.asarray(view), sk.table)
    assert float(jnp.abs(view).sum()) == 15.0
