"""Sketch torch tensors and models directly, without copies.

CPU tensors reach the NumPy/Numba backend as NumPy arrays that share their
memory (``Tensor.numpy()``); CUDA tensors reach the CuPy backend through
DLPack.  Every CUDA call runs with torch's current stream as CuPy's current
stream (``cupy.cuda.Stream.from_external`` on CuPy >= 14, else
``cupy.cuda.ExternalStream``), so sketch kernels are ordered after the
torch work that produced their input and before the torch work that reads
their output, with no host synchronisation.  Results come back as tensors on
the sketch's device.

Tensors that require grad are detached (sketching is not differentiable).
float16 inputs are widened to the table dtype; bfloat16 has no NumPy/CuPy
counterpart and is refused (convert with ``tensor.float()``).

torch is imported when this module is imported, never by ``import adapters``.
"""
import contextlib

import numpy as np

from sketchlib import BackendUnavailable, CountSketch, SketchError, backends
from sketchlib.errors import MissingDependency

try:
    import torch
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependency("adapters.torch needs PyTorch: pip install 'sketchgrad[torch]'") from exc

__all__ = [
    "backend_for_device",
    "cuda_stream_scope",
    "estimate_all",
    "flatten_grads",
    "flatten_params",
    "from_array",
    "heavy_hitters",
    "insert",
    "insert_batch",
    "insert_sparse",
    "new_sketch_like_tensor",
    "num_elements",
    "param_views",
    "query",
    "sketch_each",
    "sketch_from_tensor_table",
    "sketch_model_grad",
    "sketch_tensor",
    "table_as_tensor",
    "to_array",
    "topk",
    "unflatten_into",
    "unsketch",
]

_CUPY_HINT = ("CUDA tensors need CuPy: pip install 'sketchgrad[cuda12x]' or "
              "'sketchgrad[cuda13x]'")


def _cupy():
    """Import CuPy, or say what is missing (CuPy itself, or a usable CUDA device)."""
    try:
        import cupy
    except ImportError as exc:
        raise BackendUnavailable(_CUPY_HINT) from exc
    if "cupy" not in backends.available_backends():
        raise BackendUnavailable("CUDA tensors need the CuPy backend, but CuPy cannot use "
                                           "a CUDA device here (none visible, or driver too old)")
    return cupy


def _device(where):
    """A torch.device from a tensor, a device or a string."""
    if isinstance(where, torch.Tensor):
        return where.device
    return torch.device(where)


@contextlib.contextmanager
def cuda_stream_scope(where):
    """Make torch's current stream CuPy's current stream (and device) for CUDA work.

    Parameters
    ----------
    where : torch.Tensor, torch.device or str
        A CPU device makes this a no-op.

    Yields
    ------
    None

    Raises
    ------
    BackendUnavailable
        A CUDA device while CuPy is missing or cannot use it.
    """
    device = _device(where)
    if device.type != "cuda":
        yield
        return
    cupy = _cupy()
    index = device.index if device.index is not None else torch.cuda.current_device()
    with cupy.cuda.Device(index), _cupy_stream(cupy, torch.cuda.current_stream(index), index):
        yield


def _cupy_stream(cupy, stream, index):
    """A CuPy view of a torch CUDA stream (CUDA stream protocol where CuPy has it)."""
    # ExternalStream is deprecated from CuPy 14 on in favour of Stream.from_external.
    if hasattr(cupy.cuda.Stream, "from_external") and hasattr(stream, "__cuda_stream__"):
        return cupy.cuda.Stream.from_external(stream)
    return cupy.cuda.ExternalStream(stream.cuda_stream, index)


def _sketch_scope(sketch):
    """Stream scope for the device a sketch lives on."""
    return cuda_stream_scope(sketch.device)


