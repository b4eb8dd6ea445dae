"""A small tuned kernel for the LibTuner tests, importable by worker processes."""
import triton
import triton.language as tl

from tuner import libtuner

CONFIGS = [triton.Config({"BLOCK": b}, num_warps=w) for b in (16, 32, 64, 128) for w in (1, 2)]


@libtuner(configs=CONFIGS, key=["n"], strategy=["log"], default=triton.Config({"BLOCK": 128}, num_warps=2))
@triton.jit
def scale_kernel(x_ptr, y_ptr, n, factor, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    tl.store(y_ptr + offs, x * factor, mask=mask)


def scale(x, factor=2.0):
    y = x.new_empty(x.shape)
    n = x.numel()
    scale_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK"]),)](x, y, n, factor)
    return y


def fake_time(req):
    """Deterministic: BLOCK 64 with 2 warps is fastest; BLOCK 16 always fails."""
    if req.config["BLOCK"] == 16:
        raise RuntimeError("out of resources (fake)")
    ms = abs(req.config["BLOCK"] - 64) / 64 + (0 if req.config["num_warps"] == 2 else 0.5) + 1.0
    return ms, ms * 0.9, ms * 1.1
