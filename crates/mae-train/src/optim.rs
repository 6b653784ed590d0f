//! AdamW with parameter groups and savable state. candle-nn's AdamW has neither: MAE needs weight
//! decay on weights only (timm's `add_weight_decay`: no decay for 1-D parameters and biases), and
//! an exact resume needs the moments and the step.
//!
//! The update is PyTorch's `torch.optim.AdamW`:
//! `p -= lr * wd * p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;`
//! `p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`.

use std::collections::HashMap;

use candle_core::{Tensor, Var};

use crate::error::{Result, TrainError};

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
    m: Tensor,
    v: Tensor,
}

pub struct AdamW {
    config: AdamWConfig,
    slots: Vec<Slot>,
    step: u64,
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
        Ok(Self { config, slots, step: 0 })
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
        for (slot, g) in self.slots.iter_mut().zip(grads) {
            let lr = lr * slot.lr_scale;
            let g = g.to_dtype(slot.m.dtype())?;
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
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for s in &self.slots {
            out.insert(format!("m.{}", s.name), s.m.clone());
            out.insert(format!("v.{}", s.name), s.v.clone());
        }
        out
    }

    /// Restores the moments and the step from [`AdamW::state_tensors`]; `source` names the file.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: u64, source: &str) -> Result<()> {
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
                *slot = t.to_dtype(slot.dtype())?.to_device(slot.device())?;
            }
        }
        self.step = step;
        Ok(())
    }
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
