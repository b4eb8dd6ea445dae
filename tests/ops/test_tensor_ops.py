"""Tensor ops: cat/stack, index_select/gather/scatter, sort/topk/unique, flip/repeat/tile,
constant_pad_nd, triu/tril, nonzero. Exact ops (copies, selections) compare bit-exactly.
(F.pad's other modes: test_pad.py.)"""
import pytest
import torch
import torch.nn.functional as F

import flag_gems

from tests.helpers import DEVICE, FLOAT_DTYPES, assert_close, gems_ran, kept_launches, to_reference

DTYPES = FLOAT_DTYPES + [torch.int32, torch.int64]


def rand(shape, dtype, lo=-50, hi=50):
    if dtype.is_floating_point:
        return (torch.randn(shape, device=DEVICE) + 0.1).to(dtype)
    return torch.randint(lo, hi, shape, device=DEVICE, dtype=dtype)


def same(actual, expected):
    """Bit-exact match (a float64 reference only fixes the values, not the dtype)."""
    if expected.dtype != torch.float64:
        assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert_close(actual, to_reference(expected), actual.dtype, atol=0, rtol=0)


# -- cat / stack -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_cat_kv_cache_one_launch(dtype):
    cache = rand((2, 3, 7, 4), dtype)
    new = rand((2, 1, 3, 4), dtype).transpose(1, 2)  # non-contiguous
    with gems_ran("cat_kernel") as launched:
        out = torch.cat([cache, new], dim=-2)
    assert launched["cat_kernel"] == 1
    same(out, torch.cat([to_reference(cache), to_reference(new)], dim=-2))


@pytest.mark.parametrize("dim", [0, 1, -1, -3])
def test_cat_contiguous_pair(dim):
    """Two contiguous inputs (the KV-cache append, rotate_half): the lean pair path, one
    launch; mismatched sizes and bad dims still raise torch's errors."""
    shape_a, shape_b = [3, 4, 5], [3, 4, 5]
    shape_b[dim] = 2
    a, b = rand(shape_a, torch.bfloat16), rand(shape_b, torch.bfloat16)
    with gems_ran("cat_kernel") as launched:
        out = torch.cat([a, b], dim=dim)
    assert launched["cat_kernel"] == 1
    same(out, torch.cat([a, b], dim=dim))
    with flag_gems.use_gems():
        with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
            torch.cat([a, rand([3, 9, 9], torch.bfloat16)], dim=dim)
        with pytest.raises(IndexError, match="Dimension out of range"):
            torch.cat([a, b], dim=3)


@pytest.mark.parametrize("seq", [1, 3])
def test_cat_reads_two_level_rows_in_place(seq):
    """A KV append whose new k is a head block of a merged qkv output (transposed: its
    rows are (batch, head) at two unrelated strides), and HF rotate_half's cat of two
    slices of the last dim: for one token, one launch each, no copies, bit-exact. For
    several tokens the rows take three levels (batch, head, seq): those inputs are copied
    into their slices of the output (one strided copy launch each), the rest read in place."""
    B, Hq, Hk, D = 2, 4, 2, 8
    qkv = torch.randn(B, seq, (Hq + 2 * Hk) * D, device=DEVICE)
    k = qkv[..., Hq * D:(Hq + Hk) * D].view(B, seq, Hk, D).transpose(1, 2)  # [B, Hk, seq, D]
    cache = torch.randn(B, Hk, 5, D, device=DEVICE)
    x = torch.randn(B, seq, Hq, D, device=DEVICE).transpose(1, 2)  # [B, Hq, seq, D], HF's q
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    with gems_ran("cat_kernel") as launched:
        kv = torch.cat([cache, k], dim=-2)
        rot = torch.cat((x2, x1), dim=-1)
        three = torch.cat((x2, x1, x2), dim=-1)  # the general path reads them in place too
    if seq == 1:
        assert dict(launched) == {"cat_kernel": 3}
    else:  # the cache in place; k, and every rotate_half slice, copied
        assert launched.pop("cat_kernel") == 1 and sum(launched.values()) == 1 + 2 + 3, dict(launched)
    same(kv, torch.cat([cache, k.contiguous()], dim=-2))
    same(rot, torch.cat((x2.contiguous(), x1.contiguous()), dim=-1))
    same(three, torch.cat((x2.contiguous(), x1.contiguous(), x2.contiguous()), dim=-1))


