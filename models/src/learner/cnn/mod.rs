//! The imaging hospitals' models for one-channel images with a binary
//! output, trained on the CPU by hand-written passes over `gemm`:
//!
//! - `small` (`small_net.rs`): conv3x3(1->c1) relu maxpool2 ->
//!   conv3x3(c1->c2) relu maxpool2 -> conv3x3(c2->c3) relu -> global max
//!   pool -> linear(c3->1). Global max pooling answers "is there an opacity
//!   anywhere"; average pooling drowned small opacities in the rest of the
//!   image (measured: 0.59 vs 0.88 train accuracy after 12 epochs on 240
//!   synthetic images).
//! - `resnet18` (`resnet.rs`): torchvision's ResNet-18 with one input
//!   channel, one logit and GroupNorm, under torchvision's parameter names.
//!
//! Parameters map one-to-one onto `Params` (names and shapes), so FedAvg,
//! checkpoints and the wire format treat them like any other model.

mod conv;
mod gemm;
mod group_norm;
mod lanes;
mod optim;
mod pool;
mod resnet;
mod small_net;

use std::borrow::Cow;
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::logistic::LocalDp;
use super::{DpLearner, Evaluator, GlobalModel, Learner, LocalUpdate, Release, TrainPlan};
use crate::data::images::ImageSet;
use crate::data::MomentSums;
use crate::error::{ModelError, Result};
use crate::metrics::{binary_metrics, Metrics};
use crate::params::{Layout, Params, TensorSpec};
use crate::privacy::fingerprint::DataFingerprint;
use crate::privacy::mechanisms::{dp_sgd, DpSgdModel, NoiseSource, Noised};
use optim::LocalOptimizer;
use resnet::ResNet18;
use small_net::SmallNet;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Optimizer {
    /// SGD with (heavy-ball) momentum.
    Sgd { momentum: f64 },
    /// AdamW (decoupled weight decay from the plan's `l2`).
    Adamw { beta1: f64, beta2: f64 },
}

/// The network's architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Three 3x3 convolutions of `channels` (~6k parameters at 8-16-32).
    #[default]
    Small,
    /// ResNet-18 with GroupNorm (11.2M parameters).
    Resnet18,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Small => "small",
            Arch::Resnet18 => "resnet18",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CnnConfig {
    #[serde(default)]
    pub arch: Arch,
    /// Input side in pixels.
    pub size: usize,
    /// The `small` network's widths (ResNet-18's are fixed).
    pub channels: [usize; 3],
    pub optimizer: Optimizer,
}

impl Default for CnnConfig {
    fn default() -> Self {
        Self {
            arch: Arch::Small,
            size: 64,
            channels: [8, 16, 32],
            optimizer: Optimizer::Adamw {
                beta1: 0.9,
                beta2: 0.999,
            },
        }
    }
}

impl CnnConfig {
    pub fn layout(&self) -> Arc<Layout> {
        let specs = match self.arch {
            Arch::Small => {
                let [c1, c2, c3] = self.channels;
                vec![
                    TensorSpec::new("conv1.weight", &[c1, 1, 3, 3]),
                    TensorSpec::new("conv1.bias", &[c1]),
                    TensorSpec::new("conv2.weight", &[c2, c1, 3, 3]),
                    TensorSpec::new("conv2.bias", &[c2]),
                    TensorSpec::new("conv3.weight", &[c3, c2, 3, 3]),
                    TensorSpec::new("conv3.bias", &[c3]),
                    TensorSpec::new("fc.weight", &[1, c3]),
                    TensorSpec::new("fc.bias", &[1]),
                ]
            }
            Arch::Resnet18 => resnet::layout_specs(),
        };
        Arc::new(Layout::new(specs).expect("distinct names"))
    }

    /// Floating-point operations to train on one image: the forward pass
    /// (2 x multiply-adds of the convolutions and the head) times 3, the
    /// usual estimate for forward + backward (input and weight gradients).
    pub fn training_flops_per_image(&self) -> f64 {
        if self.arch == Arch::Resnet18 {
            return ResNet18::new(self.size).training_flops_per_image();
        }
        let [c1, c2, c3] = self.channels.map(|c| c as f64);
        let s = self.size as f64;
        let conv = |side: f64, cin: f64, cout: f64| 2.0 * side * side * cin * cout * 9.0;
        let forward =
            conv(s, 1.0, c1) + conv((s / 2.0).floor(), c1, c2) + conv((s / 4.0).floor(), c2, c3) + 2.0 * c3;
        3.0 * forward
    }

