"""Build the Cython copy core.

Two extensions come from the same sources: ``ivmpi._fastcopy`` (the one the
package uses) and ``ivmpi._fastcopy_trace``, compiled with
IVMPI_TRACE_ACCESS so that every region access is recorded; the test suite
uses the latter to prove that strict mode only makes aligned accesses.
"""
import os

import numpy
from Cython.Build import cythonize
from setuptools import Command, Extension, setup
from setuptools.command.build import build

COMMON = dict(
    include_dirs=["ivmpi", numpy.get_include()],
    extra_compile_args=["-O3", "-fno-strict-aliasing", "-fwrapv"],
    depends=["ivmpi/_copycore.h", "ivmpi/_watchdog.h", "ivmpi/_ops.pxi", "ivmpi/_ring.pxi",
             "ivmpi/_fastpath.pxi", "ivmpi/_small_collectives.pxi", "ivmpi/_gather.pxi",
             "ivmpi/_inbox.pxi", "ivmpi/_inbox.h", "ivmpi/_prefix.pxi"],
)

extensions = [
    Extension("ivmpi._fastcopy", ["ivmpi/_fastcopy.pyx"], **COMMON),
    Extension("ivmpi._fastcopy_trace", ["ivmpi/_fastcopy_trace.pyx"],
              define_macros=[("IVMPI_TRACE_ACCESS", "1")],
              **dict(COMMON, depends=COMMON["depends"] + ["ivmpi/_fastcopy.pyx"])),
]

# The start-up hook behind IVMPI_MPI4PY=1 (ivmpi.substitute): a .pth file
# must sit in site-packages itself, beside the packages, not inside one.
PTH = "ivmpi-mpi4py.pth"


class build_pth(Command):
    """Put ivmpi-mpi4py.pth at the top of what gets installed."""
    description = f"install {PTH} into site-packages"
    user_options = []
    editable_mode = False       # set by setuptools for `pip install -e`

    def initialize_options(self):
        self.build_lib = None

    def finalize_options(self):
        self.set_undefined_options("build_py", ("build_lib", "build_lib"))

    def run(self):
        # An editable wheel is made from a directory that `install` names;
        # build_lib is then a scratch directory that is thrown away.
        target = (self.get_finalized_command("install").install_lib if self.editable_mode
                  else self.build_lib)
        self.copy_file(PTH, os.path.join(target, PTH))

    def get_outputs(self):
        return [os.path.join(self.build_lib, PTH)]

    def get_source_files(self):
        return [PTH]


class build_with_pth(build):
    sub_commands = build.sub_commands + [("build_pth", None)]


setup(
    cmdclass={"build": build_with_pth, "build_pth": build_pth},
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False,
                             "cdivision": True, "initializedcheck": False},
    ),
)
