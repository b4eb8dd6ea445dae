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
    with using_store(LayeredStore([MemoryStore()])), pretune._no_launches(), resolve_hook(hook):
        with flag_gems.use_gems():
            fn()
    clear_caches()
    return got


def calls(dt):
    e = lambda *s, dtype=dt: torch.empty(*s, dtype=dtype, device=DEVICE)  # noqa: E731
    out = []
    for shape, dim in [((6, 40), -1), ((6, 40), 0), ((3, 5000), -1), ((1, 100000), -1), ((64, 512, 16), 1), ((200000,), 0)]:
        x = e(*shape)
        out += [lambda x=x, d=dim: x.sum(d), lambda x=x, d=dim: x.sum(d, dtype=torch.float32), lambda x=x, d=dim: x.amax(d),
                lambda x=x, d=dim: x.argmax(d), lambda x=x, d=dim: x.cumsum(d), lambda x=x: x.sum(), lambda x=x, d=dim: x.mean(d)]
    idx32 = torch.zeros(4, dtype=torch.int32, device=DEVICE)
    t8 = torch.zeros(6, dtype=torch.uint8, device=DEVICE)
    out += [
        lambda: torch.cat([e(5, 7), e(3, 7)], 0),
        lambda: torch.index_select(e(9, 33), 0, idx32),
        lambda: F.layer_norm(e(4, 48), (48,), e(48), e(48)),
        lambda: F.nll_loss(e(6, 5), t8),
        lambda: F.nll_loss(e(6, 5), t8.long(), weight=e(5), reduction="none"),
        lambda: torch.ops.aten.reflection_pad1d_backward(e(3, 40), e(3, 38), [1, 1]),
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
    # only a split reduction's second stage (partial sums in, the input's dtype as AUX) and
    # kernels without a replay table entry stay unreplayed
    for kernel, raw in unreplayed:
        if kernel in tuning.REPLAY:
            assert kernel.endswith(("_reduce_kernel:rows", "_reduce_kernel:inner")) and raw["dtypes"][0] != raw["dtypes"][4], (kernel, raw)