def to_array(tensor, *, what="tensor"):
    """A NumPy (CPU) or CuPy (CUDA) array sharing ``tensor``'s memory.

    Parameters
    ----------
    tensor : torch.Tensor
        Detached first when it requires grad.  Tensors are always writable.
    what : str
        Name used in error messages.

    Returns
    -------
    numpy.ndarray or cupy.ndarray

    Raises
    ------
    SketchError
        Not a tensor, a dtype NumPy/CuPy cannot represent (bfloat16, complex),
        a sparse layout, or a device other than CPU and CUDA.
    BackendUnavailable
        A CUDA tensor while CuPy is missing.
    """
    if not isinstance(tensor, torch.Tensor):
        raise SketchError(f"{what} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype in (torch.bfloat16, torch.complex32) or tensor.dtype.is_complex:
        raise SketchError(f"{what} has dtype {tensor.dtype}, which NumPy/CuPy cannot represent; "
                          f"convert it (e.g. tensor.float())")
    if tensor.is_sparse or tensor.layout != torch.strided:
        raise SketchError(f"{what} must be a dense (strided) tensor, got layout {tensor.layout}")
    tensor = tensor.detach()
    if tensor.device.type == "cpu":
        return tensor.numpy()
    if tensor.device.type == "cuda":
        with cuda_stream_scope(tensor):
            return _cupy().from_dlpack(tensor)
    raise SketchError(f"{what} is on {tensor.device}; only CPU and CUDA tensors are supported")


def from_array(array):
    """A torch tensor sharing the memory of a NumPy or CuPy array.

    Read-only NumPy arrays are refused (torch tensors are always writable).

    Parameters
    ----------
    array : numpy.ndarray or cupy.ndarray

    Returns
    -------
    torch.Tensor

    Raises
    ------
    SketchError
        A read-only array, or an array of another library.
    """
    lib = backends.array_library_of(array)
    if lib == "numpy":
        if not array.flags.writeable:
            raise SketchError("array is read-only; torch tensors are always writable, "
                              "so it cannot be shared (pass array.copy())")
        return torch.from_numpy(array)
    if lib == "cupy":
        with cuda_stream_scope(f"cuda:{array.device.id}"):
            return torch.from_dlpack(array)
    raise SketchError(f"expected a NumPy or CuPy array, got {type(array).__name__}")


def _tensor_for(sketch, tensor, what):
    """Check a tensor sits on the sketch's device; return it as an array."""
    if not isinstance(tensor, torch.Tensor):
        raise SketchError(f"{what} must be a torch.Tensor, got {type(tensor).__name__}")
    mine = sketch.device
    theirs = "cpu" if tensor.device.type == "cpu" else (
        f"cuda:{tensor.device.index if tensor.device.index is not None else torch.cuda.current_device()}"
        if tensor.device.type == "cuda" else str(tensor.device))
    if theirs != mine:
        raise SketchError(f"{what} is on {theirs} but the sketch is on {mine}; "
                          f"move one of them explicitly (tensor.to(...) or sketch.to(...))")
    return to_array(tensor, what=what)


def backend_for_device(device):
    """The sketch backend for tensors on ``device``: CuPy for CUDA, else Numba, else NumPy.

    Parameters
    ----------
    device : torch.device or str

    Returns
    -------
    str

    Raises
    ------
    SketchError
        A device other than CPU and CUDA.
    BackendUnavailable
        CUDA while CuPy is missing.
    """
    device = _device(device)
    if device.type == "cuda":
        _cupy()
        return backends.get_backend("cupy").NAME
    if device.type == "cpu":
        return backends.backend_for_array(np.empty(0))
    raise SketchError(f"no sketch backend for tensors on {device}; only CPU and CUDA are supported")


def new_sketch_like_tensor(tensor, rows, cols, *, d=None, seed=0, dtype=None, hash_version="auto"):
    """A zero sketch on ``tensor``'s device.

    Parameters
    ----------
    tensor : torch.Tensor
        Decides the device and, unless given, ``d`` (its number of elements)
        and the dtype (its own when float32/float64, else float32).
    rows, cols : int
    d : int, optional
    seed : int, default 0
    dtype : {"float32", "float64"} or torch.dtype, optional
    hash_version : {"auto", 1, 2}, default "auto"
        See ``sketchlib.CountSketch``.

    Returns
    -------
    CountSketch

    Raises
    ------
    SketchError
        A tensor that is not on the sketch's device, has an unsupported dtype
        or layout, or that the sketch refuses; nothing is modified.
    BackendUnavailable
        CUDA work while CuPy is missing.
    """
    if not isinstance(tensor, torch.Tensor):
        raise SketchError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if d is None:
        d = tensor.numel()
    if dtype is None:
        dtype = tensor.dtype if tensor.dtype in (torch.float32, torch.float64) else torch.float32
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).replace("torch.", "")
    backend = backend_for_device(tensor.device)
    with cuda_stream_scope(tensor):
        return CountSketch(d, rows, cols, seed=seed, dtype=dtype, hash_version=hash_version, backend=backend)


