//! Gradients through the vendored candle-core's `backward` (vendor/candle-core/PATCHED.md),
//! which stores the first gradient of each tensor instead of adding it to zeros: the sums,
//! signs and layouts it must still get right, on values worked out by hand.

use candle_core::{DType, Device, Result, Tensor, Var};

fn var(values: &[f32], shape: &[usize]) -> Result<Var> {
    Var::from_tensor(&Tensor::from_slice(values, shape, &Device::Cpu)?)
}

fn grad_of(grads: &candle_core::backprop::GradStore, v: &Var) -> Result<Vec<f32>> {
    let g = grads.get(v).expect("a gradient");
    assert!(g.is_contiguous(), "gradients arrive contiguous");
    g.flatten_all()?.to_vec1()
}

#[test]
fn first_gradients_keep_their_sign_sum_and_layout() -> Result<()> {
    let a = var(&[1., 2., 3., 4., 5., 6.], &[2, 3])?;
    let c = var(&[0.5; 6], &[2, 3])?;
    // a reaches the loss three times (through a transpose, a subtraction and a product with
    // itself); c only through a subtraction, so its only gradient is negated.
    let loss = ((a.t()? * 2.0)?.sum_all()?
        + (a.as_tensor() - c.as_tensor())?.sum_all()?
        + a.as_tensor().sqr()?.sum_all()?)?;
    let grads = loss.backward()?;
    // d/da = 2 + 1 + 2a; d/dc = -1.
    assert_eq!(grad_of(&grads, &a)?, vec![5., 7., 9., 11., 13., 15.]);
    assert_eq!(grad_of(&grads, &c)?, vec![-1.; 6]);
    Ok(())
}

#[test]
fn broadcast_and_gathered_gradients_are_summed() -> Result<()> {
    let b = var(&[1., 2., 3.], &[3])?;
    let x = var(&[0.; 6], &[2, 3])?;
    let ids = Tensor::new(&[2u32, 0, 2], &Device::Cpu)?;
    // b broadcast over 2 rows; rows of x gathered by index (row 2 twice: index_add starts from
    // zeros that candle makes for the first gradient).
    let e = var(&[1., 1., 2., 2., 3., 3.], &[3, 2])?;
    let loss = (x.as_tensor().broadcast_add(b.as_tensor())?.sum_all()?
        + e.as_tensor().index_select(&ids, 0)?.sum_all()?)?;
    let grads = loss.backward()?;
    assert_eq!(grad_of(&grads, &b)?, vec![2., 2., 2.]);
    assert_eq!(grad_of(&grads, &e)?, vec![1., 1., 0., 0., 2., 2.]);
    Ok(())
}

#[test]
fn tensors_off_the_path_to_the_loss_have_no_gradient() -> Result<()> {
    let a = var(&[1., 2.], &[2])?;
    let unused = var(&[3., 4.], &[2])?;
    let _ = (unused.as_tensor() * 2.0)?;
    let grads = a.as_tensor().sum_all()?.backward()?;
    assert!(grads.get(&unused).is_none());
    assert_eq!(grads.get(&a).expect("a").dtype(), DType::F32);
    Ok(())
}
