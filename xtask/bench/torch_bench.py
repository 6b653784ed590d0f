#!/usr/bin/env python3
"""PyTorch reference for `cargo xtask bench --compare-torch`.

Times the same MAE training step as `mae bench` (forward + loss, backward, AdamW)
with the implementation the Rust crates were checked against: timm's
``VisionTransformer`` wrapped in lightly's ``MaskedVisionTransformerTIMM``
(frozen 2-D sin-cos position table), lightly's ``MAEDecoderTIMM`` (the
revision of lightly's ``examples/pytorch/mae.py`` that the fixtures use),
``lightly.models.utils.random_token_mask`` and the MSE over the masked
patches (``patchify`` + ``get_at_index``), optimised with
``torch.optim.AdamW(lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)``.

Prints one JSON line:

    {"preset": ..., "batch_size": ..., "step_s_median": ..., "img_per_s": ...,
     "forward_s": ..., "backward_s": ..., "optimizer_s": ..., "peak_rss_mb": ...}

``--matmul-peak`` instead times an N x N float32 ``torch.matmul`` (the
machine's practical matmul peak at the same thread count) and prints
``{"matmul_gflops": ..., "blas": ...}``.

The model's shape comes from the arguments ``--image-size``, ``--patch-size``,
``--in-channels``, ``--encoder DIM,DEPTH,HEADS,MLP``, ``--decoder ...`` and
``--mask-ratio``, which xtask fills in from ``mae info --presets --json`` (so
they are the Rust presets'); without them the ``PRESETS`` table below stands in
(for runs by hand and xtask/gpu/run-bundle.sh).

Usage (xtask runs it; by hand from the repository root):

    python xtask/bench/torch_bench.py --preset mae-vit-tiny-patch4-32 --batch-size 64 --steps 5
    python xtask/bench/torch_bench.py --preset mae-vit-tiny-patch4-32 --image-size 32 --patch-size 4 \
        --in-channels 3 --encoder 192,12,3,768 --decoder 128,4,4,512 --mask-ratio 0.75
    python xtask/bench/torch_bench.py --matmul-peak --threads 2
"""

import argparse
import json
import os
import resource
import sys
import time
import warnings

# The presets of crates/mae-io/src/config.rs, for runs without the shape arguments:
# (image, patch, (enc dim, depth, heads), (dec dim, depth, heads)); MLP ratio 4, 3 channels.
PRESETS = {
    "mae-vit-micro-patch4-32": (32, 4, (128, 4, 4), (64, 2, 4)),
    "mae-vit-tiny-patch4-32": (32, 4, (192, 12, 3), (128, 4, 4)),
    "lightly-vit-b32-224": (224, 32, (768, 12, 12), (512, 1, 16)),
    "mae-vit-base-patch16": (224, 16, (768, 12, 12), (512, 8, 16)),
    "mae-vit-large-patch16": (224, 16, (1024, 24, 16), (512, 8, 16)),
    "mae-vit-huge-patch14": (224, 14, (1280, 32, 16), (512, 8, 16)),
}
MASK_RATIO = 0.75
SHAPE_ARGS = ("image_size", "patch_size", "in_channels", "encoder", "decoder", "mask_ratio")


def stack(text: str):
    """`DIM,DEPTH,HEADS,MLP` -> a tuple of four ints."""
    parts = [int(x) for x in text.split(",")]
    if len(parts) != 4 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected DIM,DEPTH,HEADS,MLP (positive), got {text!r}")
    return tuple(parts)


def image_size(text: str):
    """`224` or `224,160` (height, width) -> (height, width)."""
    parts = [int(x) for x in text.split(",")]
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected N or H,W, got {text!r}")
    return (parts[0], parts[-1])


