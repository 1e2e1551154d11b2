"""gpuspan: tell the gpuspan GPU profiling agent about requests, steps and stages.

A ctypes wrapper over the C ABI of ``libgpuspan.so`` (``include/gpuspan.h``); no build step,
standard library only, with optional OpenTelemetry integration. Put ``python/`` on
``sys.path`` (``gpuspan run`` does it for Python workers), or copy the ``gpuspan`` directory
next to your worker. A worker that announces nothing needs none of this:
:mod:`gpuspan.auto` finds its requests, steps and stages from its torch modules.

Usage::

    import gpuspan

    with gpuspan.request(model="wan2.1", tenant="gold"):
        for i in range(n_steps):
            with gpuspan.step(i, n_steps):
                with gpuspan.stage("attention.spatial"):
                    ...  # launch the spatial-attention kernels
                with gpuspan.stage("ffn"):
                    ...
        with gpuspan.stage("vae.decode"):
            ...

Every GPU kernel launched inside a scope is attributed to it: it gets the request's trace
id, its step (``dit.step i/n``) and its stage. Stage names that decide a kernel's stage:
``attention.spatial``, ``attention.temporal``, ``attention.cross``, ``ffn``, ``norm``,
``vae.decode``; other names are recorded as plain scopes.

Finding the library:

1. ``ctypes.CDLL(None)``: when the worker runs under ``gpuspan run -- python ...`` (or with
   ``LD_PRELOAD=libgpuspan.so``) the agent's symbols are already in the process;
2. else the path in the environment variable ``GPUSPAN_LIB`` is loaded (loading it starts the
   agent);
3. else the copy the wheel bundles (``pip install gpuspan``: ``gpuspan/_native/libgpuspan.so``
   beside this file) is loaded, which starts the agent;
4. else every call is a no-op, and one ``warnings.warn`` says so.

When the agent is loaded but not collecting (no CUPTI, CUPTI held by another tool, ...),
the calls are no-ops too and cost one atomic load in the library: ``is_active()`` tells.

Trace context: ``request(traceparent=...)`` takes a W3C traceparent
(``00-<trace id>-<span id>-<flags>``); the request's GPU spans become children of that span.
When ``traceparent`` is ``None`` (not ``""``, which always starts a new trace) and
``opentelemetry`` is importable, the current span's
context is used (``opentelemetry.trace.get_current_span().get_span_context()``; when valid,
``traceparent = f"00-{trace_id:032x}-{span_id:016x}-{trace_flags:02x}"``), together with its
``tracestate`` (``span_context.trace_state.to_header()``) and the current baggage
(``opentelemetry.baggage.get_all()``, written as a W3C ``baggage`` header with
percent-encoded keys and values); they are passed as the reserved attributes ``tracestate=``
and ``baggage=`` unless given explicitly. Without a traceparent, the agent starts a new trace.

Attributes: ``request(**attrs)`` become span attributes (``key=value``). Scope names are
whitespace-separated lists, so in keys and values ``%``, whitespace and control characters
are percent-encoded as UTF-8 bytes (``%20``, ``%25``; ``=`` too in keys); values of the reserved keys
``tracestate`` and ``baggage`` are header values passed through, minus the optional
whitespace around ``,`` / ``;``, with any other whitespace percent-encoded. Names are cut
at the agent's fixed name capacity (256 bytes in this version), so keep attributes short.

Streams (coarse mode, the agent's default, times scopes with CUDA events): a scope is timed
on the streams its thread named with ``use_streams(handle, ...)``; when torch is already
imported and CUDA initialized, ``request_begin`` and ``step_begin`` name
``torch.cuda.current_stream()`` by themselves. A thread that named none is timed on the
legacy default stream, which never sees work on non-blocking streams (PyTorch's side
streams): such spans carry ``gpuspan.timing=legacy_stream``.

Threads: scopes belong to the thread that opens them; requests on several threads keep their
own scopes and trace ids. A context manager must be exited on the thread that entered it.
Works with Python 3.8+ (tested with 3.11).
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import unicodedata
import warnings
from typing import Optional

__all__ = [
    "request",
    "use_streams",
    "step",
    "stage",
    "request_begin",
    "step_begin",
    "stage_begin",
    "end",
    "is_active",
    "is_loaded",
    "version",
    "NOT_COLLECTING",
]

#: Returned by every call when the agent is not collecting (``GPUSPAN_NOT_COLLECTING``).
NOT_COLLECTING = -2

_SYMBOLS = (
    "gpuspan_request_begin",
    "gpuspan_use_streams",
    "gpuspan_step_begin",
    "gpuspan_stage_begin",
    "gpuspan_end",
    "gpuspan_is_active",
    "gpuspan_version",
)


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.gpuspan_request_begin.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
    lib.gpuspan_request_begin.restype = ctypes.c_int
    lib.gpuspan_step_begin.argtypes = (ctypes.c_uint32, ctypes.c_uint32)
    lib.gpuspan_step_begin.restype = ctypes.c_int
    lib.gpuspan_stage_begin.argtypes = (ctypes.c_char_p,)
    lib.gpuspan_stage_begin.restype = ctypes.c_int
    lib.gpuspan_end.argtypes = ()
    lib.gpuspan_end.restype = ctypes.c_int
    lib.gpuspan_is_active.argtypes = ()
    lib.gpuspan_is_active.restype = ctypes.c_int
    lib.gpuspan_version.argtypes = ()
    lib.gpuspan_version.restype = ctypes.c_char_p
    lib.gpuspan_use_streams.argtypes = (ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t)
    lib.gpuspan_use_streams.restype = ctypes.c_int
    return lib


def _has_symbols(lib: ctypes.CDLL) -> bool:
    try:
        return all(hasattr(lib, s) for s in _SYMBOLS)
    except Exception:  # pragma: no cover - defensive: odd ctypes states
        return False


def _load() -> Optional[ctypes.CDLL]:
    try:
        process = ctypes.CDLL(None)
        if _has_symbols(process):
            return _bind(process)
    except OSError:
        pass
    path = os.environ.get("GPUSPAN_LIB")
    if path:
        try:
            lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            if _has_symbols(lib):
                return _bind(lib)
            warnings.warn(f"gpuspan: {path} (GPUSPAN_LIB) lacks the gpuspan C API; scopes are not recorded")
            return None
        except OSError as e:
            warnings.warn(f"gpuspan: cannot load GPUSPAN_LIB={path}: {e}; scopes are not recorded")
            return None
    # The wheel's copy (`pip install gpuspan`): loaded into the process, the agent activates
    # on the first scope (as a library linked into the worker would).
    bundled = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_native", "libgpuspan.so")
    if os.path.isfile(bundled):
        try:
            lib = ctypes.CDLL(bundled, mode=ctypes.RTLD_GLOBAL)
            if _has_symbols(lib):
                return _bind(lib)
        except OSError as e:
            warnings.warn(f"gpuspan: cannot load the bundled {bundled}: {e}; scopes are not recorded")
            return None
    warnings.warn(
        "gpuspan: libgpuspan.so is not loaded (run under `gpuspan run`, LD_PRELOAD it, or set "
        "GPUSPAN_LIB); scopes are not recorded"
    )
    return None


_lib = _load()


def is_loaded() -> bool:
    """True when libgpuspan.so was found (the agent may still be inactive: see ``is_active``)."""
    return _lib is not None


def is_active() -> bool:
    """True when the agent is loaded and collecting; otherwise every call here is a no-op."""
    return _lib is not None and _lib.gpuspan_is_active() == 1


def version() -> Optional[str]:
    """The version of the loaded libgpuspan.so, or None when it is not loaded."""
    if _lib is None:
        return None
    return _lib.gpuspan_version().decode("ascii", "replace")


# --- encoding -----------------------------------------------------------------------------

_HEADER_KEYS = ("tracestate", "baggage")
_OWS = re.compile(r"\s*([,;])\s*")


def _escape_byte(b: int) -> str:
    return "%{:02X}".format(b)


def _special(ch: str) -> bool:
    """Whitespace (the agent splits scope names on Unicode whitespace) or a control character."""
    return ch.isspace() or unicodedata.category(ch) == "Cc"


def _escape(ch: str) -> str:
    return "".join(_escape_byte(b) for b in ch.encode("utf-8"))


def _encode(text: str, extra: str = "") -> str:
    """Percent-encodes ``%``, whitespace, control characters and ``extra`` (as UTF-8 bytes)."""
    return "".join(_escape(ch) if ch == "%" or ch in extra or _special(ch) else ch for ch in text)


def _encode_header(value: str) -> str:
    """A W3C list header value: optional whitespace around ``,``/``;`` and at the ends dropped,
    other whitespace and control characters percent-encoded, the rest unchanged."""
    value = _OWS.sub(r"\1", value.strip())
    return "".join(_escape(ch) if _special(ch) else ch for ch in value)


def _attr(key: str, value: object) -> str:
    key = str(key)
    value = str(value)
    if key in _HEADER_KEYS:
        return f"{_encode(key, '=')}={_encode_header(value)}"
    return f"{_encode(key, '=')}={_encode(value)}"


def _first_token(traceparent: Optional[str]) -> str:
    if not traceparent:
        return ""
    parts = str(traceparent).split()
    return parts[0] if parts else ""


# --- OpenTelemetry (optional) ---------------------------------------------------------------


def _otel_context() -> tuple:
    """(traceparent, tracestate, baggage header) of the current OpenTelemetry context; each
    None when OpenTelemetry is not importable or the value is absent / invalid."""
    try:
        from opentelemetry import trace as _trace
    except Exception:
        return None, None, None
    traceparent = tracestate = baggage = None
    try:
        ctx = _trace.get_current_span().get_span_context()
        if ctx is not None and ctx.is_valid:
            traceparent = "00-{:032x}-{:016x}-{:02x}".format(ctx.trace_id, ctx.span_id, int(ctx.trace_flags))
            if ctx.trace_state:
                tracestate = ctx.trace_state.to_header() or None
    except Exception:
        pass
    try:
        from opentelemetry import baggage as _baggage
        from urllib.parse import quote

        entries = _baggage.get_all()
        if entries:
            baggage = ",".join(
                "{}={}".format(quote(str(k), safe=""), quote(str(v), safe="")) for k, v in entries.items()
            )
    except Exception:
        pass
    return traceparent, tracestate, baggage


# --- low-level calls ------------------------------------------------------------------------


def use_streams(*streams: int) -> int:
    """Names the CUDA streams (``cudaStream_t`` handles as ints, e.g.
    ``torch.cuda.current_stream().cuda_stream``; at most 4 kept) on which the scopes this
    thread opens from now on are timed in coarse mode. No argument goes back to the legacy
    default stream. Returns how many were kept, or -2 when the agent is not loaded."""
    if _lib is None:
        return NOT_COLLECTING
    arr = (ctypes.c_void_p * max(len(streams), 1))(*[ctypes.c_void_p(int(s)) for s in streams])
    return _lib.gpuspan_use_streams(arr, len(streams))


def _torch_current_stream() -> Optional[int]:
    """``torch.cuda.current_stream().cuda_stream`` when torch is already imported and CUDA is
    initialized; None otherwise (gpuspan never imports torch itself, nor initializes CUDA)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not torch.cuda.is_initialized():
            return None
        return int(torch.cuda.current_stream().cuda_stream)
    except Exception:
        return None


