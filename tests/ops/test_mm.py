"""GEMM family through torch.* under flag_gems: layouts, transposes, dtypes, batches,
M = 1 (decode, split-K) and addmm/baddbmm scaling, against a float64 reference."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

import flag_gems
from flag_gems.ops import mm as mm_ops
from tests.helpers import DEVICE, FLOAT_DTYPES, assert_close, count_kernels, gems_ran
from tuner.libtuner import resolve_hook

SHAPES = [(1, 40, 33), (7, 33, 65), (33, 64, 17), (70, 5, 129)]  # (M, N, K)


def rand(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEVICE, dtype=dtype)


def check(actual, expected, dtype, k):
    assert_close(actual, expected, dtype, reduce_dim=k)


def call_args(m, n, k, dtype=torch.bfloat16, batch=1, **strides):
    """The arguments prune_mm_configs sees for a row-major A (M, K) and F.linear's weight
    as B (strides overridable)."""
    a, b = (torch.empty(x, device=DEVICE, dtype=dtype) for x in (m * k, k * n))
    return {"A": a, "B": b, "M": m, "N": n, "K": k, "BATCH": batch, "s_am": k, "s_ak": 1, "s_bk": 1, "s_bn": k} | strides


def pruned(m, n, k, **kw):
    return mm_ops.prune_mm_configs(mm_ops._mm_kernel.configs, call_args(m, n, k, **kw))


@contextlib.contextmanager
def forced_config(kernel, cfg):
    """Launch ``kernel`` with ``cfg`` for every key in this block."""
    with resolve_hook(lambda t, *_: cfg if t is kernel else None):
        yield


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, True), (False, True), (True, False)])
def test_mm_layouts(dtype, m, n, k, trans_a, trans_b):
    a = rand(k, m, dtype=dtype).t() if trans_a else rand(m, k, dtype=dtype)
    b = rand(n, k, dtype=dtype).t() if trans_b else rand(k, n, dtype=dtype)
    with gems_ran("_mm_kernel"):
        out = torch.mm(a, b)
    check(out, a.double() @ b.double(), dtype, k)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_linear_reaches_gemm(dtype):
    x, w, b = rand(3, 5, 48, dtype=dtype), rand(24, 48, dtype=dtype), rand(24, dtype=dtype)
    with gems_ran("_mm_kernel"):
        y = F.linear(x, w, b)
        y2 = F.linear(x, w)
    check(y, F.linear(x.double(), w.double(), b.double()), dtype, 48)
    check(y2, F.linear(x.double(), w.double()), dtype, 48)


def _linear_input(case, dtype):
    if case == "row views":  # rows of 48 in a 64-wide buffer: viewable as (15, 48), read in place
        return rand(3, 5, 64, dtype=dtype)[..., :48]
    return rand(5, 48, dtype=dtype) if case == "2-D" else rand(3, 5, 48, dtype=dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("case", ["2-D", "3-D", "row views"])
@pytest.mark.parametrize("bias", [None, "n", "one"])
def test_linear_is_one_gemm_without_a_graph(monkeypatch, dtype, case, bias):
    """F.linear without autograd is served on the Autograd key: one GEMM on input's rows,
    not aten's composite (linear, matmul, a view, mm)."""
    x, w = _linear_input(case, dtype), rand(24, 48, dtype=dtype)
    b = None if bias is None else rand(24 if bias == "n" else 1, dtype=dtype)
    monkeypatch.setattr(mm_ops, "as_from_outside", lambda *a, **k: pytest.fail("took aten's composite"))
    with gems_ran("_mm_kernel") as ran:
        y = F.linear(x, w, b)
    assert ran["_mm_kernel"] == 1 and y.shape == (*x.shape[:-1], 24)
    check(y, F.linear(x.double(), w.double(), None if b is None else b.double()), dtype, 48)


