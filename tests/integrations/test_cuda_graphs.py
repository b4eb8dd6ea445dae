"""flag_gems inside CUDA-graph capture, as vLLM captures its decode steps: a capture that
meets an untuned key (no tuning DB) or a kernel never launched in the process must still
succeed and replay right. GPU only: the interpreter has no graphs."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import flag_gems
import tuner
from tuner import settings
from tuner.libtuner import LibTuner
from tests.helpers import DEVICE, assert_close, to_reference

pytestmark = pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs")


def block(x, w, proj):
    """A decode-step-like chain: norm, projection, activation, softmax, reduction."""
    h = F.rms_norm(x, (x.shape[-1],), w, 1e-6)
    a = F.silu(h @ proj) * 2.0 + 1.0
    return torch.softmax(a, dim=-1), a.sum(dim=-1)


def inputs(gen_seed=0):
    g = torch.Generator(device="cuda").manual_seed(gen_seed)
    x = torch.randn(5, 333, device="cuda", generator=g)
    w = torch.randn(333, device="cuda", generator=g)
    proj = torch.randn(333, 203, device="cuda", generator=g) / 18
    return x, w, proj


def test_capture_with_untuned_keys_falls_back_then_tunes_outside(isolated_store, monkeypatch):
    monkeypatch.setenv("FLAGGEMS_AUTOTUNE", "miss")
    settings.reload()
    capturing = []  # per benchmark: was a capture on? (capture_begin's own fill_ is tuned before it starts)
    real_tune = LibTuner.tune

    def tune(self, *args, **kwargs):
        capturing.append(torch.cuda.is_current_stream_capturing())
        return real_tune(self, *args, **kwargs)

    monkeypatch.setattr(LibTuner, "tune", tune)
    x, w, proj = inputs()
    graph = torch.cuda.CUDAGraph()
    with flag_gems.use_gems(), torch.cuda.graph(graph):
        out = block(x, w, proj)
    assert not any(capturing) and tuner.stats()["capture_fallbacks"] >= 7  # every kernel of block() missed
    before = len(capturing)
    for seed in (1, 2):  # new values in the captured inputs, replayed
        for t, v in zip((x, w, proj), inputs(seed)):
            t.copy_(v)
        graph.replay()
        ref = block(*to_reference((x, w, proj)))
        assert_close(out[0], ref[0], torch.float32, atol=1e-4, rtol=1e-3)
        assert_close(out[1], ref[1], torch.float32, atol=1e-3, rtol=1e-3, reduce_dim=203)
    with flag_gems.use_gems():
        block(x, w, proj)  # outside the capture: the keys are tuned now
    assert len(capturing) >= before + 7 and not any(capturing)

def test_capture_in_a_fresh_process_compiles_inside_the_capture(tmp_path):
    """Nothing launched before the capture: every kernel's first launch (compile, module
    load) and every tuner miss happen while capturing."""
    script = textwrap.dedent("""
        import torch, flag_gems, tuner
        from tests.integrations.test_cuda_graphs import block, inputs
        x, w, proj = inputs()
        graph = torch.cuda.CUDAGraph()
        with flag_gems.use_gems():
            with torch.cuda.graph(graph):
                out = block(x, w, proj)
        graph.replay()
        ref = block(*(t.double() for t in (x, w, proj)))
        torch.testing.assert_close(out[0].double(), ref[0], atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(out[1].double(), ref[1], atol=1e-2, rtol=1e-3)
        print("ok", tuner.stats()["capture_fallbacks"])
    """)
    env = {**os.environ, "FLAGGEMS_AUTOTUNE": "miss", "FLAGGEMS_CACHE_DIR": str(tmp_path / "cache"),
           "FLAGGEMS_TUNING_DB": str(tmp_path / "tuning.db"), "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[0] == "ok" and int(done.stdout.split()[1]) > 0


def test_a_captured_sort_replays_right():
    """Sampling sorts its logits every step: in a capture the radix sort takes it."""
    x = torch.randn(4, 32000, device="cuda")
    graph = torch.cuda.CUDAGraph()
    with flag_gems.use_gems(), torch.cuda.graph(graph):
        v, i = torch.sort(x, dim=-1, descending=True, stable=True)
    for _ in range(2):
        x.copy_(torch.randn_like(x))
        graph.replay()
        rv, ri = torch.sort(x, dim=-1, descending=True, stable=True)
        assert torch.equal(v, rv) and torch.equal(i, ri)
