//! Networks. Teacher and student always share the architecture, so one enum covers all.

mod cnn;
mod mlp;
mod norm;
pub mod ops;
mod resnet;

use std::sync::{Mutex, MutexGuard};

use burn::module::{ModuleVisitor, Param};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

pub use cnn::{Cnn, CnnConfig};
pub use mlp::{Mlp, MlpConfig};
pub use norm::BatchNorm2d;
pub use ops::{KernelBackend, TrainBackend};
pub use resnet::{ResNet, ResNetConfig};

/// Burn's backends draw every random number (weight initialisation included) from one
/// global generator: seeding and then drawing is reproducible only while no other thread
/// draws in between. [`ModelSpec::init_seeded`] holds this lock from seeding to the last
/// draw, and so do tests that draw (they run in parallel threads). Not reentrant.
pub fn rng_lock() -> MutexGuard<'static, ()> {
    static RNG: Mutex<()> = Mutex::new(());
    RNG.lock().unwrap_or_else(|p| p.into_inner())
}

/// Architecture family named in presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    Mlp,
    Cnn,
    Resnet20,
    Resnet32,
    Resnet56,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Mlp => "mlp",
            Arch::Cnn => "cnn",
            Arch::Resnet20 => "resnet20",
            Arch::Resnet32 => "resnet32",
            Arch::Resnet56 => "resnet56",
        }
    }

    /// Width used when a preset gives none: hidden units (MLP) or first-stage channels.
    pub fn default_width(self) -> usize {
        match self {
            Arch::Mlp => 256,
            Arch::Cnn => 32,
            _ => 16,
        }
    }
}

/// Everything needed to build a network for a given input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    pub arch: Arch,
    pub width: usize,
    pub channels: usize,
    pub height: usize,
    pub width_px: usize,
    pub num_classes: usize,
}

impl ModelSpec {
    pub fn describe(&self) -> String {
        format!("{} (width {})", self.arch.name(), self.width)
    }

    /// Deterministic initialisation from `seed`. Burn's CPU RNG is global and its
    /// parameters are initialised lazily (on first use), so seeding, building and
    /// materialising every parameter happen under one lock; otherwise concurrent runs
    /// (tests, the dashboard's watcher) would interleave their random draws.
    pub fn init_seeded<B: KernelBackend>(&self, device: &B::Device, seed: u64) -> Net<B> {
        let _guard = rng_lock();
        B::seed(device, seed);
        let net = self.init(device);
        net.visit(&mut Materialize);
        net
    }

    pub fn init<B: KernelBackend>(&self, device: &B::Device) -> Net<B> {
        match self.arch {
            Arch::Mlp => Net::Mlp(
                MlpConfig::new(
                    self.channels * self.height * self.width_px,
                    self.width,
                    self.num_classes,
                )
                .init(device),
            ),
            Arch::Cnn => {
                Net::Cnn(CnnConfig::new(self.channels, self.width, self.num_classes).init(device))
            }
            Arch::Resnet20 | Arch::Resnet32 | Arch::Resnet56 => {
                let depth = match self.arch {
                    Arch::Resnet20 => 20,
                    Arch::Resnet32 => 32,
                    _ => 56,
                };
                Net::ResNet(
                    ResNetConfig::new(depth, self.channels, self.width, self.num_classes)
                        .init(device),
                )
            }
        }
    }
}

/// Touches every parameter so lazy initialisers run now.
struct Materialize;

impl<B: Backend> ModuleVisitor<B> for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
    }
}

/// A classifier: images `[batch, channels, height, width]` to logits `[batch, classes]`.
// A few networks live at once (student, teacher, best snapshot), never in bulk, so
// the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Net<B: KernelBackend> {
    Mlp(Mlp<B>),
    Cnn(Cnn<B>),
    ResNet(ResNet<B>),
}

impl<B: KernelBackend> Net<B> {
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        match self {
            Net::Mlp(m) => m.forward(images),
            Net::Cnn(m) => m.forward(images),
            Net::ResNet(m) => m.forward(images),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{flex::FlexDevice, Flex};

    #[test]
    fn every_arch_maps_images_to_logits() {
        let device = FlexDevice;
        for arch in [Arch::Mlp, Arch::Cnn, Arch::Resnet20] {
            let spec = ModelSpec {
                arch,
                width: 8,
                channels: 3,
                height: 16,
                width_px: 16,
                num_classes: 7,
            };
            // Held to the forward: parameters are drawn lazily, at their first use.
            let _rng = rng_lock();
            let net: Net<Flex> = spec.init(&device);
            let x = Tensor::<Flex, 4>::zeros([2, 3, 16, 16], &device);
            assert_eq!(net.forward(x).dims(), [2, 7], "{arch:?}");
        }
    }

    #[test]
    fn seeded_init_is_reproducible_and_seed_dependent() {
        let device = FlexDevice;
        let spec = ModelSpec {
            arch: Arch::Cnn,
            width: 4,
            channels: 1,
            height: 8,
            width_px: 8,
            num_classes: 3,
        };
        let x = Tensor::<Flex, 4>::ones([1, 1, 8, 8], &device);
        let out = |seed| {
            spec.init_seeded::<Flex>(&device, seed)
                .forward(x.clone())
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        };
        assert_eq!(out(1), out(1));
        assert_ne!(out(1), out(2));
    }

    #[test]
    fn resnet_depth_sets_block_count() {
        let device = FlexDevice;
        let count = |depth| {
            let _rng = rng_lock();
            ResNetConfig::new(depth, 3, 4, 10)
                .init::<Flex>(&device)
                .num_blocks()
        };
        assert_eq!(count(20), 9);
        assert_eq!(count(32), 15);
        assert_eq!(count(56), 27);
    }
}
