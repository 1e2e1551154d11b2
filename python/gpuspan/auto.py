"""gpuspan.auto: requests, denoising steps and stages of a PyTorch / diffusers worker that
announces nothing, with no change to its code.

Switched on by ``gpuspan run -- python worker.py`` (unless ``--no-auto``), by
``python -m gpuspan.instrument worker.py``, or by ``GPUSPAN_AUTO=1`` with
``gpuspan/bootstrap`` on ``PYTHONPATH`` (its ``sitecustomize`` calls :func:`install`).

How the model maps onto gpuspan's scopes (the rules are data: ``auto.toml``, beside the
kernel-name rules ``stages.toml``, extended by the ``[auto]`` table of ``GPUSPAN_RULES``):

- **request**: the outermost call of a diffusers ``DiffusionPipeline`` (any subclass's
  ``__call__``) or of a function a rule names; ``model`` is the pipeline's
  ``_name_or_path`` or its class name, ``pipeline`` its class; the current OpenTelemetry
  span's traceparent is used when opentelemetry is in use (as :func:`gpuspan.request`).
- **denoising step**: the denoiser is the outermost module whose ``forward`` takes a
  timestep (``timestep``, ``t``, ``timesteps``). Its forwards with the same timestep form one
  step (classifier-free guidance as two passes or as a batch of two); a step also ends when
  a diffusers scheduler's ``step`` returns, and in a pipeline that has such a scheduler only
  then. Steps are ``dit.step i/n`` (``i`` from 0), ``n`` from the scheduler's ``timesteps``
  when known (else 0: unknown).
- **stages**: attention modules by role (cross when they receive ``encoder_hidden_states``
  or are a block's ``attn2`` / ``cross_attn``; temporal when their path names a temporal
  block; spatial otherwise, joint space-time attention included), feed-forward modules as
  ``ffn``, norms as ``norm``, an ``AutoencoderKL*``'s ``decode`` as ``vae.decode``, text
  encoders before the first step as ``text_encode``. A module's stage is decided once, at its
  first call, and kept in the module (``_gpuspan_role``); modules inside a stage open none.

Mechanics: torch's global ``register_module_forward_pre_hook`` sees each module the first
time it is called (until the first request ends; pipelines prepare their components at each
request's start) and prepares the tree under it: its stage decided, and the class of every
module that has a role gets a ``forward`` wrapper (``functools.wraps``: same name, signature
and ``__wrapped__``), which acts only for instances with a role and closes their scope in a
``finally``, so an exception still closes it. Why a class wrapper and not per-module torch
hooks: with any hook on a module, torch sends its every call through ``_call_impl``'s slow
path, ≈ 2 µs per call on the bench machine before a hook does anything, the whole of
issue 12's budget; the wrapper costs ≈ 0.1 µs. It is the same technique as the pipeline,
scheduler and VAE methods below, it survives ``copy.deepcopy`` and pickling (the class is
unchanged, the instance holds nothing new but its role), and creates no reference cycle. A
module that already has its own instance-level ``forward`` when prepared (accelerate's
offload hooks bind the class's function at hook time) gets torch's per-module hooks
instead: ``register_forward_pre_hook(with_kwargs=True)`` and
``register_forward_hook(always_call=True)``. Both paths share one scope state, so a module
reached by both opens one scope.
Methods (a pipeline's ``__call__``, a scheduler's ``step``, a VAE's ``decode``) are wrapped on
the class and its subclasses when their module is imported. Nothing of the worker's code is
rewritten, torch is never imported by gpuspan itself, and no hook touches tensor values on
the GPU (a CUDA timestep is compared by its storage, not read back).

Coarse mode on CUDA: :func:`gpuspan.request_begin` / :func:`gpuspan.step_begin` name
``torch.cuda.current_stream()`` for the scopes. On a CPU-only run the agent times scopes on
the CPU and its spans say ``gpuspan.timing=cpu``.

A hook never raises into the worker: an internal error switches auto-instrumentation off
with one warning.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.abc
import inspect
import os
import re
import sys
import threading
import types
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import gpuspan as _api

__all__ = ["install", "installed", "load_rules", "RULES_FILE"]

#: The built-in rules (a link to ``crates/gpuspan-core/rules/auto.toml`` in the build tree).
RULES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "auto.toml")

_ROLE = "_gpuspan_role"
#: Set in a module that got torch's per-module hooks (:func:`_torch_hook_module`).
_TORCH_HOOKED = "_gpuspan_torch_hooks"
_NOT_COLLECTING = _api.NOT_COLLECTING
_DENOISER = "denoiser"
#: The stage opened only before a request's first step.
_TEXT_ENCODE = "text_encode"


# --------------------------------------------------------------------------- rules


def _regex(d: Dict[str, Any], key: str) -> Optional["re.Pattern[str]"]:
    """``d[key]`` compiled, None when absent; a bad one is a ValueError naming the key."""
    if not d.get(key):
        return None
    try:
        return re.compile(d[key])
    except re.error as e:
        raise ValueError(f"{key} = {d[key]!r} is not a regex: {e}") from e


class ModuleRule:
    """One ``[[auto.module]]`` rule: ``class`` / ``path`` regexes, ``receives``, ``stage``."""

    __slots__ = ("class_re", "path_re", "receives", "stage")

    def __init__(self, d: Dict[str, Any]):
        self.class_re = _regex(d, "class")
        self.path_re = _regex(d, "path")
        self.receives = d.get("receives") or None
        if "stage" not in d:
            raise ValueError(f"[[auto.module]] {d!r} has no stage")
        self.stage = str(d["stage"])

    def static_match(self, cls_name: str, path: str) -> bool:
        if self.class_re is not None and not self.class_re.search(cls_name):
            return False
        if self.path_re is not None and not self.path_re.search(path):
            return False
        return True


class HookRule:
    """One ``[[auto.hook]]`` entry: a method (``module`` / ``class`` / ``method``, optionally
    ``class_name``) or a function (``module`` / ``function``) and its ``role``."""

    __slots__ = ("module", "cls", "method", "function", "class_name_re", "role", "stage")

    def __init__(self, d: Dict[str, Any]):
        self.module = str(d["module"])
        self.cls = d.get("class")
        self.method = d.get("method")
        self.function = d.get("function")
        self.class_name_re = _regex(d, "class_name")
        self.role = str(d["role"])
        self.stage = d.get("stage")
        if self.role not in ("request", "step_end", "stage"):
            raise ValueError(f"[[auto.hook]] role must be request, step_end or stage, not {self.role!r}")
        if self.role == "stage" and not self.stage:
            raise ValueError("[[auto.hook]] with role = \"stage\" needs `stage`")
        if not ((self.cls and self.method) or self.function):
            raise ValueError(f"[[auto.hook]] for {self.module} needs class + method, or function")


class Rules:
    """The merged rules: built-in ``auto.toml`` and the ``[auto]`` table of ``GPUSPAN_RULES``."""

    def __init__(self, timestep_args: List[str], modules: List[ModuleRule], hooks: List[HookRule]):
        self.timestep_args = tuple(timestep_args)
        self.modules = modules
        self.hooks = hooks


def _read_toml(path: str) -> Dict[str, Any]:
    try:
        import tomllib as toml  # Python 3.11+
    except ImportError:  # pragma: no cover - older Pythons with tomli installed
        import tomli as toml  # type: ignore[no-redef]
    with open(path, "rb") as f:
        return toml.load(f)


def load_rules(override: Optional[str] = None) -> Rules:
    """Reads :data:`RULES_FILE`, then the ``[auto]`` table of ``override`` (default: the
    ``GPUSPAN_RULES`` file, if set): its module rules first, its hooks added, its
    ``timestep_args`` instead of ours. Raises ``OSError`` / ``ValueError`` (with the file's
    name) on a file that cannot be read or a bad rule."""
    base = _read_toml(RULES_FILE).get("auto", {})
    modules = list(base.get("module", []))
    hooks = list(base.get("hook", []))
    timestep_args = list(base.get("timestep_args", ["timestep", "t", "timesteps"]))
    path = override if override is not None else os.environ.get("GPUSPAN_RULES") or None
    if path:
        try:
            extra = _read_toml(path).get("auto", {})
        except Exception as e:
            raise ValueError(f"GPUSPAN_RULES={path}: {e}") from e
        modules = list(extra.get("module", [])) + modules
        hooks = hooks + list(extra.get("hook", []))
        timestep_args = list(extra.get("timestep_args", timestep_args))
    try:
        return Rules(timestep_args, [ModuleRule(m) for m in modules], [HookRule(h) for h in hooks])
    except (KeyError, re.error, ValueError) as e:
        raise ValueError(f"auto-instrumentation rules ({path or RULES_FILE}): {e}") from e


# --------------------------------------------------------------------------- state


class _State:
    """Per-thread scope state (scopes belong to the thread that opens them). A hook reads it
    once from :data:`_tls` (a ``threading.local`` attribute: ≈ 60 ns on the bench machine),
    then plain slots (≈ 10 ns each)."""

    __slots__ = (
        "request", "pipe", "opened", "step_open", "step_key", "step_index", "scheduler_steps",
        "stage_depth", "stage_owner",
    )

    def __init__(self) -> None:
        self.request = False  # an auto request is open on this thread
        self.pipe: Any = None  # the pipeline of that request, if any
        self.opened = 0  # scopes opened by auto in this request, still open
        self.step_open = False
        self.step_key: Any = None
        self.step_index = 0  # steps begun in this request
        self.scheduler_steps = False  # steps end only at a scheduler's step()
        self.stage_depth = 0  # stage scopes open (0 or 1: only the outermost opens one)
        self.stage_owner: Any = None  # the module whose call opened the open stage


class _Thread(threading.local):
    """This thread's :class:`_State` as ``st``."""

    def __init__(self) -> None:
        self.st = _State()