    /// The initial model from `seed` (every party that knows the seed builds
    /// the same one): `small` He-uniform weights and zero biases; ResNet-18
    /// as torchvision initialises it.
    pub fn init_params(&self, seed: u64) -> Params {
        let layout = self.layout();
        if self.arch == Arch::Resnet18 {
            let values = resnet::init_values(layout.specs(), seed);
            return Params::new(layout, values).expect("sized by the layout");
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut values = Vec::with_capacity(layout.len());
        for spec in layout.specs() {
            if spec.name.ends_with(".bias") {
                values.extend(std::iter::repeat_n(0.0f32, spec.numel()));
            } else {
                let fan_in: usize = spec.shape[1..].iter().product();
                let bound = (6.0 / fan_in as f64).sqrt();
                values.extend((0..spec.numel()).map(|_| rng.random_range(-bound..bound) as f32));
            }
        }
        Params::new(layout, values).expect("sized by the layout")
    }

    /// An initial model read from a safetensors file (`[tasks.T.model]
    /// init`, e.g. converted ImageNet weights): the same tensor names and
    /// shapes as this network's, in f32. Errors name the tensor and say how
    /// a torchvision checkpoint maps (see the README's "Pretrained weights").
    pub fn load_init(&self, bytes: &[u8]) -> Result<Params> {
        let file = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| ModelError::Safetensors(format!("not a safetensors file: {e}")))?;
        let layout = self.layout();
        let mut names: Vec<String> = file.names().into_iter().map(str::to_owned).collect();
        names.sort();
        let stats: Vec<&String> = names
            .iter()
            .filter(|n| {
                ["running_mean", "running_var", "num_batches_tracked"]
                    .iter()
                    .any(|s| n.ends_with(s))
            })
            .collect();
        if let Some(first) = stats.first() {
            return Err(ModelError::Safetensors(format!(
                "'{first}' and {} more are BatchNorm running statistics; this {} uses GroupNorm, \
                 which has none: drop them (keep the norms' .weight and .bias)",
                stats.len() - 1,
                self.arch.name()
            )));
        }
        if let Some(extra) = names.iter().find(|n| layout.index_of(n).is_none()) {
            return Err(ModelError::Safetensors(format!(
                "tensor '{extra}' is not a parameter of {} (its names are torchvision's)",
                self.arch.name()
            )));
        }
        for spec in layout.specs() {
            let Ok(view) = file.tensor(&spec.name) else {
                return Err(ModelError::Safetensors(format!(
                    "tensor '{}' is missing (a file must hold every parameter)",
                    spec.name
                )));
            };
            if view.shape() != spec.shape.as_slice() {
                let hint = match spec.name.as_str() {
                    "conv1.weight" if view.shape().get(1) == Some(&3) => {
                        ": the model reads one-channel images; sum the RGB filters over \
                         their input channels (weight.sum(dim=1, keepdim=True))"
                    }
                    "fc.weight" | "fc.bias" => {
                        ": the model has one output logit; replace ImageNet's 1000-class head"
                    }
                    _ => "",
                };
                return Err(ModelError::Safetensors(format!(
                    "tensor '{}' has shape {:?}, {} expects {:?}{hint}",
                    spec.name,
                    view.shape(),
                    self.arch.name(),
                    spec.shape
                )));
            }
        }
        let params = Params::from_safetensors(bytes, Some(&layout))?;
        if params.as_slice().iter().any(|v| !v.is_finite()) {
            return Err(ModelError::Safetensors(
                "the initial model holds non-finite values".into(),
            ));
        }
        Ok(params)
    }
}

/// Image `i`'s label as the loss's target: 1 for the positive class.
fn target(images: &ImageSet, i: usize) -> f64 {
    if images.labels[i] {
        1.0
    } else {
        0.0
    }
}

/// The network of a config, with its forward and backward passes.
enum Net {
    Small(Box<SmallNet>),
    ResNet(Box<ResNet18>),
}

impl Net {
    fn new(config: &CnnConfig) -> Self {
        match config.arch {
            Arch::Small => Net::Small(Box::new(SmallNet::new(config))),
            Arch::Resnet18 => Net::ResNet(Box::new(ResNet18::new(config.size))),
        }
    }

    fn dim(&self) -> usize {
        match self {
            Net::Small(n) => n.dim(),
            Net::ResNet(n) => n.dim(),
        }
    }

    fn mean_loss_and_gradient(
        &self,
        params: &[f32],
        images: &ImageSet,
        batch: &[usize],
        grad: &mut [f32],
    ) -> f64 {
        match self {
            Net::Small(n) => n.mean_loss_and_gradient(params, images, batch, grad),
            Net::ResNet(n) => n.mean_loss_and_gradient(params, images, batch, grad),
        }
    }

    fn example_gradients(&self, params: &[f32], images: &ImageSet, batch: &[usize], out: &mut [f32]) {
        match self {
            Net::Small(n) => n.example_gradients(params, images, batch, out),
            Net::ResNet(n) => n.example_gradients(params, images, batch, out),
        }
    }

    fn logits(&self, params: &[f32], images: &ImageSet, batch: &[usize]) -> Vec<f32> {
        match self {
            Net::Small(n) => n.logits(params, images, batch),
            Net::ResNet(n) => n.logits(params, images, batch),
        }
    }
}

/// The model's values in this CNN's layout, copied only when they are in
/// another order (a file read without a layout has its tensors sorted by
/// name); an error if a tensor is missing, extra or shaped differently.
fn model_values<'a>(config: &CnnConfig, params: &'a Params) -> Result<Cow<'a, [f32]>> {
    let layout = config.layout();
    if **params.layout() == *layout {
        Ok(Cow::Borrowed(params.as_slice()))
    } else {
        Ok(Cow::Owned(params.in_layout(&layout)?.into_values()))
    }
}

/// The model's probability of the positive class (e.g. pneumonia) for
/// every image, computed as the held-out evaluation computes it.
pub fn predict_images(config: &CnnConfig, global: &GlobalModel, images: &ImageSet) -> Result<Vec<f64>> {
    check_input(config, images)?;
    let values = model_values(config, &global.params)?;
    Ok(predict(&Net::new(config), &values, images))
}

