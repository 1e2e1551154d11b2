#!/usr/bin/env python3
"""A DiT-shaped worker for the simulated H100, annotated with ``gpuspan.py``.

Run it under the agent with the simulated driver::

    gpuspan run --sim -- python3 python/examples/sim_worker.py --steps 3 --requests 2

It drives ``libcuda.so.1`` through ctypes (under ``gpuspan run --sim`` that is the simulated
H100, first on ``LD_LIBRARY_PATH``): ``cuInit``, the primary context, a module (any image),
kernels named like a DiT's (``flash_fwd_kernel``, ``sm90_xmma_gemm_bf16bf16_bf16f32``,
``layer_norm_kernel``, ``conv3d_fprop_implicit_gemm``) launched on a created stream with
their duration in ns as ``kernelParams[0]`` (the simulator's convention), and
``cuCtxSynchronize`` at the end of each request.

Structure of each request::

    with tracer.start_as_current_span("worker.request"):        # when OpenTelemetry is there
        with gpuspan.request(model="pyworker"):
            for i in range(steps):
                with gpuspan.step(i, steps):
                    with gpuspan.stage("attention.spatial"): ...  # and temporal, cross, ffn, norm
            with gpuspan.stage("vae.decode"): ...

OpenTelemetry: with ``opentelemetry-sdk`` installed and ``OTEL_EXPORTER_OTLP_ENDPOINT`` set,
a TracerProvider exports through the OTLP HTTP/protobuf span exporter
(``opentelemetry.exporter.otlp.proto.http.trace_exporter.OTLPSpanExporter``) and a
BatchSpanProcessor, and is shut down at the end; ``gpuspan.request()`` then takes the trace
context of the ``worker.request`` span. ``--traceparent TP`` (repeatable; request r uses the
r-th modulo their number) makes the worker span a child of TP, or, without a recording
span, is passed to ``gpuspan.request`` directly. With neither, the agent starts a new trace.

``--nvtx LIB`` annotates through NVIDIA's NVTX library at LIB (``libnvtx3interop.so.1`` of
the ``nvidia-nvtx-cu12`` wheel) instead of ``gpuspan.py``, the way a worker that uses NVTX
would, exercising every message form: the request with ``nvtxRangePushA``, each step with
``nvtxRangePushW`` (wide), the stages with ``nvtxDomainRangePushEx`` in the ``gpuspan``
domain (ASCII, wide and registered-string messages in turn), and, as NCCL does, a range in
an ``NCCL`` domain around each step's first stage, pushed before it and popped inside it.

``--fork-at-step K`` (with ``--child-sigterm``: the child then sends itself SIGTERM) forks
the worker inside step K of the first request, as a worker that
starts a helper process with ``os.fork`` would: the child checks ``gpuspan.is_active()``,
opens a stage, prints ``child active=<0|1>`` and leaves with ``sys.exit(0)`` (so exit
handlers run in it); the parent waits for it, prints ``forked child exited <code>`` and
goes on.

Output: one line per request, ``request <r> trace_id=<32 hex or -> kernels=<k>``, then
``launched <n> kernels``.
"""

import argparse
import contextlib
import ctypes
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import gpuspan  # noqa: E402

# (stage, kernel, launches per step, duration ns)
STEP_PLAN = (
    ("attention.spatial", "flash_fwd_kernel", 2, 400_000),
    ("attention.temporal", "flash_fwd_kernel", 1, 250_000),
    ("attention.cross", "flash_fwd_kernel", 1, 150_000),
    ("ffn", "sm90_xmma_gemm_bf16bf16_bf16f32", 2, 300_000),
    ("norm", "layer_norm_kernel", 1, 20_000),
)
VAE_PLAN = ("vae.decode", "conv3d_fprop_implicit_gemm", 4, 2_000_000)


