//! What the benchmark chooses (config letter -> preset and batch size) and
//! the model shapes of those presets, read from the `mae` binary's
//! `mae info --presets --json` so that they cannot drift from
//! crates/mae-io's presets.

use super::json::{get, Object, Value};

/// One benchmark configuration as chosen here: a preset and a batch size.
#[derive(Clone, Copy, Debug)]
pub struct Choice {
    pub name: &'static str,
    pub preset: &'static str,
    pub batch: usize,
}

pub const CHOICES: [Choice; 3] = [
    Choice { name: "A", preset: "mae-vit-tiny-patch4-32", batch: 64 },
    Choice { name: "B", preset: "lightly-vit-b32-224", batch: 16 },
    Choice { name: "C", preset: "mae-vit-base-patch16", batch: 8 },
];

/// `--config`: `all`, or letters (or preset names), comma-separated, each once.
pub fn parse_configs(v: &str) -> Result<Vec<Choice>, String> {
    if v.eq_ignore_ascii_case("all") {
        return Ok(CHOICES.to_vec());
    }
    let mut out: Vec<Choice> = Vec::new();
    for name in v.split(',').map(str::trim) {
        match CHOICES.iter().find(|c| c.name.eq_ignore_ascii_case(name) || c.preset == name) {
            Some(c) if !out.iter().any(|o| o.name == c.name) => out.push(*c),
            Some(_) => {}
            None => return Err(format!("--config: expected A, B, C (comma-separated) or all, got `{name}`")),
        }
    }
    Ok(out)
}

/// Width, depth, heads and MLP width of a transformer stack.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stack {
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp: usize,
}

/// The shape of a preset: what the FLOP count and torch_bench.py need.
#[derive(Clone, Debug, PartialEq)]
pub struct Shape {
    /// Height and width in pixels.
    pub image: (usize, usize),
    pub patch: usize,
    pub in_channels: usize,
    pub encoder: Stack,
    pub decoder: Stack,
    pub mask_ratio: f64,
}

/// A configuration with its preset's shape.
#[derive(Clone, Debug)]
pub struct Config {
    pub name: &'static str,
    pub preset: &'static str,
    pub batch: usize,
    pub shape: Shape,
}

/// The configs of `choices`, with the shapes from `presets` (the object
/// `mae info --presets --json` prints: preset name -> full config).
pub fn resolve(choices: &[Choice], presets: &Object) -> Result<Vec<Config>, String> {
    choices
        .iter()
        .map(|c| {
            let Some(p) = get(presets, c.preset).and_then(Value::as_object) else {
                let names: Vec<&str> = presets.iter().map(|(k, _)| k.as_str()).collect();
                return Err(format!(
                    "the mae binary has no preset `{}` (its presets: {})",
                    c.preset,
                    names.join(", ")
                ));
            };
            let shape = Shape::from_json(p).map_err(|e| format!("preset `{}`: {e}", c.preset))?;
            Ok(Config { name: c.name, preset: c.preset, batch: c.batch, shape })
        })
        .collect()
}

fn field<'a>(obj: &'a [(String, Value)], key: &str) -> Result<&'a Value, String> {
    get(obj, key).ok_or_else(|| format!("no `{key}`"))
}

fn count(v: &Value, key: &str) -> Result<usize, String> {
    match v.as_f64() {
        Some(n) if n >= 1.0 && n.fract() == 0.0 => Ok(n as usize),
        _ => Err(format!("`{key}` is not a positive whole number")),
    }
}

impl Stack {
    fn from_json(obj: &[(String, Value)]) -> Result<Self, String> {
        let n = |k: &str| field(obj, k).and_then(|v| count(v, k));
        Ok(Stack { dim: n("dim")?, depth: n("depth")?, heads: n("num_heads")?, mlp: n("mlp_dim")? })
    }
}

impl Shape {
    pub fn from_json(p: &[(String, Value)]) -> Result<Self, String> {
        let size = field(p, "image_size")?;
        let image = match size.as_array() {
            Some([h, w]) => (count(h, "image_size")?, count(w, "image_size")?),
            _ => count(size, "image_size").map(|s| (s, s))?,
        };
        let stack = |k: &str| {
            field(p, k)?
                .as_object()
                .ok_or_else(|| format!("`{k}` is not an object"))
                .and_then(Stack::from_json)
        };
        let mask_ratio = field(p, "mask_ratio")?.as_f64().ok_or("`mask_ratio` is not a number")?;
        Ok(Shape {
            image,
            patch: count(field(p, "patch_size")?, "patch_size")?,
            in_channels: count(field(p, "in_channels")?, "in_channels")?,
            encoder: stack("encoder").map_err(|e| format!("encoder: {e}"))?,
            decoder: stack("decoder").map_err(|e| format!("decoder: {e}"))?,
            mask_ratio,
        })
    }