def test_cat_hf_first_cache_update():
    """HF's DynamicLayer starts from ``tensor([])`` of the cache dtype: the legacy empty
    input is skipped, the new k is copied, contiguous, in one launch; an empty of another
    dtype still takes part in type promotion, as torch's."""
    k = torch.randn(2, 1, 3, 4, device=DEVICE).transpose(1, 2)  # [B, H, S, D] view
    empty = torch.tensor([], device=DEVICE)
    with gems_ran() as launched:
        out = torch.cat([empty, k], dim=-2)
    assert sum(launched.values()) == 1, dict(launched)
    assert out.is_contiguous()
    same(out, k.contiguous())
    # a prefill's k or v as a head block of a merged projection: its (seq, head_dim) rows
    # are not one run, so the one live input is copied by one strided copy launch
    qkv = torch.randn(2, 5, 3 * 2 * 4, device=DEVICE)
    v = qkv[..., 16:].view(2, 5, 2, 4).transpose(1, 2)  # [B, H, S, D], S stride 24
    with gems_ran() as launched:
        out = torch.cat([empty, v], dim=-2)
    assert sum(launched.values()) == 1 and "cat_kernel" not in launched, dict(launched)
    same(out, v.contiguous())
    assert out.is_contiguous()
    with flag_gems.use_gems():
        wide = torch.cat([empty.double(), k], dim=-2)
    assert wide.dtype == torch.float64
    same(wide, k.double())


def test_cat_strided_inputs_read_in_place():
    """Views whose trailing dims are contiguous (a sliced cache, a transposed new token)
    are read through their row stride: one launch, no copies; others are still right."""
    base = torch.randn(2, 3, 7, 8, device=DEVICE)
    cache = base[:, :, :5]  # rows of 40 at stride 56
    new = torch.randn(2, 1, 3, 8, device=DEVICE).transpose(1, 2)  # (2, 3, 1, 8), not contiguous
    with gems_ran("cat_kernel") as launched:
        out = torch.cat([cache, new], dim=2)
    assert dict(launched) == {"cat_kernel": 1}
    same(out, torch.cat([cache.contiguous(), new.contiguous()], dim=2))
    odd = base[:, ::2]  # outer dims do not collapse: a strided copy into its slice
    freqs = torch.randn(1, 8, 6, device=DEVICE).transpose(1, 2)  # HF rotary's cat((freqs, freqs), -1)
    with gems_ran() as launched:
        out2 = torch.cat([odd, odd], dim=-1)
        out3 = torch.cat([odd, base[:, :2]], dim=-1)
        out4 = torch.cat((freqs, freqs), dim=-1)
    # no input here is readable in place (outer dims that do not collapse, a strided last
    # dim): six strided copies into the outputs' slices, no cat launch, no aten copy
    assert "cat_kernel" not in launched and sum(launched.values()) == 6, dict(launched)
    same(out2, torch.cat([odd.contiguous(), odd.contiguous()], dim=-1))
    same(out3, torch.cat([odd.contiguous(), base[:, :2]], dim=-1))
    same(out4, torch.cat((freqs.contiguous(), freqs.contiguous()), dim=-1))


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cat_many_and_legacy_empty(dim):
    # six inputs (two launches), sizes differing along dim, non-contiguous through movedim
    ts = [rand((2 + i, 4, 5), torch.float32).movedim(0, dim) for i in range(6)]
    with gems_ran():  # the ones cat cannot read in place are copied into their slices
        out = torch.cat(ts + [torch.empty(0, device=DEVICE)], dim=dim)
    same(out, torch.cat(ts, dim=dim))


def test_cat_mixed_dtypes_and_out():
    a = rand((2, 3), torch.int32)
    b = rand((2, 2), torch.bfloat16)
    with gems_ran("cat_kernel"):
        out = torch.cat([a, b], -1)
    same(out, torch.cat([a, b], -1))
    o = torch.empty(0, dtype=torch.float32, device=DEVICE)
    with gems_ran("cat_kernel"):
        torch.cat([b, b], 0, out=o)
    same(o, torch.cat([b, b]).float())


def test_cat_only_empty():
    import flag_gems

    with flag_gems.use_gems():
        out = torch.cat([torch.empty(0, device=DEVICE), torch.empty(0, dtype=torch.int64, device=DEVICE)])
        out2 = torch.cat([torch.empty(2, 0, device=DEVICE), torch.empty(2, 0, device=DEVICE)], 1)
    assert out.shape == (0,) and out.dtype == torch.float32
    assert out2.shape == (2, 0)


@pytest.mark.parametrize("dim", [0, -1, 2])
def test_stack(dim):
    ts = [rand((3, 5), torch.float16) for _ in range(3)]
    with gems_ran("cat_kernel"):
        out = torch.stack(ts, dim=dim)
    same(out, torch.stack(ts, dim=dim))


# -- index_select / gather / scatter -----------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_index_select(dtype):
    x = rand((5, 6, 7), dtype).transpose(0, 2)
    idx = torch.tensor([3, 0, 4, 4, 1], device=DEVICE)
    for dim in (0, -1):
        with gems_ran("index_select_kernel"):
            out = torch.index_select(x, dim, idx)
        same(out, torch.index_select(x, dim, idx))