fn predict(net: &Net, params: &[f32], images: &ImageSet) -> Vec<f64> {
    let all: Vec<usize> = (0..images.len()).collect();
    net.logits(params, images, &all)
        .into_iter()
        .map(|z| super::logistic::sigmoid(f64::from(z)))
        .collect()
}

fn check_input(cfg: &CnnConfig, images: &ImageSet) -> Result<()> {
    if images.size != cfg.size {
        return Err(ModelError::Data(format!(
            "images are {}x{}, the model expects {}x{}",
            images.size, images.size, cfg.size, cfg.size
        )));
    }
    if cfg.arch == Arch::Small && (cfg.size < 4 || cfg.channels.contains(&0)) {
        return Err(ModelError::Invalid(
            "the small CNN needs inputs of at least 4x4 and non-zero channels".into(),
        ));
    }
    if cfg.arch == Arch::Resnet18 && cfg.size < resnet::MIN_SIZE {
        return Err(ModelError::Invalid(format!(
            "resnet18 needs inputs of at least {0}x{0} (its last stage would have no pixels)",
            resnet::MIN_SIZE
        )));
    }
    Ok(())
}

/// Local training: `plan.local_epochs` passes of mini-batches with the
/// configured optimiser, in place on `params`. Returns the mean loss of the
/// last epoch.
fn train_net(
    net: &Net,
    params: &mut [f32],
    images: &ImageSet,
    cfg: &CnnConfig,
    plan: &TrainPlan,
    rng: &mut ChaCha8Rng,
) -> f64 {
    let mut optimizer = LocalOptimizer::new(cfg.optimizer, params, plan);
    let mut grad = vec![0.0; net.dim()];
    let mut order: Vec<usize> = (0..images.len()).collect();
    let mut last = 0.0;
    for _ in 0..plan.local_epochs {
        order.shuffle(rng);
        let (mut total, mut batches) = (0.0, 0usize);
        for chunk in order.chunks(plan.batch_size.max(1)) {
            total += net.mean_loss_and_gradient(params, images, chunk, &mut grad);
            batches += 1;
            optimizer.step(params, &grad);
        }
        last = total / batches.max(1) as f64;
    }
    last
}

/// DP-SGD (Abadi et al. 2016) for the CNN, as `mechanisms::dp_sgd` drives
/// it: the sampled images' per-example gradients in one batched pass, and
/// the configured optimiser's step on the noisy mean gradient
/// (post-processing).
struct CnnDpSgd<'a> {
    net: Net,
    params: Vec<f32>,
    images: &'a ImageSet,
    optimizer: LocalOptimizer,
    rows: Vec<f32>,
    step_gradient: Vec<f32>,
}

impl DpSgdModel for CnnDpSgd<'_> {
    fn dim(&self) -> usize {
        self.net.dim()
    }

    fn example_gradient(&mut self, i: usize, out: &mut [f64]) -> Result<()> {
        self.example_gradients(&[i], out)
    }

    fn example_gradients(&mut self, batch: &[usize], out: &mut [f64]) -> Result<()> {
        self.rows.resize(batch.len() * self.net.dim(), 0.0);
        self.net
            .example_gradients(&self.params, self.images, batch, &mut self.rows);
        out.iter_mut()
            .zip(&self.rows)
            .for_each(|(o, &r)| *o = f64::from(r));
        Ok(())
    }

    fn step(&mut self, mean: &[f64]) -> Result<()> {
        self.step_gradient.clear();
        self.step_gradient.extend(mean.iter().map(|&v| v as f32));
        self.optimizer.step(&mut self.params, &self.step_gradient);
        Ok(())
    }

    /// ResNet-18 clips without per-example rows (11M values each).
    fn ghost_pass(&self) -> Option<usize> {
        match &self.net {
            Net::ResNet(net) => Some(net.pass_size()),
            Net::Small(_) => None,
        }
    }

    fn example_sq_norms(&mut self, batch: &[usize], sq: &mut [f64]) -> Result<()> {
        let Net::ResNet(net) = &self.net else {
            return Err(ModelError::Invalid("the small CNN clips per-example rows".into()));
        };
        net.example_norms(&self.params, self.images, batch, sq);
        Ok(())
    }

    fn weighted_gradient_sum(&mut self, weights: &[f64], out: &mut [f64]) -> Result<()> {
        let Net::ResNet(net) = &self.net else {
            return Err(ModelError::Invalid("the small CNN clips per-example rows".into()));
        };
        self.rows.clear();
        self.rows.resize(net.dim(), 0.0);
        net.add_weighted_gradients(&self.params, weights, &mut self.rows);
        out.iter_mut()
            .zip(&self.rows)
            .for_each(|(o, &g)| *o = f64::from(g));
        Ok(())
    }
}

/// A hospital's CNN learner over its own images (DP off).
pub struct CnnLearner {
    name: String,
    images: ImageSet,
    config: CnnConfig,
    net: Net,
}

impl CnnLearner {
    pub fn new(name: impl Into<String>, images: ImageSet, config: CnnConfig) -> Result<Self> {
        check_input(&config, &images)?;
        if images.is_empty() {
            return Err(ModelError::Data("a hospital needs at least one image".into()));
        }
        Ok(Self {
            name: name.into(),
            images,
            net: Net::new(&config),
            config,
        })
    }

