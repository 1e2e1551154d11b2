"""``python -m gpuspan.instrument [-m MODULE | SCRIPT] [ARGS…]``: runs a Python worker with
gpuspan's auto-instrumentation switched on (:mod:`gpuspan.auto`), as
``opentelemetry-instrument`` does for OpenTelemetry.

The worker runs in this interpreter (``runpy``, as ``python SCRIPT`` would run it: same
``sys.argv[1:]``, ``__name__ == "__main__"``). Python processes it starts are instrumented
too: ``GPUSPAN_AUTO=1`` and the package's ``bootstrap`` directory (whose ``sitecustomize``
calls :func:`gpuspan.auto.install`) and parent directory go on ``PYTHONPATH``.

The agent must be in the process (``gpuspan run``, ``LD_PRELOAD=libgpuspan.so`` or
``GPUSPAN_LIB``); without it every scope is a no-op and one warning says so.
"""

import os
import runpy
import sys

USAGE = "usage: python -m gpuspan.instrument [-m MODULE | SCRIPT] [ARGS...]"


def _prepend_pythonpath(*dirs: str) -> None:
    old = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    new = [d for d in dirs if d not in old]
    os.environ["PYTHONPATH"] = os.pathsep.join(new + old)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or (argv[0] == "-m" and len(argv) < 2):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        sys.exit(2 if not argv else 0)
    package_dir = os.path.dirname(os.path.abspath(__file__))
    os.environ["GPUSPAN_AUTO"] = "1"
    _prepend_pythonpath(os.path.join(package_dir, "bootstrap"), os.path.dirname(package_dir))
    from gpuspan import auto

    auto.install()
    if argv[0] == "-m":
        sys.argv = [argv[1]] + argv[2:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
