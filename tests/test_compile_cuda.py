"""Each op family's kernels, as representative calls launch them, compile for a CUDA
target (sm_90) on this CPU (tests/compile_cuda.py): what the interpreter cannot catch
(an int64 max once failed to compile on the GPU only) fails here first."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import flag_gems
from flag_gems import fused
from tests import compile_cuda
from tests.helpers import DEVICE

pytestmark = pytest.mark.skipif(DEVICE != "cpu", reason="the GPU run compiles every kernel for real")


def _calls():
    f32, bf16 = torch.float32, torch.bfloat16
    x = torch.randn(6, 40, dtype=bf16)
    xf = torch.randn(6, 40, requires_grad=True)
    xi = torch.randint(-9, 9, (6, 40))
    w = torch.randn(40, dtype=bf16)
    a, b = torch.randn(8, 32, dtype=bf16), torch.randn(32, 16, dtype=bf16)
    q, k = torch.randn(2, 5, 4, 16, dtype=bf16), torch.randn(2, 5, 2, 16, dtype=bf16)
    cos, sin = torch.randn(5, 8, dtype=bf16), torch.randn(5, 8, dtype=bf16)
    ids = torch.randint(0, 30, (7,))
    table = torch.randn(30, 24, dtype=bf16)
    wide = torch.randn(30, 136, dtype=bf16)  # rows of 128 or more: index_select_rows_kernel
    yield lambda: (x + x, x * 2.0, x.exp(), F.gelu(x, approximate="tanh"), F.silu(x), x.to(f32), torch.where(x > 0, x, 0.0))
    yield lambda: (x.sum(-1), x.float().amax(-1), x.float().amin(0), xi.amax(0), xi.max(), x.float().argmax(-1), torch.var_mean(x.float(), -1),
                   xi.cumsum(-1), x.prod(0), (x > 0).all(-1), torch.linalg.vector_norm(x.float(), dim=-1))
    yield lambda: torch.softmax(xf, -1).sum().backward()
    yield lambda: F.cross_entropy(xf, torch.randint(0, 40, (6,))).backward()
    yield lambda: F.layer_norm(xf, (40,), torch.ones(40, requires_grad=True), torch.zeros(40, requires_grad=True)).sum().backward()
    yield lambda: (F.rms_norm(x, (40,), w), fused.rms_norm(x, w), fused.fused_add_rms_norm(x.clone(), x.clone(), w))
    yield lambda: F.group_norm(torch.randn(2, 4, 6), 2)
    yield lambda: (fused.silu_and_mul(x), fused.gelu_and_mul(x), fused.apply_rotary_pos_emb(q, k, cos, sin))
    yield lambda: (F.embedding(ids, table), torch.mm(a, b), torch.addmm(torch.randn(16, dtype=bf16), a, b), torch.bmm(a[None], b[None]))
    yield lambda: (torch.cat([x, x], -1), torch.stack([x, x]), torch.index_select(x, 0, ids % 6), torch.index_select(wide, 0, ids), torch.gather(x, 1, xi.abs() % 40),
                   x.flip(0), x.repeat(2, 1), F.pad(x, (1, 2)), x.triu(), torch.nonzero(xi), torch.unique(xi), torch.unique(x), torch.topk(x, 3), torch.sort(x))
    yield lambda: (torch.arange(11), torch.full((5,), 3.0), torch.zeros(4, 3))
    # backward kernels and the rest of the training step
    wg = torch.randn(40, requires_grad=True)
    tg = torch.randn(30, 24, requires_grad=True)
    yield lambda: (F.rms_norm(xf, (40,), wg).sum() + F.silu(xf).sum() + F.gelu(xf).sum()).backward()
    yield lambda: F.embedding(ids, tg).sum().backward()
    yield lambda: (x.max(-1), torch.sort(torch.randn(5000)), fused.rope_cos_sin(torch.arange(5)[None], torch.rand(8), 1.0, bf16))
    out, mask = torch.ops.aten.native_dropout(x, 0.5, True)
    yield lambda: torch.ops.aten.native_dropout_backward(out, mask, 2.0)
    pg, gg = torch.randn(2, 3, 9, requires_grad=True), torch.randn(2, 4, 6, requires_grad=True)
    yield lambda: (F.pad(pg, (2, 3), mode="reflect").sum() + F.group_norm(gg, 2, torch.ones(4, requires_grad=True)).sum()).backward()
    yield lambda: F.embedding(ids, tg, scale_grad_by_freq=True).sum().backward()
    yield _radix_sorts
    # the radix select of a top-k: fp32's four digit passes, bf16's two
    yield lambda: (torch.topk(torch.randn(2, 5000), 200), torch.topk(torch.randn(5000, dtype=bf16), 300, largest=False))


def _radix_sorts():
    """Sorts through the radix passes (at any size, for the recording)."""
    from flag_gems.ops import sort as sort_mod

    saved, sort_mod.RADIX_NUMEL_PER_PASS = sort_mod.RADIX_NUMEL_PER_PASS, 0
    try:
        return torch.sort(torch.randn(2, 5000), descending=True), torch.sort(torch.randn(5000, dtype=torch.bfloat16))
    finally:
        sort_mod.RADIX_NUMEL_PER_PASS = saved


def test_kernels_compile_for_cuda(tmp_path):
    with compile_cuda.record() as specs, flag_gems.use_gems():
        for call in _calls():
            call()
    kernels = {s["name"] for s in specs}
    for name in ("_reduce_kernel", "_mm_kernel", "cat_kernel", "rms_norm_fwd_kernel", "rotary_kernel", "embedding_fwd_kernel",
                 "index_select_rows_kernel", "radix_scatter_kernel", "select_hist_kernel", "select_gather_kernel", "select_write_kernel"):
        assert name in kernels, sorted(kernels)  # the recorder saw the launches
    path = tmp_path / "specs.json"
    path.write_text(json.dumps(specs))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "tests.compile_cuda", str(path)], capture_output=True, text=True, env=env, timeout=1500)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not report["failed"], json.dumps(report["failed"], indent=1)[:6000]
    assert len(set(report["compiled"])) >= 30, report["compiled"]
