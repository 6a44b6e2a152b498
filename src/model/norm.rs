//! Batch normalisation for `[batch, channels, height, width]` activations.
//!
//! Same parameters, statistics and record layout as burn-nn's `BatchNorm` (so
//! checkpoints are interchangeable). Where the backend has a batch-norm kernel
//! ([`KernelBackend::fast_batch_norm`], flex: `crate::kernels::batch_norm`), training and
//! inference go through it, with the following ReLU (and a ResNet block's residual add)
//! fused in. Otherwise (CUDA) a tensor-op version runs, written in a layout Burn's CPU
//! backend also handles well: burn-nn reshapes a `swap_dims` view and broadcasts
//! `[1, C, 1, 1]` tensors, which flex copies element by element (about 75% of a small
//! CNN's training step when profiled, see BENCHMARKS.md); here the activations are viewed
//! as `[N, C, H*W]`, statistics reduce contiguous dimensions, and the per-channel scale
//! and shift are repeated to `[N, C, 1]`. Both versions are tested against burn-nn.

use burn::module::{Param, RunningState};
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::TensorPrimitive;

use super::ops::{conv2d, conv2d_scale_shift, KernelBackend};
use burn::nn::conv::Conv2d;

#[derive(Module, Debug)]
pub struct BatchNorm2d<B: KernelBackend> {
    pub gamma: Param<Tensor<B, 1>>,
    pub beta: Param<Tensor<B, 1>>,
    pub running_mean: RunningState<Tensor<B, 1>>,
    pub running_var: RunningState<Tensor<B, 1>>,
    pub momentum: f64,
    pub epsilon: f64,
}

impl<B: KernelBackend> BatchNorm2d<B> {
    /// PyTorch's and burn-nn's defaults: momentum 0.1, epsilon 1e-5.
    pub fn new(channels: usize, device: &B::Device) -> Self {
        BatchNorm2d {
            gamma: Param::from_tensor(Tensor::ones([channels], device)),
            beta: Param::from_tensor(Tensor::zeros([channels], device)),
            running_mean: RunningState::new(Tensor::zeros([channels], device)),
            running_var: RunningState::new(Tensor::ones([channels], device)),
            momentum: 0.1,
            epsilon: 1e-5,
        }
    }

