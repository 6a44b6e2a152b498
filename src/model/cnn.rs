use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;

use super::norm::BatchNorm2d;
use super::ops::{global_avg_pool, KernelBackend};

/// Conv3x3 (no bias, BN follows) + BatchNorm + ReLU.
#[derive(Module, Debug)]
pub struct ConvBn<B: KernelBackend> {
    conv: Conv2d<B>,
    bn: BatchNorm2d<B>,
}

impl<B: KernelBackend> ConvBn<B> {
    pub fn new(inp: usize, out: usize, stride: usize, device: &B::Device) -> Self {
        ConvBn {
            conv: Conv2dConfig::new([inp, out], [3, 3])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false)
                .init(device),
            bn: BatchNorm2d::new(out, device),
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.bn.forward_conv(&self.conv, x, None, true)
    }

    /// `relu(conv-BN(x) + residual)`, the end of a ResNet block.
    pub fn forward_add_relu(&self, x: Tensor<B, 4>, residual: Tensor<B, 4>) -> Tensor<B, 4> {
        self.bn.forward_conv(&self.conv, x, Some(residual), true)
    }
}

#[derive(Config, Debug)]
pub struct CnnConfig {
    pub channels: usize,
    /// Channels of the first stage; the next two double it.
    pub width: usize,
    pub classes: usize,
}

/// The "small CNN" of the benchmarks: three conv stages (stride 1, 2, 2), global
/// average pooling and a linear classifier.
#[derive(Module, Debug)]
pub struct Cnn<B: KernelBackend> {
    c1: ConvBn<B>,
    c2: ConvBn<B>,
    c3: ConvBn<B>,
    fc: Linear<B>,
}

impl CnnConfig {
    pub fn init<B: KernelBackend>(&self, device: &B::Device) -> Cnn<B> {
        let w = self.width;
        Cnn {
            c1: ConvBn::new(self.channels, w, 1, device),
            c2: ConvBn::new(w, 2 * w, 2, device),
            c3: ConvBn::new(2 * w, 4 * w, 2, device),
            fc: LinearConfig::new(4 * w, self.classes).init(device),
        }
    }
}

impl<B: KernelBackend> Cnn<B> {
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let x = self.c3.forward(self.c2.forward(self.c1.forward(images)));
        let x = global_avg_pool(x);
        self.fc.forward(x)
    }
}