def _follow_torch_stream() -> None:
    s = _torch_current_stream()
    if s is not None:
        use_streams(s)


def request_begin(traceparent: Optional[str] = None, **attrs: object) -> int:
    """Opens a request scope ``gpuspan.request <traceparent> k=v ...`` on this thread (see the
    module docstring for the trace context and the encoding). Returns the nesting level of the
    new scope, or -2 when the agent is not collecting; close it with ``end()``."""
    if _lib is None:
        return NOT_COLLECTING
    if traceparent is None:
        otel_tp, otel_ts, otel_bg = _otel_context()
        traceparent = otel_tp
        if otel_ts and "tracestate" not in attrs:
            attrs["tracestate"] = otel_ts
        if otel_bg and "baggage" not in attrs:
            attrs["baggage"] = otel_bg
    tp = _first_token(traceparent)
    text = " ".join(_attr(k, v) for k, v in attrs.items())
    _follow_torch_stream()
    return _lib.gpuspan_request_begin(tp.encode("utf-8") if tp else None, text.encode("utf-8") if text else None)


def step_begin(index: int, count: int) -> int:
    """Opens a step scope ``dit.step <index>/<count>`` on this thread. Returns its nesting
    level, or -2; close it with ``end()``."""
    if _lib is None:
        return NOT_COLLECTING
    _follow_torch_stream()
    return _lib.gpuspan_step_begin(int(index) & 0xFFFFFFFF, int(count) & 0xFFFFFFFF)


