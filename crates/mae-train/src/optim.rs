//! AdamW with parameter groups and savable state. candle-nn's AdamW has neither: MAE needs weight
//! decay on weights only (timm's `add_weight_decay`: no decay for 1-D parameters and biases), and
//! an exact resume needs the moments and the step.
//!
//! The update is PyTorch's `torch.optim.AdamW`:
//! `p -= lr * wd * p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;`
//! `p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`.
//!
//! On a GPU the update runs *fused* ([`AdamW::set_fused`]): the parameters of a group (same
//! weight decay and lr scale) are updated as one flat buffer, as `torch.optim`'s multi-tensor
//! path does. Per tensor, the update is a dozen tiny element-wise kernels, and ~150 tensors make
//! the launches, not the arithmetic, the cost (docs/benchmarks.md, "On a GPU"). Fused, it
//! is a copy in, a dozen kernels per group, and a copy out. Both paths apply the same
//! element-wise operations in the same order, so they give bit-identical weights (tested).
//!
//! On the CPU, f32 tensors are updated per tensor by the in-place parallel passes of
//! [`crate::optim_cpu`], again bit-identical to the composed update (tested).

use std::collections::HashMap;

use candle_core::{Tensor, Var};

use crate::error::{Result, TrainError};
use crate::optim_cpu;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// The MAE paper's pre-training optimizer: betas (0.9, 0.95), weight decay 0.05.
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.05 }
    }
}

/// Whether a parameter is decayed: not 1-D parameters (norms, biases) nor `.bias` names.
pub fn decays(name: &str, var: &Var) -> bool {
    var.rank() > 1 && !name.ends_with(".bias")
}

/// How one parameter is optimised: with weight decay or not, and a multiplier of the scheduled
/// learning rate (1 by default; fine-tuning's layer-wise decay gives lower layers less, as the
/// `lr_scale` of facebookresearch/mae's `param_groups_lrd`; the decay step is scaled too).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ParamOptions {
    pub weight_decay: bool,
    pub lr_scale: f64,
}

impl ParamOptions {
    /// The default: [`decays`] decides the weight decay, the learning rate is unscaled.
    pub fn default_for(name: &str, var: &Var) -> Self {
        Self { weight_decay: decays(name, var), lr_scale: 1.0 }
    }
}

struct Slot {
    name: String,
    var: Var,
    decay: bool,
    lr_scale: f64,
    /// The moments while not fused (empty while a [`FusedGroup`] holds them).
    m: Tensor,
    v: Tensor,
}

/// Parameters with the same options, their moments as flat buffers in the slots' order.
struct FusedGroup {
    members: Vec<usize>,
    decay: bool,
    lr_scale: f64,
    m: Tensor,
    v: Tensor,
}

pub struct AdamW {
    config: AdamWConfig,
    slots: Vec<Slot>,
    step: u64,
    fused: Option<Vec<FusedGroup>>,
    /// Per-tensor updates of f32 CPU tensors through [`optim_cpu`] (off only to test it against
    /// the composed update).
    cpu_kernels: bool,
}