    /// The same learner training with DP-SGD (a record-level guarantee) or
    /// update-level DP (a hospital-level guarantee).
    pub fn with_privacy(self, dp: LocalDp, noise: NoiseSource) -> Result<DpCnnLearner> {
        dp.validate()?;
        Ok(DpCnnLearner {
            open: self,
            dp,
            noise,
        })
    }

    /// The global model's values, to train on (a copy).
    fn check_global(&self, global: &GlobalModel, plan: &TrainPlan) -> Result<Vec<f32>> {
        plan.validate()?;
        if **global.params.layout() != *self.config.layout() {
            return Err(ModelError::Params("the global model is not this CNN".into()));
        }
        Ok(global.params.as_slice().to_vec())
    }

    /// Mini-batch training; returns the exact delta and the last epoch's loss.
    fn train_exact(&self, global: &GlobalModel, plan: &TrainPlan) -> Result<(Params, f64)> {
        let mut params = self.check_global(global, plan)?;
        let mut rng = ChaCha8Rng::seed_from_u64(plan.stream_seed(&self.name));
        let loss = train_net(&self.net, &mut params, &self.images, &self.config, plan, &mut rng);
        let delta = Params::new(global.params.layout().clone(), params)?.sub(&global.params)?;
        Ok((delta, loss))
    }
}

impl Learner for CnnLearner {
    fn layout(&self) -> Arc<Layout> {
        self.config.layout()
    }

    fn num_examples(&self) -> usize {
        self.images.len()
    }

    /// Pixels are already on a fixed [0, 1] scale: nothing to release.
    fn feature_stats(&mut self) -> Result<Option<MomentSums>> {
        Ok(None)
    }

    fn train(&mut self, global: &GlobalModel, plan: &TrainPlan) -> Result<LocalUpdate> {
        let (delta, loss) = self.train_exact(global, plan)?;
        Ok(LocalUpdate {
            delta,
            num_examples: self.images.len(),
            train_loss: Some(loss),
            release: Release::NonPrivate,
            privacy: None,
        })
    }

    fn evaluate(&mut self, global: &GlobalModel) -> Result<Metrics> {
        let values = model_values(&self.config, &global.params)?;
        Ok(binary_metrics(
            &predict(&self.net, &values, &self.images),
            &self.images.labels,
        ))
    }
}

/// A hospital's CNN learner training under DP.
pub struct DpCnnLearner {
    open: CnnLearner,
    dp: LocalDp,
    noise: NoiseSource,
}

impl DpLearner for DpCnnLearner {
    fn layout(&self) -> Arc<Layout> {
        self.open.config.layout()
    }

    fn local_records(&self) -> usize {
        self.open.images.len()
    }

    fn fingerprint(&self) -> DataFingerprint {
        DataFingerprint::of_images(&self.open.images)
    }

    fn local_dp(&self) -> LocalDp {
        self.dp
    }

    fn set_noise_multiplier(&mut self, sigma: f64) {
        self.dp = self.dp.with_noise_multiplier(sigma);
    }

    fn train_private(
        &mut self,
        global: &GlobalModel,
        plan: &TrainPlan,
        public_count: Option<u64>,
    ) -> Result<Noised<Params>> {
        let Some(settings) = self.dp.dp_sgd_settings() else {
            let (delta, _) = self.open.train_exact(global, plan)?;
            return self.dp.release_update(&delta, &mut self.noise);
        };
        let count = public_count
            .ok_or_else(|| ModelError::Invalid("DP-SGD needs the released record count".into()))?;
        let params = self.open.check_global(global, plan)?;
        let model = CnnDpSgd {
            optimizer: LocalOptimizer::new(self.open.config.optimizer, &params, plan),
            params,
            net: Net::new(&self.open.config),
            images: &self.open.images,
            rows: Vec::new(),
            step_gradient: Vec::new(),
        };
        let layout = global.params.layout().clone();
        let n = self.open.images.len();
        dp_sgd(model, n, count as f64, &settings, &mut self.noise, |m| {
            Params::new(layout, m.params)?.sub(&global.params)
        })
    }
}

/// The coordinator's held-out evaluation of the CNN.
pub struct CnnEvaluator {
    images: ImageSet,
    config: CnnConfig,
    net: Net,
    seed: u64,
    /// The initial global model when it is not the seeded one (`init`).
    initial: Option<Arc<Params>>,
}

impl CnnEvaluator {
    /// `seed` fixes the initial global model.
    pub fn new(held_out: ImageSet, config: CnnConfig, seed: u64) -> Result<Self> {
        check_input(&config, &held_out)?;
        if held_out.is_empty() {
            return Err(ModelError::Data("the held-out image set is empty".into()));
        }
        Ok(Self {
            images: held_out,
            net: Net::new(&config),
            config,
            seed,
            initial: None,
        })
    }

    /// Start the federation from `initial` (e.g. from `load_init`) instead
    /// of the seeded model; it must have this network's layout.
    pub fn with_initial(mut self, initial: Arc<Params>) -> Result<Self> {
        if **initial.layout() != *self.config.layout() {
            return Err(ModelError::Params(format!(
                "the initial model is not a {} for this config",
                self.config.arch.name()
            )));
        }
        self.initial = Some(initial);
        Ok(self)
    }
}