@pytest.mark.parametrize("dtype", DTYPES)
def test_index_select_rows(dtype):
    """Rows of 32 or more elements take the row kernel: a table's rows (dim 0), and the
    middle dim of 3-D tensors (outer > 1, row lengths no block size divides)."""
    table = rand((40, 256), dtype)
    ids = torch.randint(0, 40, (33,), device=DEVICE)
    with gems_ran("index_select_rows_kernel"):
        out = torch.index_select(table, 0, ids)
    same(out, torch.index_select(table, 0, ids))
    idx = torch.tensor([6, 0, 6, 2], device=DEVICE)
    for x in (rand((3, 7, 130), dtype), rand((5, 7, 40), dtype)):
        with gems_ran("index_select_rows_kernel"):
            out = torch.index_select(x, 1, idx)
        same(out, torch.index_select(x, 1, idx))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather(dtype):
    x = rand((5, 6, 7), dtype).transpose(0, 2)  # (7, 6, 5)
    gi = torch.randint(0, 6, (4, 5, 3), device=DEVICE)
    with gems_ran("gather_scatter_kernel"):
        out = torch.gather(x, -2, gi)
    same(out, torch.gather(x, -2, gi))


@pytest.mark.parametrize("dtype", DTYPES)
def test_scatter(dtype):
    x = rand((7, 6, 5), dtype)
    src = rand((4, 6, 3), dtype)
    # distinct indices along dim 1 (duplicates make plain scatter order-dependent)
    perm = torch.stack([torch.randperm(6)[:5] for _ in range(12)]).reshape(4, 3, 5).transpose(1, 2).to(DEVICE)
    gi = torch.randint(0, 6, (4, 5, 3), device=DEVICE)
    with gems_ran("gather_scatter_kernel"):
        r_src = x.scatter(1, perm, src)
        r_val = x.scatter(-2, perm, 2)
        r_add = x.scatter_add(1, gi, src)
        r_red = x.scatter(1, gi, src, reduce="add")
        inplace = x.clone()
        inplace.scatter_(1, perm, src)
    same(r_src, x.scatter(1, perm, src))
    same(r_val, x.scatter(-2, perm, 2))
    same(inplace, r_src)
    ref = to_reference(x).scatter_add(1, gi, to_reference(src))
    n = 6 if dtype.is_floating_point else 1
    assert_close(r_add, ref, dtype, reduce_dim=n)
    assert_close(r_red, ref, dtype, reduce_dim=n)


# -- sort / topk / unique ----------------------------------------------------------------
SORT_DTYPES = FLOAT_DTYPES + [torch.int32]


@pytest.mark.parametrize("dtype", SORT_DTYPES)
@pytest.mark.parametrize("descending", [False, True])
def test_sort_stable(dtype, descending):
    x = rand((5, 33), dtype, -4, 4).t()  # ties, non-contiguous, sort over dim 0
    if dtype.is_floating_point:
        x = torch.where(torch.rand_like(x, dtype=torch.float32) < 0.2, torch.zeros_like(x), x)
    with gems_ran("sort_kernel"):
        v, i = torch.sort(x, dim=0, descending=descending, stable=True)
    rv, ri = torch.sort(x, dim=0, descending=descending, stable=True)
    same(v, rv)
    same(i, ri)


def test_sort_nan_and_one_element():
    x = torch.tensor([[1.0, float("nan"), -float("inf"), 0.5], [2.0, -1.0, float("nan"), 3.0]], device=DEVICE)
    for desc in (False, True):
        with gems_ran("sort_kernel"):
            v, i = torch.sort(x, descending=desc, stable=True)
        rv, ri = torch.sort(x, descending=desc, stable=True)
        assert torch.equal(i, ri)
        torch.testing.assert_close(v, rv, equal_nan=True)
    with gems_ran("sort_kernel"):
        v, i = torch.sort(torch.tensor([[3.0]], device=DEVICE))
    assert v.item() == 3.0 and i.item() == 0


@pytest.mark.parametrize("dtype", SORT_DTYPES)
@pytest.mark.parametrize("largest", [True, False])
def test_topk(dtype, largest):
    x = rand((33, 6), dtype)
    for k in (1, 4, 5, 33):  # a partial sort (k rounded up to a power of two) but for 33
        with gems_ran("sort_kernel"):
            v, i = torch.topk(x, k, dim=0, largest=largest)
        rv, _ = torch.topk(x, k, dim=0, largest=largest)
        same(v, rv)
        same(x.gather(0, i), rv)


def test_topk_long_row_stages(monkeypatch):
    from flag_gems.ops import sort as sort_mod

    # rows longer than MAX_SORT go through reduction stages (shrunk: the interpreter is slow)
    monkeypatch.setattr(sort_mod, "MAX_SORT", 64)
    x = torch.randn(2, 1000, device=DEVICE)
    with gems_ran("sort_kernel", "segment_best_kernel", "row_threshold_kernel") as launched:
        v, i = torch.topk(x, 7)
    assert launched["sort_kernel"] == 3  # 1000 -> 32 segments * 7 = 224 -> 7 * 7 = 49 -> final
    assert launched["segment_best_kernel"] == launched["row_threshold_kernel"] == 1  # the first stage's threshold
    rv, ri = torch.topk(x, 7)
    same(v, rv)
    same(i, ri)