@pytest.mark.parametrize("case", ["grad", "transposed input", "1-D input", "mixed dtypes", "unused mm"])
def test_linear_takes_atens_composite_where_it_must(monkeypatch, case):
    """With a graph to record, an input with no (rows, K) view, a 1-D input or mixed dtypes,
    linear takes aten's composite (its mm is flag_gems' where it serves the call);
    ``unused=["mm"]`` leaves linear to aten altogether."""
    x, w, b = rand(4, 6, 48), rand(24, 48), rand(24)
    if case == "grad":
        x.requires_grad_(True)
        w.requires_grad_(True)
    elif case == "transposed input":
        x = rand(4, 48, 6).transpose(1, 2)  # K strided: no (rows, K) view
    elif case == "1-D input":
        x = rand(48)
    elif case == "mixed dtypes":
        b = b.half()
    composite = []
    orig = mm_ops.as_from_outside
    monkeypatch.setattr(mm_ops, "as_from_outside", lambda fn, *a: composite.append(fn) or orig(fn, *a))
    if case == "mixed dtypes":  # aten's own error
        with flag_gems.use_gems(), pytest.raises(RuntimeError):
            F.linear(x, w, b)
        assert composite == [mm_ops._LINEAR]
        return
    ref = F.linear(x.detach().double(), w.detach().double(), b.double())
    with flag_gems.use_gems(unused=["mm"] if case == "unused mm" else None):
        y = F.linear(x, w, b)
    assert composite == [mm_ops._LINEAR]
    check(y, ref, torch.float32, 48)
    if case == "grad":
        y.sum().backward()
        check(w.grad, torch.ones(4 * 6, 24, dtype=torch.float64, device=DEVICE).t() @ x.detach().double().reshape(-1, 48), torch.float32, 24)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("split", [2, 4, 8])
def test_split_k_configs(dtype, split):
    """Every split of K gives the right sum, with bias and scaling (partials, then the
    reduction kernel)."""
    m, n, k = 3, 40, 1000  # K not a multiple of BLOCK_K * split: the masked path too
    cfg = next(c for c in mm_ops._mm_kernel.configs if c["SPLIT_K"] == split and c["BLOCK_N"] == 32)
    bias, a, b = rand(n, dtype=dtype), rand(m, k, dtype=dtype), rand(n, k, dtype=dtype).t()
    with forced_config(mm_ops._mm_kernel, cfg), gems_ran("_mm_kernel", "_splitk_reduce_kernel"):
        out = torch.addmm(bias, a, b, beta=0.5, alpha=2.0)
        out2 = torch.bmm(a.expand(2, m, k), b.expand(2, k, n))
    check(out, 0.5 * bias.double() + 2.0 * (a.double() @ b.double()), dtype, k)
    check(out2, (a.double() @ b.double()).expand(2, m, n), dtype, k)


def test_split_k_pruned_where_it_cannot_help():
    """Split-K is a decode-class choice: never offered for prefill M or for K too short to
    split; decode tiles (GROUP_M = 1) never serve prefill, and prefill tiles serve a
    decode-class M from its bucket 128 up."""
    cands = pruned
    assert any(c["SPLIT_K"] > 1 for c in cands(1, 64, 8192))
    assert not any(c["SPLIT_K"] > 1 for c in cands(1, 64, 64))
    assert all(c["GROUP_M"] == 1 for c in cands(1, 64, 8192))
    assert any(c["BLOCK_M"] == 128 and c["GROUP_M"] > 1 for c in cands(65, 4096, 4096))  # the bucket of M = 128
    prefill = cands(4096, 4096, 4096)
    assert prefill and all(c["SPLIT_K"] == 1 and c["GROUP_M"] > 1 for c in prefill)