    /// `224` for a square image, else `224x160` (height x width).
    pub fn image_text(&self, sep: char) -> String {
        let (h, w) = self.image;
        if h == w {
            h.to_string()
        } else {
            format!("{h}{sep}{w}")
        }
    }

    /// torch_bench.py's arguments for this shape.
    pub fn torch_args(&self) -> Vec<String> {
        let stack = |s: &Stack| format!("{},{},{},{}", s.dim, s.depth, s.heads, s.mlp);
        [
            ("--image-size", self.image_text(',')),
            ("--patch-size", self.patch.to_string()),
            ("--in-channels", self.in_channels.to_string()),
            ("--encoder", stack(&self.encoder)),
            ("--decoder", stack(&self.decoder)),
            ("--mask-ratio", self.mask_ratio.to_string()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v])
        .collect()
    }
}

impl Config {
    /// Patches per image `L`.
    pub fn patches(&self) -> usize {
        let s = &self.shape;
        (s.image.0 / s.patch) * (s.image.1 / s.patch)
    }

    /// Visible patches `K = int(L * (1 - mask_ratio))`, as `MaskPlan::len_keep`.
    pub fn kept(&self) -> usize {
        (self.patches() as f64 * (1.0 - self.shape.mask_ratio)) as usize
    }

    /// FLOPs of one training step (forward + backward = 3x forward), counting
    /// 2 per multiply-add of every matmul and attention product:
    ///
    /// - patch embedding over all L patches: 2 L (C p²) D
    /// - each encoder block on N = 1 + K tokens: 2 N (4D² + 2D·M) (qkv, proj,
    ///   MLP of width M) + 4 N² D (QKᵀ and attention x V)
    /// - decoder_embed on 1 + K tokens: 2 (1+K) D Dd
    /// - each decoder block on 1 + L tokens, as above with Dd
    /// - decoder_pred over the L patches: 2 L Dd (C p²)
    ///
    /// times the batch. Norms, softmax, GELU, the loss and AdamW are element-wise
    /// and left out.
    pub fn step_flops(&self) -> f64 {
        let s = &self.shape;
        let l = self.patches() as f64;
        let pix = (s.in_channels * s.patch * s.patch) as f64;
        let ne = 1.0 + self.kept() as f64;
        let nd = 1.0 + l;
        let block = |n: f64, st: &Stack| {
            let (d, m) = (st.dim as f64, st.mlp as f64);
            st.depth as f64 * (2.0 * n * (4.0 * d * d + 2.0 * d * m) + 4.0 * n * n * d)
        };
        let (d, dd) = (s.encoder.dim as f64, s.decoder.dim as f64);
        let forward = 2.0 * l * pix * d
            + block(ne, &s.encoder)
            + 2.0 * ne * d * dd
            + block(nd, &s.decoder)
            + 2.0 * l * dd * pix;
        3.0 * forward * self.batch as f64
    }