    /// Batch statistics while training (autodiff backends), running ones otherwise.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_with(x, Epilogue::default(), true)
    }

    /// `self.forward(conv(x))`, plus `residual` and then a ReLU as asked, fused into the
    /// batch-norm kernel where the backend has one (one pass and one buffer fewer, forward
    /// and backward). At inference (running statistics) the normalisation is fused into the
    /// convolution itself where the backend has a kernel for that: one more pass fewer,
    /// same values.
    pub fn forward_conv(
        &self,
        conv: &Conv2d<B>,
        x: Tensor<B, 4>,
        residual: Option<Tensor<B, 4>>,
        relu: bool,
    ) -> Tensor<B, 4> {
        if !B::ad_enabled(&x.device()) {
            let (scale, shift) = self.inference_scale_shift(&x.device());
            let fused = conv2d_scale_shift(conv, x.clone(), scale, shift, residual.clone(), relu);
            if let Some(y) = fused {
                return y;
            }
        }
        self.forward_with(conv2d(conv, x), Epilogue { residual, relu }, true)
    }

    /// The running statistics, gamma and beta folded into one scale and shift per channel.
    fn inference_scale_shift(&self, device: &B::Device) -> (Tensor<B, 1>, Tensor<B, 1>) {
        let mean = self.running_mean.value().to_device(device);
        let var = self.running_var.value().to_device(device);
        // One multiply-add per element: fold the statistics into scale and shift.
        let scale = var.add_scalar(self.epsilon).sqrt().recip() * self.gamma.val();
        let shift = self.beta.val() - mean * scale.clone();
        (scale, shift)
    }

    /// `kernels: false` skips the backend's batch-norm kernel (the tensor-op version that
    /// backends without one use; tested on the CPU too).
    fn forward_with(&self, x: Tensor<B, 4>, epilogue: Epilogue<B>, kernels: bool) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let x3 = x.reshape([n, c, h * w]);
        let epilogue = Epilogue {
            residual: epilogue.residual.map(|r| r.reshape([n, c, h * w])),
            relu: epilogue.relu,
        };
        let out = if B::ad_enabled(&x3.device()) {
            self.forward_train(x3, epilogue, kernels)
        } else {
            self.forward_inference(x3, epilogue, kernels)
        };
        out.reshape([n, c, h, w])
    }

    fn forward_train(
        &self,
        x: Tensor<B, 3>,
        epilogue: Epilogue<B, 3>,
        kernels: bool,
    ) -> Tensor<B, 3> {
        let fast = kernels
            .then(|| {
                B::fast_batch_norm(
                    x.clone().into_primitive().tensor(),
                    self.gamma.val().into_primitive().tensor(),
                    self.beta.val().into_primitive().tensor(),
                    self.epsilon,
                    epilogue
                        .residual
                        .clone()
                        .map(|r| r.into_primitive().tensor()),
                    epilogue.relu,
                )
            })
            .flatten();
        if let Some([y, mean, var]) = fast {
            let t1 = |t| Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t));
            self.update_running(t1(mean), t1(var));
            return Tensor::from_primitive(TensorPrimitive::Float(y));
        }
        let [n, c, _] = x.dims();
        // Mean over pixels then over the batch: every image has as many pixels.
        let mean = x.clone().mean_dim(2).mean_dim(0);
        let centered = x - mean.clone().repeat_dim(0, n);
        // Biased variance, as burn-nn uses for both normalising and running stats.
        let var = centered.clone().powi_scalar(2).mean_dim(2).mean_dim(0);
        self.update_running(
            mean.detach().reshape([c]),
            var.clone().detach().reshape([c]),
        );

        let scale =
            var.add_scalar(self.epsilon).sqrt().recip() * self.gamma.val().reshape([1, c, 1]);
        let shift = self.beta.val().reshape([1, c, 1]);
        epilogue.apply(centered * scale.repeat_dim(0, n) + shift.repeat_dim(0, n))
    }

    /// `running = (1 - momentum) * running + momentum * batch` for mean and variance.
    fn update_running(&self, mean: Tensor<B, 1>, var: Tensor<B, 1>) {
        let device = mean.device();
        let m = self.momentum;
        let running_mean = self.running_mean.value_sync().to_device(&device);
        let running_var = self.running_var.value_sync().to_device(&device);
        self.running_mean.update(
            running_mean
                .mul_scalar(1.0 - m)
                .add(mean.detach().mul_scalar(m))
                .detach(),
        );
        self.running_var.update(
            running_var
                .mul_scalar(1.0 - m)
                .add(var.detach().mul_scalar(m))
                .detach(),
        );
    }

    fn forward_inference(
        &self,
        x: Tensor<B, 3>,
        epilogue: Epilogue<B, 3>,
        kernels: bool,
    ) -> Tensor<B, 3> {
        let [n, c, _] = x.dims();
        let (scale, shift) = self.inference_scale_shift(&x.device());
        if kernels {
            let fast = B::fast_scale_shift(
                x.clone().into_primitive().tensor(),
                scale.clone().into_primitive().tensor(),
                shift.clone().into_primitive().tensor(),
                epilogue
                    .residual
                    .clone()
                    .map(|r| r.into_primitive().tensor()),
                epilogue.relu,
            );
            if let Some(y) = fast {
                return Tensor::from_primitive(TensorPrimitive::Float(y));
            }
        }
        epilogue.apply(
            x * scale.reshape([1, c, 1]).repeat_dim(0, n)
                + shift.reshape([1, c, 1]).repeat_dim(0, n),
        )
    }
}

/// What follows the normalisation: `+ residual`, then a ReLU. The kernels fuse it; the
/// tensor-op version applies it with [`Epilogue::apply`].
struct Epilogue<B: Backend, const D: usize = 4> {
    residual: Option<Tensor<B, D>>,
    relu: bool,
}

impl<B: Backend, const D: usize> Default for Epilogue<B, D> {
    fn default() -> Self {
        Epilogue {
            residual: None,
            relu: false,
        }
    }
}