def test_config_pruning_respects_smem_and_registers():
    kept = pruned(4096, 4096, 4096, dtype=torch.float32)
    for c in kept:
        assert c["num_stages"] * (c["BLOCK_M"] + c["BLOCK_N"]) * c["BLOCK_K"] * 4 <= mm_ops._FALLBACK_SMEM
        assert c["BLOCK_M"] * c["BLOCK_N"] // (32 * c["num_warps"]) <= mm_ops.MAX_ACC_REGS
    big = {"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3}
    assert not mm_ops._fits(big, 2, mm_ops._FALLBACK_SMEM)  # 256 accumulator registers per thread


def test_layout_is_part_of_the_key_and_never_crossed():
    """A stored config for one operand layout is never the nearest-key fallback for another."""
    from tuner.libtuner import nearest
    from tuner.store import Identity, Record
    from tuner.fingerprint import current
    import json

    assert mm_ops.layout(1) == "unit" and mm_ops.layout(4096) == "strided" and mm_ops.layout("unit") == "unit"
    key = ["decode", 1, 4096, 4096, 1, "unit", "unit", "bfloat16"]
    other = ["decode", 1, 4096, 4096, 1, "unit", "strided", "bfloat16"]
    rec = Record(Identity("k", "h", json.dumps(other), current()), {"tag": "x"}, 1, 1, 1, 1)
    assert nearest(key, [rec]) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("beta,alpha", [(1, 1), (0.5, 2.0), (0, 1)])
def test_addmm(dtype, beta, alpha):
    bias, a, b = rand(17, dtype=dtype), rand(9, 31, dtype=dtype), rand(31, 17, dtype=dtype)
    with gems_ran("_mm_kernel"):
        out = torch.addmm(bias, a, b, beta=beta, alpha=alpha)
    check(out, beta * bias.double() + alpha * (a.double() @ b.double()), dtype, 31)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_bmm_and_baddbmm(dtype):
    a, b = rand(3, 9, 20, dtype=dtype), rand(3, 33, 20, dtype=dtype).transpose(1, 2)
    bias = rand(1, 9, 33, dtype=dtype)
    with gems_ran("_mm_kernel"):
        out = torch.bmm(a, b)
        out2 = torch.baddbmm(bias, a, b, beta=0.5, alpha=1.5)
        out3 = a @ b  # matmul on 3-D reaches bmm
    ref = a.double() @ b.double()
    check(out, ref, dtype, 20)
    check(out2, 0.5 * bias.double() + 1.5 * ref, dtype, 20)
    check(out3, ref, dtype, 20)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_mv_addmv_dot_outer(dtype):
    mat, vec, v2 = rand(13, 37, dtype=dtype), rand(37, dtype=dtype), rand(37, dtype=dtype)
    bias = rand(13, dtype=dtype)
    with gems_ran("_mm_kernel"):
        mv = torch.mv(mat, vec)
        amv = torch.addmv(bias, mat, vec, beta=2.0, alpha=0.5)
        d = torch.dot(vec, v2)
        o = torch.outer(vec[:5], v2[:7])
    check(mv, mat.double() @ vec.double(), dtype, 37)
    check(amv, 2.0 * bias.double() + 0.5 * (mat.double() @ vec.double()), dtype, 37)
    check(d, vec.double() @ v2.double(), dtype, 37)
    check(o, torch.outer(vec[:5].double(), v2[:7].double()), dtype, 1)


def test_out_variants_and_empty():
    a, b = rand(5, 7), rand(7, 3)
    out = torch.empty(5, 3, device=DEVICE)
    with gems_ran("_mm_kernel"):
        torch.mm(a, b, out=out)
    check(out, a.double() @ b.double(), torch.float32, 7)
    import flag_gems

    with flag_gems.use_gems():
        assert torch.mm(rand(0, 4), rand(4, 3)).shape == (0, 3)
        z = torch.mm(rand(3, 0), rand(0, 2))
    assert torch.equal(z, torch.zeros(3, 2, device=DEVICE))


def test_shape_and_dtype_errors():
    import flag_gems

    with flag_gems.use_gems():
        with pytest.raises(RuntimeError):
            torch.mm(rand(3, 4), rand(5, 6))
        # dtype mismatches (operands, bias, out=) raise torch's own errors, from aten
        with pytest.raises(RuntimeError, match="same dtype"):
            torch.mm(rand(3, 4), rand(4, 6, dtype=torch.float16))
        with pytest.raises(RuntimeError, match="same dtype"):
            torch.addmm(rand(6), rand(3, 4, dtype=torch.bfloat16), rand(4, 6, dtype=torch.bfloat16))
        with pytest.raises(RuntimeError, match="out"):
            torch.mm(rand(3, 4), rand(4, 6), out=torch.empty(3, 6, device=DEVICE, dtype=torch.float16))


def test_other_dtypes_run_on_aten_as_torch():
    """float64 (and on CPU integer) GEMMs are not the kernel's: aten computes them exactly."""
    import flag_gems

    a, b = rand(5, 7, dtype=torch.float64), rand(7, 3, dtype=torch.float64)
    cases = [
        (lambda a, b: torch.mm(a, b), (a, b)),
        (lambda a, b: F.linear(a, b.t(), b[0, :].clone()), (a, b)),
        (lambda a, b: torch.bmm(a[None], b[None]), (a, b)),
        (lambda a, b: torch.addmv(b[:, 0], a.t().contiguous(), a[:, 0]), (a, b)),
        (lambda a, b: torch.dot(a[0], b[:, 0]), (a, b)),
        (lambda a, b: torch.outer(a[0], b[:, 0]), (a, b)),
    ]
    if DEVICE == "cpu":  # CUDA has no integer GEMM
        ai, bi = torch.randint(-5, 5, (5, 7)), torch.randint(-5, 5, (7, 3))
        cases += [(lambda a, b: torch.mm(a, b), (ai, bi)), (lambda a, b: torch.outer(a[0], b[:, 0]), (ai, bi))]
    for fn, args in cases:
        ref = fn(*args)
        with flag_gems.use_gems():
            got = fn(*args)
        assert got.dtype == ref.dtype
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(DEVICE != "cuda", reason="needs 4.3 GB of output: GPU only")
def test_output_past_int32_elements():
    """A prefill's logits can pass 2**31 elements (16k tokens x 131k vocab): the store
    address must not wrap."""
    m, n, k = 16384, 131104, 16
    a, b = rand(m, k, dtype=torch.bfloat16), rand(n, k, dtype=torch.bfloat16).t()
    with gems_ran("_mm_kernel"):
        out = a @ b
    assert out.numel() > 2**31
    for rows in (slice(0, 2), slice(m - 2, m)):  # the first rows and the last (past 2**31)
        check(out[rows], a[rows].double() @ b.double(), torch.bfloat16, k)
    del out


def test_m_class_never_shares_bucket():
    from tuner.keys import next_power_of_2

    decode = {(mm_ops.m_class(m), next_power_of_2(m)) for m in range(1, 257)}
    prefill = {(mm_ops.m_class(m), next_power_of_2(m)) for m in range(257, 16385, 97)}
    assert all(c == "decode" for c, _ in decode) and all(c == "prefill" for c, _ in prefill)
    assert not decode & prefill


def test_never_policy_nearest_stays_in_m_class():
    from tuner.libtuner import nearest
    from tuner.store import Identity, Record
    from tuner.fingerprint import current
    import json

    recs = [Record(Identity("k", "h", json.dumps(key), current()), {"tag": tag}, 1, 1, 1, 1)
            for key, tag in [(["decode", 256, 4096, 4096], "d"), (["prefill", 8192, 4096, 4096], "p")]]
    assert nearest(["prefill", 512, 4096, 4096], recs).config["tag"] == "p"
    assert nearest(["decode", 1, 4096, 4096], recs).config["tag"] == "d"


def test_mid_m_long_k():
    m, n, k = 64, 32, 4096
    a, b = rand(m, k, dtype=torch.float16), rand(n, k, dtype=torch.float16).t()
    with gems_ran("_mm_kernel"):
        out = a @ b
    check(out, a.double() @ b.double(), torch.float16, k)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_k1_products_are_one_broadcast_multiply(dtype):
    """K = 1 (an outer product, as HF's rotary angles inv_freq x positions): the pointwise
    multiply kernel, no GEMM; with a bias or alpha the GEMM still runs."""
    a, b = rand(3, 17, 1, dtype=dtype), rand(3, 1, 40, dtype=dtype)
    with count_kernels() as launched, flag_gems.use_gems():
        r_bmm = torch.bmm(a, b)
        r_mm = torch.mm(a[0], b[1])
        r_out = torch.outer(a[0, :, 0], b[2, 0])
        r_t = torch.mm(b[0].t(), a[1].t())  # transposed operands
    assert launched["_mm_kernel"] == 0 and sum(launched.values()) == 4, dict(launched)
    check(r_bmm, a.double() @ b.double(), dtype, 1)
    check(r_mm, a[0].double() @ b[1].double(), dtype, 1)
    check(r_out, torch.outer(a[0, :, 0].double(), b[2, 0].double()), dtype, 1)
    check(r_t, b[0].t().double() @ a[1].t().double(), dtype, 1)
    bias = rand(17, 40, dtype=dtype)
    with gems_ran("_mm_kernel"):
        r_addmm = torch.addmm(bias, a[0], b[0])
    check(r_addmm, bias.double() + a[0].double() @ b[0].double(), dtype, 1)


TMA_CONFIGS = [c for c in mm_ops._mm_kernel.configs if c.get("TMA")]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
# rows of 16-byte multiples; the last has more tiles than the interpreter's 8 "SMs", so a
# persistent program walks several
@pytest.mark.parametrize("m,n,k", [(70, 40, 72), (5, 304, 136), (129, 64, 64), (300, 520, 64)])
def test_tma_configs(dtype, m, n, k):
    """Each TMA config (descriptor loads, zero padding past every edge; a tile per program
    or persistent) on F.linear's weight (B contiguous along K, with a bias) and on a
    row-major B (along N)."""
    x, w, bias, b = rand(m, k, dtype=dtype), rand(n, k, dtype=dtype), rand(n, dtype=dtype), rand(k, n, dtype=dtype)
    smem = mm_ops._smem_bytes(0) if x.is_cuda else mm_ops._FALLBACK_SMEM
    fitting = [c for c in TMA_CONFIGS if mm_ops._fits(c, x.element_size(), smem)]  # as pruning keeps
    assert fitting
    for cfg in fitting:
        with forced_config(mm_ops._mm_kernel, cfg), gems_ran("_mm_tma_kernel") as ran:
            y = F.linear(x, w, bias)
            z = torch.addmm(bias, x, b, beta=0.5, alpha=2.0)
        assert ran["_mm_kernel"] == 0, cfg
        check(y, F.linear(x.double(), w.double(), bias.double()), dtype, k)
        check(z, 0.5 * bias.double() + 2.0 * (x.double() @ b.double()), dtype, k)


def test_tma_config_on_operands_it_cannot_describe():
    """A TMA config the key chose still serves a call TMA cannot take (a misaligned view, a
    row stride not a multiple of 16 bytes, a batch, a K-strided A): the same tile runs
    through the pointer kernel."""
    h = torch.float16
    base, w = rand(65, 64, dtype=h), rand(32, 64, dtype=h)
    pairs = [  # (a, b) for a @ b
        (base[1:, 1:33], w[:, :32].t()),  # a misaligned base
        (rand(9, 33, dtype=h), rand(16, 33, dtype=h).t()),  # 66-byte rows
        (rand(2, 9, 64, dtype=h), rand(2, 64, 16, dtype=h)),  # a batch
        (rand(64, 9, dtype=h).t(), rand(64, 16, dtype=h)),  # A strided along K
    ]
    for a, b in pairs:
        with forced_config(mm_ops._mm_kernel, TMA_CONFIGS[0]), gems_ran("_mm_kernel") as ran:
            got = torch.matmul(a, b)
        assert ran["_mm_tma_kernel"] == 0
        check(got, a.double() @ b.double(), h, a.shape[-1])


def test_tma_configs_pruned_where_tma_cannot_serve():
    def cands(m, n, k, **kw):
        return [c for c in pruned(m, n, k, **kw) if c.get("TMA")]

    assert cands(4096, 4096, 4096) and cands(4096, 4096, 4096, s_bk=4096, s_bn=1)
    assert not cands(4096, 4096, 4096, batch=2)  # descriptors here are 2-D
    assert not cands(4096, 4096, 4096, s_ak=4096, s_am=1)  # A not contiguous along K
    assert not cands(4096, 4096, 4096, s_bk=7, s_bn=5)  # B contiguous along neither
    assert not cands(4096, 4096, 4095, s_bn=4095)  # rows that are not 16-byte multiples
    small = [(c["BLOCK_M"], c["BLOCK_N"]) for c in cands(128, 4096, 4096)]  # M = 128: 64 x 64 tiles fill the SMs
    assert (64, 64) in small and (64, 64) not in [(c["BLOCK_M"], c["BLOCK_N"]) for c in cands(512, 4096, 4096)]
    assert not cands(16, 4096, 4096)  # decode sizes keep their narrow tiles
