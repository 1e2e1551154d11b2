"""gpuspan.auto's class `forward` wrappers against what a worker does with its modules
(tests/e2e/auto_python.rs, `auto_forward_wrappers_survive_copies_pickles_offload_hooks_and_exceptions`).

Run under the agent with `python/` on the path. A tiny DiT (2 blocks: norm1, attn1,
attn2 = cross attention, ff) is driven by a pipeline-like `Pipe` whose `__call__` is a
request (a hook rule). Requests, named by `Pipe.name_or_path` (the span's `gpuspan.model`):

- `plain`: the model; its output equals the one computed before instrumentation, its
  signatures are kept, and `torch.jit.script` still compiles a wrapped class
  (`nn.LayerNorm`).
- `offloaded`: a copy whose denoiser and first attention carry an instance-level
  `forward` the way accelerate's offload hooks set one (bound before instrumentation):
  those two get torch's per-module hooks instead of the class wrapper.
- `copy`: `copy.deepcopy` of the instrumented model, its feed-forward weights changed: its
  output differs from the model's (it runs its own weights, not the original's).
- `loaded`: `torch.save` / `torch.load` of the instrumented model: the same output.
- `caught`: the model with its first feed-forward raising in the second step, and the
  block catching it and going on: the feed-forward's stage is closed when the block sees the
  exception, and the other modules of the step open theirs.
- `escaped`: the same exception reaching this script: every scope is closed, and
  auto-instrumentation stays on.
- `after`: the model again, as in `plain`.

Asserts here what Python can see; the Rust test checks the spans. Prints `ok` last.
"""

import copy
import functools
import inspect
import io
import sys

import torch
from torch import nn

import gpuspan
import gpuspan.auto as auto

STEPS = 3


class Boom(Exception):
    pass


#: The open stage depth seen by a block that caught its feed-forward's exception.
CAUGHT = []


class Attention(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.to_q, self.to_out = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x, encoder_hidden_states=None):
        if encoder_hidden_states is not None:
            x = x + encoder_hidden_states
        return self.to_out(self.to_q(x))


class FeedForward(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.up, self.down = nn.Linear(d, d), nn.Linear(d, d)
        self.explode_at_call = -1  # the call (counted from 0) that raises; -1: none
        self.calls = 0
        self.catch = False  # the block catches the exception and goes on

    def forward(self, x):
        self.calls += 1
        if self.calls - 1 == self.explode_at_call:
            raise Boom("feed-forward failed")
        return self.down(torch.relu(self.up(x)))


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn1 = Attention(d)
        self.attn2 = Attention(d)
        self.ff = FeedForward(d)

    def forward(self, x, ctx):
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(x, encoder_hidden_states=ctx)
        try:
            f = self.ff(x)
        except Boom:
            if not self.ff.catch:
                raise
            # The feed-forward's stage must be closed already: a stage left open would
            # keep every later module of the step from opening its own.
            CAUGHT.append(auto._tls.st.stage_depth)
            f = torch.zeros_like(x)
        return x + f


class Denoiser(nn.Module):
    def __init__(self, d, layers):
        super().__init__()
        self.blocks = nn.ModuleList(Block(d) for _ in range(layers))

    def forward(self, x, timestep=None, encoder_hidden_states=None):
        for b in self.blocks:
            x = b(x, encoder_hidden_states)
        return x


class Pipe:
    """A pipeline-like request: its components are prepared at each request's start."""

    def __init__(self, name, transformer):
        self.name_or_path = name
        self.transformer = transformer

    @property
    def components(self):
        return {"transformer": self.transformer}

    def __call__(self, x, ctx):
        for t in range(STEPS):
            x = self.transformer(x, timestep=torch.tensor([1000.0 - 100 * t]), encoder_hidden_states=ctx)
        return x


def offload_style_hook(module):
    """accelerate's `add_hook_to_module`: an instance-level forward that calls the forward
    bound before it (`module._old_forward`)."""
    old = module.forward
    module._old_forward = old

    def new_forward(module, *args, **kwargs):
        return module._old_forward(*args, **kwargs)

    module.forward = functools.update_wrapper(functools.partial(new_forward, module), old)


def main():
    torch.manual_seed(0)
    model = Denoiser(8, 2).eval()
    x, ctx = torch.randn(1, 8), torch.randn(1, 8)
    signature = str(inspect.signature(model.blocks[0].attn1.forward))
    with torch.inference_mode():
        expected = Pipe("reference", model)(x, ctx)
    offloaded = copy.deepcopy(model)
    offload_style_hook(offloaded)
    offload_style_hook(offloaded.blocks[0].attn1)

    assert gpuspan.is_loaded(), "run under the agent"
    rules = auto.load_rules()
    rules.hooks.append(auto.HookRule({"module": "__main__", "class": "Pipe", "method": "__call__", "role": "request"}))
    assert auto.install(rules)

    with torch.inference_mode():
        out = Pipe("plain", model)(x, ctx)
        assert torch.equal(out, expected), "the same output with the instrumentation"
        attn = model.blocks[0].attn1
        assert getattr(Attention.forward, "__gpuspan_hook__", None) == "forward", "the class wrapper"
        assert getattr(nn.Linear.forward, "__gpuspan_hook__", None) is None, "no role, no wrapper"
        assert "forward" not in attn.__dict__ and not attn._forward_hooks and not attn._forward_pre_hooks
        assert str(inspect.signature(attn.forward)) == signature, "the wrapper keeps the signature"
        # TorchScript compiles a wrapped class's own forward (torch's, which names `F`).
        assert getattr(nn.LayerNorm.forward, "__gpuspan_hook__", None) == "forward"
        norm = nn.LayerNorm(8)
        assert torch.equal(torch.jit.script(norm)(x), norm(x)), "a wrapped class still scripts"

        out = Pipe("offloaded", offloaded)(x, ctx)
        assert torch.equal(out, expected)
        assert offloaded._forward_pre_hooks and offloaded.blocks[0].attn1._forward_hooks, "torch hooks"
        assert not offloaded.blocks[1].attn1._forward_hooks, "the class wrapper elsewhere"

        twin = copy.deepcopy(model)
        for b in twin.blocks:
            b.ff.down.weight.mul_(2.0)
        out = Pipe("copy", twin)(x, ctx)
        assert not torch.equal(out, expected), "the copy runs its own weights"
        assert torch.equal(Pipe("check", model)(x, ctx), expected), "the original is untouched"

        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        assert torch.equal(Pipe("loaded", loaded)(x, ctx), expected)

        ff = model.blocks[0].ff
        ff.explode_at_call, ff.calls, ff.catch = 1, 0, True  # its call in the second step
        assert not torch.equal(Pipe("caught", model)(x, ctx), expected)
        assert CAUGHT == [0], f"the stage closed before the block caught the exception: {CAUGHT}"
        ff.explode_at_call, ff.calls, ff.catch = 1, 0, False
        try:
            Pipe("escaped", model)(x, ctx)
            raise AssertionError("Boom was swallowed")
        except Boom:
            pass
        st = auto._tls.st
        assert (st.request, st.opened, st.stage_depth, st.step_open) == (False, 0, 0, False), "all closed"
        assert auto.installed(), "a worker's exception is no internal error"
        ff.explode_at_call = -1
        assert torch.equal(Pipe("after", model)(x, ctx), expected)
    print("ok")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