def test_topk_stages_of_small_segments(monkeypatch):
    """Candidates too few for a stage of MAX_SORT / 2 but many for one program's final
    sort go through a stage of MAX_SORT / 8 segments first."""
    from flag_gems.ops import sort as sort_mod

    monkeypatch.setattr(sort_mod, "MAX_SORT", 256)
    x = torch.randn(2, 3000, device=DEVICE)
    with gems_ran("sort_kernel", "segment_best_kernel") as launched:
        v, i = torch.topk(x, 7)
    # 3000 -> 24 segments of 128, 7 each: 168 -> 6 of 32: 42 -> final
    assert launched["sort_kernel"] == 3 and launched["segment_best_kernel"] == 1
    rv, ri = torch.topk(x, 7)
    same(v, rv)
    same(i, ri)


def test_topk_stage_plan_at_sampling_sizes():
    """The planned stages (first stage's segment where it takes a threshold; every stage's
    segment) at the real MAX_SORT: vocabulary rows take the threshold stage, and the final
    one-program sort covers well under MAX_SORT slots; a row one program sorts takes one
    sort; a k too large for k segments of k takes the halving stages."""
    from flag_gems.ops.sort import MAX_SORT, _topk_stages

    assert MAX_SORT == 4096
    assert _topk_stages(128256, 50) == (2048, [2048, 512, 350])
    assert _topk_stages(32000, 50) == (512, [512, 512, 350])
    assert _topk_stages(128256, 256) == (256, [256, 2048, 2048, 2048])
    assert _topk_stages(4096, 50) == (None, [4096])
    assert _topk_stages(128256, 1024) == (None, [2048] * 5 + [4096])


def test_topk_stages_replay_their_launches(monkeypatch):
    """A staged top-k files its launches (threshold, stages) on its first call; the next
    top-k of the same signature replays them on its own tensors (no launcher key), with
    the same results as a first call; another k files its own."""
    from flag_gems.ops import sort as sort_mod

    monkeypatch.setattr(sort_mod, "MAX_SORT", 64)
    results = []
    with kept_launches() as counts, gems_ran("sort_kernel", "segment_best_kernel", "row_threshold_kernel"):
        for k, replayed in ((7, False), (7, True), (7, True), (5, False)):
            counts.clear()
            x = torch.randn(2, 1000, device=DEVICE)
            results.append((x, k, torch.topk(x, k, largest=k != 5)))
            assert (counts["keyed"] == 0) is replayed
    for x, k, (v, i) in results:
        rv, ri = torch.topk(x, k, largest=k != 5)
        same(v, rv)
        same(i, ri)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int32])
@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("k", [7, 16])
def test_topk_first_stage_threshold(monkeypatch, dtype, largest, k):
    """The first stage keeps, per segment, only keys at least as good as the k-th best of
    the segments' bests: all of them where they fit in k slots (written in order), else
    the segment's own top k; a later stage moves the filled slots of a segment with at
    most k the same way. Ties: rows of few distinct values put many keys on the threshold
    (every segment over k), NaN is the largest, and a row of one value is all ties; the
    indices must still be the first ones among equal values, as a stable sort's. k=16:
    segments of 2k (32) elements, at most k slots each."""
    from flag_gems.ops import sort as sort_mod

    monkeypatch.setattr(sort_mod, "MAX_SORT", 64)
    rows = [
        rand((1000,), dtype),  # few candidates a segment: the compacting branch
        (rand((1000,), torch.float32) * 3).round().to(dtype),  # few distinct values: the sorting branch
        torch.full((1000,), 2, dtype=dtype, device=DEVICE),
    ]
    if dtype.is_floating_point:
        nan = rand((1000,), dtype)
        nan[[5, 500, 501, 990]] = float("nan")
        rows.append(nan)
    x = torch.stack(rows)
    with gems_ran("segment_best_kernel"):
        v, i = torch.topk(x, k, largest=largest)
    ref = torch.sort(x.float(), dim=-1, descending=largest, stable=True)
    torch.testing.assert_close(v.float(), ref.values[:, :k], equal_nan=True, rtol=0, atol=0)
    same(i, ref.indices[:, :k])


@pytest.mark.parametrize("return_inverse", [False, True])
@pytest.mark.parametrize("return_counts", [False, True])
def test_unique2_int(return_inverse, return_counts):
    x = torch.randint(-10, 10, (7, 9), dtype=torch.int32, device=DEVICE)
    with gems_ran("unique_kernel"):
        got = torch.ops.aten._unique2(x, True, return_inverse, return_counts)
    for a, b in zip(got, torch.ops.aten._unique2(x, True, return_inverse, return_counts)):
        same(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.int64, torch.float64, torch.uint8])
def test_unique_through_torch(dtype):
    x = torch.cat([rand((40,), dtype, 0, 20)] * 2)
    with gems_ran("unique_kernel"):
        got = torch.unique(x, return_inverse=True, return_counts=True)
    for a, b in zip(got, torch.unique(x, return_inverse=True, return_counts=True)):
        same(a, b)