class Cuda:
    """The few driver calls the worker needs, over ctypes."""

    def __init__(self, name="libcuda.so.1", nonblocking=False):
        self.lib = ctypes.CDLL(name)
        p = ctypes.c_void_p
        u = ctypes.c_uint
        for fn, args in {
            "cuInit": (u,),
            "cuDeviceGet": (ctypes.POINTER(ctypes.c_int), ctypes.c_int),
            "cuDevicePrimaryCtxRetain": (ctypes.POINTER(p), ctypes.c_int),
            "cuCtxSetCurrent": (p,),
            "cuModuleLoadData": (ctypes.POINTER(p), p),
            "cuModuleGetFunction": (ctypes.POINTER(p), p, ctypes.c_char_p),
            "cuStreamCreate": (ctypes.POINTER(p), u),
            "cuLaunchKernel": (p, u, u, u, u, u, u, u, p, ctypes.POINTER(p), ctypes.POINTER(p)),
            "cuCtxSynchronize": (),
        }.items():
            f = getattr(self.lib, fn)
            f.argtypes = args
            f.restype = ctypes.c_int
        self.check("cuInit", self.lib.cuInit(0))
        dev = ctypes.c_int()
        self.check("cuDeviceGet", self.lib.cuDeviceGet(ctypes.byref(dev), 0))
        ctx = p()
        self.check("cuDevicePrimaryCtxRetain", self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev))
        self.check("cuCtxSetCurrent", self.lib.cuCtxSetCurrent(ctx))
        self.module = p()
        image = ctypes.create_string_buffer(b"\x7fELF sim module")
        self.check("cuModuleLoadData", self.lib.cuModuleLoadData(ctypes.byref(self.module), ctypes.cast(image, p)))
        self.stream = p()
        # CU_STREAM_NON_BLOCKING = 1 (cuda.h), like PyTorch's side streams.
        self.check("cuStreamCreate", self.lib.cuStreamCreate(ctypes.byref(self.stream), 1 if nonblocking else 0))
        self.functions = {}
        self.launched = 0

    @staticmethod
    def check(what, rc):
        if rc != 0:
            raise RuntimeError(f"{what} failed: CUresult {rc}")

    def function(self, name):
        f = self.functions.get(name)
        if f is None:
            f = ctypes.c_void_p()
            self.check("cuModuleGetFunction", self.lib.cuModuleGetFunction(ctypes.byref(f), self.module, name.encode()))
            self.functions[name] = f
        return f

    def launch(self, name, duration_ns):
        dur = ctypes.c_uint64(duration_ns)
        params = (ctypes.c_void_p * 1)(ctypes.cast(ctypes.byref(dur), ctypes.c_void_p))
        self.check(
            "cuLaunchKernel",
            self.lib.cuLaunchKernel(self.function(name), 132, 1, 1, 128, 1, 1, 0, self.stream, params, None),
        )
        self.launched += 1

    def synchronize(self):
        self.check("cuCtxSynchronize", self.lib.cuCtxSynchronize())


class NvtxAttributes(ctypes.Structure):
    """``nvtxEventAttributes_t`` v2 (nvToolsExt.h, 48 bytes)."""

    _fields_ = [
        ("version", ctypes.c_uint16),
        ("size", ctypes.c_uint16),
        ("category", ctypes.c_uint32),
        ("colorType", ctypes.c_int32),
        ("color", ctypes.c_uint32),
        ("payloadType", ctypes.c_int32),
        ("reserved0", ctypes.c_int32),
        ("payload", ctypes.c_uint64),
        ("messageType", ctypes.c_int32),
        ("message", ctypes.c_void_p),
    ]


class Nvtx:
    """Scopes announced through a real NVTX library (see the module docs)."""

    ASCII, UNICODE, REGISTERED = 1, 2, 3

    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        p = ctypes.c_void_p
        for fn, args, res in (
            ("nvtxRangePushA", (ctypes.c_char_p,), ctypes.c_int),
            ("nvtxRangePushW", (ctypes.c_wchar_p,), ctypes.c_int),
            ("nvtxRangePop", (), ctypes.c_int),
            ("nvtxDomainCreateA", (ctypes.c_char_p,), p),
            ("nvtxDomainCreateW", (ctypes.c_wchar_p,), p),
            ("nvtxDomainRegisterStringA", (p, ctypes.c_char_p), p),
            ("nvtxDomainRangePushEx", (p, ctypes.POINTER(NvtxAttributes)), ctypes.c_int),
            ("nvtxDomainRangePop", (p,), ctypes.c_int),
        ):
            f = getattr(self.lib, fn)
            f.argtypes = args
            f.restype = res
        self.domain = self.lib.nvtxDomainCreateW("gpuspan")
        self.nccl = self.lib.nvtxDomainCreateA(b"NCCL")
        self.keep = []
        self.stages = 0

    @contextlib.contextmanager
    def request(self, traceparent=None, **attrs):
        name = "gpuspan.request" + (f" {traceparent}" if traceparent else "")
        name += "".join(f" {k}={v}" for k, v in attrs.items())
        self.lib.nvtxRangePushA(name.encode())
        try:
            yield
        finally:
            self.lib.nvtxRangePop()

    @contextlib.contextmanager
    def step(self, index, count):
        self.lib.nvtxRangePushW(f"dit.step {index}/{count}")
        self.nccl_open = self._push(self.nccl, self.ASCII, b"ncclAllReduce")
        try:
            yield
        finally:
            self.lib.nvtxRangePop()

    def _push(self, domain, kind, text):
        a = NvtxAttributes(version=3, size=ctypes.sizeof(NvtxAttributes), messageType=kind)
        if kind == self.UNICODE:
            msg = ctypes.c_wchar_p(text)
        elif kind == self.REGISTERED:
            msg = ctypes.c_void_p(self.lib.nvtxDomainRegisterStringA(domain, text.encode()))
        else:
            msg = ctypes.c_char_p(text if isinstance(text, bytes) else text.encode())
        self.keep.append(msg)
        a.message = ctypes.cast(msg, ctypes.c_void_p)
        return self.lib.nvtxDomainRangePushEx(domain, ctypes.byref(a))

    @contextlib.contextmanager
    def stage(self, name):
        kind = (self.ASCII, self.UNICODE, self.REGISTERED)[self.stages % 3]
        self.stages += 1
        self._push(self.domain, kind, name)
        if getattr(self, "nccl_open", None) is not None:
            # NCCL's range ends inside our stage: it must not close the stage.
            self.lib.nvtxDomainRangePop(self.nccl)
            self.nccl_open = None
        try:
            yield
        finally:
            self.lib.nvtxDomainRangePop(self.domain)