impl<B: Backend, const D: usize> Epilogue<B, D> {
    fn apply(self, y: Tensor<B, D>) -> Tensor<B, D> {
        let y = match self.residual {
            Some(r) => y + r,
            None => y,
        };
        if self.relu {
            relu(y)
        } else {
            y
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{flex::FlexDevice, Autodiff, Flex};
    use burn::module::AutodiffModule;
    use burn::nn::{BatchNorm, BatchNormConfig};
    use burn::tensor::{Distribution, Tolerance};

    type A = Autodiff<Flex>;

    fn pair() -> (BatchNorm2d<A>, BatchNorm<A>) {
        let device = FlexDevice;
        let ours = BatchNorm2d::<A>::new(3, &device);
        let theirs = BatchNormConfig::new(3).init::<A>(&device);
        // Non-trivial affine parameters, the same in both.
        let gamma = Tensor::<A, 1>::from_floats([0.5, 1.5, -1.0], &device);
        let beta = Tensor::<A, 1>::from_floats([0.1, -0.2, 0.3], &device);
        let ours = BatchNorm2d {
            gamma: Param::from_tensor(gamma.clone()),
            beta: Param::from_tensor(beta.clone()),
            ..ours
        };
        let theirs = BatchNorm {
            gamma: Param::from_tensor(gamma),
            beta: Param::from_tensor(beta),
            ..theirs
        };
        (ours, theirs)
    }

    fn input() -> Tensor<A, 4> {
        Tensor::<A, 4>::random([4, 3, 5, 6], Distribution::Normal(2.0, 3.0), &FlexDevice)
            .require_grad()
    }

    #[test]
    fn matches_burn_batch_norm_in_training_output_gradients_and_running_stats() {
        // With the CPU kernel (what training uses) and with the tensor-op version (CUDA).
        // Plain, with a ReLU, with a residual and a ReLU (the fused epilogues).
        for kernels in [true, false] {
            for (with_relu, with_residual) in [(false, false), (true, false), (true, true)] {
                check_training(kernels, with_relu, with_residual);
            }
        }
    }

    fn check_training(kernels: bool, with_relu: bool, with_residual: bool) {
        let _rng = crate::model::rng_lock();
        let (ours, theirs) = pair();
        let x = input();
        let weights =
            Tensor::<A, 4>::random([4, 3, 5, 6], Distribution::Normal(0.0, 1.0), &FlexDevice);
        let residual = with_residual.then(|| {
            Tensor::<A, 4>::random([4, 3, 5, 6], Distribution::Normal(0.0, 1.0), &FlexDevice)
                .require_grad()
        });
        let epilogue = Epilogue {
            residual: residual.clone(),
            relu: with_relu,
        };
        let a = ours.forward_with(x.clone(), epilogue, kernels);
        let b = theirs.forward(x.clone());
        let b = match &residual {
            Some(r) => b + r.clone(),
            None => b,
        };
        let b = if with_relu { relu(b) } else { b };
        a.to_data()
            .assert_approx_eq::<f32>(&b.to_data(), Tolerance::absolute(1e-4));
        let ga = (a * weights.clone()).sum().backward();
        let gb = (b * weights).sum().backward();
        let gx_a = x.grad(&ga).unwrap();
        let gx_b = x.grad(&gb).unwrap();
        gx_a.to_data()
            .assert_approx_eq::<f32>(&gx_b.to_data(), Tolerance::absolute(1e-4));
        let gg_a = ours.gamma.val().grad(&ga).unwrap();
        let gg_b = theirs.gamma.val().grad(&gb).unwrap();
        gg_a.to_data()
            .assert_approx_eq::<f32>(&gg_b.to_data(), Tolerance::absolute(1e-3));
        let gb_a = ours.beta.val().grad(&ga).unwrap();
        let gb_b = theirs.beta.val().grad(&gb).unwrap();
        gb_a.to_data()
            .assert_approx_eq::<f32>(&gb_b.to_data(), Tolerance::absolute(1e-3));
        if let Some(r) = &residual {
            r.grad(&ga).unwrap().to_data().assert_approx_eq::<f32>(
                &r.grad(&gb).unwrap().to_data(),
                Tolerance::absolute(1e-5),
            );
        }
        ours.running_mean.value().to_data().assert_approx_eq::<f32>(
            &theirs.running_mean.value().to_data(),
            Tolerance::absolute(1e-5),
        );
        ours.running_var.value().to_data().assert_approx_eq::<f32>(
            &theirs.running_var.value().to_data(),
            Tolerance::absolute(1e-5),
        );
    }

    #[test]
    fn matches_burn_batch_norm_in_inference() {
        for kernels in [true, false] {
            for (with_relu, with_residual) in [(false, false), (true, false), (true, true)] {
                check_inference(kernels, with_relu, with_residual);
            }
        }
    }

    fn check_inference(kernels: bool, with_relu: bool, with_residual: bool) {
        let _rng = crate::model::rng_lock();
        let (ours, theirs) = pair();
        // Move the running statistics away from (0, 1) first.
        let x = input();
        let _ = ours.forward(x.clone());
        let _ = theirs.forward(x);
        let (ours, theirs) = (ours.valid(), theirs.valid());
        let x =
            Tensor::<Flex, 4>::random([2, 3, 4, 4], Distribution::Normal(1.0, 2.0), &FlexDevice);
        let residual = with_residual.then(|| {
            Tensor::<Flex, 4>::random([2, 3, 4, 4], Distribution::Normal(0.0, 1.0), &FlexDevice)
        });
        let b = theirs.forward(x.clone());
        let b = match &residual {
            Some(r) => b + r.clone(),
            None => b,
        };
        let b = if with_relu { relu(b) } else { b };
        let epilogue = Epilogue {
            residual,
            relu: with_relu,
        };
        ours.forward_with(x, epilogue, kernels)
            .to_data()
            .assert_approx_eq::<f32>(&b.to_data(), Tolerance::absolute(1e-4));
    }

    /// At inference the batch norm fused into the convolution gives the same bits as the
    /// two ops one after the other, on every convolution path (stride-1 direct kernel, phase
    /// planes for strided and RGB layers, im2col for 1x1 and for channel counts the direct
    /// kernel does not take), and matches burn-nn's conv + batch norm.
    #[test]
    fn conv_inference_fused_equals_separate_ops() {
        let _rng = crate::model::rng_lock();
        use crate::model::ops::{conv2d, conv2d_scale_shift};
        use burn::nn::conv::Conv2dConfig;
        use burn::nn::PaddingConfig2d;
        let device = FlexDevice;
        let pad1 = PaddingConfig2d::Explicit(1, 1, 1, 1);
        // (c_in, c_out, kernel, stride, padding, size)
        let layers = [
            (16, 16, 3, 1, pad1.clone(), 8),
            (3, 8, 3, 1, pad1.clone(), 9),
            (8, 16, 3, 2, pad1.clone(), 9),
            (8, 16, 1, 2, PaddingConfig2d::Valid, 8),
            (5, 4, 3, 1, pad1.clone(), 6),
            (16, 32, 3, 2, pad1, 16),
        ];
        for (t, (c_in, c_out, k, stride, padding, size)) in layers.into_iter().enumerate() {
            Flex::seed(&device, 40 + t as u64);
            let conv: Conv2d<Flex> = Conv2dConfig::new([c_in, c_out], [k, k])
                .with_stride([stride, stride])
                .with_padding(padding)
                .with_bias(false)
                .init(&device);
            let normal = |mean, sd, shape: [usize; 1]| {
                Tensor::<Flex, 1>::random(shape, Distribution::Normal(mean, sd), &device)
            };
            let bn = BatchNorm2d {
                gamma: Param::from_tensor(normal(1.0, 0.5, [c_out])),
                beta: Param::from_tensor(normal(0.0, 0.5, [c_out])),
                running_mean: RunningState::new(normal(0.0, 0.3, [c_out])),
                running_var: RunningState::new(normal(0.0, 0.5, [c_out]).abs().add_scalar(0.1)),
                ..BatchNorm2d::new(c_out, &device)
            };
            let x = Tensor::<Flex, 4>::random(
                [3, c_in, size, size],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let separate_conv = conv2d(&conv, x.clone());
            let residual = Tensor::<Flex, 4>::random(
                separate_conv.dims(),
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let (scale, shift) = bn.inference_scale_shift(&device);
            for (with_residual, relu) in [(false, false), (false, true), (true, true)] {
                let residual = with_residual.then(|| residual.clone());
                let epilogue = Epilogue {
                    residual: residual.clone(),
                    relu,
                };
                let separate = bn.forward_with(separate_conv.clone(), epilogue, true);
                let fused = conv2d_scale_shift(
                    &conv,
                    x.clone(),
                    scale.clone(),
                    shift.clone(),
                    residual.clone(),
                    relu,
                )
                .expect("flex fuses the batch norm into every f32 convolution");
                let case = format!("layer {t}, residual {with_residual}, relu {relu}");
                fused.to_data().assert_eq(&separate.to_data(), true);
                // The public entry point takes the fused path and agrees with burn-nn.
                let ours = bn.forward_conv(&conv, x.clone(), residual.clone(), relu);
                ours.to_data().assert_eq(&separate.to_data(), true);
                let theirs = BatchNorm {
                    gamma: Param::from_tensor(bn.gamma.val()),
                    beta: Param::from_tensor(bn.beta.val()),
                    running_mean: RunningState::new(bn.running_mean.value()),
                    running_var: RunningState::new(bn.running_var.value()),
                    ..BatchNormConfig::new(c_out).init::<Flex>(&device)
                }
                .forward(conv.forward(x.clone()));
                let theirs = match residual {
                    Some(r) => theirs + r,
                    None => theirs,
                };
                let theirs = if relu {
                    burn::tensor::activation::relu(theirs)
                } else {
                    theirs
                };
                let diff: f32 = (ours - theirs).abs().max().into_scalar();
                assert!(diff < 1e-4, "{case}: max abs diff from burn-nn {diff}");
            }
        }
    }

    #[test]
    fn records_are_interchangeable_with_burn_batch_norm() {
        use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
        let (ours, theirs) = pair();
        let _ = theirs.forward(input());
        let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
        let bytes = recorder.record(theirs.clone().into_record(), ()).unwrap();
        let loaded = ours.load_record(recorder.load(bytes, &FlexDevice).unwrap());
        loaded
            .running_mean
            .value()
            .to_data()
            .assert_eq(&theirs.running_mean.value().to_data(), true);
        loaded
            .gamma
            .val()
            .to_data()
            .assert_eq(&theirs.gamma.val().to_data(), true);
    }
}
