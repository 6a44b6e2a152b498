use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;

use super::norm::BatchNorm2d;
use super::ops::{global_avg_pool, KernelBackend};

use super::cnn::ConvBn;

/// 1x1 conv + BN projection used when a block changes shape.
#[derive(Module, Debug)]
pub struct Projection<B: KernelBackend> {
    conv: Conv2d<B>,
    bn: BatchNorm2d<B>,
}

/// CIFAR basic block: two 3x3 conv-BN, identity or projection shortcut.
#[derive(Module, Debug)]
pub struct BasicBlock<B: KernelBackend> {
    a: ConvBn<B>,
    b: ConvBn<B>,
    shortcut: Option<Projection<B>>,
}

impl<B: KernelBackend> BasicBlock<B> {
    fn new(inp: usize, out: usize, stride: usize, device: &B::Device) -> Self {
        let shortcut = (stride != 1 || inp != out).then(|| Projection {
            conv: Conv2dConfig::new([inp, out], [1, 1])
                .with_stride([stride, stride])
                .with_bias(false)
                .init(device),
            bn: BatchNorm2d::new(out, device),
        });
        BasicBlock {
            a: ConvBn::new(inp, out, stride, device),
            b: ConvBn::new(out, out, 1, device),
            shortcut,
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let identity = match &self.shortcut {
            Some(p) => p.bn.forward_conv(&p.conv, x.clone(), None, false),
            None => x.clone(),
        };
        self.b.forward_add_relu(self.a.forward(x), identity)
    }
}

#[derive(Config, Debug)]
pub struct ResNetConfig {
    /// 6n + 2: 20, 32, 56, ...
    pub depth: usize,
    pub channels: usize,
    /// Channels of the first stage (16 in the original); stages use w, 2w, 4w.
    pub width: usize,
    pub classes: usize,
}

/// CIFAR-style ResNet (He et al. 2016, section 4.2).
#[derive(Module, Debug)]
pub struct ResNet<B: KernelBackend> {
    stem: ConvBn<B>,
    blocks: Vec<BasicBlock<B>>,
    fc: Linear<B>,
}

impl ResNetConfig {
    pub fn init<B: KernelBackend>(&self, device: &B::Device) -> ResNet<B> {
        let n = (self.depth.saturating_sub(2) / 6).max(1);
        let w = self.width;
        let mut blocks = Vec::with_capacity(3 * n);
        let mut inp = w;
        for (stage, out) in [w, 2 * w, 4 * w].into_iter().enumerate() {
            for i in 0..n {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new(inp, out, stride, device));
                inp = out;
            }
        }
        ResNet {
            stem: ConvBn::new(self.channels, w, 1, device),
            blocks,
            fc: LinearConfig::new(4 * w, self.classes).init(device),
        }
    }
}

impl<B: KernelBackend> ResNet<B> {
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x = self.stem.forward(images);
        for block in &self.blocks {
            x = block.forward(x);
        }
        let x = global_avg_pool(x);
        self.fc.forward(x)
    }
}