impl AdamW {
    /// An optimizer over `vars` (name, variable), in the given (stable) order.
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        Self::with_options(vars, config, ParamOptions::default_for)
    }

    /// An optimizer whose per-parameter weight decay and learning-rate scale `options` decides.
    pub fn with_options(
        vars: Vec<(String, Var)>,
        config: AdamWConfig,
        options: impl Fn(&str, &Var) -> ParamOptions,
    ) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let ParamOptions { weight_decay: decay, lr_scale } = options(&name, &var);
                let m = var.zeros_like()?;
                let v = var.zeros_like()?;
                Ok(Slot { name, var, decay, lr_scale, m, v })
            })
            .collect::<Result<Vec<_>>>()?;
        let on_gpu = slots.first().is_some_and(|s| !s.var.device().is_cpu());
        let mut opt = Self { config, slots, step: 0, fused: None, cpu_kernels: true };
        // On the CPU the per-tensor update is as fast and needs no flat copies.
        opt.set_fused(on_gpu)?;
        Ok(opt)
    }

    /// Whether updates run on flat per-group buffers (the default on a GPU) or per tensor (the
    /// default on the CPU). The weights and the state are the same either way.
    pub fn set_fused(&mut self, fused: bool) -> Result<()> {
        match (fused, self.fused.take()) {
            (true, None) => {
                let mut groups: Vec<FusedGroup> = Vec::new();
                for (i, slot) in self.slots.iter().enumerate() {
                    let same = |g: &&mut FusedGroup| g.decay == slot.decay && g.lr_scale == slot.lr_scale;
                    match groups.iter_mut().find(same) {
                        Some(g) => g.members.push(i),
                        None => groups.push(FusedGroup {
                            members: vec![i],
                            decay: slot.decay,
                            lr_scale: slot.lr_scale,
                            m: Tensor::zeros(0, slot.m.dtype(), slot.m.device())?,
                            v: Tensor::zeros(0, slot.v.dtype(), slot.v.device())?,
                        }),
                    }
                }
                for g in &mut groups {
                    g.m = flat(g.members.iter().map(|&i| &self.slots[i].m))?;
                    g.v = flat(g.members.iter().map(|&i| &self.slots[i].v))?;
                    for &i in &g.members {
                        let slot = &mut self.slots[i];
                        slot.m = Tensor::zeros(0, slot.m.dtype(), slot.m.device())?;
                        slot.v = slot.m.clone();
                    }
                }
                self.fused = Some(groups);
            }
            (false, Some(groups)) => {
                for g in &groups {
                    let ms = unflatten(&g.m, &g.members, &self.slots)?;
                    let vs = unflatten(&g.v, &g.members, &self.slots)?;
                    for ((&i, m), v) in g.members.iter().zip(ms).zip(vs) {
                        (self.slots[i].m, self.slots[i].v) = (m, v);
                    }
                }
            }
            (_, groups) => self.fused = groups,
        }
        Ok(())
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Optimizer steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Names of the parameters with and without weight decay.
    pub fn groups(&self) -> (Vec<&str>, Vec<&str>) {
        let (decay, no_decay): (Vec<_>, Vec<_>) = self.slots.iter().partition(|s| s.decay);
        (decay.iter().map(|s| s.name.as_str()).collect(), no_decay.iter().map(|s| s.name.as_str()).collect())
    }

    /// Every parameter's name and options, in the optimizer's order.
    pub fn options(&self) -> Vec<(&str, ParamOptions)> {
        self.slots
            .iter()
            .map(|s| (s.name.as_str(), ParamOptions { weight_decay: s.decay, lr_scale: s.lr_scale }))
            .collect()
    }

    /// One update with learning rate `lr`; `grads[i]` is the gradient of the i-th variable.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        if grads.len() != self.slots.len() {
            return Err(TrainError::Config(format!(
                "{} gradients for {} parameters",
                grads.len(),
                self.slots.len()
            )));
        }
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        if let Some(groups) = &mut self.fused {
            for g in groups.iter_mut() {
                let lr = lr * g.lr_scale;
                let grad = flat(g.members.iter().map(|&i| &grads[i]))?.to_dtype(g.m.dtype())?;
                let p = flat(g.members.iter().map(|&i| self.slots[i].var.as_tensor()))?;
                // The same operations, in the same order, as the per-tensor path below.
                g.m = ((&g.m * c.beta1)? + (&grad * (1.0 - c.beta1))?)?;
                g.v = ((&g.v * c.beta2)? + (grad.sqr()? * (1.0 - c.beta2))?)?;
                let update = ((&g.m / bc1)? / ((&g.v / bc2)?.sqrt()? + c.eps)?)?;
                let decayed = if g.decay { (p * (1.0 - lr * c.weight_decay))? } else { p };
                let updated = (decayed - (update * lr)?)?;
                for (&i, part) in g.members.iter().zip(unflatten(&updated, &g.members, &self.slots)?) {
                    self.slots[i].var.set(&part)?;
                }
            }
            return Ok(());
        }
        for (slot, g) in self.slots.iter_mut().zip(grads) {
            let lr = lr * slot.lr_scale;
            let g = g.to_dtype(slot.m.dtype())?;
            if self.cpu_kernels && optim_cpu::applies(&slot.var, &slot.m, &slot.v, &g) {
                let update = optim_cpu::Update {
                    beta1: c.beta1,
                    beta2: c.beta2,
                    eps: c.eps,
                    bias_correction1: bc1,
                    bias_correction2: bc2,
                    lr,
                    decay_factor: slot.decay.then_some(1.0 - lr * c.weight_decay),
                };
                optim_cpu::step(&slot.var, &slot.m, &slot.v, &g, update)?;
                continue;
            }
            slot.m = ((&slot.m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            slot.v = ((&slot.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&slot.m / bc1)? / ((&slot.v / bc2)?.sqrt()? + c.eps)?)?;
            let p = slot.var.as_tensor();
            let decayed = if slot.decay { (p * (1.0 - lr * c.weight_decay))? } else { p.clone() };
            slot.var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// Moments as named tensors (`m.<name>`, `v.<name>`), for a checkpoint.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        match &self.fused {
            None => {
                // Copies: the CPU kernels update the moments in place.
                for s in &self.slots {
                    out.insert(format!("m.{}", s.name), s.m.copy()?);
                    out.insert(format!("v.{}", s.name), s.v.copy()?);
                }
            }
            Some(groups) => {
                for g in groups {
                    let ms = unflatten(&g.m, &g.members, &self.slots)?;
                    let vs = unflatten(&g.v, &g.members, &self.slots)?;
                    for ((&i, m), v) in g.members.iter().zip(ms).zip(vs) {
                        out.insert(format!("m.{}", self.slots[i].name), m);
                        out.insert(format!("v.{}", self.slots[i].name), v);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Restores the moments and the step from [`AdamW::state_tensors`]; `source` names the file.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: u64, source: &str) -> Result<()> {
        let fused = self.fused.is_some();
        self.set_fused(false)?;
        for s in &mut self.slots {
            for (kind, slot) in [("m", &mut s.m), ("v", &mut s.v)] {
                let key = format!("{kind}.{}", s.name);
                let t = tensors.get(&key).ok_or_else(|| {
                    TrainError::checkpoint(source, format!("optimizer state `{key}` is missing"))
                })?;
                if t.dims() != slot.dims() {
                    return Err(TrainError::checkpoint(
                        source,
                        format!(
                            "optimizer state `{key}` has shape {:?}, the model needs {:?}",
                            t.dims(),
                            slot.dims()
                        ),
                    ));
                }
                // A copy: the CPU kernels update the moments in place, never the caller's tensors.
                *slot = t.to_dtype(slot.dtype())?.to_device(slot.device())?.copy()?;
            }
        }
        self.step = step;
        self.set_fused(fused)
    }
}

/// The concatenation of `tensors`, flattened: one buffer for a fused group.
fn flat<'a>(tensors: impl Iterator<Item = &'a Tensor>) -> Result<Tensor> {
    let parts = tensors.map(|t| t.flatten_all()).collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

/// A group's flat buffer cut back into tensors of its members' shapes (views, no copies).
fn unflatten(buffer: &Tensor, members: &[usize], slots: &[Slot]) -> Result<Vec<Tensor>> {
    let mut offset = 0;
    members
        .iter()
        .map(|&i| {
            let shape = slots[i].var.shape();
            let n = shape.elem_count();
            let part = buffer.narrow(0, offset, n)?.reshape(shape)?;
            offset += n;
            Ok(part)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_torch_adamw_on_a_hand_computed_step() -> Result<()> {
        let w = Var::from_tensor(&Tensor::new(&[[1.0f32, -2.0]], &Device::Cpu)?)?;
        let b = Var::from_tensor(&Tensor::new(&[0.5f32], &Device::Cpu)?)?;
        let mut opt =
            AdamW::new(vec![("w".into(), w.clone()), ("l.bias".into(), b.clone())], AdamWConfig::default())?;
        let g = [Tensor::new(&[[0.1f32, 0.2]], &Device::Cpu)?, Tensor::new(&[1.0f32], &Device::Cpu)?];
        opt.step(&g, 0.1)?;
        // Step 1: m_hat = g, v_hat = g^2, update = g / (|g| + eps) ~ sign(g).
        let w1 = w.as_tensor().to_vec2::<f32>()?;
        let expect = |p: f32, gv: f32, decay: f32| p * (1.0 - 0.1 * decay) - 0.1 * gv / (gv.abs() + 1e-8);
        assert!((w1[0][0] - expect(1.0, 0.1, 0.05)).abs() < 1e-6);
        assert!((w1[0][1] - expect(-2.0, 0.2, 0.05)).abs() < 1e-6);
        assert!((b.as_tensor().to_vec1::<f32>()?[0] - expect(0.5, 1.0, 0.0)).abs() < 1e-6);
        assert_eq!(opt.groups(), (vec!["w"], vec!["l.bias"]));
        Ok(())
    }

    /// Three steps through the CPU kernel and through the composed candle ops, from the same
    /// start, on tensors of several kernel chunks: bit-identical weights and moments.
    #[test]
    fn cpu_kernel_updates_are_bit_identical_to_composed_ones() -> Result<()> {
        let dev = Device::Cpu;
        let wave = |n: usize, f: f32| {
            Tensor::arange(0u32, n as u32, &dev)?
                .to_dtype(candle_core::DType::F32)?
                .affine(f as f64, 0.3)?
                .sin()
        };
        let make = || -> Result<Vec<(String, Var)>> {
            Ok(vec![
                ("big.weight".into(), Var::from_tensor(&wave(70_000, 0.37)?.reshape((7, 10_000))?)?),
                ("big.bias".into(), Var::from_tensor(&wave(300, 1.3)?)?),
            ])
        };
        let (kernel_vars, composed_vars) = (make()?, make()?);
        let mut kernel = AdamW::new(kernel_vars.clone(), AdamWConfig::default())?;
        let mut composed = AdamW::new(composed_vars.clone(), AdamWConfig::default())?;
        composed.cpu_kernels = false;
        for step in 0..3 {
            let grads = [wave(70_000, 0.011 * (step + 1) as f32)?.reshape((7, 10_000))?, wave(300, -0.7)?];
            kernel.step(&grads, 0.05)?;
            composed.step(&grads, 0.05)?;
        }
        let bits = |t: &Tensor| -> Result<Vec<u32>> {
            Ok(t.flatten_all()?.to_vec1::<f32>()?.iter().map(|v| v.to_bits()).collect())
        };
        for ((name, k), (_, c)) in kernel_vars.iter().zip(&composed_vars) {
            assert_eq!(bits(k.as_tensor())?, bits(c.as_tensor())?, "{name}");
        }
        let (ks, cs) = (kernel.state_tensors()?, composed.state_tensors()?);
        for (key, t) in &ks {
            assert_eq!(bits(t)?, bits(&cs[key])?, "{key}");
        }
        // The weights moved (a test of nothing otherwise).
        let start = make()?;
        assert_ne!(bits(kernel_vars[0].1.as_tensor())?, bits(start[0].1.as_tensor())?);
        Ok(())
    }

    /// The CPU kernels update the moments in place: a saved state and a loaded one must not
    /// change with the optimizer's later steps.
    #[test]
    fn saved_and_loaded_states_are_not_changed_by_later_steps() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[[1.0f32, -2.0], [0.5, 0.25]], &dev)?)?;
        let mut opt = AdamW::new(vec![("w".into(), w)], AdamWConfig::default())?;
        let grad = [Tensor::new(&[[0.1f32, 0.2], [-0.3, 0.4]], &dev)?];
        opt.step(&grad, 0.1)?;
        let saved = opt.state_tensors()?;
        let before = saved["m.w"].flatten_all()?.to_vec1::<f32>()?;
        opt.step(&grad, 0.1)?;
        assert_eq!(saved["m.w"].flatten_all()?.to_vec1::<f32>()?, before);
        let loaded: HashMap<String, Tensor> =
            saved.iter().map(|(k, t)| (k.clone(), t.copy().unwrap())).collect();
        opt.load_state(&loaded, 1, "test")?;
        opt.step(&grad, 0.1)?;
        assert_eq!(loaded["m.w"].flatten_all()?.to_vec1::<f32>()?, before);
        assert_ne!(opt.state_tensors()?["m.w"].flatten_all()?.to_vec1::<f32>()?, before, "the state moved");
        Ok(())
    }

    /// Three steps, fused and per tensor, from the same start: bit-identical weights and state,
    /// also across a switch in the middle (a checkpoint written by one path resumes in the other).
    #[test]
    fn fused_updates_are_bit_identical_to_per_tensor_ones() -> Result<()> {
        let dev = Device::Cpu;
        let make = || -> Result<Vec<(String, Var)>> {
            Ok(vec![
                (
                    "a.weight".into(),
                    Var::from_tensor(&Tensor::new(&[[1.0f32, -2.0, 0.3], [0.7, 0.1, -0.9]], &dev)?)?,
                ),
                ("a.bias".into(), Var::from_tensor(&Tensor::new(&[0.5f32, -0.25], &dev)?)?),
                ("b.weight".into(), Var::from_tensor(&Tensor::new(&[[0.2f32], [-1.5]], &dev)?)?),
            ])
        };
        let scale = |n: &str, v: &Var| ParamOptions {
            lr_scale: if n.starts_with('a') { 0.5 } else { 1.0 },
            ..ParamOptions::default_for(n, v)
        };
        let (plain_vars, fused_vars) = (make()?, make()?);
        let mut plain = AdamW::with_options(plain_vars.clone(), AdamWConfig::default(), scale)?;
        let mut fused = AdamW::with_options(fused_vars.clone(), AdamWConfig::default(), scale)?;
        fused.set_fused(true)?;
        assert_eq!(fused.fused.as_ref().map(Vec::len), Some(3), "groups: decayed a, a's bias, decayed b");
        for step in 0..3 {
            let grads = [
                Tensor::new(&[[0.1f32, -0.2, 0.05], [0.3, -0.01, 0.2]], &dev)?
                    .affine(1.0 + step as f64, 0.0)?,
                Tensor::new(&[1.0f32, -0.5], &dev)?,
                Tensor::new(&[[0.02f32], [0.4]], &dev)?.affine(-1.0, step as f64 * 0.1)?,
            ];
            plain.step(&grads, 0.01)?;
            fused.step(&grads, 0.01)?;
            if step == 1 {
                fused.set_fused(false)?;
                fused.set_fused(true)?;
            }
        }
        for ((name, p), (_, f)) in plain_vars.iter().zip(&fused_vars) {
            let (p, f) = (p.flatten_all()?.to_vec1::<f32>()?, f.flatten_all()?.to_vec1::<f32>()?);
            assert!(p.iter().zip(&f).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}: {p:?} vs {f:?}");
        }
        let (ps, fs) = (plain.state_tensors()?, fused.state_tensors()?);
        assert_eq!(ps.len(), fs.len());
        for (key, t) in &ps {
            assert_eq!(t.dims(), fs[key].dims(), "{key}");
            let diff = (t - &fs[key])?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert_eq!(diff, 0.0, "{key}");
        }
        // A fused optimizer loads a per-tensor state and stays fused.
        fused.load_state(&ps, 3, "test")?;
        assert!(fused.fused.is_some());
        Ok(())
    }

    #[test]
    fn lr_scale_scales_the_step_and_the_decay_of_its_parameter() -> Result<()> {
        let w = Var::from_tensor(&Tensor::new(&[[1.0f32, -2.0]], &Device::Cpu)?)?;
        let options = |_: &str, _: &Var| ParamOptions { weight_decay: true, lr_scale: 0.25 };
        let mut opt = AdamW::with_options(vec![("w".into(), w.clone())], AdamWConfig::default(), options)?;
        opt.step(&[Tensor::new(&[[0.1f32, -0.2]], &Device::Cpu)?], 0.1)?;
        // Step 1 at lr 0.1 x 0.25: p (1 - lr wd) - lr sign(g).
        let lr = 0.025f32;
        let w1 = w.as_tensor().to_vec2::<f32>()?;
        assert!((w1[0][0] - (1.0 * (1.0 - lr * 0.05) - lr)).abs() < 1e-6);
        assert!((w1[0][1] - (-2.0 * (1.0 - lr * 0.05) + lr)).abs() < 1e-6);
        assert_eq!(opt.options(), vec![("w", ParamOptions { weight_decay: true, lr_scale: 0.25 })]);
        Ok(())
    }
}