impl Evaluator for CnnEvaluator {
    fn init_params(&self) -> Params {
        match &self.initial {
            Some(initial) => (**initial).clone(),
            None => self.config.init_params(self.seed),
        }
    }

    fn evaluate(&mut self, global: &GlobalModel) -> Result<Metrics> {
        let values = model_values(&self.config, &global.params)?;
        Ok(binary_metrics(
            &predict(&self.net, &values, &self.images),
            &self.images.labels,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::images::synth::{generate, SynthSpec};

    fn config(size: usize) -> CnnConfig {
        CnnConfig {
            size,
            ..CnnConfig::default()
        }
    }

    fn plan(epochs: u32) -> TrainPlan {
        TrainPlan {
            round: 1,
            attempt: 0,
            local_epochs: epochs,
            batch_size: 32,
            learning_rate: 0.003,
            l2: 1e-4,
            seed: 5,
            proximal_mu: 0.0,
            privacy: None,
        }
    }

    fn images(count: usize, size: usize, seed: u64) -> ImageSet {
        generate(&SynthSpec {
            count,
            size,
            seed,
            pneumonia_share: 0.5,
        })
        .unwrap()
    }

    #[test]
    fn params_survive_safetensors_and_are_seeded() {
        let p = config(32).init_params(9);
        let bytes = p.to_safetensors(None).unwrap();
        assert_eq!(Params::from_safetensors(&bytes, Some(p.layout())).unwrap(), p);
        assert_eq!(p.tensor("conv2.weight").unwrap().len(), 16 * 8 * 9);
        assert_ne!(config(32).init_params(10), p);
    }

    #[test]
    fn a_larger_mu_keeps_the_local_cnn_closer_to_the_global_one() {
        let cfg = config(16);
        let global = GlobalModel {
            params: Arc::new(cfg.init_params(3)),
            standardizer: None,
        };
        let learner = CnnLearner::new("h", images(64, 16, 2), cfg).unwrap();
        let norms: Vec<f64> = [0.0, 10.0, 100.0]
            .iter()
            .map(|&mu| {
                let plan = TrainPlan {
                    proximal_mu: mu,
                    ..plan(3)
                };
                learner.train_exact(&global, &plan).unwrap().0.l2_norm()
            })
            .collect();
        assert!(norms.windows(2).all(|w| w[1] < w[0]), "{norms:?}");
    }

    #[test]
    fn training_is_seeded_and_learns_synthetic_xrays() {
        let cfg = config(32);
        let global = GlobalModel {
            params: Arc::new(cfg.init_params(1)),
            standardizer: None,
        };
        let mut a = CnnLearner::new("h1", images(240, 32, 1), cfg).unwrap();
        let mut b = CnnLearner::new("h1", images(240, 32, 1), cfg).unwrap();
        let ua = a.train(&global, &plan(8)).unwrap();
        let ub = b.train(&global, &plan(8)).unwrap();
        assert_eq!(ua.delta, ub.delta, "same seed, same update");
        let mut trained = (*global.params).clone();
        trained.add_assign(&ua.delta).unwrap();
        let mut eval = CnnEvaluator::new(images(200, 32, 99), cfg, 1).unwrap();
        let m = eval
            .evaluate(&GlobalModel {
                params: Arc::new(trained),
                standardizer: None,
            })
            .unwrap();
        // One hospital, 8 epochs: well above chance (0.5); the federated
        // test in actors/tests/imaging.rs holds the 0.90 bar.
        assert!(m.accuracy > 0.75, "held-out accuracy {}", m.accuracy);
    }

    #[test]
    fn update_level_dp_clips_noises_and_passes_the_budget_guard() {
        use crate::learner::private::{Budget, CountRelease, PrivateLearner};
        use crate::privacy::ledger::{Ledger, LedgerKey};
        let cfg = config(16);
        let dp = LocalDp::Update {
            max_update_norm: 0.5,
            noise_multiplier: 1e-9,
        };
        let global = GlobalModel {
            params: Arc::new(cfg.init_params(1)),
            standardizer: None,
        };
        // Negligible noise: the clipped delta has exactly the clipping norm.
        let mut clipped = CnnLearner::new("h1", images(120, 16, 2), cfg)
            .unwrap()
            .with_privacy(dp, NoiseSource::seeded(1))
            .unwrap();
        let u = clipped.train_private(&global, &plan(2), None).unwrap();
        assert!(
            (u.value().l2_norm() - 0.5).abs() < 1e-3,
            "norm {}",
            u.value().l2_norm()
        );
        assert_eq!(u.mechanism(), "update");
        // A real noise level passes the budget guard, which charges it.
        let noisy = CnnLearner::new("h1", images(120, 16, 2), cfg)
            .unwrap()
            .with_privacy(
                LocalDp::Update {
                    max_update_norm: 0.5,
                    noise_multiplier: 5.0,
                },
                NoiseSource::seeded(1),
            )
            .unwrap();
        let key = LedgerKey {
            dataset: "x".into(),
            fingerprint: noisy.fingerprint(),
        };
        let mut guarded = PrivateLearner::new(
            Box::new(noisy),
            Ledger::in_memory(&key),
            Budget {
                epsilon: 10.0,
                delta: 1e-5,
            },
            "h1",
            "t",
            CountRelease {
                noise_multiplier: 10.0,
            },
            &mut NoiseSource::seeded(2),
        )
        .unwrap();
        let u = guarded.train(&global, &plan(1)).unwrap();
        assert!(u.privacy.epsilon > 0.0 && u.privacy.epsilon <= 10.0);
        assert_eq!(u.privacy.mechanism, "update");
    }

    fn dp_sgd(q: f64, clip: f64, sigma: f64) -> LocalDp {
        LocalDp::DpSgd {
            sampling_rate: q,
            max_grad_norm: clip,
            noise_multiplier: sigma,
            local_steps: 1,
        }
    }

    fn plain_sgd(size: usize) -> CnnConfig {
        CnnConfig {
            optimizer: Optimizer::Sgd { momentum: 0.0 },
            ..config(size)
        }
    }

    fn sgd_plan(batch_size: usize) -> TrainPlan {
        TrainPlan {
            local_epochs: 1,
            batch_size,
            learning_rate: 0.1,
            l2: 0.0,
            ..plan(1)
        }
    }

    /// With every image sampled (q = 1), a clipping norm no gradient reaches
    /// and negligible noise, one DP-SGD step is one full-batch gradient step:
    /// the per-example gradients add up to the batch gradient.
    #[test]
    fn dp_sgd_per_example_gradients_sum_to_the_batch_gradient() {
        let cfg = plain_sgd(16);
        let global = GlobalModel {
            params: Arc::new(cfg.init_params(3)),
            standardizer: None,
        };
        let set = images(24, 16, 5);
        let batch = CnnLearner::new("h", set.clone(), cfg)
            .unwrap()
            .train(&global, &sgd_plan(24))
            .unwrap();
        // Normalised by the count itself: the step is the batch mean.
        let private = CnnLearner::new("h", set, cfg)
            .unwrap()
            .with_privacy(dp_sgd(1.0, 1e6, 1e-12), NoiseSource::seeded(1))
            .unwrap()
            .train_private(&global, &sgd_plan(24), Some(24))
            .unwrap();
        assert_eq!(private.mechanism(), "dp-sgd");
        let diff = private.value().sub(&batch.delta).unwrap().l2_norm();
        assert!(
            diff < 1e-4 * batch.delta.l2_norm(),
            "{diff} vs {}",
            batch.delta.l2_norm()
        );
    }

    /// With a clipping norm so small that gradients vanish, a step is
    /// -lr * N(0, (sigma C)^2) / (q n~) per coordinate (n~ the released count): the noise has exactly
    /// the calibrated scale (fixed seed; 5921 coordinates).
    #[test]
    fn dp_sgd_noise_has_the_calibrated_scale() {
        let cfg = plain_sgd(16);
        let global = GlobalModel {
            params: Arc::new(cfg.init_params(3)),
            standardizer: None,
        };
        let (clip, sigma, n) = (1e-3, 2.0, 20usize);
        let u = CnnLearner::new("h", images(n, 16, 5), cfg)
            .unwrap()
            .with_privacy(dp_sgd(1.0, clip, sigma), NoiseSource::seeded(7))
            .unwrap()
            .train_private(&global, &sgd_plan(n), Some(n as u64))
            .unwrap();
        let values = u.value().as_slice();
        let mean_sq = values.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / values.len() as f64;
        let expected = 0.1 * sigma * clip / n as f64;
        // The clipped gradients add at most lr * C / n * sqrt(n) in norm: negligible here.
        assert!(
            (mean_sq.sqrt() / expected - 1.0).abs() < 0.05,
            "std {} vs {expected}",
            mean_sq.sqrt()
        );
    }

    #[test]
    fn wrong_image_size_is_refused() {
        let e = CnnLearner::new("h", images(10, 16, 1), config(32)).err().unwrap();
        assert!(e.to_string().contains("16x16"), "{e}");
    }

    /// What the CNN computed on fixed inputs with candle 0.11's autograd
    /// before the training step was rewritten (issue 22), frozen as a
    /// fixture: the mean loss and gradients of a batch, two per-example
    /// gradients (DP-SGD's), and the parameters after one epoch of AdamW.
    #[derive(Debug, Serialize, Deserialize)]
    struct Reference {
        loss: f32,
        gradient: Vec<f32>,
        example_gradients: Vec<Vec<f32>>,
        epoch_loss: f64,
        after_epoch: Vec<f32>,
    }

    fn reference_now() -> Reference {
        let cfg = config(32);
        let params = cfg.init_params(11);
        let set = images(16, 32, 3);
        let net = SmallNet::new(&cfg);
        let dim = net.dim();
        let mut gradient = vec![0.0; dim];
        let loss =
            net.mean_loss_and_gradient(params.as_slice(), &set, &[0, 1, 2, 3, 4, 5, 6, 7], &mut gradient);
        let mut rows = vec![0.0; 2 * dim];
        net.example_gradients(params.as_slice(), &set, &[0, 5], &mut rows);
        let plan = TrainPlan {
            batch_size: 8,
            ..plan(1)
        };
        // `train_net`'s epoch, stepping on the gradients candle reported.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut after_epoch = params.as_slice().to_vec();
        let mut optimizer = LocalOptimizer::new(cfg.optimizer, &after_epoch, &plan);
        let mut order: Vec<usize> = (0..set.len()).collect();
        order.shuffle(&mut rng);
        let (mut total, mut step) = (0.0, vec![0.0; dim]);
        for chunk in order.chunks(plan.batch_size) {
            total += net.mean_loss_and_gradient(&after_epoch, &set, chunk, &mut step);
            optimizer.step(&mut after_epoch, &as_candle_reported(&cfg, step.clone()));
        }
        let epoch_loss = total / order.chunks(plan.batch_size).len() as f64;
        Reference {
            loss: loss as f32,
            gradient,
            example_gradients: rows.chunks(dim).map(<[f32]>::to_vec).collect(),
            epoch_loss,
            after_epoch,
        }
    }

    /// candle 0.11's max-pool backward multiplies the gradient by (number
    /// of maxima in the window) / 4 — by 1/4 for a unique maximum — where
    /// the derivative is 1 (a 2x2 input [[1, 2], [3, 4]] gets the gradient
    /// [[0, 0], [0, 0.25]] of its pooled sum). Behind one pooling (conv2)
    /// its gradients were a quarter of the true ones, behind two (conv1) a
    /// sixteenth: what candle reported, from the true gradient.
    fn as_candle_reported(cfg: &CnnConfig, mut gradient: Vec<f32>) -> Vec<f32> {
        let mut at = 0;
        for spec in cfg.layout().specs() {
            let scale = match spec.name.split('.').next() {
                Some("conv1") => 1.0 / 16.0,
                Some("conv2") => 0.25,
                _ => 1.0,
            };
            gradient[at..at + spec.numel()]
                .iter_mut()
                .for_each(|g| *g *= scale);
            at += spec.numel();
        }
        gradient
    }

    /// Equal to 1e-5 relative, each value against the larger of itself
    /// and a tenth of the largest: a sum of f32 terms in another order
    /// differs by ~1e-7 of the terms' scale, which is a large relative
    /// error only for the values that cancel to near zero (measured: at
    /// most 2.5e-7 of the largest gradient value).
    fn assert_close(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let tolerance = 1e-5 * w.abs().max(0.1 * scale);
            assert!((g - w).abs() <= tolerance, "{what}[{i}]: {g} vs {w}");
        }
    }

    /// The training step matches candle's numbers on the same inputs: the
    /// loss, the gradients once candle's max-pool scaling is applied, and
    /// the parameters after an AdamW epoch stepped on those scaled
    /// gradients (the scaling is not quite invisible to AdamW: its epsilon
    /// of 1e-8 weighs against conv1's sixteenth-sized gradients).
    #[test]
    fn cnn_matches_its_reference_fixture() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/learner/cnn/fixtures/cnn_reference.json");
        let text = std::fs::read_to_string(&path).expect("the CNN reference fixture");
        let want: Reference = serde_json::from_str(&text).unwrap();
        let now = reference_now();
        let cfg = config(32);
        assert_close("loss", &[now.loss], &[want.loss]);
        assert_close(
            "gradient",
            &as_candle_reported(&cfg, now.gradient),
            &want.gradient,
        );
        assert_eq!(now.example_gradients.len(), want.example_gradients.len());
        for (g, w) in now.example_gradients.into_iter().zip(&want.example_gradients) {
            assert_close("example gradient", &as_candle_reported(&cfg, g), w);
        }
        assert!((now.epoch_loss - want.epoch_loss).abs() <= 1e-5 * want.epoch_loss.abs());
        assert_close("parameters after an epoch", &now.after_epoch, &want.after_epoch);
    }

    /// DP-SGD clips every example's own gradient: the batched pass's rows
    /// are each image's gradient alone, as a batch of that one image gives
    /// it (7 images over the threads, so a thread holds several rows).
    #[test]
    fn batched_example_gradients_are_each_images_own() {
        let cfg = config(16);
        let set = images(7, 16, 8);
        let net = SmallNet::new(&cfg);
        let params = cfg.init_params(2).into_values();
        let batch = [6, 0, 3, 3, 1, 5, 2];
        let mut rows = vec![f32::NAN; batch.len() * net.dim()];
        net.example_gradients(&params, &set, &batch, &mut rows);
        let mut alone = vec![0.0; net.dim()];
        for (row, &i) in rows.chunks(net.dim()).zip(&batch) {
            net.mean_loss_and_gradient(&params, &set, &[i], &mut alone);
            assert_close("example gradient", row, &alone);
        }
    }

    /// batch loss, at the largest-gradient coordinate of every tensor.
    #[test]
    fn gradients_match_finite_differences() {
        let cfg = config(16);
        let set = images(6, 16, 4);
        let net = SmallNet::new(&cfg);
        let params = cfg.init_params(5).into_values();
        let batch: Vec<usize> = (0..6).collect();
        let mut grad = vec![0.0; net.dim()];
        net.mean_loss_and_gradient(&params, &set, &batch, &mut grad);
        let mut scratch = vec![0.0; net.dim()];
        let mut at = 0;
        for spec in cfg.layout().specs() {
            let range = at..at + spec.numel();
            at += spec.numel();
            let i = range
                .clone()
                .max_by(|&a, &b| grad[a].abs().total_cmp(&grad[b].abs()))
                .unwrap();
            let h = 1e-3;
            let loss_at = |v: f32, scratch: &mut Vec<f32>| {
                let mut p = params.clone();
                p[i] = v;
                net.mean_loss_and_gradient(&p, &set, &batch, scratch)
            };
            let fd = (loss_at(params[i] + h, &mut scratch) - loss_at(params[i] - h, &mut scratch))
                / (2.0 * f64::from(h));
            let g = f64::from(grad[i]);
            assert!(
                (fd - g).abs() <= 2e-2 * g.abs() + 1e-4,
                "{} [{}]: {g} vs {fd}",
                spec.name,
                i - range.start
            );
        }
    }

    fn resnet(size: usize) -> CnnConfig {
        CnnConfig {
            arch: Arch::Resnet18,
            optimizer: Optimizer::Sgd { momentum: 0.0 },
            ..config(size)
        }
    }

    /// DP-SGD through ghost clipping, end to end: with every image sampled,
    /// a bound no gradient reaches and negligible noise, one step is the
    /// full-batch gradient step; with a tiny bound, each image's clipped
    /// gradient has norm C(1 - 1e-3), so the step's norm is at most lr * C.
    #[test]
    fn resnet_dp_sgd_is_the_batch_step_unclipped_and_bounded_clipped() {
        let cfg = resnet(32);
        let global = GlobalModel {
            params: Arc::new(cfg.init_params(3)),
            standardizer: None,
        };
        let set = images(6, 32, 5);
        let batch = CnnLearner::new("h", set.clone(), cfg)
            .unwrap()
            .train(&global, &sgd_plan(6))
            .unwrap();
        let private = |clip: f64| {
            CnnLearner::new("h", set.clone(), cfg)
                .unwrap()
                .with_privacy(dp_sgd(1.0, clip, 1e-12), NoiseSource::seeded(1))
                .unwrap()
                .train_private(&global, &sgd_plan(6), Some(6))
                .unwrap()
        };
        let open = private(1e6);
        let diff = open.value().sub(&batch.delta).unwrap().l2_norm();
        assert!(
            diff < 1e-4 * batch.delta.l2_norm(),
            "{diff} vs {}",
            batch.delta.l2_norm()
        );
        let clip = 1e-3;
        let clipped = private(clip).value().l2_norm();
        // lr 0.1, C = 1e-3: six clipped gradients, divided by the count 6.
        assert!(clipped > 0.0 && clipped <= 0.1 * clip * (1.0 + 1e-6), "{clipped}");
        assert!(clipped < 0.5 * batch.delta.l2_norm());
    }

    /// An initial model file with the network's names and shapes loads;
    /// files from a torchvision checkpoint that was not converted are
    /// refused with what to change.
    #[test]
    fn initial_model_files_are_checked_by_name_and_shape() {
        let cfg = resnet(32);
        let params = cfg.init_params(8);
        let bytes = params.to_safetensors(None).unwrap();
        assert_eq!(cfg.load_init(&bytes).unwrap(), params);
        let evaluator = CnnEvaluator::new(images(4, 32, 1), cfg, 1)
            .unwrap()
            .with_initial(Arc::new(params.clone()))
            .unwrap();
        assert_eq!(evaluator.init_params(), params);
        assert!(CnnEvaluator::new(images(4, 32, 1), config(32), 1)
            .unwrap()
            .with_initial(Arc::new(params.clone()))
            .is_err());
        let renamed = |name: &str, shape: &[usize]| {
            let mut specs: Vec<TensorSpec> = cfg.layout().specs().to_vec();
            let values = params.as_slice().to_vec();
            let at = specs.iter().position(|s| s.name == name).unwrap();
            let mut values = values;
            let start: usize = specs[..at].iter().map(TensorSpec::numel).sum();
            let old = specs[at].numel();
            let new = TensorSpec::new(name, shape);
            values.splice(start..start + old, std::iter::repeat_n(0.5, new.numel()));
            specs[at] = new;
            Params::new(Arc::new(Layout::new(specs).unwrap()), values)
                .unwrap()
                .to_safetensors(None)
                .unwrap()
        };
        let error = |bytes: &[u8]| cfg.load_init(bytes).unwrap_err().to_string();
        assert!(error(&renamed("conv1.weight", &[64, 3, 7, 7])).contains("sum the RGB filters"));
        assert!(error(&renamed("fc.weight", &[1000, 512])).contains("one output logit"));
        let mut with_stats: Vec<TensorSpec> = cfg.layout().specs().to_vec();
        with_stats.push(TensorSpec::new("layer1.0.bn1.running_var", &[64]));
        let mut values = params.as_slice().to_vec();
        values.extend([1.0; 64]);
        let file = Params::new(Arc::new(Layout::new(with_stats).unwrap()), values).unwrap();
        assert!(error(&file.to_safetensors(None).unwrap()).contains("BatchNorm running statistics"));
        let small = config(32).init_params(1).to_safetensors(None).unwrap();
        assert!(
            error(&small).contains("is not a parameter of resnet18"),
            "{}",
            error(&small)
        );
        assert!(error(b"not a file").contains("not a safetensors file"));
        assert!(CnnEvaluator::new(images(4, 16, 1), resnet(16), 1).is_err());
    }
}