# -- sort / topk / unique beyond one program's row, and 64-bit keys -----------------------
# MAX_SORT / CHUNK_WIDE / RADIX_BLOCK are shrunk so short rows take several radix blocks or
# merge passes (the interpreter is slow); test_sort_past_max_sort runs the real sizes once.
LONG_DTYPES = FLOAT_DTYPES + [torch.float64, torch.int32, torch.int64, torch.int16, torch.uint8]
RADIX_KERNELS = ("radix_count_kernel", "radix_scan_kernel", "radix_scatter_kernel")
MERGE_KERNELS = ("sort_chunk_kernel", "sort_merge_kernel")


def long_sort_kernels(dtype):
    """What sorts a long row in these tests (small_chunks: radix from any size): radix
    passes, or for 64-bit keys chunk sorts and merges."""
    return MERGE_KERNELS if dtype in (torch.int64, torch.float64) else RADIX_KERNELS


@pytest.fixture
def small_chunks(monkeypatch):
    from flag_gems.ops import sort as sort_mod

    monkeypatch.setattr(sort_mod, "MAX_SORT", 64)
    monkeypatch.setattr(sort_mod, "CHUNK_WIDE", 16)
    monkeypatch.setattr(sort_mod, "RADIX_BLOCK", 64)
    monkeypatch.setattr(sort_mod, "RADIX_NUMEL_PER_PASS", 0)


def with_specials(x):
    """Ties, and for floats NaN, +-inf and -0.0 beside 0.0."""
    if x.is_floating_point():
        x = x.clone()
        flat = x.view(-1)
        flat[::11] = float("nan")
        flat[3::13] = float("inf")
        flat[5::17] = -float("inf")
        flat[7::19] = -0.0
        flat[8::19] = 0.0
    return x


@pytest.mark.parametrize("dtype", LONG_DTYPES)
@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("radix", [True, False])
def test_sort_long_rows_stable(small_chunks, monkeypatch, dtype, descending, radix):
    """Long rows: radix passes (small_chunks: from any size) or, below the radix threshold
    and for 64-bit keys, chunks in registers then merge passes."""
    from flag_gems.ops import sort as sort_mod

    wide = dtype in (torch.int64, torch.float64)
    if wide and not radix:
        pytest.skip("64-bit keys take the merge sort either way")
    if not radix:
        monkeypatch.setattr(sort_mod, "RADIX_NUMEL_PER_PASS", 1 << 62)
    lo, hi = (0, 9) if dtype == torch.uint8 else (-4, 5)
    x = with_specials(rand((300, 3), dtype, lo, hi).round() if dtype.is_floating_point else rand((300, 3), dtype, lo, hi))
    x = x.t()  # non-contiguous; 300 = 4 full radix blocks and a partial one (merge: 4 + 1 chunks, wide: 18 + 1)
    kernels = long_sort_kernels(dtype) if radix else MERGE_KERNELS
    with gems_ran(*kernels) as launched:
        v, i = torch.sort(x, dim=-1, descending=descending, stable=True)
        v0, i0 = torch.sort(x.t(), dim=0, descending=descending, stable=True)
    assert launched["radix_scatter_kernel" if kernels is MERGE_KERNELS else "sort_merge_kernel"] == 0
    rv, ri = torch.sort(x, dim=-1, descending=descending, stable=True)
    same(i, ri)
    assert_close(v, to_reference(rv), dtype, atol=0, rtol=0)  # (NaN == NaN here)
    same(i0, ri.t())


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
@pytest.mark.parametrize("radix", [True, False])
def test_long_sorts_replay_their_launches(small_chunks, monkeypatch, dtype, radix):
    """A long sort files its launches on its first call; the next sorts of the same
    signature replay them (no launcher key) on their own tensors; another signature files
    its own."""
    from flag_gems.ops import sort as sort_mod

    if not radix:
        monkeypatch.setattr(sort_mod, "RADIX_NUMEL_PER_PASS", 1 << 62)
    elif dtype == torch.int64:
        pytest.skip("64-bit keys take the merge sort either way")
    kernels = long_sort_kernels(dtype) if radix else MERGE_KERNELS
    sorted_ = []
    with kept_launches() as counts, gems_ran(*kernels):
        for shape, replayed in (((2, 300), False), ((2, 300), True), ((2, 300), True), ((3, 200), False)):
            counts.clear()
            x = rand(shape, dtype)
            sorted_.append((x, torch.sort(x, dim=-1, descending=True, stable=True)))
            assert (counts["keyed"] == 0) is replayed
    for x, (v, i) in sorted_:
        rv, ri = torch.sort(x, dim=-1, descending=True, stable=True)
        same(i, ri)
        same(v, rv)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 37])
