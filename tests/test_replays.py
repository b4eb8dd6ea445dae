"""Miss replays (flag_gems.tuning.REPLAY): the job a recorded miss replays as requests
the very key that missed (kernel, bucketed key, dtypes), over ops, shapes, dims and
dtypes. Launch-free: keys are captured by a resolve hook with Triton's launch stubbed."""
import json

import pytest
import torch
import torch.nn.functional as F

import flag_gems
from flag_gems import tuning
from tuner import pretune
from tuner.libtuner import clear_caches, resolve_hook
from tuner.store import LayeredStore, MemoryStore, using_store
from tests.helpers import DEVICE


def requested(fn):
    """(kernel, key, raw args) of every LibTuner ``fn`` reaches under flag_gems."""
    got = []

    def hook(t, key, args, kwargs, grid):
        got.append((t.name, t.key_json(key), json.loads(t._raw_args(args, kwargs))))
        return dict(t.default)

    clear_caches()
    with using_store(LayeredStore([MemoryStore()])), pretune.no_launches(), resolve_hook(hook):
        with flag_gems.use_gems():
            fn()
    clear_caches()
    return got


def rms_grad(x, shape, w):
    """rms_norm and its backward: autograd only (rms_norm's own Function, no aten op)."""
    wrt = [x.requires_grad_()] + ([] if w is None else [w.requires_grad_()])
    return torch.autograd.grad(F.rms_norm(x, shape, w), wrt, torch.empty_like(x))


def calls(dt):
    e = lambda *s, dtype=dt: torch.empty(*s, dtype=dtype, device=DEVICE)  # noqa: E731
    out = []
    for shape, dim in [((6, 40), -1), ((6, 40), 0), ((3, 5000), -1), ((1, 100000), -1), ((64, 512, 16), 1), ((200000,), 0)]:
        x = e(*shape)
        out += [lambda x=x, d=dim: x.sum(d), lambda x=x, d=dim: x.sum(d, dtype=torch.float32), lambda x=x, d=dim: x.amax(d),
                lambda x=x, d=dim: x.argmax(d), lambda x=x, d=dim: x.cumsum(d), lambda x=x: x.sum(), lambda x=x, d=dim: x.mean(d),
                lambda x=x, d=dim: torch.var_mean(x, d)]
    f32 = lambda *s: e(*s, dtype=torch.float32)  # noqa: E731
    aten = torch.ops.aten
    # integer tensors are made here, outside use_gems (a zeros() inside would request a fill
    # kernel); zeros: in-range indices
    z = lambda *s, dtype=torch.int64: torch.zeros(*s, dtype=dtype, device=DEVICE)  # noqa: E731
    idx32, t8, t64, keep = z(4, dtype=torch.int32), z(6, dtype=torch.uint8), z(6), z(7, 13, dtype=torch.bool)
    i45, i39, i43, i5, i23 = z(4, 5), z(3, 9), z(4, 3), z(5), z(2, 3, dtype=torch.int32)
    out += [
        lambda: torch.cat([e(5, 7), e(3, 7)], 0),
        lambda: torch.index_select(e(9, 33), 0, idx32),
        lambda: F.layer_norm(e(4, 48), (48,), e(48), e(48)),
        lambda: F.layer_norm(e(4, 48), (48,), f32(48), f32(48)),  # parameters of another dtype
        lambda: aten.native_layer_norm(e(4, 48), [48], e(48), e(48), 1e-5),  # (stores the stats)
        lambda: F.nll_loss(e(6, 5), t8),
        lambda: F.nll_loss(e(6, 5), t64, weight=e(5), reduction="none"),
        lambda: torch.ops.aten.reflection_pad1d_backward(e(3, 40), e(3, 38), [1, 1]),
        lambda: torch.arange(0, 37, device=DEVICE, dtype=dt),
        lambda: torch.arange(5000, device=DEVICE),
        lambda: aten.native_dropout(e(7, 13), 0.3, True),
        lambda: aten.native_dropout(e(3, 333), 0.5, None),
        lambda: aten.native_dropout_backward(e(7, 13), keep, 2.0),
        lambda: torch.triu(e(5, 9)),
        lambda: torch.tril(e(2, 3, 17), -1),
        lambda: torch.flip(e(3, 7), [0]),
        lambda: e(3, 5).repeat(2, 3),
        lambda: F.pad(e(3, 5), (1, 2)),
        lambda: torch.gather(e(4, 9), 1, i45),
        lambda: e(4, 9).scatter_add(0, i39, e(3, 9)),
        lambda: e(4, 9).scatter(1, i43, 1.5),
        lambda: aten.embedding_dense_backward(e(5, 33), i5, 10, -1, False),
        lambda: aten.embedding_dense_backward(e(2, 3, 65), i23, 4, 0, True),
        lambda: aten.native_group_norm(e(2, 6, 5), e(6), e(6), 2, 6, 5, 3, 1e-5),
        lambda: aten.native_group_norm(e(3, 4, 9), None, None, 3, 4, 9, 2, 1e-5),
        lambda: aten.native_group_norm_backward(e(2, 6, 5), e(2, 6, 5), f32(2, 3), f32(2, 3), e(6), 2, 6, 5, 3, [True, True, True]),
        lambda: aten.native_group_norm_backward(e(3, 4, 9), e(3, 4, 9), f32(3, 2), f32(3, 2), None, 3, 4, 9, 2, [True, True, False]),
        lambda: aten.native_layer_norm_backward(e(4, 48), e(4, 48), [48], f32(4, 1), f32(4, 1), e(48), e(48), [True, True, True]),
        lambda: aten.native_layer_norm_backward(e(3, 5, 129), e(3, 5, 129), [129], f32(3, 5, 1), f32(3, 5, 1), None, e(129),
                                                [True, False, True]),
        lambda: rms_grad(e(5, 37), (37,), e(37)),
        lambda: rms_grad(e(3, 2, 1000), (1000,), None),
        lambda: rms_grad(e(7, 300), (300,), e(300)),
        lambda: aten._softmax_backward_data(e(6, 40), e(6, 40), -1, dt),
        lambda: aten._log_softmax_backward_data(e(3, 1000), e(3, 1000), 1, dt),
        lambda: aten._softmax_backward_data(e(6, 40), e(6, 40), 0, dt),
        lambda: aten._softmax_backward_data(e(3, 7, 5), e(3, 7, 5), 1, dt),
        lambda: aten._softmax_backward_data(e(4, 1, 6), e(4, 1, 6), 1, dt),
        lambda: aten._softmax_backward_data(f32(5, 33), f32(5, 33), -1, dt),  # after half_to_float
    ]
    return out


@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float32, torch.float16])
def test_replay_requests_the_missed_key(dt):
    unreplayed = []
    for call in calls(dt):
        for kernel, key, raw in requested(call):
            job = tuning.replay_job(kernel, raw)
            if job is None:
                unreplayed.append((kernel, raw))
                continue
            keys = {(k, kj) for k, kj, _ in requested(lambda: tuning.run_job(job, init=False))}
            assert (kernel, key) in keys, (kernel, key, raw, job.describe())
    # every kernel a call reaches has a replay: only a split reduction's second stage
    # (partial sums in, the input's dtype as AUX) stays unreplayed
    for kernel, raw in unreplayed:
        assert kernel.endswith(("_reduce_kernel:rows", "_reduce_kernel:inner")) and raw["dtypes"][4] is not None, (kernel, raw)
