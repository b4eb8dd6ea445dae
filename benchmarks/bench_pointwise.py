"""Pointwise ops: effective bandwidth of torch vs flag_gems on one GPU (run on the device)."""
import torch, triton, flag_gems
def bw(fn, nbytes):
    ms = triton.testing.do_bench(fn, warmup=25, rep=100)
    return nbytes / ms / 1e6
N = 1 << 26
x = torch.randn(N, device="cuda", dtype=torch.bfloat16); y = torch.randn(N, device="cuda", dtype=torch.bfloat16)
xt = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16).t()
row = torch.randn(8192, device="cuda", dtype=torch.bfloat16)
cases = {
  "add bf16 flat": (lambda: x + y, 3 * N * 2),
  "gelu bf16": (lambda: torch.nn.functional.gelu(x), 2 * N * 2),
  "add transposed+row": (lambda: xt + row, 2 * N * 2),
  "to fp32": (lambda: x.float(), N * 6),
  "zeros fp32": (lambda: torch.zeros(N, device="cuda"), N * 4),
}
for name, (fn, nb) in cases.items():
    t = bw(fn, nb)
    with flag_gems.use_gems():
        g = bw(fn, nb)
    print(f"{name:22s} torch {t:7.0f} GB/s  gems {g:7.0f} GB/s")