def test_sort_64bit_one_chunk(dtype, n):
    """int64 / float64 rows that fit one chunk: one kernel, extremes of the dtype included."""
    if dtype == torch.int64:
        x = torch.randint(-(2**62), 2**62, (4, n), dtype=dtype, device=DEVICE) * 2
        x.view(-1)[::5] = torch.iinfo(dtype).max
        x.view(-1)[1::5] = torch.iinfo(dtype).min
    else:
        x = with_specials(torch.randn(4, n, dtype=dtype, device=DEVICE) * 1e300)
        x.view(-1)[2::7] = 5e-324  # denormals
    for desc in (False, True):
        with gems_ran("sort_chunk_kernel") as launched:
            v, i = torch.sort(x, descending=desc, stable=True)
        assert launched["sort_merge_kernel"] == 0
        rv, ri = torch.sort(x, descending=desc, stable=True)
        same(i, ri)
        assert_close(v, to_reference(rv), dtype, atol=0, rtol=0)


@pytest.mark.parametrize("radix", [False, True])
def test_sort_past_max_sort(monkeypatch, radix):
    """A real row longer than MAX_SORT, at the real block sizes: one 4096-chunk sort and a
    merge pass, or (were the radix threshold that low) radix passes."""
    from flag_gems.ops import sort as sort_mod

    if radix:
        monkeypatch.setattr(sort_mod, "RADIX_NUMEL_PER_PASS", 5000 // 8)  # fp32: 8 passes
    x = rand((5000,), torch.float32, -100, 100).round()
    with gems_ran(*(RADIX_KERNELS if radix else MERGE_KERNELS)):
        v, i = torch.sort(x, stable=True)
    rv, ri = torch.sort(x, stable=True)
    same(v, rv)
    same(i, ri)


def test_a_sort_in_a_cuda_graph_capture_takes_the_radix_sort(monkeypatch):
    """A capture's launches cost nothing on replay: the radix sort, with the least device
    time, takes a sort of any size there (eager, this one takes the merge sort)."""
    from flag_gems.ops import sort as sort_mod

    monkeypatch.setattr(sort_mod, "capturing_graph", lambda: True)
    x = rand((5000,), torch.float32).round()
    with gems_ran(*RADIX_KERNELS):
        v, i = torch.sort(x, stable=True)
    rv, ri = torch.sort(x, stable=True)
    same(v, rv)
    same(i, ri)


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.float16, torch.bfloat16, torch.int16, torch.int32])
def test_radix_sort_skips_constant_digits(small_chunks, monkeypatch, dtype):
    """Each dtype visits only the digits that can differ (RADIX_SHIFTS): a pass per entry,
    and the order is still exact at the dtype's extremes (fp16 subnormals, integer
    min / max), for rows past RADIX_LONG_ROW (twice the block) too."""
    from flag_gems.ops import sort as sort_mod

    monkeypatch.setattr(sort_mod, "RADIX_LONG_ROW", 200)
    if dtype == torch.bool:
        x = torch.rand(3, 301, device=DEVICE) > 0.5
    elif dtype.is_floating_point:
        x = with_specials(torch.randn(3, 301, device=DEVICE).to(dtype) * 100)
        x.view(-1)[9::23] = torch.finfo(dtype).tiny / 4  # fp16: a subnormal
        x.view(-1)[10::23] = torch.finfo(dtype).max
    else:
        info = torch.iinfo(dtype)
        x = torch.randint(info.min, info.max, (3, 301), dtype=dtype, device=DEVICE)
        x.view(-1)[::7], x.view(-1)[1::7], x.view(-1)[2::9] = info.max, info.min, 0
    for desc in (False, True):
        with gems_ran(*RADIX_KERNELS) as launched:
            v, i = torch.sort(x, descending=desc, stable=True)
        assert launched["radix_scatter_kernel"] == len(sort_mod.RADIX_SHIFTS[dtype])
        rv, ri = torch.sort(x, descending=desc, stable=True)
        same(i, ri)
        assert_close(v, to_reference(rv), dtype, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_sort_subnormals_apart_from_zero(dtype):
    """A subnormal is not zero (the keys come from the bits; bf16's conversion flushed them
    in the interpreter), while -0.0 ties with 0.0 and NaN of either sign sorts last: the
    order of torch's CPU sort (IEEE comparisons)."""
    tiny = torch.finfo(dtype).tiny / 4
    x = torch.tensor([0.0, tiny, -0.0, 1.0, -tiny, 0.0, float("nan"), -float("inf"), -float("nan")], dtype=dtype)
    for desc in (False, True):
        with gems_ran("sort_kernel"):
            _, i = torch.sort(x.to(DEVICE), descending=desc, stable=True)
        expected = torch.sort(x, descending=desc, stable=True)[1]
        assert i.tolist() == expected.tolist(), (desc, i.tolist(), expected.tolist())


def test_radix_sort_blocks_of_one_value(small_chunks):
    """A block whose keys share a digit fills its digit's count field to the block size
    (it wraps): the ranks must still be exact, as must a row of one value."""
    x = torch.cat([torch.full((1, 200), 3.0), torch.randn(1, 200).round()], 1).to(DEVICE)
    for row in (x, torch.full((1, 300), -2.5, device=DEVICE)):
        with gems_ran(*RADIX_KERNELS):
            v, i = torch.sort(row, stable=True)
        rv, ri = torch.sort(row, stable=True)
        same(i, ri)
        same(v, rv)


def test_sort_empty_and_scalar():
    with flag_gems.use_gems():
        v, i = torch.sort(torch.empty(3, 0, device=DEVICE, dtype=torch.int64), dim=-1)
        s, j = torch.sort(torch.tensor(7, device=DEVICE, dtype=torch.int64))
    assert v.shape == i.shape == (3, 0)
    assert s.item() == 7 and j.item() == 0


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64])
@pytest.mark.parametrize("largest", [True, False])
def test_topk_long_rows_64bit(small_chunks, dtype, largest):
    """64-bit keys (no radix select): a full sort, cut to k."""
    x = rand((2, 200), dtype)
    with gems_ran(*long_sort_kernels(dtype)):
        v, i = torch.topk(x, 40, largest=largest)
    rv, _ = torch.topk(x, 40, largest=largest)
    same(v, rv)
    same(x.gather(1, i), rv)


