"""Build script: the Python packages plus the C++ rANS coder (lickd._rans).

`kernels/` ships as `lickd.kernels` (Triton kernels; never a top-level `kernels` module).
A CUDA coder is built from csrc/*.cu only when such sources exist and nvcc is found;
otherwise one line says why it is skipped and the CPU coder (same bytes) is used.
"""
import glob
import os
import shutil
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def cuda_status():
    cu_sources = sorted(glob.glob(os.path.join("csrc", "*.cu")))
    if not cu_sources:
        return "lickd: no CUDA coder sources in csrc/ yet; building the CPU coder only"
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = shutil.which("nvcc") or (cuda_home and os.path.join(cuda_home, "bin", "nvcc"))
    if not nvcc or not os.path.exists(nvcc):
        return "lickd: nvcc not found (set CUDA_HOME); building the CPU coder only"
    return "lickd: CUDA sources found but the CUDA coder build is not wired yet; CPU coder only"


print(cuda_status(), file=sys.stderr)

cpu_sources = sorted(
    os.path.join("csrc", f) for f in ("bindings.cpp", "rans_cpu.cpp", "rans_format.cpp", "rans_tables.cpp")
)
ext_modules = [
    Pybind11Extension(
        "lickd._rans",
        cpu_sources,
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=["-O3"],
        extra_link_args=["-pthread"],
    )
]

packages = find_packages(include=["lickd", "lickd.*"]) + ["lickd.kernels"]

setup(
    packages=packages,
    package_dir={"lickd.kernels": "kernels"},
    package_data={"lickd.zoo": ["registry.json", "weights/*.safetensors"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
    zip_safe=False,
)