def insert(sketch, tensor, *, check_finite=True):
    """``sketch += S(tensor)``; any shape with ``sketch.d`` elements (flattened in C order).

    Parameters
    ----------
    sketch : CountSketch
    tensor : torch.Tensor
        On the sketch's device, floating dtype.
    check_finite : bool, default True

    Returns
    -------
    CountSketch
        ``sketch``.

    Raises
    ------
    SketchError
        A tensor that is not on the sketch's device, has an unsupported dtype
        or layout, or that the sketch refuses; nothing is modified.
    BackendUnavailable
        CUDA work while CuPy is missing.
    """
    array = _tensor_for(sketch, tensor, "tensor")
    with _sketch_scope(sketch):
        return sketch.insert(array.reshape(-1), check_finite=check_finite)


def sketch_tensor(tensor, rows, cols, *, seed=0, dtype=None, hash_version="auto"):
    """A new sketch of ``tensor`` (flattened) on its device: ``new_sketch_like_tensor`` + ``insert``.

    Parameters
    ----------
    tensor : torch.Tensor
    rows, cols : int
    seed : int, default 0
    dtype : str or torch.dtype, optional
    hash_version : {"auto", 1, 2}, default "auto"

    Returns
    -------
    CountSketch

    Raises
    ------
    SketchError
        A tensor that is not on the sketch's device, has an unsupported dtype
        or layout, or that the sketch refuses; nothing is modified.
    BackendUnavailable
        CUDA work while CuPy is missing.
    """
    sketch = new_sketch_like_tensor(tensor, rows, cols, seed=seed, dtype=dtype, hash_version=hash_version)
    return insert(sketch, tensor)


def insert_sparse(sketch, indices, values, *, check_finite=True):
    """Add the sparse vector ``(indices, values)`` (1-D tensors on the sketch's device).

    Parameters
    ----------
    sketch : CountSketch
    indices : integer torch.Tensor of shape (n,)
    values : floating torch.Tensor of shape (n,)
    check_finite : bool, default True

    Returns
    -------
    CountSketch
        ``sketch``.

    Raises
    ------
    SketchError
        A tensor that is not on the sketch's device, has an unsupported dtype
        or layout, or that the sketch refuses; nothing is modified.
    BackendUnavailable
        CUDA work while CuPy is missing.
    """
    idx = _tensor_for(sketch, indices, "indices")
    vals = _tensor_for(sketch, values, "values")
    with _sketch_scope(sketch):
        return sketch.insert_sparse(idx, vals, check_finite=check_finite)