SELECT_KERNELS = ("select_hist_kernel", "select_count_kernel", "select_write_kernel", "sort_kernel")


@pytest.fixture
def small_selects(monkeypatch):
    from flag_gems.ops import sort as sort_mod

    monkeypatch.setattr(sort_mod, "MAX_SORT", 64)
    monkeypatch.setattr(sort_mod, "SELECT_SEG", 64)
    monkeypatch.setattr(sort_mod, "SELECT_SEG_MIN", 32)
    monkeypatch.setattr(sort_mod, "SELECT_MIN_K", 1)  # every k (the sizes below would take the stages)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int32, torch.int16, torch.int8, torch.uint8])
@pytest.mark.parametrize("largest", [True, False])
def test_topk_radix_select(small_selects, dtype, largest):
    """A k too large for the threshold stages takes the radix select: one histogram pass
    per 8-bit digit the dtype's order depends on (for 3 passes or more, the later ones over
    the keys gathered after the first: a row of one value gathers all of them), then the keys better than the k-th
    best and the first of its equals, sorted. Exact against a stable sort's first k
    (values and indices) on rows of random keys, of few distinct values (ties across the
    k-th), of one value, and for floats with NaN (the largest) and -0.0 beside 0.0."""
    from flag_gems.ops.sort import SELECT_SHIFTS

    k = 40
    if dtype.is_floating_point:
        rows = [rand((300,), dtype), (rand((300,), torch.float32) * 2).round().to(dtype), torch.full((300,), 2.0, dtype=dtype, device=DEVICE)]
        special = rand((300,), dtype)
        special[::23] = float("nan")
        special[5::29], special[6::29] = -0.0, 0.0
        rows.append(special)
    else:
        lo = 0 if dtype == torch.uint8 else -100
        rows = [rand((300,), dtype, lo, 100), rand((300,), dtype, lo, lo + 6), torch.full((300,), 3, dtype=dtype, device=DEVICE)]
    x = torch.stack(rows)
    with gems_ran(*SELECT_KERNELS) as launched:
        v, i = torch.topk(x, k, largest=largest)
    passes = len(SELECT_SHIFTS[dtype])
    assert launched["select_hist_kernel"] == passes
    assert launched["select_gather_kernel"] == (passes > 2)  # the later passes read the gathered keys
    assert launched["select_count_kernel"] == launched["select_write_kernel"] == launched["sort_kernel"] == 1
    ref = torch.sort(x.double(), dim=-1, descending=largest, stable=True)
    torch.testing.assert_close(v.double(), ref.values[:, :k], equal_nan=True, rtol=0, atol=0)
    same(i, ref.indices[:, :k])


def test_topk_radix_select_replays_and_every_k(small_selects):
    """k = 1 and k = MAX_SORT (one program's final sort), along dim 0 (a non-contiguous
    row), and a repeated signature: its launches replayed (no launcher key) on new data,
    the histograms zeroed again."""
    results = []
    with kept_launches() as counts, gems_ran("select_hist_kernel"):
        for k, replayed in ((1, False), (64, False), (64, True)):
            counts.clear()
            x = rand((300, 3), torch.float32)
            results.append((x, k, torch.topk(x, k, dim=0)))
            assert (counts["keyed"] == 0) is replayed
    for x, k, (v, i) in results:
        rv, ri = torch.sort(x, dim=0, descending=True, stable=True)
        same(v, rv[:k])
        same(i, ri[:k])


def test_topk_paths_at_sampling_sizes():
    """Which top-k a vocabulary row takes at the real sizes: k up to 256 the threshold
    stages (faster there), k from SELECT_MIN_K, or where the stages have no threshold, up
    to MAX_SORT the radix select; larger k, and 64-bit keys, a full sort."""
    from flag_gems.ops.sort import _selects, _topk_stages

    f32, i64 = torch.empty(0), torch.empty(0, dtype=torch.int64)
    assert not _selects(f32, 128256, 50) and not _selects(f32, 128256, 256) and not _selects(f32, 4096, 1000)
    assert _topk_stages(128256, 400)[0] is None and _selects(f32, 128256, 400)  # no threshold: the select
    assert _selects(f32, 128256, 512) and _selects(f32, 128256, 1024) and _selects(f32, 32000, 4096)
    assert not _selects(f32, 128256, 4097) and not _selects(i64, 128256, 1024)