def setup_otel():
    """(tracer, propagator, provider): a real exporting tracer when the SDK and
    OTEL_EXPORTER_OTLP_ENDPOINT are there, the API's tracer when only the API is, else Nones."""
    try:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        return None, None, None
    provider = None
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "sim-worker")})
            provider = TracerProvider(resource=resource)
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            trace.set_tracer_provider(provider)
        except ImportError as e:
            print(f"sim_worker: OpenTelemetry SDK / OTLP exporter not importable ({e}); no worker spans", file=sys.stderr)
    return trace.get_tracer("gpuspan.sim_worker"), TraceContextTextMapPropagator(), provider


def current_trace_id():
    """Trace id (32 hex) of the current OpenTelemetry span, if valid."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    ctx = trace.get_current_span().get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else None


def fork_here(child_sigterm=False):
    """Forks; the child reports whether the agent is active in it and exits (see the module
    docs), the parent waits for it. With ``child_sigterm`` the child sends itself SIGTERM
    (as a supervisor stopping a helper would) and would exit 0 only if that did not end it."""
    pid = os.fork()
    if pid == 0:
        active = gpuspan.is_active()
        with gpuspan.stage("child.stage"):
            pass
        print(f"child active={int(active)}", flush=True)
        if child_sigterm:
            import signal
            import time
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        sys.exit(0)
    _, status = os.waitpid(pid, 0)
    print(f"forked child exited {os.waitstatus_to_exitcode(status)}", flush=True)


CHILD_SIGTERM = False


def run_request(cuda, steps, api=gpuspan, fork_at=None):
    """One request's GPU work inside the current request scope; returns kernels launched.
    ``api``: ``gpuspan`` or an ``Nvtx`` annotator; ``fork_at``: fork inside that step."""
    before = cuda.launched
    for i in range(steps):
        with api.step(i, steps):
            if i == fork_at:
                fork_here(CHILD_SIGTERM)
            for stage, kernel, n, ns in STEP_PLAN:
                with api.stage(stage):
                    for _ in range(n):
                        cuda.launch(kernel, ns)
    stage, kernel, n, ns = VAE_PLAN
    with api.stage(stage):
        for _ in range(n):
            cuda.launch(kernel, ns)
    cuda.synchronize()
    return cuda.launched - before


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3, help="denoising steps per request")
    ap.add_argument("--requests", type=int, default=1, help="number of requests")
    ap.add_argument(
        "--traceparent",
        action="append",
        default=[],
        help="W3C traceparent of the caller (repeatable: request r uses the r-th modulo their number)",
    )
    ap.add_argument("--nonblocking", action="store_true", help="launch on a CU_STREAM_NON_BLOCKING stream")
    ap.add_argument(
        "--name-stream", action="store_true", help="name the stream to gpuspan (gpuspan.use_streams) for coarse timing"
    )
    ap.add_argument("--nvtx", metavar="LIB", help="annotate through this NVTX library instead of gpuspan.py")
    ap.add_argument("--fork-at-step", type=int, metavar="K", help="fork inside step K of the first request")
    ap.add_argument("--child-sigterm", action="store_true", help="the forked child sends itself SIGTERM")
    args = ap.parse_args(argv)
    global CHILD_SIGTERM
    CHILD_SIGTERM = args.child_sigterm
    api = Nvtx(args.nvtx) if args.nvtx else gpuspan

    tracer, propagator, provider = setup_otel()
    cuda = Cuda(nonblocking=args.nonblocking)
    if args.name_stream:
        print(f"use_streams kept {gpuspan.use_streams(cuda.stream.value)}", flush=True)
    try:
        for r in range(args.requests):
            tp = args.traceparent[r % len(args.traceparent)] if args.traceparent else None
            if tracer is not None:
                parent = propagator.extract({"traceparent": tp}) if tp else None
                span_cm = tracer.start_as_current_span("worker.request", context=parent)
            else:
                span_cm = contextlib.nullcontext()
            with span_cm:
                span_trace_id = current_trace_id()
                # With a valid current span, gpuspan.request() takes its context (tracestate,
                # baggage) itself; otherwise the explicit traceparent, if any, is passed.
                with api.request(None if span_trace_id else tp, model="pyworker"):
                    kernels = run_request(cuda, args.steps, api, args.fork_at_step if r == 0 else None)
                trace_id = span_trace_id or (tp.split("-")[1] if tp and tp.count("-") == 3 else "-")
            print(f"request {r} trace_id={trace_id} kernels={kernels}", flush=True)
    finally:
        if provider is not None:
            provider.shutdown()
    print(f"launched {cuda.launched} kernels", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
