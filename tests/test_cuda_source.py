"""The CUDA source must compile even where no GPU runs the tests.

nvcc (whole-program, sm_90) and, when CuPy ships NVRTC, NVRTC itself (the compiler
CuPy uses at run time) compile ``_cuda_src.SOURCE`` once per hash version with the
backend's options (``_cuda_src.compile_options``: the shared constants as defines).
nvcc instantiates exactly the name expressions of ``_cuda_src.KERNELS`` (one line taking
each one's address, as NVRTC does for ``name_expressions``), and the kernels of the
PTX, demangled, must be those expressions, spelled the same: so every name the backend
hands ``RawModule`` and ``get_function`` denotes a compiled kernel, and nothing else is
compiled.  NVRTC, when loadable, resolves each expression to its lowered name.
"""
import re
import shutil
import subprocess

import pytest

from sketchlib import MAX_ROWS
from sketchlib._backends import _cuda_src

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
DEFINES = ["SK_HASH_VERSION", "SK_BLOCK", "SK_PICK_BLOCK", "SK_MAX_ROWS", "SK_HIST_BITS", "SK_TOPK_WORDS"]


def _instantiated_source():
    """SOURCE plus one host array taking the address of every instantiation in the table."""
    lines = ",\n".join(f"    (void*)&{expr}" for expr in _cuda_src.KERNELS)
    return _cuda_src.SOURCE + f"\nvoid* sk_instances[] = {{\n{lines}\n}};\n"


def _demangled(entries):
    """``{name expression: PTX entry}`` for mangled kernel names (c++filt, as g++ spells them)."""
    proc = subprocess.run(["c++filt"], input="\n".join(entries), capture_output=True, text=True, check=True)
    names = [re.sub(r"^void ", "", line.split("(")[0]) for line in proc.stdout.splitlines()]
    return dict(zip(names, entries))


def _body(ptx, entry):
    """The PTX text of one kernel."""
    body = ptx[ptx.index(f".entry {entry}("):]
    return body[:body.index("\n}\n")]


def test_constants_come_from_python_only():
    """The source writes none of the shared constants: each arrives as a -D define."""
    for name in DEFINES:
        assert not re.search(rf"#define\s+{name}\b", _cuda_src.SOURCE), name
        assert f"#ifndef {name}\n#error" in _cuda_src.SOURCE, name
        assert any(opt.startswith(f"-D{name}=") for opt in _cuda_src.compile_options(1)), name
    assert MAX_ROWS == _cuda_src.MAX_ROWS           # the sketch's limit is the kernels' limit
    assert _cuda_src.kernel("sk_estimates", "float32", 5, True) == "sk_estimates<float, 5, true>"
    with pytest.raises(KeyError, match="no compiled kernel"):
        _cuda_src.kernel("sk_insert_rowy", "float32")   # removed: not in the table


@needs_nvcc
@pytest.mark.parametrize("missing", DEFINES)
def test_a_missing_define_stops_the_build(tmp_path, missing):
    src = tmp_path / "k.cu"
    src.write_text(_cuda_src.SOURCE)
    opts = [o for o in _cuda_src.compile_options(1) if not o.startswith(f"-D{missing}=")]
    proc = subprocess.run([NVCC, "-E", *opts, str(src), "-o", str(tmp_path / "k.ii")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and f"{missing} is not defined" in proc.stderr


@needs_nvcc
@pytest.mark.parametrize("version", [1, 2])
def test_nvcc_compiles_the_table(tmp_path, version):
    src = tmp_path / "sketch_kernels.cu"
    src.write_text(_instantiated_source())
    obj = tmp_path / "sketch_kernels.o"
    ptx = tmp_path / "sketch_kernels.ptx"
    for args in (["-c", "-o", str(obj)], ["-ptx", "-o", str(ptx)]):
        proc = subprocess.run([NVCC, *args, "-arch=sm_90", *_cuda_src.compile_options(version),
                               "-Werror", "all-warnings", str(src)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    assert obj.stat().st_size > 0
    text = ptx.read_text()
    entries = re.findall(r"\.entry\s+(\w+)", text)
    assert len(entries) == len(_cuda_src.KERNELS) == len(set(_cuda_src.KERNELS))
    if shutil.which("c++filt") is None:
        pytest.skip("c++filt not on PATH: kernel names not compared")
    names = _demangled(entries)
    assert set(names) == set(_cuda_src.KERNELS)
    # Table updates must be fire-and-forget reductions, never returning atomics.
    body = _body(text, names["sk_insert_vec<float>"])
    assert "red.global.add" in body and "atom.global" not in body
    assert "red.global.add.v4.f32" in _body(text, names["sk_stack_each_v4r"])
    if version == 2:   # a group: one 16-byte reduction per row; estimates: one 16-byte gather per row
        assert "red.global.add.v4.f32" in body
        assert "ld.global.nc.v4.f32" in _body(text, names["sk_estimates<float, 5, true>"])
        assert "ld.global.nc.v4.f32" in _body(text, names["skt_estimates<float, 5, true>"])
    else:
        assert "red.global.add.f32" in body and "red.global.add.v4" not in body


@pytest.mark.parametrize("version", [1, 2])
def test_nvrtc_resolves_every_name_expression(version):
    pytest.importorskip("cupy")
    try:
        from cupy.cuda import nvrtc
        prog = nvrtc.createProgram(_cuda_src.SOURCE, "sketch_kernels.cu", [], [])
    except Exception as exc:  # CuPy without a loadable NVRTC library
        pytest.skip(f"NVRTC not loadable: {exc}")
    for expr in _cuda_src.KERNELS:
        nvrtc.addNameExpression(prog, expr)
    try:
        nvrtc.compileProgram(prog, ["--gpu-architecture=compute_90", *_cuda_src.compile_options(version)])
    except nvrtc.NVRTCError as exc:
        pytest.fail(f"NVRTC rejected the source: {exc}\n{nvrtc.getProgramLog(prog)}")
    ptx = nvrtc.getPTX(prog)
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    for expr in _cuda_src.KERNELS:
        lowered = nvrtc.getLoweredName(prog, expr)
        lowered = lowered.decode() if isinstance(lowered, bytes) else lowered
        assert f".entry {lowered}(" in ptx, expr