def test_unique_tuned_by_its_first_call(isolated_store, monkeypatch):
    """Tuning the count kernel on the call's own buffer runs every block size; the call
    must then read only the winning size's counts (a larger block: fewer of them)."""
    from tuner import bench, settings

    def largest_block_wins(req):
        req.fn()  # the config runs on the call's buffers, as a real benchmark does
        ms = 1.0 / req.config["BLOCK"]
        return ms, ms, ms

    monkeypatch.setenv("FLAGGEMS_AUTOTUNE", "miss")
    settings.reload()
    bench.set_timer(largest_block_wins)
    try:
        x = torch.randint(-40, 40, (600,), device=DEVICE)
        with gems_ran("unique_count_kernel"):
            got = torch.unique(x, return_counts=True)
    finally:
        bench.set_timer(None)
    for a, b in zip(got, torch.unique(x, return_counts=True)):
        same(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.float64, torch.int32])
@pytest.mark.parametrize("return_inverse", [False, True])
def test_unique_long(small_chunks, dtype, return_inverse):
    x = rand((13, 17), dtype, -30, 30)
    if dtype.is_floating_point:
        x = x.round()
    with gems_ran("unique_count_kernel", "unique_kernel"):
        got = torch.unique(x, return_inverse=return_inverse, return_counts=True)
    for a, b in zip(got, torch.unique(x, return_inverse=return_inverse, return_counts=True)):
        same(a, b)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_unique_subnormals_apart_from_zero(dtype):
    """A subnormal is its own value, not zero's (bf16 compares exactly, from its bits),
    while -0.0 and 0.0 are one value."""
    tiny = torch.finfo(dtype).tiny / 4
    x = torch.tensor([0.0, tiny, -0.0, 1.0, tiny, -tiny, 0.0, 2.0], dtype=dtype, device=DEVICE)
    with gems_ran("unique_kernel"):
        got = torch.unique(x, return_inverse=True, return_counts=True)
    expected = torch.unique(x.cpu(), return_inverse=True, return_counts=True)  # (IEEE compares)
    for a, b in zip(got, expected):
        assert a.tolist() == b.tolist(), (a.tolist(), b.tolist())


def test_unique_nan():
    """Each NaN is its own value, sorted last (without inverse: NaNs' order is unspecified)."""
    x = torch.tensor([2.0, float("nan"), 1.0, 2.0, float("nan"), -0.5], device=DEVICE)
    with gems_ran("unique_kernel"):
        u, _, c = torch.ops.aten._unique2(x, True, False, True)
    ru, _, rc = torch.ops.aten._unique2(x, True, False, True)
    assert_close(u, to_reference(ru), torch.float32, atol=0, rtol=0)
    same(c, rc)


# -- flip / repeat / tile / pad / triu / tril --------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_flip(dtype):
    x = rand((3, 4, 5), dtype).transpose(0, 2)
    with gems_ran("nd_gather_kernel"):
        out = torch.flip(x, [0, -1])
    same(out, torch.flip(x, [0, -1]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_repeat_and_tile(dtype):
    x = rand((3, 5), dtype).t()
    with gems_ran("nd_gather_kernel"):
        r = x.repeat(2, 1, 3)
        t = x.tile((2,))
    same(r, x.repeat(2, 1, 3))
    same(t, x.tile((2,)))
    import flag_gems

    with flag_gems.use_gems():
        e = x.repeat(0, 2)
    assert e.shape == (0, 6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_pad(dtype):
    x = rand((2, 3, 5), dtype).transpose(1, 2)
    for pad in [(1, 2), (1, 2, -1, 1), (0, 0, 2, 0, 1, 1)]:
        with gems_ran("nd_gather_kernel"):
            out = F.pad(x, pad, value=3)
        same(out, F.pad(x, pad, value=3))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("diagonal", [0, 2, -1])
def test_triu_tril(dtype, diagonal):
    x = rand((2, 7, 5), dtype).transpose(1, 2)
    with gems_ran("tri_kernel"):
        u, low = torch.triu(x, diagonal), torch.tril(x, diagonal)
    same(u, torch.triu(x, diagonal))
    same(low, torch.tril(x, diagonal))
    o = torch.empty(0, dtype=dtype, device=DEVICE)
    with gems_ran("tri_kernel"):
        torch.triu(x[0], diagonal, out=o)
    same(o, torch.triu(x[0], diagonal))


# -- nonzero -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int32, torch.bool])
def test_nonzero(dtype):
    x = (torch.rand((33, 65), device=DEVICE) < 0.3).to(dtype).t()
    with gems_ran("nonzero_write_kernel"):
        out = torch.nonzero(x)
    same(out, torch.nonzero(x))
    with gems_ran("nonzero_count_kernel"):
        none = torch.nonzero(torch.zeros(7, device=DEVICE, dtype=dtype))
    assert none.shape == (0, 1)
