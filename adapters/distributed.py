"""All-reduce Count Sketches across processes with torch.distributed.

Sketches are linear, so the sum of the tables of sketches that share their
hashes is the sketch of the sum of the vectors: one ``all_reduce`` of the
``rows x cols`` table replaces an all-reduce of the d-vector.  The table is
reduced in place, through a tensor that shares its memory (no copy).

Before summing, every rank all-gathers a small signature tensor (d, rows,
cols, seed, hash version, dtype) and checks that all ranks agree; a mismatch
raises :class:`sketchlib.IncompatibleSketches` on every rank (all ranks see
all signatures), instead of silently adding tables built with other hashes.

Use gloo for CPU sketches and NCCL for CUDA sketches.  CUDA collectives are
issued on torch's current stream, which is also where :mod:`adapters.torch`
runs the sketch kernels.
"""
import numpy as np

from sketchlib import CountSketch, IncompatibleSketches, SketchError
from sketchlib.errors import MissingDependency

try:
    import torch
    import torch.distributed as dist
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependency("adapters.distributed needs PyTorch: pip install 'sketchgrad[torch]'") from exc

from . import torch as _at

__all__ = ["allreduce_sketch_", "allreduce_sketches_", "check_same_sketch", "signature_tensor"]

_FIELDS = ("d", "rows", "cols", "seed", "hash_version", "dtype")
_DTYPE_CODES = {"float32": 1, "float64": 2}


def signature_tensor(sketch, device="cpu"):
    """The sketch's signature as an int64 tensor of 7 numbers (the 64-bit seed split in two halves).

    Parameters
    ----------
    sketch : CountSketch
    device : torch.device or str
        Where the tensor is made (CUDA for NCCL).

    Returns
    -------
    torch.Tensor
        int64, shape (7,).
    """
    d, rows, cols, seed, hash_version, dtype = sketch.signature()
    values = [d, rows, cols, seed >> 32, seed & 0xFFFFFFFF, hash_version, _DTYPE_CODES[dtype]]
    return torch.tensor(values, dtype=torch.int64, device=device)


def _describe(values):
    """Readable signature from a gathered row of :func:`signature_tensor`."""
    d, rows, cols, hi, lo, version, code = (int(v) for v in values)
    dtype = {v: k for k, v in _DTYPE_CODES.items()}.get(code, f"code {code}")
    return dict(zip(_FIELDS, (d, rows, cols, (hi << 32) | lo, version, dtype), strict=True))


def _check_group():
    """Refuse to run without an initialised process group."""
    if not (dist.is_available() and dist.is_initialized()):
        raise SketchError("torch.distributed is not initialised; call "
                          "torch.distributed.init_process_group(...) first")


def _collective_device(tensor, group):
    """Device for the signature tensors: CUDA under NCCL, else where the table is."""
    if dist.get_backend(group) == "nccl" and not tensor.is_cuda:
        raise SketchError("the NCCL process group needs CUDA sketches; use gloo for CPU "
                          "sketches (or move the sketch with sketch.to('cupy'))")
    return tensor.device


