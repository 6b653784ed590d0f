"""PyTorch's column of the product benchmark: the linear layers' products of configs A, B and C
(and 2048 cubed) in f32 and bf16, timed the way `mae-nn`'s kernel_bench times ours.

    .venv-bench/bin/python xtask/bench/torch_products.py [--threads 2] [--reps 50] [--only B]

Prints one line a product: config, dtype, which product (`x W^T` the forward, `g W` the input
gradient, `g^T x` the weight gradient), the shape and GFLOP/s. bf16 here is what autocast runs:
bf16 operands, f32 accumulation inside oneDNN/MKL (AMX where the CPU has it), bf16 output.
The shapes must stay those of crates/mae-nn/examples/kernel_bench.rs (PRODUCT_SHAPES).
"""

import argparse
import time

import torch

SHAPES = [
    ("A", 1088, 192, 576),
    ("A", 1088, 192, 768),
    ("A", 1088, 768, 192),
    ("A", 4160, 128, 384),
    ("A", 4160, 128, 512),
    ("A", 4160, 512, 128),
    ("B", 784, 3072, 768),
    ("B", 208, 768, 2304),
    ("B", 208, 768, 768),
    ("B", 208, 768, 3072),
    ("B", 208, 3072, 768),
    ("B", 800, 512, 1536),
    ("B", 800, 512, 2048),
    ("B", 800, 2048, 512),
    ("B", 800, 512, 3072),
    ("C", 1568, 768, 768),
    ("C", 400, 768, 2304),
    ("C", 400, 768, 3072),
    ("C", 400, 3072, 768),
    ("C", 1576, 512, 1536),
    ("C", 1576, 512, 2048),
    ("C", 1576, 2048, 512),
    ("C", 1576, 512, 768),
    ("-", 2048, 2048, 2048),
]


def gflops(f, flops, reps):
    f()  # warm-up
    reps = int(min(1000, max(3, reps * 2e8 / flops)))
    start = time.perf_counter()
    for _ in range(reps):
        f()
    per = (time.perf_counter() - start) / reps
    return per, flops / per / 1e9


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--only", default="", help="only the configs whose label contains this")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with torch.no_grad():
        for config, rows, inp, out in SHAPES:
            if args.only not in config:
                continue
            flops = 2.0 * rows * inp * out
            shape = f"[{rows}x{inp}] -> {out}"
            for dtype, label in [(torch.float32, "f32 "), (torch.bfloat16, "bf16")]:
                x = torch.randn(rows, inp).to(dtype)
                w = (torch.randn(out, inp) * 0.02).to(dtype)
                g = torch.randn(rows, out).to(dtype)
                for name, f in [
                    ("x W^T", lambda: x @ w.t()),
                    ("g W  ", lambda: g @ w),
                    ("g^T x", lambda: g.t() @ x),
                ]:
                    per, rate = gflops(f, flops, args.reps)
                    print(f"{config} {label} {name} {shape:<22} {per * 1e3:9.3f} ms {rate:8.1f} GFLOP/s", flush=True)


if __name__ == "__main__":
    main()
