//! The NCCL collective on a real GPU (cargo feature `nccl`, `MAE_TEST_DEVICE=cuda`): a world of
//! one process exercises every operation through NCCL itself (init, all-reduce, broadcast, the
//! byte and host-value paths, barrier, the bucketed gradient all-reduce). Jobs of several ranks
//! are run by the GPU check through `mae pretrain --devices` (docs/distributed.md).
#![cfg(feature = "nccl")]

use candle_core::{DType, Device, Tensor};
use mae_train::collective::{self, NcclCollective, NcclLaunch};
use mae_train::Collective;

#[test]
#[ignore = "needs a GPU: MAE_TEST_DEVICE=cuda ... -- --include-ignored (xtask/gpu/run-bundle.sh does)"]
fn nccl_world_of_one_runs_every_operation() {
    let device = Device::new_cuda(0).expect("a CUDA device");
    let launch = NcclLaunch { rank: 0, world_size: 1, id: NcclLaunch::new_id().expect("ncclGetUniqueId") };
    let world = NcclCollective::init(&device, &launch).expect("ncclCommInitRank");
    assert_eq!((world.rank(), world.world_size()), (0, 1));

    let t = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &device).unwrap();
    let summed = world.all_reduce_sum(&t).unwrap();
    assert_eq!(summed.to_vec2::<f32>().unwrap(), vec![vec![1.0, 2.0], vec![3.0, 4.0]]);
    assert!(summed.device().is_cuda());
    let b = world.broadcast(&t.t().unwrap(), 0).unwrap(); // a strided input is made contiguous
    assert_eq!(b.to_vec2::<f32>().unwrap(), vec![vec![1.0, 3.0], vec![2.0, 4.0]]);

    let mut host = [1.5f64, -2.0];
    world.all_reduce_sum_host(&mut host).unwrap();
    assert_eq!(host, [1.5, -2.0]);
    let mut bytes = b"hello".to_vec();
    world.broadcast_bytes(&mut bytes, 0).unwrap();
    assert_eq!(bytes, b"hello");
    world.barrier().unwrap();

    // The trainer's path: many tensors in flat buckets, averaged.
    let grads: Vec<Tensor> = (0..5)
        .map(|i| Tensor::full(i as f32, (i + 1, 3), &device).unwrap().to_dtype(DType::F32).unwrap())
        .collect();
    let reduced = collective::all_reduce_mean(&world, &grads, 0.5, 64).unwrap();
    for (i, (g, r)) in grads.iter().zip(&reduced).enumerate() {
        assert_eq!(r.dims(), g.dims());
        let want = (g * 0.5).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(r.to_vec2::<f32>().unwrap(), want, "bucketed tensor {i}");
    }
}