_rules: Optional[Rules] = None
_tls = _Thread()
_enabled = False
_installed = False
_lock = threading.Lock()
_signatures: Dict[type, Optional[inspect.Signature]] = {}
#: Per stage name, a function of no argument that opens a scope of that name and returns
#: True, or False when the agent is not collecting (:func:`_stage_opener`); and the function
#: that closes the innermost scope. Both are CPython builtins whose C code is in the agent
#: (``src/capi_py.rs``): a begin + end pair cost 354 ns this way against 558 ns through
#: ctypes on the bench machine (the agent's own work included); without them
#: (another Python, an older agent) ctypes calls of ``gpuspan_stage_begin`` / ``gpuspan_end``.
_stage_openers: Dict[str, Callable[[], Any]] = {}
_c_end: Callable[[], Any] = lambda: None
#: What :func:`_stage_opener` builds from: :func:`_builtins` or :func:`_ctypes_openers`.
_make_opener: Callable[[str], Callable[[], Any]] = lambda stage: (lambda: False)
#: Per denoiser class: its timestep parameter's name and position (see :func:`_timestep_at`).
_timestep_params: Dict[type, Tuple[Optional[str], Optional[int]]] = {}


def installed() -> bool:
    """True once :func:`install` has put the hooks in place (and no error took them out)."""
    return _installed and _enabled


