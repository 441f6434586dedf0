"""The interpreter of a warm sandbox: started before its candidate is known.

This file is a program for inside the sandbox (``python3 -c <this source> <fd>``), not a
module the worker imports. It starts the way the candidate's ``python3`` would (same
binary, environment, working directory, rlimits and cgroups), then blocks reading fd
``<fd>``. The worker writes the candidate's command line there, NUL-separated, without
the leading ``python3`` (``SCRIPT ARGS...`` or ``-m MODULE ARGS...``), and closes it;
this program then runs that command as CPython itself would: the script's code in
``__main__`` with ``sys.argv``, ``sys.path[0]``, ``__file__`` and ``__loader__`` as a
cold start sets them, or ``runpy._run_module_as_main`` for ``-m`` (what ``python -m``
calls). An uncaught exception prints the traceback without this program's frame and
exits 1, as a cold start does. EOF with nothing written means the sandbox was discarded
unused: exit at once.
"""


def _forge_zygote():
    # start-up: none (both are loaded already); local names, as the loop below empties
    # __main__'s globals
    import os
    import sys

    fd = int(sys.argv[1])
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    spec = b"".join(chunks)
    if not spec:
        os._exit(0)
    args = [os.fsdecode(arg) for arg in spec.split(b"\0")]
    main = sys.modules["__main__"].__dict__
    keep = ("__name__", "__doc__", "__package__", "__spec__", "__annotations__",
            "__builtins__")
    for name in [n for n in main if n not in keep]:
        del main[name]
    main["__doc__"] = None  # this program's docstring is not the candidate's
    sys.orig_argv[1:] = args
    try:
        if args[0] == "-m":
            sys.argv[:] = ["-m", *args[2:]]
            sys.path[0] = os.getcwd()
            import runpy  # start-up: only for -m; a cold `python3 SCRIPT` never loads it

            runpy._run_module_as_main(args[1], True)
        else:
            path = args[0]
            sys.argv[:] = args
            sys.path[0] = os.path.dirname(path)
            main["__file__"] = path
            main["__cached__"] = None
            loader = sys.modules["_frozen_importlib_external"].SourceFileLoader
            main["__loader__"] = loader("__main__", path)
            try:
                with open(path, "rb") as fh:
                    source = fh.read()
            except OSError as exc:
                print(f"{sys.executable}: can't open file {path!r}: [Errno {exc.errno}] "
                      f"{exc.strerror}", file=sys.stderr)
                raise SystemExit(2) from None
            exec(compile(source, path, "exec", dont_inherit=True), main)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - printed as a cold start prints it
        tb = exc.__traceback__.tb_next  # the script's frames, not this function's
        sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, tb
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        raise SystemExit(130 if isinstance(exc, KeyboardInterrupt) else 1) from None


_forge_zygote()
