"""Build the Cython copy core.

Two extensions come from the same sources: ``ivmpi._fastcopy`` (the one the
package uses) and ``ivmpi._fastcopy_trace``, compiled with
IVMPI_TRACE_ACCESS so that every region access is recorded; the test suite
uses the latter to prove that strict mode only makes aligned accesses.
"""
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

COMMON = dict(
    include_dirs=["ivmpi", numpy.get_include()],
    extra_compile_args=["-O3", "-fno-strict-aliasing", "-fwrapv"],
    depends=["ivmpi/_copycore.h", "ivmpi/_watchdog.h", "ivmpi/_ops.pxi", "ivmpi/_ring.pxi",
             "ivmpi/_fastpath.pxi", "ivmpi/_small_collectives.pxi"],
)

extensions = [
    Extension("ivmpi._fastcopy", ["ivmpi/_fastcopy.pyx"], **COMMON),
    Extension("ivmpi._fastcopy_trace", ["ivmpi/_fastcopy_trace.pyx"],
              define_macros=[("IVMPI_TRACE_ACCESS", "1")],
              **dict(COMMON, depends=COMMON["depends"] + ["ivmpi/_fastcopy.pyx"])),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False,
                             "cdivision": True, "initializedcheck": False},
    ),
)
