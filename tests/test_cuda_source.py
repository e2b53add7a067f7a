"""The CUDA source must compile even where no GPU runs the tests.

nvcc (whole-program, sm_90) and, when CuPy ships NVRTC, NVRTC itself (the
compiler CuPy uses at run time) both compile ``_cuda_src.SOURCE``, once per
hash version, as the backend does.
"""
import re
import shutil
import subprocess

import pytest

from sketchlib._backends import _cuda_src

# Every kernel name the backend asks for must exist.
EXPECTED = ["sk_radix_pick", "sk_hash_rows", "sk_stack_each_v4_f32", "sk_deinterleave_f32",
            "sk_insert_dsmem_f32", "sk_stack_each_v4r_f32", "sk_deinterleave_at_f32", "skt_unpack_f32"] + [
    f"skt_{k}_{s}" for s in ("f32", "f64") for k in ("compact", "refine", "select", "mask")] + [
    f"skt_estimates{g}_{s}_r{r}" for g in ("", "4") for s in ("f32", "f64") for r in (0,) + _cuda_src.MEDIAN_ROWS] + [
    f"sk_{k}_{s}" for s in ("f32", "f64") for k in (
        "insert_simple", "insert_rowy", "insert_vec", "insert_vec2x", "insert_veccs", "insert_vec2xcs", "insert_sparse",
        "stack_sum_simple", "stack_sum_vec", "stack_each_simple", "radix_hist", "radix_compact",
        "threshold_compact", "zero_buckets", "all_finite")] + [
    f"sk_estimates{g}_{s}_r{r}" for g in ("", "4") for s in ("f32", "f64") for r in (0,) + _cuda_src.MEDIAN_ROWS]


def _body(ptx, entry):
    """The PTX text of one kernel."""
    body = ptx[ptx.index(f".entry {entry}("):]
    return body[:body.index("\n}\n")]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("version", [1, 2])
def test_nvcc_compiles_source(tmp_path, version):
    src = tmp_path / "sketch_kernels.cu"
    src.write_text(_cuda_src.SOURCE)
    obj = tmp_path / "sketch_kernels.o"
    ptx = tmp_path / "sketch_kernels.ptx"
    for args in (["-c", "-o", str(obj)], ["-ptx", "-o", str(ptx)]):
        proc = subprocess.run(["nvcc", *args, "-arch=sm_90", "-std=c++17", f"-DSK_HASH_VERSION={version}",
                               "-Werror", "all-warnings", str(src)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    assert obj.stat().st_size > 0
    text = ptx.read_text()
    entries = set(re.findall(r"\.entry\s+(\w+)", text))
    missing = [name for name in EXPECTED if name not in entries]
    assert not missing, f"kernels missing from the PTX: {missing}"
    # Table updates must be fire-and-forget reductions, never returning atomics.
    body = _body(text, "sk_insert_vec_f32")
    assert "red.global.add" in body and "atom.global" not in body
    assert "red.global.add.v4.f32" in text
    if version == 2:   # a group: one 16-byte reduction per row; estimates: one 16-byte gather per row
        assert "red.global.add.v4.f32" in _body(text, "sk_insert_veccs_f32")
        assert "ld.global.nc.v4.f32" in _body(text, "sk_estimates4_f32_r5")
        assert "ld.global.nc.v4.f32" in _body(text, "skt_estimates4_f32_r5")
    else:
        assert "red.global.add.f32" in body and "red.global.add.v4" not in body


@pytest.mark.parametrize("version", [1, 2])
def test_nvrtc_compiles_source(version):
    pytest.importorskip("cupy")
    try:
        from cupy.cuda import nvrtc
        prog = nvrtc.createProgram(_cuda_src.SOURCE, "sketch_kernels.cu", [], [])
    except Exception as exc:  # CuPy without a loadable NVRTC library
        pytest.skip(f"NVRTC not loadable: {exc}")
    try:
        nvrtc.compileProgram(prog, ["-std=c++17", "--gpu-architecture=compute_90", f"-DSK_HASH_VERSION={version}"])
    except nvrtc.NVRTCError as exc:
        pytest.fail(f"NVRTC rejected the source: {exc}\n{nvrtc.getProgramLog(prog)}")
    ptx = nvrtc.getPTX(prog)
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    assert all(f".entry {name}" in ptx for name in EXPECTED)