def _fail(e: BaseException) -> None:
    """An internal error: auto-instrumentation goes off (hooks return at once), one warning."""
    global _enabled
    if _enabled:
        _enabled = False
        warnings.warn(f"gpuspan.auto: switched off after an internal error: {e!r}", RuntimeWarning, stacklevel=2)


def _signature(cls: type) -> Optional[inspect.Signature]:
    try:
        return _signatures[cls]
    except KeyError:
        try:
            sig: Optional[inspect.Signature] = inspect.signature(cls.forward)
        except (TypeError, ValueError, AttributeError):
            sig = None
        _signatures[cls] = sig
        return sig


def _position(cls: type, name: str) -> Optional[int]:
    """The index among the positional arguments (``self`` not counted) at which forward()
    parameter ``name`` of ``cls`` can be passed; None when it cannot (keyword-only, absent)."""
    sig = _signature(cls)
    if sig is None:
        return None
    params = [p for p in sig.parameters.values() if p.name != "self"]
    for i, p in enumerate(params):
        if p.name == name:
            return i if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) else None
    return None


def _argument(module: Any, name: str, args: tuple, kwargs: dict) -> Any:
    """The value of forward() parameter ``name`` in this call (None when not given)."""
    if name in kwargs:
        return kwargs[name]
    i = _position(type(module), name)
    return args[i] if i is not None and i < len(args) else None


def _timestep_param(cls: type) -> Optional[str]:
    """The first of the rules' ``timestep_args`` that ``cls.forward`` takes, if any."""
    sig = _signature(cls)
    if sig is None or _rules is None:
        return None
    for name in _rules.timestep_args:
        if name in sig.parameters:
            return name
    return None


def _timestep_at(cls: type) -> Tuple[Optional[str], Optional[int]]:
    """A denoiser class's timestep parameter (None: it has none) and its
    :func:`_position`, found once per class."""
    try:
        return _timestep_params[cls]
    except KeyError:
        name = _timestep_param(cls)
        at = _timestep_params[cls] = (name, _position(cls, name) if name else None)
        return at


# --------------------------------------------------------------------------- module tree


class _Undecided:
    """A module whose stage depends on its first call's arguments (a rule with ``receives``)."""

    __slots__ = ("rules", "path")

    def __init__(self, rules: List[ModuleRule], path: str):
        self.rules = rules
        self.path = path


def _classify(module: Any, path: str, in_denoiser: bool) -> Any:
    """The role of one module: ``"denoiser"``, a stage name, an :class:`_Undecided`, or None."""
    assert _rules is not None
    if not in_denoiser and _timestep_param(type(module)) is not None:
        return _DENOISER
    name = type(module).__name__
    for i, r in enumerate(_rules.modules):
        if r.static_match(name, path):
            if r.receives is None:
                return r.stage
            return _Undecided(_rules.modules[i:], path)
    return None


