#!/bin/bash
# The GPU check for a machine that has an NVIDIA GPU and driver but no Rust toolchain: it runs the
# binaries that `cargo xtask gpu-bundle` built elsewhere (in .gpu-bundle/, next to this
# repository's fixtures) and writes what it measured to $OUT (default: .gpu-bundle/out).
#
#   bash xtask/gpu/run-bundle.sh            # all stages
#   STAGES="test nccl" bash xtask/gpu/run-bundle.sh
#
# Stages: info, test (mae-nn's CUDA kernel tests; the parity / mixed-precision / NCCL tests with
# MAE_TEST_DEVICE=cuda), bench (`mae bench` f32 and bf16, also with MAE_FUSED_CUDA=1, and
# xtask/bench/torch_bench.py unless TORCH=0), nccl (`mae
# pretrain --devices`), mnist (tiny preset on data/mnist, then k-NN), train (the quick start
# in bf16). The CUDA libraries (cuBLAS, cuRAND, NCCL) are taken from the system or from the
# `nvidia-*` Python wheels that PyTorch installs.
set -u
cd "$(dirname "$0")/../.."
B=.gpu-bundle
OUT=${OUT:-$B/out}
STAGES=${STAGES:-info test bench nccl mnist train}
MNIST=${MNIST:-data/mnist}   # the repository's 6,000 digits (data/README.md)
RUNS=${RUNS:-/tmp/mae-gpu-runs}
if [ ! -x "$B/mae" ] && [ -f "$B.tar.xz" ]; then
    # `cargo xtask gpu-bundle --pack` travels as one xz archive (Python unpacks it where no xz is).
    tar -xJf "$B.tar.xz" 2>/dev/null || python3 -c "import tarfile; tarfile.open('$B.tar.xz').extractall('.')"
fi
mkdir -p "$OUT" "$RUNS"
failed=()
stage() { [[ " $STAGES " == *" $1 "* ]]; }
step() { echo; echo "==> $*"; }