    pub fn describe(&self) -> String {
        let s = &self.shape;
        format!(
            "`{}` ({} px, patch {}, {}/{}/{} + {}/{}/{}), batch {}",
            self.preset,
            s.image_text('x'),
            s.patch,
            s.encoder.dim,
            s.encoder.depth,
            s.encoder.heads,
            s.decoder.dim,
            s.decoder.depth,
            s.decoder.heads,
            self.batch
        )
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::bench::json::parse_object;

    /// What `mae info --presets --json` printed for the three presets.
    pub const PRESETS: &str = r#"{"lightly-vit-b32-224":{"decoder":{"depth":1,"dim":512,"mlp_dim":2048,"num_heads":16},"decoder_pos_embed":"sincos","encoder":{"depth":12,"dim":768,"mlp_dim":3072,"num_heads":12},"image_size":[224,224],"in_channels":3,"layer_norm_eps":1e-6,"mask_ratio":0.75,"norm_pix_loss":false,"patch_size":32,"pos_embed":"sincos","qkv_bias":true},"mae-vit-base-patch16":{"decoder":{"depth":8,"dim":512,"mlp_dim":2048,"num_heads":16},"decoder_pos_embed":"sincos","encoder":{"depth":12,"dim":768,"mlp_dim":3072,"num_heads":12},"image_size":[224,224],"in_channels":3,"layer_norm_eps":1e-6,"mask_ratio":0.75,"norm_pix_loss":false,"patch_size":16,"pos_embed":"sincos","qkv_bias":true},"mae-vit-tiny-patch4-32":{"decoder":{"depth":4,"dim":128,"mlp_dim":512,"num_heads":4},"decoder_pos_embed":"sincos","encoder":{"depth":12,"dim":192,"mlp_dim":768,"num_heads":3},"image_size":[32,32],"in_channels":3,"layer_norm_eps":1e-6,"mask_ratio":0.75,"norm_pix_loss":false,"patch_size":4,"pos_embed":"sincos","qkv_bias":true}}"#;

    pub fn all_configs() -> Vec<Config> {
        resolve(&CHOICES, &parse_object(PRESETS).unwrap()).unwrap()
    }

    #[test]
    fn configs_parse() {
        let all = parse_configs("all").unwrap();
        assert_eq!(all.iter().map(|c| c.name).collect::<Vec<_>>(), ["A", "B", "C"]);
        let ac = parse_configs("a,C,A").unwrap();
        assert_eq!(ac.iter().map(|c| c.name).collect::<Vec<_>>(), ["A", "C"]);
        assert_eq!(parse_configs("lightly-vit-b32-224").unwrap()[0].name, "B");
        assert!(parse_configs("D").is_err());
    }

    #[test]
    fn shapes_are_read_from_the_presets_json() {
        let c = all_configs();
        let a = &c[0].shape;
        assert_eq!((a.image, a.patch, a.in_channels, a.mask_ratio), ((32, 32), 4, 3, 0.75));
        assert_eq!(a.encoder, Stack { dim: 192, depth: 12, heads: 3, mlp: 768 });
        assert_eq!(c[1].shape.decoder, Stack { dim: 512, depth: 1, heads: 16, mlp: 2048 });
        assert_eq!(
            c[2].describe(),
            "`mae-vit-base-patch16` (224 px, patch 16, 768/12/12 + 512/8/16), batch 8"
        );
        assert_eq!(
            c[0].shape.torch_args().join(" "),
            "--image-size 32 --patch-size 4 --in-channels 3 --encoder 192,12,3,768 --decoder 128,4,4,512 \
             --mask-ratio 0.75"
        );
        // A preset the binary does not have, or a malformed one, is an error naming it.
        let presets = parse_object(r#"{"x": {}}"#).unwrap();
        assert!(resolve(&CHOICES[..1], &presets).unwrap_err().contains("no preset `mae-vit-tiny-patch4-32`"));
        let bad = PRESETS.replace(r#""patch_size":4,"#, r#""patch_size":"4","#);
        let err = resolve(&CHOICES[..1], &parse_object(&bad).unwrap()).unwrap_err();
        assert!(err.contains("patch_size"), "{err}");
        // A non-square image is read as height x width.
        let wide = PRESETS.replace("[32,32]", "[32,64]");
        let c = resolve(&CHOICES[..1], &parse_object(&wide).unwrap()).unwrap();
        assert_eq!(
            (c[0].shape.image, c[0].patches(), c[0].shape.image_text('x')),
            ((32, 64), 128, "32x64".into())
        );
    }

    #[test]
    fn flops_by_hand() {
        // Config A: L = 64, K = 16; encoder on 17 tokens, decoder on 65.
        let c = all_configs();
        let a = &c[0];
        assert_eq!((a.patches(), a.kept()), (64, 16));
        let block = |n: f64, d: f64| 24.0 * n * d * d + 4.0 * n * n * d;
        let fwd = 2.0 * 64.0 * 48.0 * 192.0
            + 12.0 * block(17.0, 192.0)
            + 2.0 * 17.0 * 192.0 * 128.0
            + 4.0 * block(65.0, 128.0)
            + 2.0 * 64.0 * 128.0 * 48.0;
        assert!((a.step_flops() - 3.0 * 64.0 * fwd).abs() < 1.0);
        // B: 49 patches, 12 visible (int(12.25)); C: 196 patches, 49 visible.
        assert_eq!((c[1].patches(), c[1].kept()), (49, 12));
        assert_eq!((c[2].patches(), c[2].kept()), (196, 49));
    }
}