def _prepare_tree(root: Any, prefix: str) -> None:
    """Decides the role of ``root`` and of every module under it that has none yet, and
    hooks the modules that have one. Paths are ``prefix`` + the module's name in the tree."""
    stack = [(root, prefix, False)]
    while stack:
        m, path, in_denoiser = stack.pop()
        d = m.__dict__
        if _ROLE not in d:
            role = _classify(m, path, in_denoiser)
            d[_ROLE] = role
            if role is not None:
                _hook_module(m)
        role = d[_ROLE]
        inside = in_denoiser or role == _DENOISER
        for name, child in d.get("_modules", {}).items():
            if child is not None:
                stack.append((child, f"{path}.{name}" if path else name, inside))


def _hook_module(m: Any) -> None:
    """Instruments a module that has a role: its class's ``forward`` wrapped
    (:func:`_forward_wrapper`, once per class), or, when the instance has its own
    ``forward`` already, torch's per-module hooks (:func:`_torch_hook_module`)."""
    if "forward" in m.__dict__:
        _torch_hook_module(m)
        return
    cls = type(m)
    if _is_wrapped(getattr(cls, "forward", None), "forward"):
        return  # this class or a base it inherits forward from is wrapped already
    orig = getattr(cls, "forward", None)
    if not inspect.isfunction(orig):
        _torch_hook_module(m)  # a forward we cannot wrap as a function (a C method)
        return
    setattr(cls, "forward", _forward_wrapper(orig))


def _torch_hook_module(m: Any) -> None:
    """torch's per-module hooks: the denoiser needs only a pre-hook (its step stays open after
    it returns); a stage module a pre-hook and an always-called post-hook."""
    m.__dict__[_TORCH_HOOKED] = True
    if m.__dict__.get(_ROLE) == _DENOISER:
        m.register_forward_pre_hook(_denoiser_pre, with_kwargs=True, prepend=True)
        return
    m.register_forward_pre_hook(_module_pre, with_kwargs=True, prepend=True)
    _register_post(m, _module_post)


def _register_post(m: Any, hook: Callable[[Any, tuple, Any], None]) -> Any:
    """``m.register_forward_hook(hook, always_call=True)`` (torch < 2.1: without it)."""
    try:
        return m.register_forward_hook(hook, always_call=True)
    except TypeError:  # torch < 2.1: no always_call
        return m.register_forward_hook(hook)


def _close_once(m: Any) -> None:
    """Closes, after this call of ``m``, the stage :func:`_module_pre` opened for it from the
    global pre-hook (the call that found ``m`` runs the forward torch had already looked up,
    not the wrapper :func:`_hook_module` just installed): a post-hook that removes itself."""
    handle: Any = None

    def once(module: Any, args: tuple, output: Any) -> None:
        if handle is not None:
            handle.remove()
        _module_post(module, args, output)

    handle = _register_post(m, once)


def _forward_wrapper(orig: Callable) -> Callable:
    """``orig`` (a module class's ``forward``) with the scopes of the instance's role:
    the denoiser's step (:func:`_denoiser_pre`) or a stage, opened as :func:`_module_pre`
    does and closed in a ``finally``. Instances without a role pass straight through.

    The wrapper runs with the globals of ``orig``'s module, and its body names only closure
    variables and builtins: TorchScript compiles ``orig``'s source (found through
    ``__wrapped__``) but resolves its names (``F``, ``Tensor``, ...) through the globals of
    the function it was given, so ``torch.jit.script`` of any instance of a wrapped class
    (``nn.LayerNorm`` included) still works."""
    auto = sys.modules[__name__]  # for `_enabled`, which `_fail` rebinds
    role_key, denoiser, text_encode, undecided = _ROLE, _DENOISER, _TEXT_ENCODE, _Undecided
    tls, openers, opener, decide, denoiser_pre, fail, end = _tls, _stage_openers, _stage_opener, _decide, _denoiser_pre, _fail, _c_end

    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        role = self.__dict__.get(role_key)
        if role is None or not auto._enabled:
            return orig(self, *args, **kwargs)
        if role == denoiser:
            denoiser_pre(self, args, kwargs)
            return orig(self, *args, **kwargs)
        st = tls.st
        if not st.request or st.stage_depth:
            return orig(self, *args, **kwargs)
        opened = False
        try:  # no call of the worker's code in here: its exceptions are its own
            if type(role) is undecided:
                role = decide(self, role, args, kwargs)
            if role is not None and not (st.step_index if role == text_encode else not st.step_open):
                if (openers.get(role) or opener(role))():
                    st.opened += 1
                    st.stage_depth += 1
                    opened = True
        except Exception as e:  # never into the worker
            fail(e)
        if not opened:
            return orig(self, *args, **kwargs)
        try:
            return orig(self, *args, **kwargs)
        finally:
            try:
                if st.stage_depth > 0:  # 0: the request ended under this call and reset it
                    st.stage_depth -= 1
                if st.opened > 0:
                    st.opened -= 1
                    end()
            except Exception as e:
                fail(e)

    wrapped = types.FunctionType(forward.__code__, orig.__globals__, "forward", forward.__defaults__, forward.__closure__)
    functools.update_wrapper(wrapped, orig)
    wrapped.__gpuspan_hook__ = "forward"  # type: ignore[attr-defined]
    return wrapped