# The wheels' libraries (nvidia/cublas/lib, nvidia/cu13/lib, ...), found through Python.
wheel_libs=$(python3 - 2>/dev/null <<'PY'
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit
dirs = {os.path.dirname(f) for base in nvidia.__path__ for f in glob.glob(base + "/**/lib*.so*", recursive=True)}
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="${wheel_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RUST_BACKTRACE=1

if stage info; then
    step "info"
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv | tee "$OUT/gpu.txt"
    ldd "$B/mae" | grep -E 'cuda|cublas|curand|nvrtc|nccl' | tee -a "$OUT/gpu.txt"
    "$B/mae" --version
fi

if stage test; then
    # mae-nn's CUDA kernels (LayerNorm, softmax, GELU, bias add) against candle's composed ops.
    if [ -x "$B/tests/mae-nn" ]; then
        step "test mae-nn CUDA kernels"
        "$B/tests/mae-nn" cuda_tests:: --include-ignored --test-threads 1 2>&1 | tail -25 | tee -a "$OUT/tests.txt"
        [ "${PIPESTATUS[0]}" = 0 ] || failed+=("test:kernels")
    fi
    # One test binary (crates/mae/tests/it), run once per module that gpu-bundle listed.
    while read -r m; do
        [ -n "$m" ] || continue
        step "test $m"
        # The NCCL test is #[ignore]d where no GPU is (cargo test on a CPU): run it here.
        include=(); [ "$m" = nccl ] && include=(--include-ignored)
        MAE_TEST_DEVICE=cuda "$B/tests/it" "$m::" "${include[@]}" --test-threads 1 2>&1 | tail -25 | tee -a "$OUT/tests.txt"
        [ "${PIPESTATUS[0]}" = 0 ] || failed+=("test:$m")
    done <"$B/tests/modules.txt"
fi

if stage bench; then
    : >"$OUT/bench.jsonl"
    # The issue's configs A, B, C, and C at a batch that fills a GPU better.
    for cfg in "A mae-vit-tiny-patch4-32 64" "B lightly-vit-b32-224 16" "C mae-vit-base-patch16 8" \
               "C64 mae-vit-base-patch16 64"; do
        set -- $cfg
        for dtype in f32 bf16; do
            step "bench $1 ($2, batch $3, $dtype)"
            ours=$("$B/mae" bench --preset "$2" --batch-size "$3" --steps 10 --device cuda --dtype "$dtype" --json)
            echo "$ours"
            # The same with mae-nn's CUDA kernels switched on (off by default until measured).
            kernels=$(MAE_FUSED_CUDA=1 "$B/mae" bench --preset "$2" --batch-size "$3" --steps 10 --device cuda \
                      --dtype "$dtype" --json)
            echo "with MAE_FUSED_CUDA=1: $kernels"
            torch=""
            if [ "${TORCH:-1}" = 1 ] && [ -f xtask/bench/torch_bench.py ]; then
                torch=$(python3 xtask/bench/torch_bench.py --preset "$2" --batch-size "$3" --steps 10 --warmup 3 \
                        --device cuda --dtype "$dtype" 2>"$RUNS/torch_err.txt" | tail -1)
                echo "${torch:-PyTorch failed: $(tail -3 "$RUNS/torch_err.txt")}"
            fi
            echo "{\"config\": \"$1\", \"dtype\": \"$dtype\", \"ours\": ${ours:-null}, \"ours_kernels\": ${kernels:-null}, \"torch\": ${torch:-null}}" >>"$OUT/bench.jsonl"
        done
    done
fi

if stage nccl; then
    common=(--preset mae-vit-tiny-patch4-32 --data synthetic:4096 --steps 30 --progress lines
            --log-every 10 --checkpoint-every 15 --workers 4 --seed 3)
    step "nccl: one process on cuda:0, no NCCL (reference)"
    "$B/mae" pretrain "${common[@]}" --batch-size 64 --device cuda:0 --out "$RUNS/run-single" 2>&1 | tail -4
    step "nccl: --devices 0 (a world of one through NCCL)"
    "$B/mae" pretrain "${common[@]}" --batch-size 64 --devices 0 --out "$RUNS/run-nccl1" 2>&1 | tail -4 || failed+=("nccl:1")
    step "nccl: --devices 0,0 must be refused at once (NCCL allows one rank per GPU)"
    start=$(date +%s)
    timeout 120 "$B/mae" pretrain "${common[@]}" --batch-size 32 --devices 0,0 --out "$RUNS/run-nccl2" 2>&1 | tail -8
    echo "exit status ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s"
    for r in run-single run-nccl1 run-nccl2; do
        [ -f "$RUNS/$r/metrics.jsonl" ] && echo "$r: $(tail -1 "$RUNS/$r/metrics.jsonl")"
    done | tee "$OUT/nccl.txt"
fi

if stage mnist && [ -d "$MNIST" ]; then
    step "mnist: mae-vit-tiny-patch4-32, 3000 steps on the GPU, then k-NN"
    start=$(date +%s)
    "$B/mae" pretrain --data "mnist:$MNIST@train" --preset mae-vit-tiny-patch4-32 --steps 3000 --base-lr 1.5e-3 \
        --device cuda --progress lines --log-every 500 --checkpoint-every 1000 --out "$RUNS/mnist" 2>&1 | tail -4
    echo "pre-training: $(( $(date +%s) - start )) s" | tee "$OUT/mnist.txt"
    knn=(--train "mnist:$MNIST@train" --test "mnist:$MNIST@test" --k 20 --device cuda --json)
    for pool in mean cls; do
        echo "mae $pool: $("$B/mae" knn --weights "$RUNS/mnist" --pool $pool "${knn[@]}")" | tee -a "$OUT/mnist.txt"
        echo "random $pool: $("$B/mae" knn --preset mae-vit-tiny-patch4-32 --pool $pool "${knn[@]}")" | tee -a "$OUT/mnist.txt"
    done
    echo "raw pixels: $("$B/mae" knn --raw-pixels --preset mae-vit-tiny-patch4-32 "${knn[@]}")" | tee -a "$OUT/mnist.txt"
    cp "$RUNS/mnist/loss.png" "$OUT/mnist-tiny-gpu-loss.png" 2>/dev/null
fi

if stage train; then
    step "train: quick start on the GPU in bf16"
    start=$(date +%s)
    "$B/mae" pretrain --device cuda --dtype bf16 --progress lines --log-every 100 --out "$RUNS/run-bf16" 2>&1 | tail -10
    [ "${PIPESTATUS[0]}" = 0 ] || failed+=("train")
    echo "quick start in bf16 on the GPU: $(( $(date +%s) - start )) s" | tee "$OUT/train.txt"
fi

echo
if [ ${#failed[@]} -gt 0 ]; then
    echo "gpu bundle check: FAILED (${failed[*]})"
    exit 1
fi
echo "gpu bundle check: passed"