def insert_batch(sketch, stack, *, check_finite=True):
    """Add the sketch of the sum of the rows of an ``(n, d)`` tensor.

    Parameters
    ----------
    sketch : CountSketch
    stack : floating torch.Tensor of shape (n, d)
    check_finite : bool, default True

    Returns
    -------
    CountSketch
        ``sketch``.

    Raises
    ------
    SketchError
        A tensor that is not on the sketch's device, has an unsupported dtype
        or layout, or that the sketch refuses; nothing is modified.
    BackendUnavailable
        CUDA work while CuPy is missing.
    """
    array = _tensor_for(sketch, stack, "stack")
    with _sketch_scope(sketch):
        return sketch.insert_batch(array, check_finite=check_finite)


def sketch_each(sketch, stack, *, check_finite=True):
    """One new sketch (parameters of ``sketch``) per row of an ``(n, d)`` tensor.

    Parameters
    ----------
    sketch : CountSketch
    stack : floating torch.Tensor of shape (n, d)
    check_finite : bool, default True

    Returns
    -------
    list of CountSketch

    Raises
    ------
    SketchError
        A tensor that is not on the sketch's device, has an unsupported dtype
        or layout, or that the sketch refuses; nothing is modified.
    BackendUnavailable
        CUDA work while CuPy is missing.
    """
    array = _tensor_for(sketch, stack, "stack")
    with _sketch_scope(sketch):
        return sketch.sketch_each(array, check_finite=check_finite)


def query(sketch, indices):
    """Point estimates at an integer tensor of indices, as a tensor on the sketch's device.

    Parameters
    ----------
    sketch : CountSketch
    indices : integer torch.Tensor of shape (n,)

    Returns
    -------
    torch.Tensor

    Raises
    ------
    SketchError
        A tensor that is not on the sketch's device, has an unsupported dtype
        or layout, or that the sketch refuses; nothing is modified.
    BackendUnavailable
        CUDA work while CuPy is missing.
    """
    idx = _tensor_for(sketch, indices, "indices")
    with _sketch_scope(sketch):
        return from_array(sketch.query(idx))


def estimate_all(sketch):
    """All d estimates as a tensor on the sketch's device.

    Parameters
    ----------
    sketch : CountSketch

    Returns
    -------
    torch.Tensor
    """
    with _sketch_scope(sketch):
        return from_array(sketch.estimate_all())


def topk(sketch, k):
    """``(indices int64, values)`` tensors of the k largest estimates by magnitude.

    Parameters
    ----------
    sketch : CountSketch
    k : int

    Returns
    -------
    indices, values : torch.Tensor

    Raises
    ------
    SketchError
        A bad ``k``.
    """
    with _sketch_scope(sketch):
        idx, vals = sketch.topk(k)
        return from_array(idx), from_array(vals)


def heavy_hitters(sketch, threshold):
    """``(indices, values)`` tensors of the estimates with magnitude >= threshold, ascending indices.

    Parameters
    ----------
    sketch : CountSketch
    threshold : float

    Returns
    -------
    indices, values : torch.Tensor

    Raises
    ------
    SketchError
        A bad threshold.
    """
    with _sketch_scope(sketch):
        idx, vals = sketch.heavy_hitters(threshold)
        return from_array(idx), from_array(vals)


def unsketch(sketch, k=None, *, threshold=None):
    """Dense d-vector tensor holding only the heavy hitters (top-k or by threshold).

    Parameters
    ----------
    sketch : CountSketch
    k : int, optional
    threshold : float, optional
        Exactly one of ``k`` and ``threshold``.

    Returns
    -------
    torch.Tensor

    Raises
    ------
    SketchError
        Neither or both of ``k`` and ``threshold``, or a bad value.
    """
    with _sketch_scope(sketch):
        return from_array(sketch.unsketch(k, threshold=threshold))


def table_as_tensor(sketch):
    """The sketch's ``(rows, cols)`` table as a torch tensor sharing its memory.

    Writing into the tensor (e.g. ``dist.all_reduce``) changes the sketch.

    Parameters
    ----------
    sketch : CountSketch

    Returns
    -------
    torch.Tensor

    Raises
    ------
    SketchError
        If ``sketch`` is not a CountSketch.
    """
    if not isinstance(sketch, CountSketch):
        raise SketchError(f"expected a CountSketch, got {type(sketch).__name__}")
    return from_array(sketch.table)


