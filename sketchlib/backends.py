"""The backend contract: what a sketch backend implements, and how it is registered.

A *backend* holds a sketch's ``(rows, cols)`` table in arrays of one array
library (NumPy, CuPy, ...) and implements every table operation.
:class:`sketchlib.CountSketch` validates each argument at the edge (types,
shapes, dtypes, devices, index ranges, finiteness, scalars) and then calls the
backend, which may trust what it gets; the sketch does no array arithmetic of
its own.  Adding a backend takes three files: the module, one
:func:`register_backend` call, and its tests (``tests/test_backend_contract.py``
runs the shared battery on every registered backend; ``tests/_toy_backend.py``
is a complete example in ~100 lines).

Registering
-----------
::

    from sketchlib.backends import register_backend
    register_backend("jax", "mypkg.jax_backend", array_library="jax", priority=25,
                     install_hint="pip install jax")
    CountSketch(d, rows, cols, backend="jax")

The module (or its dotted path, or a zero-argument callable returning it) is
imported on first use and checked against :data:`CONTRACT`.  ``priority``
orders :func:`available_backends` and decides :func:`auto_backend` and
:func:`backend_for_array` (built-ins: cupy 30, numba 20, numpy 10).

Recognising arrays
------------------
An array belongs to the library named by the top-level module of its type,
``type(x).__module__.split(".")[0]`` (:func:`array_library_of`), so
classifying an array imports nothing; a backend is registered with the
library of its tables (``array_library``).

The contract
------------
A backend module defines the names in :data:`CONTRACT`.  ``table`` is a
``(rows, cols)`` C-contiguous float32/float64 array of the backend's library;
``keys`` the ``(rows, 2)`` uint32 NumPy row keys and ``version`` the hash
version (1 or 2) of ``sketchlib._hash`` (the hashes every backend must
reproduce bit for bit); ``d`` the dimension.  Every input has been validated:
arrays are of the backend's library and the table's device, values and stacks
are C-contiguous in the table dtype (after :func:`as_input`), indices are
C-contiguous int64 in ``[0, d)``, scalars are finite Python floats, ``k`` is in
``[1, d]``, a threshold is a finite float >= 0.

Attributes

``NAME`` : str
    The registered name.
``ARRAY_LIBRARY`` : str
    Top-level module of its arrays (as registered).

Plumbing

``available() -> bool``
    Whether it can run here (library importable, device visible).  Must not
    raise; an ``ImportError`` is read as False.
``array_module() -> module``
    The array namespace of its arrays (``numpy``, ``cupy``...), for callers
    that do generic array math on its tables.
``device_of(array) -> str``
    ``"cpu"`` or ``"cuda:N"`` (any string; two arrays combine only when equal).
``zeros(shape, dtype) -> array``
    A new zero array (host backends: 64-byte aligned).
``zeros_tables(n, rows, cols, dtype) -> array``
    ``n`` zero tables as one ``(n, rows, cols)`` array whose ``[i]`` are
    C-contiguous tables (``sketch_each``'s output).
``from_numpy(ndarray) -> array``
    A *new* array (never a view of the argument) holding a NumPy array's data.
``to_numpy(array) -> numpy.ndarray``
    The data on the host (may share memory for host backends).
``to_host_scalars(array) -> tuple``
    The elements of a small array as Python scalars: the backend's one way to
    read data back to the host where a device backend synchronises; it calls
    :func:`record_host_transfer` once.
``as_input(x, dtype) -> array``
    ``x`` C-contiguous in ``dtype``, without a copy when it already is.
``all_finite(x) -> bool``
    No NaN or infinity in ``x`` (its flag read through ``to_host_scalars``).
``abs_stats(x, table) -> (float, float)``
    ``sum(|x|)`` and ``max(|table|)`` as Python floats, read in *one*
    ``to_host_scalars`` call; either argument may be None (its entry is 0.0);
    NaN/inf in an argument make its entry NaN/inf.  ``x`` is a validated
    floating input before ``as_input`` (any float dtype, maybe not
    contiguous); the sum may be computed in x's dtype (relative error below
    1e-3: the sketch adds that margin).  The sketch's overflow check: with
    ``check_finite`` it replaces ``all_finite`` on inputs (which then only
    tells NaN/inf from a sum that overflowed).
``index_range(indices) -> (int, int)``
    Minimum and maximum of a non-empty integer array (one host read).

Updating functions (``fill_zero``, ``scale``, ``add_scaled``, the inserts,
``zero_buckets``) update ``table`` in place and return None, and leave it as
before or fully updated if a Python exception (``KeyboardInterrupt``) stops
them: several steps accumulate into a scratch and commit with one array
operation; a backend whose
arrays are immutable (JAX-style) returns the updated table instead, and the
sketch keeps it (``tests/_toy_backend.py`` works that way).  Only sharing the
table's memory (``CountSketch.from_table``, DLPack export followed by writes
into it) then behaves differently.

Table arithmetic

``fill_zero(table)``; ``scale(table, alpha)`` (``table *= alpha`` with alpha
cast to the table dtype); ``add_scaled(table, other, alpha)`` (``table +=
alpha * other``, a plain add when ``alpha == 1.0``, so that ``a - b`` equals
``a + (-1) * b`` bit for bit); ``copy_table(table) -> new table``;
``scatter_dense(d, indices, values, dtype) -> d-vector`` (zeros, then
``out[indices] = values``).

Sketch kernels

``insert_dense(table, x, keys, version)``
    ``table += S(x)`` for a d-vector.
``insert_sparse(table, indices, values, keys, version)``
    ``table += S(v)`` with ``v[indices] += values`` (duplicates accumulate; n >= 1).
``insert_stack_sum(table, stack, keys, version)``
    ``table += S(stack.sum(0))`` for an ``(n, d)`` stack (n may be 0).
``insert_stack_each(tables, stack, keys, version)``
    ``tables[i] += S(stack[i])``; ``tables`` from ``zeros_tables``.
``query(table, indices, keys, version) -> values``
    Median over rows of ``s_j(i) * T[j, h_j(i)]`` (mean of the two middle
    values for an even number of rows), in the table dtype; NaN when any of
    those values is NaN (as ``numpy.median``).  Every backend follows this
    (the CUDA median network is checked through the CPU emulation of its
    kernels; only a table already poisoned through ``check_finite=False`` is
    concerned).
``estimate_all(table, d, keys, version) -> values``
    ``query`` of ``0..d-1``.
``topk(table, d, k, keys, version) -> (indices int64, values)``
    The k largest ``|estimate|``, by ``|estimate|`` descending, ties by index
    ascending.  Order is that of the float bits of ``|v|`` (sign cleared) read
    as unsigned integers: NaN ranks above +inf (as a radix select on those
    bits does), so every backend agrees on tables holding NaN/inf.
``unsketch_topk(table, d, k, keys, version) -> d-vector``
    Those k estimates in place, zeros elsewhere.
``heavy(table, d, threshold, keys, version) -> (indices int64, values)``
    Every coordinate with ``|estimate| >= threshold`` (compared in the table
    dtype) or NaN, i.e. ``not |estimate| < threshold``; indices ascending.
``zero_buckets(table, indices, keys, version)``
    Zero, in each row, the bucket of each index (n >= 1).
``l2_estimate(table) -> float``
    ``sqrt(median_j sum_b T[j, b]**2)``, row sums in float64.

Results are compared with the NumPy reference (``numpy_ref``): estimates from
a given table exactly, tables built by inserts up to float rounding.

Counting host transfers
-----------------------
:func:`count_host_transfers` counts the device-to-host reads that backends
record (through ``to_host_scalars``) inside a block: the number of host
synchronisations a step costs on a GPU, measurable on a CPU.  Built-in
backends record the finiteness flag of a checked input, the index range of
validated indices, the row sums of ``l2_estimate`` and, where an output is
sized by a count, that count (Numba's and CuPy's heavy hitters), and CuPy's
"sync" top-k reads one radix pass's counts per pass (1 to 3; its "dev" top-k
reads nothing).  Internal callers whose inputs are valid by construction skip
the first two with ``check_finite=False`` and ``check_bounds=False``
(``CountSketch.insert*``, ``insert_sparse``, ``query``, ``zero_coordinates``):
a FetchSGD server step then reads nothing back from a host backend.
"""
from ._backends import (
    CONTRACT,
    HostTransfers,
    array_library_of,
    auto_backend,
    available_backends,
    backend_for_array,
    backends_for_library,
    count_host_transfers,
    get_backend,
    library_of_backend,
    record_host_transfer,
    register_backend,
    registered_backends,
    unregister_backend,
)
from .errors import BackendUnavailable, UnknownBackend, UnsupportedArray

__all__ = [
    "CONTRACT",
    "BackendUnavailable",
    "HostTransfers",
    "UnknownBackend",
    "UnsupportedArray",
    "array_library_of",
    "auto_backend",
    "available_backends",
    "backend_for_array",
    "backends_for_library",
    "count_host_transfers",
    "get_backend",
    "is_array_of",
    "library_of_backend",
    "record_host_transfer",
    "register_backend",
    "registered_backends",
    "unregister_backend",
]


def is_array_of(x, library):
    """Whether ``x`` is an array of ``library`` (``"numpy"``, ``"cupy"``, ...), importing nothing.

    Parameters
    ----------
    x : object
    library : str
        Top-level module name.

    Returns
    -------
    bool
        True when ``type(x)`` comes from ``library`` and has ``shape`` and ``dtype``.
    """
    return array_library_of(x) == library and hasattr(x, "shape") and hasattr(x, "dtype")