def stage_begin(name: str) -> int:
    """Opens a stage scope named ``name`` on this thread. Returns its nesting level, or -2;
    close it with ``end()``."""
    if _lib is None:
        return NOT_COLLECTING
    return _lib.gpuspan_stage_begin(str(name).encode("utf-8"))


def end() -> int:
    """Closes the innermost open scope of this thread, whichever kind. Returns its nesting
    level, or -2 (not collecting, or nothing open)."""
    if _lib is None:
        return NOT_COLLECTING
    return _lib.gpuspan_end()


# --- context managers -----------------------------------------------------------------------


class _Scope:
    """A scope as a context manager: ``__enter__`` opens it and returns its nesting level
    (-2 when not collecting); ``__exit__`` closes it only if it was opened."""

    __slots__ = ("_open", "_level")

    def __init__(self, opener):
        self._open = opener
        self._level = NOT_COLLECTING

    def __enter__(self) -> int:
        self._level = self._open()
        return self._level

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._level >= 0:
            end()
        self._level = NOT_COLLECTING
        return False

    @property
    def level(self) -> int:
        """Nesting level of the open scope, or -2 when none is open."""
        return self._level


def request(traceparent: Optional[str] = None, **attrs: object) -> _Scope:
    """Context manager for a request scope (``request_begin``). ``traceparent`` None: taken
    from the current OpenTelemetry span when there is one (with its tracestate and baggage),
    else the agent starts a new trace. ``attrs`` become span attributes; for keys that are not
    Python identifiers use ``**{"gpuspan.capture": "fine"}``."""
    return _Scope(lambda: request_begin(traceparent, **attrs))


def step(index: int, count: int) -> _Scope:
    """Context manager for a denoising-step scope ``dit.step <index>/<count>``."""
    return _Scope(lambda: step_begin(index, count))


def stage(name: str) -> _Scope:
    """Context manager for a stage scope (``attention.spatial``, ``attention.temporal``,
    ``attention.cross``, ``ffn``, ``norm``, ``vae.decode``, or any other name)."""
    return _Scope(lambda: stage_begin(name))
