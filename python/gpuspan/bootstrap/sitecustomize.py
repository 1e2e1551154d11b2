"""gpuspan's auto-instrumentation bootstrap (issue 12): with this directory on ``PYTHONPATH``
and ``GPUSPAN_AUTO=1``, every Python process starts with :func:`gpuspan.auto.install`, the
way ``opentelemetry-instrument`` uses ``sitecustomize``. ``gpuspan run -- python …`` and
``python -m gpuspan.instrument …`` set both; the ``gpuspan`` package must be importable
(its parent directory on ``PYTHONPATH`` as well).

The ``sitecustomize`` this file shadows (a later one on ``sys.path``) still runs after it.
"""

import os
import sys


def _auto() -> None:
    if os.environ.get("GPUSPAN_AUTO", "") in ("", "0"):
        return
    try:
        import gpuspan.auto

        gpuspan.auto.install()
    except Exception as e:  # never stop the worker from starting
        sys.stderr.write(f"gpuspan: warning: auto-instrumentation off: {e!r}\n")


def _chain() -> None:
    """Imports the next ``sitecustomize`` on ``sys.path``, the one this file hides."""
    here = os.path.dirname(os.path.abspath(__file__))
    saved = list(sys.path)
    this = sys.modules.pop("sitecustomize", None)
    try:
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
        try:
            import sitecustomize  # noqa: F401  (the next one, if any)
        except ImportError:
            pass
    finally:
        sys.path[:] = saved
        if this is not None:
            sys.modules["sitecustomize"] = this


_auto()
_chain()
