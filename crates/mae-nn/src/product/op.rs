//! The product of two tensors through [`super::matmul_into`], for the backward passes: they
//! multiply detached tensors (the gradient and a saved operand), often transposed views, which
//! the kernels read through their strides without a copy.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::{matmul_into, MatRef, Precision};

/// `a b` for 2-D f32 tensors on the CPU (any strides, e.g. `g.t()`), in `precision`. Records no
/// backward: call it on detached tensors.
pub fn matmul(a: &Tensor, b: &Tensor, precision: Precision) -> Result<Tensor> {
    a.apply_op2_no_bwd(b, &Product(precision))
}

struct Product(Precision);

fn view<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<MatRef<'a>> {
    let CpuStorage::F32(values) = storage else { candle_core::bail!("product: the {what} is not f32") };
    let (rows, cols) = layout.shape().dims2()?;
    let &[rs, cs] = layout.stride() else { candle_core::bail!("product: the {what} is not 2-D") };
    let data = values.get(layout.start_offset()..).unwrap_or(&[]);
    Ok(MatRef { data, rows, cols, rs, cs })
}

impl CustomOp2 for Product {
    fn name(&self) -> &'static str {
        "mae-product"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (a, b) = (view(s1, l1, "left operand")?, view(s2, l2, "right operand")?);
        let (m, n) = (a.rows, b.cols);
        let mut c = vec![0f32; m * n];
        matmul_into(&mut c, n, a, b, false, self.0)?;
        Ok((CpuStorage::F32(c), Shape::from((m, n))))
    }
}
