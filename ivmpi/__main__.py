"""`python -m ivmpi`: run a program over ivmpi, or the `ivmpi` command.

    python -m ivmpi prog.py [args]     run prog.py with mpi4py.MPI meaning ivmpi.MPI
    python -m ivmpi -m module [args]   the same for a module (as `python -m`)
    python -m ivmpi -c CODE [args]     the same for a string (as `python -c`)
    python -m ivmpi COMMAND ...        the `ivmpi` command (create, info, reset, bench)

A program sees sys.argv, sys.path[0] and __main__ as `python` would set
them.  As under `python -m mpi4py`, an exception the program does not catch
(or a nonzero sys.exit) on one rank aborts the whole job instead of leaving
the other ranks waiting for it; without other ranks it is just Python's
traceback and exit status.
"""
import os
import sys


def _is_program(args):
    """-m, -c, or a script (a .py name, or an existing file that is not a
    subcommand's name): anything else is the `ivmpi` command."""
    if not args:
        return False
    first = args[0]
    if first in ("-m", "-c") or first.endswith(".py"):
        return True
    from .cli import SUBCOMMANDS
    return os.path.isfile(first) and first not in {c.name for c in SUBCOMMANDS}


def _trimmed(tb):
    """The traceback from the program's first frame on, as `python prog.py`
    shows it (without this module's and runpy's frames)."""
    while tb is not None and tb.tb_next is not None and (
            tb.tb_frame.f_globals is globals()
            or tb.tb_frame.f_globals.get("__name__") == "runpy"):
        tb = tb.tb_next
    return tb


def _exec_main(code, **names):
    """Run code as the __main__ module, which it stays afterwards (as under
    `python`: pickles and exit handlers may refer to it)."""
    import builtins
    import types
    main = types.ModuleType("__main__")
    main.__dict__.update(__builtins__=builtins, **names)
    sys.modules["__main__"] = main
    exec(code, main.__dict__)


def _run(args):
    import importlib.machinery
    from . import substitute
    substitute.install()
    safe_path = getattr(sys.flags, "safe_path", False)    # python -P: no sys.path[0]
    if args[0] in ("-c", "-m") and len(args) < 2:
        print(f"Argument expected for the {args[0]} option", file=sys.stderr)
        sys.exit(2)
    if args[0] == "-c":
        # As `python -c`: argv[0] is '-c', sys.path[0] is '' (the current directory).
        sys.argv[:] = ["-c"] + args[2:]
        if not safe_path:
            sys.path[0] = ""
        _exec_main(compile(args[1], "<string>", "exec"), __annotations__={},
                   __loader__=importlib.machinery.BuiltinImporter)
    elif args[0] == "-m":
        # `python -m ivmpi` already put the current directory first, as `python -m` does.
        import runpy
        sys.argv[:] = args[1:]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    else:
        path = os.path.abspath(args[0])
        try:
            with open(path, "rb") as f:
                source = f.read()
        except OSError as e:
            print(f"{sys.executable}: can't open file {path!r}: [Errno {e.errno}] {e.strerror}",
                  file=sys.stderr)
            sys.exit(2)
        # As `python prog.py`: argv[0] as given, __file__ absolute, sys.path[0]
        # the script's directory with symbolic links resolved.
        sys.argv[:] = args
        if not safe_path:
            sys.path[0] = os.path.dirname(os.path.realpath(path))
        _exec_main(compile(source, path, "exec"), __file__=path, __cached__=None,
                   __loader__=importlib.machinery.SourceFileLoader("__main__", path))


def _exit_status(exc):
    if isinstance(exc, SystemExit):
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    if isinstance(exc, KeyboardInterrupt):
        import signal
        return 128 + signal.SIGINT
    return 1


def _abort_at_exit(status):
    """A failing rank takes the job down at exit (after Python printed the
    traceback), as `python -m mpi4py` does: its peers may be waiting for it."""
    lib = sys.modules.get("ivmpi.lib")
    if not status or lib is None:       # the program never reached MPI
        return
    MPI = lib.MPI
    if MPI.Is_initialized() and not MPI.Is_finalized() and MPI.COMM_WORLD.Get_size() > 1:
        # MPI_Abort instead of MPI_Finalize when mpi4py finalizes at exit.
        MPI._set_abort_status(status)
    import atexit
    atexit.register(_abort_region_job, status)


def _abort_region_job(status):
    # Registered after the job started, so this runs before ivmpi's own exit
    # handler: the peers see this rank aborted, not finalized.
    world = sys.modules.get("ivmpi.world")
    if world is None or world._engine is None or world._engine.size < 2:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    world.abort(status)


def main(args):
    try:
        _run(args)
    except (SystemExit, KeyboardInterrupt) as exc:
        _abort_at_exit(_exit_status(exc))
        raise
    except BaseException as exc:
        _abort_at_exit(1)
        # Python's own report of an uncaught exception, from the program's frame on.
        exc.__traceback__ = _trimmed(exc.__traceback__)
        sys.excepthook(type(exc), exc, exc.__traceback__)
        sys.exit(1)


if __name__ == "__main__":
    if _is_program(sys.argv[1:]):
        main(sys.argv[1:])
    else:
        from .cli import main as cli_main
        sys.exit(cli_main())