def _global_pre(module: Any, args: tuple) -> None:
    """torch's global forward pre-hook: only looks at modules not seen before."""
    if not _enabled or _ROLE in module.__dict__:
        return None
    try:
        _prepare_tree(module, "")
        # This call runs the forward and the hooks torch looked up before this hook: do the
        # pre-hook's work here, with the keyword arguments of torch's `_call_impl` frame when
        # they can be seen (global pre-hooks get none; this runs once per module), and close
        # a stage it opens after the call (a torch-hooked module's post-hook, registered
        # now, does run for it).
        role = module.__dict__[_ROLE]
        if role is not None:
            kwargs = sys._getframe(1).f_locals.get("kwargs") if hasattr(sys, "_getframe") else None
            kwargs = kwargs if isinstance(kwargs, dict) else {}
            if role == _DENOISER:
                _denoiser_pre(module, args, kwargs)
            else:
                st = _tls.st
                owner = st.stage_owner
                _module_pre(module, args, kwargs)
                if st.stage_owner is module and owner is not module and not module.__dict__.get(_TORCH_HOOKED):
                    _close_once(module)
    except Exception as e:  # never into the worker
        _fail(e)
    return None


# The torch-hook path (modules with their own instance-level forward); the class wrapper
# above is the usual path and does the same work inline. Both read the thread's state once
# per call, encode stage names once and call the C functions directly (issue 12: goal
# <= 2 us of CPU per hooked call; `scripts/bench-auto-hooks.sh`).


def _module_pre(module: Any, args: tuple, kwargs: dict) -> None:
    """Pre-hook of a stage module (or of one whose stage waits for its first call): opens
    its stage when no stage is open and a step is (``text_encode``: before the first step),
    as ``_stage_open(st, role, in_step_only=True)``."""
    if not _enabled:
        return None
    try:
        role = module.__dict__.get(_ROLE)
        if type(role) is _Undecided:
            role = _decide(module, role, args, kwargs)
        if role is None:
            return None
        st = _tls.st
        if not st.request or st.stage_depth:
            return None
        if role == _TEXT_ENCODE:
            if st.step_index:
                return None
        elif not st.step_open:
            return None
        if not (_stage_openers.get(role) or _stage_opener(role))():
            return None
        st.opened += 1
        st.stage_depth += 1
        st.stage_owner = module
    except Exception as e:
        _fail(e)
    return None


def _module_post(module: Any, args: tuple, output: Any) -> None:
    """Post-hook of a stage module (also on an exception): closes the stage its call opened,
    as ``_stage_close``."""
    st = _tls.st
    if st.stage_owner is not module:  # this call opened nothing (nested, or no request)
        return None
    try:
        st.stage_owner = None
        st.stage_depth -= 1
        if st.opened > 0:
            st.opened -= 1
            _c_end()
    except Exception as e:
        _fail(e)
    return None


def _denoiser_pre(module: Any, args: tuple, kwargs: dict) -> None:
    """Pre-hook of the denoiser: a forward with a new timestep begins a step (with a
    scheduler whose ``step`` ends steps: a forward while no step is open)."""
    if not _enabled:
        return None
    st = _tls.st
    if not st.request or st.stage_depth:
        return None
    try:
        name, i = _timestep_params.get(type(module)) or _timestep_at(type(module))
        if name in kwargs:
            value = kwargs[name]
        else:
            value = args[i] if i is not None and i < len(args) else None
        key = _timestep_key(value)
        same = st.step_open and (st.scheduler_steps or st.step_key is None or key == st.step_key)
        if not same:
            _end_step(st)
            if _open(st, _api.step_begin(st.step_index, _step_count(st))):
                st.step_open = True
            st.step_index += 1
        st.step_key = key
    except Exception as e:
        _fail(e)
    return None


# --------------------------------------------------------------------------- scopes


def _open(st: _State, rc: int) -> bool:
    if rc == _NOT_COLLECTING:
        return False
    st.opened += 1
    return True


def _close(st: _State) -> None:
    if st.opened > 0:
        st.opened -= 1
        _c_end()