def sketch_from_tensor_table(table, d, *, seed=0):
    """Wrap a ``(rows, cols)`` float tensor as a sketch that writes into it (no copy).

    Parameters
    ----------
    table : torch.Tensor of shape (rows, cols)
        float32 or float64, contiguous.
    d : int
    seed : int, default 0

    Returns
    -------
    CountSketch

    Raises
    ------
    SketchError
        A tensor that is not on the sketch's device, has an unsupported dtype
        or layout, or that the sketch refuses; nothing is modified.
    BackendUnavailable
        CUDA work while CuPy is missing.
    """
    array = to_array(table, what="table")
    with cuda_stream_scope(table):
        return CountSketch.from_table(array, d, seed=seed)


# ----------------------------------------------------------------- models
def _params(model, trainable_only):
    """The parameters that make up the flat layout, in ``model.parameters()`` order."""
    if not isinstance(model, torch.nn.Module):
        raise SketchError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = [p for p in model.parameters() if p.requires_grad or not trainable_only]
    if not params:
        raise SketchError("the model has no parameters" + (" that require grad" if trainable_only else ""))
    return params


def num_elements(model, *, trainable_only=False):
    """Length of the flat vector of ``model`` (sum of parameter sizes)."""
    return sum(p.numel() for p in _params(model, trainable_only))


def _flat_target(params, dtype, device):
    """Resolve the dtype and device of a flat vector built from ``params``."""
    if device is None:
        devices = {p.device for p in params}
        if len(devices) > 1:
            raise SketchError(f"parameters live on several devices ({sorted(map(str, devices))}); "
                              f"pass device=... to gather them")
        device = devices.pop()
    if dtype is None:
        dtype = params[0].dtype
        for p in params[1:]:
            dtype = torch.promote_types(dtype, p.dtype)
    return dtype, torch.device(device)


def flatten_params(model, *, trainable_only=False, dtype=None, device=None):
    """All parameters of ``model`` as one new 1-D tensor (a copy).

    Parameters
    ----------
    model : torch.nn.Module
    trainable_only : bool, default False
        Leave out parameters with ``requires_grad=False`` (frozen); the same
        flag must be used with :func:`flatten_grads` and :func:`unflatten_into`.
    dtype : torch.dtype, optional
        Default: the promoted dtype of the parameters.
    device : torch.device or str, optional
        Default: the parameters' device (an error if they are on several).

    Returns
    -------
    torch.Tensor
        Of length :func:`num_elements`, in ``model.parameters()`` order.
    """
    params = _params(model, trainable_only)
    dtype, device = _flat_target(params, dtype, device)
    return torch.cat([p.detach().reshape(-1).to(device=device, dtype=dtype) for p in params])


def flatten_grads(model, *, trainable_only=False, missing="zeros", dtype=None, device=None):
    """All gradients of ``model`` as one new 1-D tensor, in the layout of :func:`flatten_params`.

    Parameters
    ----------
    model : torch.nn.Module
    trainable_only : bool, default False
        Leave out parameters with ``requires_grad=False``.
    missing : {"zeros", "error"}, default "zeros"
        What a parameter whose ``.grad`` is None contributes: zeros, or an error.
    dtype, device : optional
        As in :func:`flatten_params`.

    Returns
    -------
    torch.Tensor
    """
    if missing not in ("zeros", "error"):
        raise SketchError(f"missing must be 'zeros' or 'error', got {missing!r}")
    params = _params(model, trainable_only)
    dtype, device = _flat_target(params, dtype, device)
    if missing == "error":
        names = [n for n, p in model.named_parameters() if (p.requires_grad or not trainable_only)
                 and p.grad is None]
        if names:
            raise SketchError(f"parameters without a gradient: {', '.join(names)}")
    parts = [torch.zeros(p.numel(), dtype=dtype, device=device) if p.grad is None
             else p.grad.detach().reshape(-1).to(device=device, dtype=dtype) for p in params]
    return torch.cat(parts)


