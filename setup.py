"""Map pyx/*.pyx onto the extension modules ``noether_core._kernels.*``.

Everything else (metadata, packages, extras) is in pyproject.toml.  Build options:

* ``-O3``, never ``-ffast-math``: the library checks NaN/inf and exact identities, both
  of which fast-math breaks.  ``-ffp-contract=off`` keeps a*b+c as two roundings, so the
  kernels match the NumPy reference in python/ bit for bit where the operation order is
  the same.
* OpenMP (``-fopenmp``) when a compile probe succeeds; serial fallback otherwise.
* ``NOETHER_DEBUG=1``: Cython bounds/wraparound checks on, ``-O0 -g``; its C sources go to
  build/cython-debug/ (the release ones stay in pyx/).
"""
import glob
import os
import re
import sys
import tempfile

import numpy as np
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("NOETHER_DEBUG", "0") not in ("", "0")


def _has_openmp(compiler):
    src = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.c")
        with open(path, "w") as fh:
            fh.write(src)
        try:
            objs = compiler.compile([path], output_dir=tmp, extra_postargs=["-fopenmp"])
            compiler.link_executable(objs, os.path.join(tmp, "probe"),
                                     extra_postargs=["-fopenmp"])
        except Exception:  # noqa: BLE001 - any failure means "no OpenMP"
            return False
    return True


class BuildExt(build_ext):
    def build_extensions(self):
        omp = sys.platform != "win32" and _has_openmp(self.compiler)
        if not omp:
            print("noether_core: OpenMP not available, building serial kernels",
                  file=sys.stderr)
        for ext in self.extensions:
            flags = ["-O0", "-g"] if DEBUG else ["-O3"]
            flags += ["-ffp-contract=off", "-fno-math-errno"]
            ext.extra_compile_args = flags + (["-fopenmp"] if omp else [])
            ext.extra_link_args = ["-fopenmp"] if omp else []
            ext.define_macros = list(ext.define_macros or []) + [
                ("NOETHER_HAVE_OPENMP", "1" if omp else "0")]
        super().build_extensions()


def _local_headers(path, seen=None):
    """The headers of pyx/ that ``path`` includes, directly or through another one: a
    module is rebuilt when one of them changes (pyx/netmm.h only touches potentials)."""
    seen = set() if seen is None else seen
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    for name in re.findall(r'(?:#include|cdef extern from)\s+"([\w.]+\.h)"', text):
        header = os.path.join("pyx", name)
        if header not in seen and os.path.exists(header):
            seen.add(header)
            _local_headers(header, seen)
    return seen


def extensions():
    from Cython.Build import cythonize

    # the .pxd contracts' headers count for every module (any module may cimport them)
    pxd_headers = [_local_headers(pxd) for pxd in
                   glob.glob(os.path.join("noether_core", "_kernels", "*.pxd"))]
    exts = []
    for path in sorted(glob.glob(os.path.join("pyx", "*.pyx"))):
        name = os.path.splitext(os.path.basename(path))[0]
        exts.append(Extension(
            f"noether_core._kernels.{name}", [path],
            include_dirs=[np.get_include(), "pyx"],
            depends=sorted(_local_headers(path).union(*pxd_headers)),
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        ))
    directives = {
        "language_level": 3,
        "boundscheck": DEBUG,
        "wraparound": DEBUG,
        "initializedcheck": DEBUG,
        # C division in both builds: the kernels rely on IEEE x/0 = inf/NaN (then flagged as
        # non-finite); Cython's checked division would raise inside noexcept functions
        "cdivision": True,
        "embedsignature": True,
    }
    # cythonize regenerates a .c file only when it is older than its .pyx, not when the
    # directives change: keep the debug C sources apart so neither build reuses the other's
    return cythonize(exts, compiler_directives=directives, include_path=[".", "pyx"],
                     quiet=True, build_dir=os.path.join("build", "cython-debug") if DEBUG
                     else None)


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