def _timestep_key(value: Any) -> Any:
    """A value identifying the timestep without reading a GPU tensor back: a CPU tensor's
    first element, a CUDA tensor's storage address and offset, a number itself."""
    if value is None:
        return None
    if hasattr(value, "device") and hasattr(value, "untyped_storage"):
        if value.device.type == "cpu":
            n = value.numel()
            if n == 1:
                return float(value)  # no view to make (the usual one-element timestep)
            return float(value.reshape(-1)[0]) if n else None
        return (value.untyped_storage().data_ptr(), value.storage_offset())
    try:
        return float(value)
    except (TypeError, ValueError):
        return id(value)


def _step_count(st: _State) -> int:
    sched = getattr(st.pipe, "scheduler", None)
    ts = getattr(sched, "timesteps", None)
    try:
        return len(ts) if ts is not None else 0
    except TypeError:
        return 0


def _decide(module: Any, undecided: _Undecided, args: tuple, kwargs: dict) -> Optional[str]:
    """Decides an :class:`_Undecided` module's stage from its first call's arguments."""
    name = type(module).__name__
    stage: Optional[str] = None
    for r in undecided.rules:
        if r.receives is not None and _argument(module, r.receives, args, kwargs) is None:
            continue
        if r.static_match(name, undecided.path):
            stage = r.stage
            break
    module.__dict__[_ROLE] = stage
    return stage


def _stage_opener(stage: str) -> Callable[[], Any]:
    """The function that opens a scope named ``stage`` (made once per name)."""
    f = _stage_openers.get(stage)
    if f is None:
        f = _stage_openers[stage] = _make_opener(stage)
    return f


class _PyMethodDef(ctypes.Structure):
    """CPython's ``PyMethodDef`` (stable ABI, ``Include/methodobject.h``)."""

    _fields_ = [("ml_name", ctypes.c_char_p), ("ml_meth", ctypes.c_void_p), ("ml_flags", ctypes.c_int), ("ml_doc", ctypes.c_char_p)]


_METH_NOARGS = 0x0004
#: Method definitions (and their names) of the builtins: they must outlive the functions.
_method_defs: List[Any] = []


def _builtin(name: str, address: int) -> Callable[[], Any]:
    """A builtin function of no argument named ``name`` whose C code is at ``address``."""
    d = _PyMethodDef(name.encode("ascii", "replace"), address, _METH_NOARGS, None)
    _method_defs.append(d)
    new = ctypes.pythonapi.PyCFunction_NewEx
    new.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
    new.restype = ctypes.py_object
    return new(ctypes.addressof(d), None, None)


def _builtins(lib: Any) -> Optional[Tuple[Callable[[str], Callable[[], Any]], Callable[[], Any]]]:
    """The agent's builtin scope functions (a stage opener factory and the closer), or None
    where they cannot be had: not CPython, or an agent without ``gpuspan_py_bind``."""
    if sys.implementation.name != "cpython" or not hasattr(ctypes, "pythonapi"):
        return None
    try:
        bind, stage_fn, end_fn = lib["gpuspan_py_bind"], lib["gpuspan_py_stage_begin_fn"], lib["gpuspan_py_end_fn"]
    except (AttributeError, KeyError):
        return None
    bind.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
    bind.restype = ctypes.c_int
    stage_fn.argtypes = (ctypes.c_uint32, ctypes.c_char_p)
    stage_fn.restype = ctypes.c_void_p
    end_fn.argtypes = ()
    end_fn.restype = ctypes.c_void_p
    # The builtins answer True / False (static objects: id() is their address in CPython)
    # with a new reference, through Py_IncRef's address: the agent links no libpython.
    incref = ctypes.cast(ctypes.pythonapi.Py_IncRef, ctypes.c_void_p).value
    if bind(incref, id(True), id(False)) != 0:
        return None
    end_address = end_fn()
    if not end_address:
        return None
    fallback = _ctypes_openers(lib)[0]
    slots: List[str] = []

    def opener(stage: str) -> Callable[[], Any]:
        address = stage_fn(len(slots), stage.encode("utf-8"))
        if not address:  # all slots taken: this name goes through ctypes
            return fallback(stage)
        slots.append(stage)
        return _builtin(f"gpuspan_stage_begin_{stage}", address)

    return opener, _builtin("gpuspan_end", end_address)


def _ctypes_openers(lib: Any) -> Tuple[Callable[[str], Callable[[], Any]], Callable[[], Any]]:
    """Stage openers and the closer as ctypes calls (``gpuspan_stage_begin`` without
    ``argtypes``: bytes encoded once pass as they are)."""
    begin, end = lib["gpuspan_stage_begin"], lib["gpuspan_end"]
    end.restype = None

    def opener(stage: str) -> Callable[[], Any]:
        name = stage.encode("utf-8")
        return lambda: begin(name) != _NOT_COLLECTING

    return opener, end


