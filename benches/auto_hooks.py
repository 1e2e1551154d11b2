"""Per-call CPU cost of gpuspan's Python auto-instrumentation (issue 12: goal ≤ 2 µs per
hooked module call). Run it under the agent: ``scripts/bench-auto-hooks.sh``.

One process, side by side: a DiT-shaped model of tiny modules (per block: a norm, a
self-attention, a cross-attention, a feed-forward, each with Linear layers inside, all on
1×8 tensors so the modules' own work is small) runs a denoising loop without
instrumentation, then :func:`gpuspan.auto.install` is called and the same loop runs inside an
auto request (the loop function is named as a request in the rules). The difference, divided
by the hooked module calls (the stage modules and the denoiser), is the cost per hooked call:
the class ``forward`` wrappers, the scopes' C calls and the agent behind them. Beside it,
torch's own hook dispatch: no-op ``register_forward_pre_hook`` / ``register_forward_hook``
on the same modules of a third model, which is what any torch-hook design pays before its
hooks do anything. The three models have the same weights and classes of their own
(:func:`make_model`). Rounds are interleaved (plain / no-op hooks, then, once the
instrumentation is in, instrumented / plain / no-op hooks) and each figure is the median of
the differences within a round: on a busy or virtual machine the thread's speed drifts from
round to round (other processes share its core and caches), much less within one round.
"""

import argparse
import statistics
import sys
import time

import torch
from torch import nn


def make_model(d: int, layers: int) -> nn.Module:
    """A fresh DiT-shaped model built from classes defined anew for it. gpuspan wraps the
    ``forward`` of a class that has modules with a role (``gpuspan.auto``), so the plain and
    no-op-hook models must not share classes with the instrumented one: their calls would
    pass through the wrapper and make the baseline dearer."""

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.to_q, self.to_out = nn.Linear(d, d), nn.Linear(d, d)

        def forward(self, x, encoder_hidden_states=None):
            return self.to_out(self.to_q(x))

    class FeedForward(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = nn.Linear(d, d), nn.Linear(d, d)

        def forward(self, x):
            return self.down(self.up(x))

    class LayerNorm(nn.LayerNorm):
        def forward(self, x):
            return super().forward(x)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = LayerNorm(d)
            self.attn1 = Attention()
            self.attn2 = Attention()
            self.ff = FeedForward()

        def forward(self, x, ctx):
            x = self.attn1(self.norm1(x))
            x = self.attn2(x, encoder_hidden_states=ctx)
            return self.ff(x)

    class Denoiser(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(Block() for _ in range(layers))

        def forward(self, x, timestep=None, encoder_hidden_states=None):
            for b in self.blocks:
                x = b(x, encoder_hidden_states)
            return x

    return Denoiser().eval()


def denoise(model, x, ctx, steps: int):
    """The loop: one forward per step with that step's timestep."""
    for t in range(steps):
        x = model(x, timestep=torch.tensor([float(1000 - t)]), encoder_hidden_states=ctx)
    return x


def timed(fn, *args) -> float:
    """CPU seconds of this thread (the worker's) for one call: immune to preemption by the
    agent's threads and other processes on a noisy machine."""
    t0 = time.thread_time_ns()
    fn(*args)
    return (time.thread_time_ns() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = make_model(8, args.layers)
    # Same weights, classes of their own (see make_model).
    noop_model, plain_model = make_model(8, args.layers), make_model(8, args.layers)
    noop_model.load_state_dict(model.state_dict())
    plain_model.load_state_dict(model.state_dict())
    x, ctx = torch.randn(1, 8), torch.randn(1, 8)
    # Hooked calls per step: the denoiser, and per block norm1, attn1, attn2, ff.
    hooked_per_step = 1 + 4 * args.layers
    # Every module call per step: the denoiser, per block the block and its 4 modules and
    # their 6 Linear layers.
    modules_per_step = 1 + 11 * args.layers
    hooked = hooked_per_step * args.steps
    # Side by side: torch's own hook dispatch (no-op hooks on the third model, on the same
    # modules the auto-instrumentation instruments), interleaved with plain rounds; then the
    # auto-instrumented loop interleaved with both.
    hooked_modules = [noop_model] + [m for b in noop_model.blocks for m in (b.norm1, b.attn1, b.attn2, b.ff)]
    for m in hooked_modules:
        m.register_forward_pre_hook(lambda mod, a, k: None, with_kwargs=True, prepend=True)
        if m is not noop_model:
            m.register_forward_hook(lambda mod, a, o: None, always_call=True)
    with torch.inference_mode():
        denoise(model, x, ctx, 3)  # warm up

        import gpuspan
        import gpuspan.auto as auto

        if not gpuspan.is_loaded():
            sys.exit("run under the agent: scripts/bench-auto-hooks.sh")
        rules = auto.load_rules()
        rules.hooks.append(auto.HookRule({"module": "__main__", "function": "denoise", "role": "request"}))
        plain = denoise
        off, noop = [], []
        for _ in range(args.rounds):
            off.append(timed(plain, model, x, ctx, args.steps))
            noop.append(timed(plain, noop_model, x, ctx, args.steps))
        before = len(off)  # rounds without the instrumentation installed
        assert auto.install(rules), "auto-instrumentation did not install"
        instrumented = sys.modules["__main__"].denoise
        assert instrumented is not plain, "the loop is wrapped as a request"
        instrumented(model, x, ctx, 3)  # warm up: the first call prepares the module tree
        on = []
        for _ in range(args.rounds):
            on.append(timed(instrumented, model, x, ctx, args.steps))
            off.append(timed(plain, plain_model, x, ctx, args.steps))
            noop.append(timed(plain, noop_model, x, ctx, args.steps))
    base, inst, hooks = statistics.median(off), statistics.median(on), statistics.median(noop)
    # Per hooked call, µs: medians of the differences within a round.
    per_call_us = statistics.median(o - b for o, b in zip(on, off[before:])) / hooked * 1e6
    torch_us = statistics.median(n - b for n, b in zip(noop, off)) / hooked * 1e6
    ours_us = statistics.median(o - n for o, n in zip(on, noop[before:])) / hooked * 1e6
    print(f"model: {args.layers} blocks, {args.steps} steps; {hooked} hooked module calls of {modules_per_step * args.steps} per request")
    print(f"request, no hooks:                 {base * 1e3:.2f} ms (median of {len(off)})")
    print(f"request, torch no-op hooks:        {hooks * 1e3:.2f} ms ({hooks / base:.2f}x, median of {len(noop)})")
    print(f"request, gpuspan auto-instrumented: {inst * 1e3:.2f} ms ({inst / base:.2f}x)")
    print(f"cost per hooked module call: {per_call_us:.2f} us (goal <= 2 us)")
    print(f"torch's own hook dispatch alone (no-op hooks on the same modules): {torch_us:.2f} us per hooked call; instrumented - no-op hooks: {ours_us:+.2f} us")
    print(f"plain forward per module call: {base / (modules_per_step * args.steps) * 1e6:.2f} us")

if __name__ == "__main__":
    main()