def unflatten_into(model, vec, *, what="params", trainable_only=False):
    """Copy a flat vector back into a model's parameters or gradients (in place).

    Parameters
    ----------
    model : torch.nn.Module
    vec : torch.Tensor
        1-D, floating, of length :func:`num_elements`; any device (copied to
        each parameter's device and dtype).
    what : {"params", "grads"}
        ``"grads"`` creates missing ``.grad`` tensors.
    trainable_only : bool, default False
        Must match the flag used to flatten.

    Notes
    -----
    Everything is checked before the first parameter is written, so a bad
    vector leaves the model unchanged.
    """
    if what not in ("params", "grads"):
        raise SketchError(f"what must be 'params' or 'grads', got {what!r}")
    if not isinstance(vec, torch.Tensor):
        raise SketchError(f"vec must be a torch.Tensor, got {type(vec).__name__}")
    params = _params(model, trainable_only)
    total = sum(p.numel() for p in params)
    if vec.dim() != 1 or vec.numel() != total:
        raise SketchError(f"vec must be 1-D with {total} elements, got shape {tuple(vec.shape)}")
    if not vec.dtype.is_floating_point:
        raise SketchError(f"vec must have a floating dtype, got {vec.dtype}")
    vec = vec.detach()
    offset = 0
    with torch.no_grad():
        for p in params:
            part = vec[offset:offset + p.numel()].view(p.shape)
            offset += p.numel()
            if what == "params":
                p.copy_(part)
            elif p.grad is None:
                p.grad = part.to(device=p.device, dtype=p.dtype, copy=True)
            else:
                p.grad.copy_(part)
    return model


def param_views(model, flat, *, trainable_only=False):
    """Views of a flat vector shaped like the model's parameters (no copy), for ``torch.func.functional_call``.

    Parameters
    ----------
    model : torch.nn.Module
    flat : torch.Tensor
        1-D, of length :func:`num_elements` (same ``trainable_only``), in the
        layout of :func:`flatten_params`.
    trainable_only : bool, default False
        Must match the flag used to flatten.

    Returns
    -------
    dict
        Parameter name (as in ``named_parameters()``) -> view of ``flat``.

    Raises
    ------
    SketchError
        ``flat`` is not 1-D or its length differs from the model's.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad or not trainable_only]
    total = sum(p.numel() for _, p in named)
    if not isinstance(flat, torch.Tensor) or flat.dim() != 1 or flat.shape[0] != total:
        shape = tuple(flat.shape) if isinstance(flat, torch.Tensor) else type(flat).__name__
        raise SketchError(f"flat vector has shape {shape}, the model {total} "
                          f"{'trainable ' if trainable_only else ''}parameters")
    out, start = {}, 0
    for name, p in named:
        out[name] = flat[start:start + p.numel()].view(p.shape)
        start += p.numel()
    return out


def sketch_model_grad(model, sketch, *, trainable_only=False, check_finite=True):
    """Insert the model's flat gradient (:func:`flatten_grads`, zeros where missing) into ``sketch``.

    The gradient is gathered on the sketch's device.  Returns ``sketch``.
    """
    if not isinstance(sketch, CountSketch):
        raise SketchError(f"sketch must be a CountSketch, got {type(sketch).__name__}")
    n = num_elements(model, trainable_only=trainable_only)
    if n != sketch.d:
        raise SketchError(f"the model has {n} parameters but the sketch has d={sketch.d}")
    flat = flatten_grads(model, trainable_only=trainable_only, device=sketch.device)
    return insert(sketch, flat, check_finite=check_finite)