def shape_of(args) -> dict:
    """The model shape: from the shape arguments (all of them), else the PRESETS table."""
    given = [k for k in SHAPE_ARGS if getattr(args, k) is not None]
    table = None
    if args.preset in PRESETS:
        image, patch, enc, dec = PRESETS[args.preset]
        table = {"image_size": (image, image), "patch_size": patch, "in_channels": 3,
                 "encoder": (*enc, 4 * enc[0]), "decoder": (*dec, 4 * dec[0]), "mask_ratio": MASK_RATIO}
    if not given:
        if table is None:
            sys.exit(f"torch_bench.py: preset {args.preset!r} is not in PRESETS: give the shape arguments "
                     f"(--{' --'.join(k.replace('_', '-') for k in SHAPE_ARGS)})")
        return table
    if len(given) != len(SHAPE_ARGS):
        missing = [k for k in SHAPE_ARGS if k not in given]
        sys.exit(f"torch_bench.py: give all the shape arguments or none; missing: {missing}")
    shape = {k: getattr(args, k) for k in SHAPE_ARGS}
    if table is not None and table != shape:
        print(f"torch_bench.py: note: PRESETS[{args.preset!r}] differs from the shape given; using the "
              "shape given", file=sys.stderr)
    return shape


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def build_model(torch, shape: dict):
    from lightly.models import utils
    from lightly.models.modules import MAEDecoderTIMM, MaskedVisionTransformerTIMM
    from timm.models.vision_transformer import VisionTransformer

    image, patch, channels = shape["image_size"], shape["patch_size"], shape["in_channels"]
    dim, depth, heads, mlp = shape["encoder"]
    ddim, ddepth, dheads, dmlp = shape["decoder"]

    class MAE(torch.nn.Module):
        """lightly examples/pytorch/mae.py (MAEDecoderTIMM revision), sizes of the preset."""

        def __init__(self):
            super().__init__()
            vit = VisionTransformer(img_size=image, patch_size=patch, in_chans=channels, embed_dim=dim,
                                    depth=depth, num_heads=heads, mlp_ratio=mlp / dim, qkv_bias=True,
                                    class_token=True, num_classes=0)  # no classifier head: MAE does not use it
            self.patch_size = patch
            self.backbone = MaskedVisionTransformerTIMM(vit=vit)  # frozen sin-cos pos_embed
            self.sequence_length = self.backbone.sequence_length
            self.decoder = MAEDecoderTIMM(
                num_patches=vit.patch_embed.num_patches,
                patch_size=patch,
                in_chans=channels,
                embed_dim=dim,
                decoder_embed_dim=ddim,
                decoder_depth=ddepth,
                decoder_num_heads=dheads,
                mlp_ratio=dmlp / ddim,
                proj_drop_rate=0.0,
                attn_drop_rate=0.0,
            )

        def forward(self, images, idx_keep, idx_mask):
            x_encoded = self.backbone.encode(images=images, idx_keep=idx_keep)
            batch_size = x_encoded.shape[0]
            x_decode = self.decoder.embed(x_encoded)
            x_masked = utils.repeat_token(self.decoder.mask_token, (batch_size, self.sequence_length))
            x_masked = utils.set_at_index(x_masked, idx_keep, x_decode.type_as(x_masked))
            x_decoded = self.decoder.decode(x_masked)
            x_pred = self.decoder.predict(utils.get_at_index(x_decoded, idx_mask))
            patches = utils.patchify(images, self.patch_size)
            target = utils.get_at_index(patches, idx_mask - 1)  # idx_mask counts the cls token
            return torch.nn.functional.mse_loss(x_pred, target)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MAEDecoderTIMM is deprecated in lightly 1.6
        return MAE()