def check_same_sketch(sketches, *, group=None):
    """Raise ``IncompatibleSketches`` on every rank unless all ranks hold sketches of the same kind.

    Parameters
    ----------
    sketches : CountSketch or sequence of CountSketch
        The same number of sketches on every rank, compared position by position.
    group : ProcessGroup, optional

    Raises
    ------
    IncompatibleSketches
        On every rank, when the ranks' sketches differ (count or signature).
    SketchError
        No initialised process group, no sketches, a non-sketch, or CPU sketches under NCCL.
    """
    _check_group()
    sketches = [sketches] if isinstance(sketches, CountSketch) else list(sketches)
    for s in sketches:
        if not isinstance(s, CountSketch):
            raise SketchError(f"expected CountSketch objects, got {type(s).__name__}")
    if not sketches:
        raise SketchError("no sketches given")
    device = _collective_device(_at.table_as_tensor(sketches[0]), group)
    # The count is first so that ranks holding different numbers of sketches fail cleanly.
    mine = torch.cat([torch.tensor([len(sketches)], dtype=torch.int64, device=device)]
                     + [signature_tensor(s, device) for s in sketches])
    width = torch.tensor([mine.numel()], dtype=torch.int64, device=device)
    widths = [torch.empty_like(width) for _ in range(dist.get_world_size(group))]
    dist.all_gather(widths, width, group=group)
    widest = int(max(int(w) for w in widths))
    padded = torch.full((widest,), -1, dtype=torch.int64, device=device)
    padded[:mine.numel()] = mine
    gathered = [torch.empty_like(padded) for _ in widths]
    dist.all_gather(gathered, padded, group=group)
    me = dist.get_rank(group)
    rows = [g.cpu().numpy() for g in gathered]
    for rank, theirs in enumerate(rows):
        if np.array_equal(theirs, rows[me]):
            continue
        if theirs[0] != rows[me][0]:
            raise IncompatibleSketches(f"rank {rank} all-reduces {int(theirs[0])} sketches, "
                                       f"rank {me} {int(rows[me][0])}")
        for i in range(int(rows[me][0])):
            a = _describe(rows[me][1 + 7 * i: 8 + 7 * i])
            b = _describe(theirs[1 + 7 * i: 8 + 7 * i])
            diff = [f"{n}: {a[n]!r} (rank {me}) != {b[n]!r} (rank {rank})" for n in _FIELDS if a[n] != b[n]]
            if diff:
                where = f"sketch {i}: " if len(sketches) > 1 else ""
                raise IncompatibleSketches(f"sketches differ across ranks, not summed; {where}"
                                           + ", ".join(diff))


def _writable_table(sketch):
    """The table as a tensor sharing memory, refusing a read-only one."""
    # CuPy arrays have no writeable flag: device memory is always writable.
    if not getattr(getattr(sketch.table, "flags", None), "writeable", True):
        raise SketchError("the sketch's table is read-only; the all-reduce writes into it")
    return _at.table_as_tensor(sketch)


def allreduce_sketch_(sketch, *, op="sum", group=None, check=True):
    """Sum (or average) a sketch over all ranks, in place on its table.

    Parameters
    ----------
    sketch : CountSketch
        Same parameters on every rank (checked first unless ``check=False``).
    op : {"sum", "mean"}, default "sum"
        ``"mean"`` divides by the world size afterwards.
    group : ProcessGroup, optional
        Default: the world.
    check : bool, default True
        All-gather the signatures first and raise ``IncompatibleSketches`` on
        every rank if they differ.  Costs one small collective.

    Returns
    -------
    CountSketch
        ``sketch``, now the sketch of the sum (mean) of every rank's vector.

    Raises
    ------
    IncompatibleSketches
        As :func:`check_same_sketch` (nothing is summed).
    SketchError
        A bad ``op``, no process group, a read-only table, or CPU sketches under NCCL.
    """
    return allreduce_sketches_([sketch], op=op, group=group, check=check)[0]


def allreduce_sketches_(sketches, *, op="sum", group=None, check=True):
    """:func:`allreduce_sketch_` for several sketches (one collective per table), in order.

    Parameters
    ----------
    sketches : sequence of CountSketch
    op : {"sum", "mean"}, default "sum"
    group : ProcessGroup, optional
    check : bool, default True

    Returns
    -------
    list of CountSketch
        The same sketches, reduced in place.

    Raises
    ------
    IncompatibleSketches, SketchError
        As :func:`allreduce_sketch_`.
    """
    if op not in ("sum", "mean"):
        raise SketchError(f"op must be 'sum' or 'mean', got {op!r}")
    _check_group()
    sketches = list(sketches)
    if not sketches or not all(isinstance(s, CountSketch) for s in sketches):
        raise SketchError("expected a non-empty sequence of CountSketch objects")
    tables = [_writable_table(s) for s in sketches]
    for t in tables:
        _collective_device(t, group)
    if check:
        check_same_sketch(sketches, group=group)
    world = dist.get_world_size(group)
    for sketch, table in zip(sketches, tables):
        # Under the sketch's lock, and its overflow bound re-read afterwards (the sum grew it).
        with sketch.writing_table():
            dist.all_reduce(table, op=dist.ReduceOp.SUM, group=group)
            if op == "mean":
                table.div_(world)
    return sketches