def _stage_open(st: _State, stage: str, in_step_only: bool = False) -> bool:
    """Opens ``stage`` unless a stage is open; ``text_encode`` only before the first step;
    with ``in_step_only`` (module stages: an attention of a VAE encoder is no DiT stage)
    others only inside a step."""
    if st.stage_depth:
        return False
    if stage == _TEXT_ENCODE:
        if st.step_index:
            return False
    elif in_step_only and not st.step_open:
        return False
    if not (_stage_openers.get(stage) or _stage_opener(stage))():
        return False
    st.opened += 1
    st.stage_depth += 1
    return True


def _stage_close(st: _State) -> None:
    """Closes the stage scope :func:`_stage_open` opened."""
    st.stage_depth -= 1
    _close(st)


def _end_step(st: _State) -> None:
    if st.step_open:
        st.step_open = False
        _close(st)


# --------------------------------------------------------------------------- methods


def _model_name(pipe: Any) -> str:
    name = getattr(pipe, "name_or_path", None)
    if not name:
        cfg = getattr(pipe, "config", None)
        try:
            name = cfg.get("_name_or_path") if cfg is not None else None
        except Exception:
            name = None
    return str(name) if name else type(pipe).__name__


def _prepare_pipeline(pipe: Any) -> None:
    """Prepares every module component of a pipeline once, paths from its component names."""
    if getattr(pipe, "_gpuspan_prepared", False):
        return
    comps = getattr(pipe, "components", None)
    if isinstance(comps, dict):
        for name, comp in comps.items():
            if hasattr(comp, "named_modules") and hasattr(comp, "register_forward_pre_hook"):
                _prepare_tree(comp, name)
    try:
        object.__setattr__(pipe, "_gpuspan_prepared", True)
    except Exception:
        pass


def _is_wrapped(f: Any, hook: str) -> bool:
    return getattr(f, "__gpuspan_hook__", None) == hook


def _request_wrapper(orig: Callable, is_method: bool) -> Callable:
    @functools.wraps(orig)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        st = _tls.st
        if not _enabled or st.request:
            return orig(*args, **kwargs)
        pipe = args[0] if is_method and args else None
        try:
            if pipe is not None:
                _prepare_pipeline(pipe)
                sched = getattr(pipe, "scheduler", None)
                st.scheduler_steps = sched is not None and _is_wrapped(getattr(type(sched), "step", None), "step_end")
                attrs = {"model": _model_name(pipe), "pipeline": type(pipe).__name__}
            else:
                st.scheduler_steps = False
                attrs = {"model": getattr(orig, "__qualname__", "request")}
            st.pipe = pipe
            st.opened = st.stage_depth = st.step_index = 0
            st.step_open = False
            st.step_key = None
            st.stage_owner = None
            st.request = _open(st, _api.request_begin(**attrs))
        except Exception as e:
            _fail(e)
        try:
            return orig(*args, **kwargs)
        finally:
            if st.request:
                st.request = False
                try:
                    while st.opened > 0:  # step, stages an exception left open, the request
                        _close(st)
                except Exception as e:
                    _fail(e)
            st.pipe = None
            st.stage_owner = None
            st.stage_depth = 0
            st.step_open = False  # closed above with the request's other scopes
            _end_discovery()

    wrapper.__gpuspan_hook__ = "request"  # type: ignore[attr-defined]
    return wrapper


def _step_end_wrapper(orig: Callable) -> Callable:
    @functools.wraps(orig)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return orig(*args, **kwargs)
        finally:
            st = _tls.st
            if _enabled and st.request and st.stage_depth == 0:
                try:
                    _end_step(st)
                except Exception as e:
                    _fail(e)

    wrapper.__gpuspan_hook__ = "step_end"  # type: ignore[attr-defined]
    return wrapper


def _stage_wrapper(orig: Callable, stage: str) -> Callable:
    @functools.wraps(orig)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        opened = False
        st = _tls.st
        if _enabled and st.request:
            try:
                opened = _stage_open(st, stage)
            except Exception as e:
                _fail(e)
        try:
            return orig(*args, **kwargs)
        finally:
            if opened:
                try:
                    _stage_close(st)
                except Exception as e:
                    _fail(e)

    wrapper.__gpuspan_hook__ = "stage"  # type: ignore[attr-defined]
    return wrapper


def _wrap(orig: Callable, rule: HookRule, is_method: bool) -> Callable:
    if rule.role == "request":
        return _request_wrapper(orig, is_method)
    if rule.role == "step_end":
        return _step_end_wrapper(orig)
    return _stage_wrapper(orig, str(rule.stage))


def _wrap_class(cls: type, rule: HookRule) -> None:
    if rule.class_name_re is not None and not rule.class_name_re.search(cls.__name__):
        return
    f = cls.__dict__.get(rule.method)
    if not inspect.isfunction(f) or _is_wrapped(f, rule.role):
        return
    setattr(cls, rule.method, _wrap(f, rule, True))