def sync(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(torch, args) -> dict:
    from lightly.models import utils

    device = torch.device(args.device)
    torch.manual_seed(0)
    shape = shape_of(args)
    model = build_model(torch, shape)
    model = model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
    (height, width), channels = shape["image_size"], shape["in_channels"]
    images = torch.rand(args.batch_size, channels, height, width, device=device) * 2 - 1
    # --dtype bf16: torch.autocast, the standard mixed precision (weights and AdamW in f32).
    # f32 means f32: no TF32 tensor-core products on Ampere and newer.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    bf16 = args.dtype == "bf16"

    times, fwd, bwd, optim = [], [], [], []
    for step in range(args.steps + args.warmup):
        sync(torch, device)
        t0 = time.perf_counter()
        idx_keep, idx_mask = utils.random_token_mask(
            size=(args.batch_size, model.sequence_length), mask_ratio=shape["mask_ratio"], device=device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(images, idx_keep, idx_mask)
        loss_value = float(loss.detach())  # forward done (and synchronised)
        t1 = time.perf_counter()
        loss.backward()
        sync(torch, device)
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(torch, device)
        t3 = time.perf_counter()
        if step >= args.warmup:
            times.append(t3 - t0)
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            optim.append(t3 - t2)
    median = sorted(times)[len(times) // 2]  # the same pick as `mae bench`
    record = {
        "impl": "torch",
        "preset": args.preset,
        "batch_size": args.batch_size,
        "device": args.device,
        "dtype": args.dtype,
        "step_s_median": median,
        "step_s_min": min(times),
        "step_s_max": max(times),
        "img_per_s": args.batch_size / median,
        "forward_s": sum(fwd) / len(fwd),
        "backward_s": sum(bwd) / len(bwd),
        "optimizer_s": sum(optim) / len(optim),
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
        "last_loss": loss_value,
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        record["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return record


def blas_name(torch) -> str:
    config = torch.__config__.show()
    for key in ("BLAS_INFO=",):
        if key in config:
            return config.split(key, 1)[1].split(",", 1)[0].strip()
    return "unknown"


def matmul_peak(torch, args) -> dict:
    device = torch.device(args.device)
    n = args.matmul_size
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        torch.matmul(a, b)
    sync(torch, device)
    best = float("inf")
    for _ in range(args.matmul_reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        sync(torch, device)
        best = min(best, time.perf_counter() - t0)
    return {
        "impl": "torch",
        "matmul_size": n,
        "matmul_s": best,
        "matmul_gflops": 2 * n**3 / best / 1e9,
        "blas": blas_name(torch) if device.type == "cpu" else "cuBLAS",
        "threads": torch.get_num_threads(),
        "device": args.device,
        "torch": torch.__version__,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="mae-vit-tiny-patch4-32",
                   help="the preset's name (its shape: the arguments below, else the PRESETS table)")
    p.add_argument("--image-size", type=image_size, help="N or H,W pixels")
    p.add_argument("--patch-size", type=int)
    p.add_argument("--in-channels", type=int)
    p.add_argument("--encoder", type=stack, help="DIM,DEPTH,HEADS,MLP")
    p.add_argument("--decoder", type=stack, help="DIM,DEPTH,HEADS,MLP")
    p.add_argument("--mask-ratio", type=float)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=5, help="timed steps (after --warmup steps)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all cores)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16"], help="bf16: torch.autocast mixed precision")
    p.add_argument("--matmul-peak", action="store_true", help="time an N x N float32 matmul instead")
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--matmul-reps", type=int, default=10)
    args = p.parse_args()
    if args.steps < 1:
        p.error("--steps must be at least 1")

    try:
        import torch
    except ImportError as e:
        print(f"torch_bench.py: cannot import torch ({e}); run `cargo xtask bench --setup-torch`", file=sys.stderr)
        return 3
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"torch_bench.py: --device {args.device} but torch {torch.__version__} sees no CUDA device",
              file=sys.stderr)
        return 4
    if not args.matmul_peak:
        try:
            import lightly  # noqa: F401
            import timm  # noqa: F401
        except ImportError as e:
            print(f"torch_bench.py: cannot import {e.name} ({e}); run `cargo xtask bench --setup-torch`",
                  file=sys.stderr)
            return 3

    record = matmul_peak(torch, args) if args.matmul_peak else bench(torch, args)
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
