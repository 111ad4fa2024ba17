"""Build script: the Python packages plus the C++ rANS coder (lickd._rans) and the integer
convolutions of the exact entropy parameters (lickd._intconv).

`kernels/` ships as `lickd.kernels` (Triton kernels; never a top-level `kernels` module).
The CUDA decoder (csrc/*.cu) is compiled into the same module when nvcc and CUDA's static runtime
are found (CUDA_HOME, default /usr/local/cuda; LICKD_NO_CUDA=1 skips it); otherwise one line says
so and the CPU coder, which reads and writes the same streams, is the only one.
"""
import glob
import os
import shutil
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def find_nvcc():
    """(nvcc, CUDA root): $CUDA_HOME or $CUDA_PATH first, then /usr/local/cuda, then PATH."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    candidates = [os.path.join(h, "bin", "nvcc") for h in homes if h] + [shutil.which("nvcc")]
    for nvcc in candidates:
        if nvcc and os.path.exists(nvcc):
            root = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
            if os.path.exists(os.path.join(root, "lib64", "libcudart_static.a")):
                return nvcc, root
    return None, None


CU_SOURCES = sorted(glob.glob(os.path.join("csrc", "*.cu")))
NVCC, CUDA_ROOT = find_nvcc()
WITH_CUDA = bool(CU_SOURCES and NVCC and os.environ.get("LICKD_NO_CUDA") != "1")
if WITH_CUDA:
    print(f"lickd: building the CUDA coder with {NVCC}", file=sys.stderr)
elif not CU_SOURCES:
    print("lickd: no CUDA coder sources in csrc/; building the CPU coder only", file=sys.stderr)
else:
    print("lickd: nvcc / static CUDA runtime not found (set CUDA_HOME) or LICKD_NO_CUDA=1; "
          "building the CPU coder only (same stream format)", file=sys.stderr)

# sm_80 (A100), sm_90 (H100/H200) and PTX for newer GPUs.
NVCC_FLAGS = ["-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-Icsrc",
              "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
              "-gencode", "arch=compute_90,code=compute_90"]


class BuildExt(build_ext):
    """pybind11's build_ext, plus nvcc for csrc/*.cu (CUDA runtime linked statically, so importing
    the module needs no CUDA libraries; the driver is loaded only when a GPU is used)."""

    def build_extension(self, ext):
        if WITH_CUDA and ext.name == "lickd._rans":
            objects = []
            for src in CU_SOURCES:
                obj = os.path.join(self.build_temp, os.path.basename(src) + ".o")
                os.makedirs(self.build_temp, exist_ok=True)
                self.spawn([NVCC, *NVCC_FLAGS, "-c", src, "-o", obj])
                objects.append(obj)
            ext.extra_objects = objects + [os.path.join(CUDA_ROOT, "lib64", "libcudart_static.a")]
            ext.extra_link_args = ext.extra_link_args + ["-ldl", "-lrt"]
            ext.define_macros = ext.define_macros + [("LICKD_WITH_CUDA", "1")]
        super().build_extension(ext)


ext_modules = [
    Pybind11Extension(
        "lickd._rans",
        sorted(os.path.join("csrc", f) for f in ("bindings.cpp", "rans_cpu.cpp", "rans_format.cpp", "rans_tables.cpp")),
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=["-O3"],
        extra_link_args=["-pthread"],
    ),
    # the integer convolutions of the exact entropy parameters (AVX2 chosen at run time)
    Pybind11Extension(
        "lickd._intconv",
        [os.path.join("csrc", f) for f in ("int_conv_bindings.cpp", "int_conv.cpp")],
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=["-O3"],
        extra_link_args=["-pthread"],
    ),
]

# lickd/zoo/weights holds data only (no __init__.py): named here so setuptools ships it as package data
packages = find_packages(include=["lickd", "lickd.*"]) + ["lickd.kernels", "lickd.zoo.weights"]

setup(
    packages=packages,
    package_dir={"lickd.kernels": "kernels"},
    package_data={"lickd.zoo": ["registry.json"], "lickd.zoo.weights": ["*.safetensors"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExt},
    zip_safe=False,
)