def _all_subclasses(cls: type) -> List[type]:
    out, todo = [], [cls]
    while todo:
        c = todo.pop()
        for s in c.__subclasses__():
            if s not in out:
                out.append(s)
                todo.append(s)
    return out


_class_rules: Dict[type, List[HookRule]] = {}


def _watch_subclasses(base: type) -> None:
    """Wraps future subclasses of ``base`` as they are created (``__init_subclass__``)."""
    previous = base.__dict__.get("__init_subclass__")

    def __init_subclass__(cls: type, **kw: Any) -> None:
        if previous is not None:
            previous.__get__(None, cls)(**kw)
        else:
            super(base, cls).__init_subclass__(**kw)  # type: ignore[misc]
        try:
            for r in _class_rules.get(base, ()):
                _wrap_class(cls, r)
        except Exception as e:
            _fail(e)

    base.__init_subclass__ = classmethod(__init_subclass__)  # type: ignore[assignment]


def _apply_hooks(module_name: str, mod: Any) -> None:
    assert _rules is not None
    for rule in _rules.hooks:
        if rule.module != module_name:
            continue
        if rule.function:
            f = getattr(mod, rule.function, None)
            if f is not None and not _is_wrapped(f, rule.role):
                setattr(mod, rule.function, _wrap(f, rule, False))
            continue
        base = getattr(mod, str(rule.cls), None)
        if not isinstance(base, type):
            warnings.warn(f"gpuspan.auto: {module_name} has no class {rule.cls}; rule skipped", RuntimeWarning, stacklevel=2)
            continue
        first = base not in _class_rules
        _class_rules.setdefault(base, []).append(rule)
        for c in [base] + _all_subclasses(base):
            _wrap_class(c, rule)
        if first:
            _watch_subclasses(base)


_discovery: Any = None  # the global pre-hook's handle while it is registered


def _on_torch(torch: Any) -> None:
    global _discovery
    _discovery = torch.nn.modules.module.register_module_forward_pre_hook(_global_pre)


def _end_discovery() -> None:
    """Removes the global pre-hook after the first request: while any global hook is
    registered, torch sends every module call through its slow path (≈ 4 µs each on the
    bench's small modules), hooked or not. Pipelines prepare their components at each
    request's start, so later pipelines are still found; a module first called after the
    first request outside any pipeline is not."""
    global _discovery
    handle, _discovery = _discovery, None
    if handle is not None:
        handle.remove()


# --------------------------------------------------------------------------- imports


class _PostImportLoader(importlib.abc.Loader):
    """Runs a callback after the wrapped loader executed a module."""

    def __init__(self, loader: Any, callback: Callable[[Any], None]):
        self._loader = loader
        self._callback = callback

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        try:
            self._callback(module)
        except Exception as e:
            _fail(e)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for the watched module names it asks the other finders and
    wraps the loader they return (the post-import hook pattern of ``wrapt``)."""

    def __init__(self) -> None:
        self.callbacks: Dict[str, List[Callable[[Any], None]]] = {}

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in self.callbacks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    cbs = self.callbacks[name]
                    spec.loader = _PostImportLoader(spec.loader, lambda m, cbs=cbs: [cb(m) for cb in cbs])
                return spec
        return None


_finder = _PostImportFinder()


def _when_imported(name: str, callback: Callable[[Any], None]) -> None:
    mod = sys.modules.get(name)
    if mod is not None:
        callback(mod)
        return
    _finder.callbacks.setdefault(name, []).append(callback)


def install(rules: Optional[Rules] = None) -> bool:
    """Puts the hooks in place (once; later calls return the first result). Returns False,
    with one warning, when the agent is not loaded (every scope would be a no-op) or the
    rules cannot be read. torch and diffusers are hooked when (or if) they are imported."""
    global _rules, _enabled, _installed, _make_opener, _c_end
    with _lock:
        if _installed:
            return _enabled
        _installed = True
        if not _api.is_loaded():
            return False  # gpuspan's own import already warned once
        try:
            _rules = rules or load_rules()
        except Exception as e:
            warnings.warn(f"gpuspan.auto: off: {e}", RuntimeWarning, stacklevel=2)
            return False
        try:
            fns = _builtins(_api._lib)
        except Exception as e:  # a CPython whose C API ctypes cannot reach: ctypes calls
            warnings.warn(f"gpuspan.auto: builtin scope calls unavailable ({e!r}); using ctypes", RuntimeWarning, stacklevel=2)
            fns = None
        _make_opener, _c_end = fns or _ctypes_openers(_api._lib)
        _enabled = True
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
        _when_imported("torch", _on_torch)
        for name in sorted({h.module for h in _rules.hooks}):
            _when_imported(name, lambda m, name=name: _apply_hooks(name, m))
        return True
