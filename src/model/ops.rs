//! Backend extension (Burn's custom-op pattern) for the two ops that dominate a training
//! step: a [`KernelBackend`] trait whose defaults are Burn's own ops, the CPU kernels of
//! [`crate::kernels`] for flex, and autodiff ops whose backward passes call the kernels
//! (convolution: input and weight gradients in one pass). CUDA keeps Burn's ops.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::{ConvOptions, FloatTensor, FloatTensorOps, ModuleOps};
use burn::tensor::{DType, TensorPrimitive};

use crate::kernels::batch_norm::{self as bn_kernel, BnShape, Epilogue};
use crate::kernels::conv2d::{self as kernel, Conv2dShape, Wants};
use crate::pool;

/// Gradients of a convolution, each present when asked for.
pub struct ConvGrads<B: Backend> {
    pub x: Option<FloatTensor<B>>,
    pub weight: Option<FloatTensor<B>>,
    pub bias: Option<FloatTensor<B>>,
}

/// Gradients of the batch-norm op.
pub struct BnGrads<B: Backend> {
    pub x: FloatTensor<B>,
    pub gamma: FloatTensor<B>,
    pub beta: FloatTensor<B>,
    /// Of the value before the ReLU, which is also a residual's gradient: only when asked
    /// for (`want_sum`).
    pub sum: Option<FloatTensor<B>>,
}

/// Backends with (possibly faster) convolution and batch norm. The defaults are Burn's ops.
pub trait KernelBackend: Backend {
    /// Training steps whose loss and hit count are read back to the host together
    /// ([`crate::train::readback`]). Each read is a sync; an eager CPU backend has
    /// nothing to overlap, so it reads every step. A GPU runs ahead of the host between
    /// reads, so fewer reads keep it busy while the host prepares the next steps.
    const READBACK_EVERY: usize = 1;

    /// Training-mode batch norm of `x` `[n, c, hw]`, plus `residual` (same shape) when
    /// given, then a ReLU when `relu`: `Some([y, mean, var])` (biased batch variance, per
    /// channel) where the backend has a kernel; `None` sends the model to its tensor-op
    /// version (`model::norm`).
    fn fast_batch_norm(
        _x: FloatTensor<Self>,
        _gamma: FloatTensor<Self>,
        _beta: FloatTensor<Self>,
        _epsilon: f64,
        _residual: Option<FloatTensor<Self>>,
        _relu: bool,
    ) -> Option<[FloatTensor<Self>; 3]> {
        None
    }

    /// `x * scale[c] + shift[c]` (+ `residual`, then ReLU, as asked) for `x` `[n, c, hw]`:
    /// inference-mode batch norm with the running statistics folded in, where the backend
    /// has a kernel; `None` otherwise.
    fn fast_scale_shift(
        _x: FloatTensor<Self>,
        _scale: FloatTensor<Self>,
        _shift: FloatTensor<Self>,
        _residual: Option<FloatTensor<Self>>,
        _relu: bool,
    ) -> Option<FloatTensor<Self>> {
        None
    }

    /// `conv2d(x, weight)` (no bias) with `* scale[c] + shift[c]`, `+ residual` and a ReLU
    /// (as asked) applied as the output is written: an inference-mode batch norm (running
    /// statistics folded into scale and shift) fused into its convolution, where the backend
    /// has a kernel for it; `None` otherwise (the caller runs the two ops).
    fn fast_conv2d_scale_shift(
        _x: FloatTensor<Self>,
        _weight: FloatTensor<Self>,
        _options: ConvOptions<2>,
        _scale: FloatTensor<Self>,
        _shift: FloatTensor<Self>,
        _residual: Option<FloatTensor<Self>>,
        _relu: bool,
    ) -> Option<FloatTensor<Self>> {
        None
    }

    /// Gradients of [`KernelBackend::fast_batch_norm`]; `relu`: the forward's ReLU, when
    /// it ended with one; `want_sum`: whether [`BnGrads::sum`] is needed (a residual was
    /// added).
    #[allow(clippy::too_many_arguments)]
    fn fast_batch_norm_backward(
        x: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        relu: Option<ReluState<FloatTensor<Self>>>,
        output_grad: FloatTensor<Self>,
        epsilon: f64,
        want_sum: bool,
    ) -> BnGrads<Self> {
        batch_norm_backward_reference::<Self>(
            x,
            mean,
            var,
            gamma,
            relu.map(|r| r.output),
            output_grad,
            epsilon,
            want_sum,
        )
    }

    fn fast_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d(x, weight, bias, options)
    }

    /// Where the backend computes on the current rayon pool (flex): keeps the pool's
    /// other threads awake for a training step or an evaluation batch ([`pool::keep_warm`],
    /// called on the thread that drives it). `None` elsewhere (a GPU backend's step has
    /// little CPU work to share).
    fn keep_pool_warm() -> Option<pool::Warm> {
        None
    }

    /// Gradients of [`KernelBackend::fast_conv2d`]; `dx_add`, when given, is added to the
    /// input gradient (the gradient its input already received from another consumer).
    #[allow(clippy::too_many_arguments)]
    fn fast_conv2d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
        wants: Wants,
        dx_add: Option<FloatTensor<Self>>,
    ) -> ConvGrads<Self> {
        let gx = wants.x.then(|| {
            let g = Self::conv2d_x_backward(
                x.clone(),
                weight.clone(),
                output_grad.clone(),
                options.clone(),
            );
            match dx_add {
                Some(a) => Self::float_add(g, a),
                None => g,
            }
        });
        let gw = wants
            .weight
            .then(|| Self::conv2d_weight_backward(x.clone(), weight, output_grad.clone(), options));
        let gb = match bias {
            Some(bias) if wants.bias => Some(Self::conv2d_bias_backward(x, bias, output_grad)),
            _ => None,
        };
        ConvGrads {
            x: gx,
            weight: gw,
            bias: gb,
        }
    }
}

/// A batch norm's ReLU, as its backward needs it: the forward's output, and, where no
/// residual was added, beta, with which a kernel may recompute the ReLU's input from `x`
/// instead of reading the output (the same mask, one pass over memory fewer).
#[derive(Clone, Debug)]
pub struct ReluState<T> {
    pub output: T,
    pub beta: Option<T>,
}

/// Batch-norm gradients in Burn tensor ops (any backend); the reference the kernels are
/// tested against.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward_reference<B: Backend>(
    x: FloatTensor<B>,
    mean: FloatTensor<B>,
    var: FloatTensor<B>,
    gamma: FloatTensor<B>,
    relu_output: Option<FloatTensor<B>>,
    output_grad: FloatTensor<B>,
    epsilon: f64,
    want_sum: bool,
) -> BnGrads<B> {
    let t3 = |t| Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(t));
    let t1 = |t| Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t));
    let (x, mut dy) = (t3(x), t3(output_grad));
    if let Some(y) = relu_output {
        dy = dy.mask_fill(t3(y).lower_equal_elem(0.0), 0.0);
    }
    let [n, c, hw] = x.dims();
    let count = (n * hw) as f64;
    let inv_std = t1(var)
        .add_scalar(epsilon)
        .sqrt()
        .recip()
        .reshape([1, c, 1]);
    let xhat = (x - t1(mean).reshape([1, c, 1])) * inv_std.clone();
    let dbeta = dy.clone().sum_dim(2).sum_dim(0);
    let dgamma = (dy.clone() * xhat.clone()).sum_dim(2).sum_dim(0);
    let dx =
        (dy.clone() - dbeta.clone().div_scalar(count) - xhat * dgamma.clone().div_scalar(count))
            * (t1(gamma).reshape([1, c, 1]) * inv_std);
    let dgamma: Tensor<B, 1> = dgamma.reshape([c]);
    let dbeta: Tensor<B, 1> = dbeta.reshape([c]);
    BnGrads {
        x: dx.into_primitive().tensor(),
        gamma: dgamma.into_primitive().tensor(),
        beta: dbeta.into_primitive().tensor(),
        sum: want_sum.then(|| dy.into_primitive().tensor()),
    }
}

#[cfg(feature = "cuda")]
impl KernelBackend for burn::backend::Cuda {
    const READBACK_EVERY: usize = GPU_READBACK_EVERY;
}

/// [`KernelBackend::READBACK_EVERY`] of the GPU backend: at a few ms a step, the UI still
/// sees the steps in bursts of well under 0.1 s. (`selfdistill bench --read-every`
/// measures other values.)
pub const GPU_READBACK_EVERY: usize = 8;

/// A training backend: autodiff over a backend that has [`KernelBackend`] too (the teacher
/// and evaluation run on the inner backend).
pub trait TrainBackend: AutodiffBackend<InnerBackend: KernelBackend> + KernelBackend {}

impl<B> TrainBackend for B
where
    B: AutodiffBackend + KernelBackend,
    B::InnerBackend: KernelBackend,
{
}

/// The kernel's shape for f32 tensors, groups 1 and dilation 1; `None` sends the call to
/// Burn's own kernel.
fn flex_shape(
    x: &FlexTensor,
    weight: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<Conv2dShape> {
    if x.dtype() != DType::F32
        || weight.dtype() != DType::F32
        || options.groups != 1
        || options.dilation != [1, 1]
    {
        return None;
    }
    let xs = x.layout().shape().as_slice();
    let ws = weight.layout().shape().as_slice();
    let (&[batch, c_in, h, w], &[c_out, wc_in, kh, kw]) = (xs, ws) else {
        return None;
    };
    let shape = Conv2dShape {
        batch,
        c_in,
        h,
        w,
        c_out,
        kh,
        kw,
        stride: options.stride,
        pad: options.padding,
    };
    (wc_in == c_in && shape.out_hw().is_some()).then_some(shape)
}

/// `[n, c, hw]` for an f32 input whose per-channel tensors (f32, `[c]`) match.
fn bn_shape(x: &FlexTensor, per_channel: &[&FlexTensor]) -> Option<BnShape> {
    let &[n, c, hw] = x.layout().shape().as_slice() else {
        return None;
    };
    let ok = x.dtype() == DType::F32
        && per_channel
            .iter()
            .all(|t| t.dtype() == DType::F32 && t.layout().shape().as_slice() == [c]);
    ok.then_some(BnShape { n, c, hw })
}

/// One `[n, c, hw]` tensor and two per-channel `[c]` tensors.
fn bn_tensors(s: &BnShape, full: Vec<f32>, a: Vec<f32>, b: Vec<f32>) -> [FlexTensor; 3] {
    [
        flex_from(full, vec![s.n, s.c, s.hw]),
        flex_from(a, vec![s.c]),
        flex_from(b, vec![s.c]),
    ]
}

/// An f32 tensor with as many values as the batch-norm input.
fn same_size(t: &FlexTensor, s: &BnShape) -> bool {
    t.dtype() == DType::F32 && t.layout().shape().num_elements() == s.len()
}

fn contiguous(t: &FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

/// The values of a contiguous f32 tensor (`flex_shape` checked the dtype).
fn f32_slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 tensor")
}

fn flex_from(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

impl KernelBackend for Flex {
    fn keep_pool_warm() -> Option<pool::Warm> {
        pool::keep_warm()
    }

    fn fast_scale_shift(
        x: FlexTensor,
        scale: FlexTensor,
        shift: FlexTensor,
        residual: Option<FlexTensor>,
        relu: bool,
    ) -> Option<FlexTensor> {
        let s = bn_shape(&x, &[&scale, &shift])?;
        if !residual.as_ref().is_none_or(|r| same_size(r, &s)) {
            return None;
        }
        let [x, scale, shift] = [&x, &scale, &shift].map(contiguous);
        let residual = residual.as_ref().map(contiguous);
        let y = bn_kernel::scale_shift(
            &s,
            f32_slice(&x),
            f32_slice(&scale),
            f32_slice(&shift),
            Epilogue {
                residual: residual.as_ref().map(f32_slice),
                relu,
            },
        );
        Some(flex_from(y, vec![s.n, s.c, s.hw]))
    }

    fn fast_batch_norm(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
        residual: Option<FlexTensor>,
        relu: bool,
    ) -> Option<[FlexTensor; 3]> {
        let s = bn_shape(&x, &[&gamma, &beta])?;
        if !residual.as_ref().is_none_or(|r| same_size(r, &s)) {
            return None;
        }
        let (x, gamma, beta) = (contiguous(&x), contiguous(&gamma), contiguous(&beta));
        let residual = residual.as_ref().map(contiguous);
        let out = bn_kernel::forward(
            &s,
            f32_slice(&x),
            f32_slice(&gamma),
            f32_slice(&beta),
            epsilon,
            Epilogue {
                residual: residual.as_ref().map(f32_slice),
                relu,
            },
        );
        Some(bn_tensors(&s, out.y, out.mean, out.var))
    }

    fn fast_batch_norm_backward(
        x: FlexTensor,
        mean: FlexTensor,
        var: FlexTensor,
        gamma: FlexTensor,
        relu: Option<ReluState<FlexTensor>>,
        output_grad: FlexTensor,
        epsilon: f64,
        want_sum: bool,
    ) -> BnGrads<Self> {
        let beta = relu.as_ref().and_then(|r| r.beta.as_ref());
        let per_channel: Vec<&FlexTensor> = [&mean, &var, &gamma].into_iter().chain(beta).collect();
        let fits = bn_shape(&x, &per_channel).filter(|s| {
            same_size(&output_grad, s) && relu.as_ref().is_none_or(|r| same_size(&r.output, s))
        });
        let Some(s) = fits else {
            return batch_norm_backward_reference::<Flex>(
                x,
                mean,
                var,
                gamma,
                relu.map(|r| r.output),
                output_grad,
                epsilon,
                want_sum,
            );
        };
        let [x, mean, var, gamma, dy] = [&x, &mean, &var, &gamma, &output_grad].map(contiguous);
        // Recompute the mask where beta says no residual was added, else read the output.
        let mask = relu.map(|r| match r.beta {
            Some(beta) => (contiguous(&beta), true),
            None => (contiguous(&r.output), false),
        });
        let g = bn_kernel::backward(
            &s,
            f32_slice(&x),
            f32_slice(&mean),
            f32_slice(&var),
            f32_slice(&gamma),
            mask.as_ref().map(|(t, recompute)| match recompute {
                true => bn_kernel::Relu::Recompute { beta: f32_slice(t) },
                false => bn_kernel::Relu::Output(f32_slice(t)),
            }),
            f32_slice(&dy),
            epsilon,
            want_sum,
        );
        let [x, gamma, beta] = bn_tensors(&s, g.dx, g.dgamma, g.dbeta);
        let sum = want_sum.then(|| match g.masked_dy {
            Some(m) => flex_from(m, vec![s.n, s.c, s.hw]),
            None => dy,
        });
        BnGrads {
            x,
            gamma,
            beta,
            sum,
        }
    }

    fn fast_conv2d(
        x: FlexTensor,
        weight: FlexTensor,
        bias: Option<FlexTensor>,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        let bias_ok = bias.as_ref().is_none_or(|b| b.dtype() == DType::F32);
        let Some(s) = flex_shape(&x, &weight, &options).filter(|_| bias_ok) else {
            return Flex::conv2d(x, weight, bias, options);
        };
        let (x, weight) = (contiguous(&x), contiguous(&weight));
        let bias = bias.map(|b| contiguous(&b));
        let y = kernel::forward(
            &s,
            f32_slice(&x),
            f32_slice(&weight),
            bias.as_ref().map(f32_slice),
        );
        let [ho, wo] = s.out_hw().expect("checked by flex_shape");
        flex_from(y, vec![s.batch, s.c_out, ho, wo])
    }

    fn fast_conv2d_scale_shift(
        x: FlexTensor,
        weight: FlexTensor,
        options: ConvOptions<2>,
        scale: FlexTensor,
        shift: FlexTensor,
        residual: Option<FlexTensor>,
        relu: bool,
    ) -> Option<FlexTensor> {
        let s = flex_shape(&x, &weight, &options)?;
        let per_channel =
            |t: &FlexTensor| t.dtype() == DType::F32 && t.layout().shape().as_slice() == [s.c_out];
        let residual_fits = residual.as_ref().is_none_or(|r| {
            r.dtype() == DType::F32 && r.layout().shape().num_elements() == s.output_len()
        });
        if !(per_channel(&scale) && per_channel(&shift) && residual_fits) {
            return None;
        }
        let [x, weight, scale, shift] = [&x, &weight, &scale, &shift].map(contiguous);
        let residual = residual.as_ref().map(contiguous);
        let map = kernel::OutputMap {
            scale: Some(f32_slice(&scale)),
            shift: Some(f32_slice(&shift)),
            epilogue: Epilogue {
                residual: residual.as_ref().map(f32_slice),
                relu,
            },
        };
        let y = kernel::forward_mapped(&s, f32_slice(&x), f32_slice(&weight), &map);
        let [ho, wo] = s.out_hw().expect("checked by flex_shape");
        Some(flex_from(y, vec![s.batch, s.c_out, ho, wo]))
    }

    fn fast_conv2d_backward(
        x: FlexTensor,
        weight: FlexTensor,
        bias: Option<FlexTensor>,
        output_grad: FlexTensor,
        options: ConvOptions<2>,
        wants: Wants,
        dx_add: Option<FlexTensor>,
    ) -> ConvGrads<Self> {
        let fits = flex_shape(&x, &weight, &options)
            .filter(|_| output_grad.dtype() == DType::F32)
            .filter(|s| output_grad.layout().shape().num_elements() == s.output_len())
            .filter(|s| {
                dx_add.as_ref().is_none_or(|a| {
                    a.dtype() == DType::F32 && a.layout().shape().num_elements() == s.input_len()
                })
            });
        let Some(s) = fits else {
            // Burn's default path (the trait's provided method is not callable once
            // overridden, so spell it out).
            let gx = wants.x.then(|| {
                let g = Flex::conv2d_x_backward(
                    x.clone(),
                    weight.clone(),
                    output_grad.clone(),
                    options.clone(),
                );
                match dx_add {
                    Some(a) => Flex::float_add(g, a),
                    None => g,
                }
            });
            let gw = wants.weight.then(|| {
                Flex::conv2d_weight_backward(x.clone(), weight, output_grad.clone(), options)
            });
            let gb = match bias {
                Some(b) if wants.bias => Some(Flex::conv2d_bias_backward(x, b, output_grad)),
                _ => None,
            };
            return ConvGrads {
                x: gx,
                weight: gw,
                bias: gb,
            };
        };
        let (xc, wc, gc) = (
            contiguous(&x),
            contiguous(&weight),
            contiguous(&output_grad),
        );
        let wants = Wants {
            bias: wants.bias && bias.is_some(),
            ..wants
        };
        let add = dx_add.as_ref().map(contiguous);
        let g = kernel::backward_adding(
            &s,
            f32_slice(&xc),
            f32_slice(&wc),
            f32_slice(&gc),
            wants,
            add.as_ref().map(f32_slice),
        );
        ConvGrads {
            x: g.x.map(|v| flex_from(v, vec![s.batch, s.c_in, s.h, s.w])),
            weight: g
                .weight
                .map(|v| flex_from(v, vec![s.c_out, s.c_in, s.kh, s.kw])),
            bias: g.bias.map(|v| flex_from(v, vec![s.c_out])),
        }
    }
}

/// Takes the gradient already registered for the convolution's input (`$node`, `$x`),
/// when a consumer that ran backward earlier gave it one (a ResNet block's input: the
/// shortcut's gradient), so that the convolution adds it to its input gradient in its own
/// parallel pass; registered separately, Burn adds the two in a serial pass (~2% of a
/// ResNet-20 training step, with the pool idle). `Gradients::remove` looks the gradient
/// up by the node of the tensor it is given, so the handle is `$x` with `$node` set. (A
/// macro: the node's type is not nameable outside burn-autodiff.)
macro_rules! take_grad {
    ($B:ty, $grads:expr, $x:expr, $node:expr) => {
        $node.as_ref().and_then(|node| {
            let mut handle = <Autodiff<$B> as AutodiffBackend>::from_inner($x.clone());
            handle.node = node.clone();
            $grads.remove::<$B>(&handle)
        })
    };
}

/// Autodiff op without bias: parents (x, weight).
#[derive(Debug)]
struct ConvNoBias;
/// Autodiff op with bias: parents (x, weight, bias).
#[derive(Debug)]
struct ConvWithBias;

impl<B: KernelBackend> Backward<B, 2> for ConvNoBias {
    type State = (NodeId, NodeId, ConvOptions<2>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, cp: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (xs, ws, options) = ops.state;
        let x = cp.retrieve_node_output::<FloatTensor<B>>(xs);
        let w = cp.retrieve_node_output::<FloatTensor<B>>(ws);
        let wants = Wants {
            x: node_x.is_some(),
            weight: node_w.is_some(),
            bias: false,
        };
        let prior = take_grad!(B, grads, x, node_x);
        let g = B::fast_conv2d_backward(x, w, None, grad, options, wants, prior);
        if let (Some(node), Some(t)) = (node_x, g.x) {
            grads.register::<B>(node.id, t);
        }
        if let (Some(node), Some(t)) = (node_w, g.weight) {
            grads.register::<B>(node.id, t);
        }
    }
}

impl<B: KernelBackend> Backward<B, 3> for ConvWithBias {
    type State = (NodeId, NodeId, NodeId, ConvOptions<2>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, cp: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (xs, ws, bs, options) = ops.state;
        let x = cp.retrieve_node_output::<FloatTensor<B>>(xs);
        let w = cp.retrieve_node_output::<FloatTensor<B>>(ws);
        let b = cp.retrieve_node_output::<FloatTensor<B>>(bs);
        let wants = Wants {
            x: node_x.is_some(),
            weight: node_w.is_some(),
            bias: node_b.is_some(),
        };
        let prior = take_grad!(B, grads, x, node_x);
        let g = B::fast_conv2d_backward(x, w, Some(b), grad, options, wants, prior);
        for (node, t) in [(node_x, g.x), (node_w, g.weight), (node_b, g.bias)] {
            if let (Some(node), Some(t)) = (node, t) {
                grads.register::<B>(node.id, t);
            }
        }
    }
}

/// Input, mean, variance, gamma, the ReLU if one ended the op, epsilon: what the
/// batch-norm backward kernel needs.
type BnState<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    Option<ReluState<FloatTensor<B>>>,
    f64,
);

fn bn_grads<B: KernelBackend>(
    state: BnState<B>,
    grad: FloatTensor<B>,
    want_sum: bool,
) -> BnGrads<B> {
    let (x, mean, var, gamma, relu, epsilon) = state;
    B::fast_batch_norm_backward(x, mean, var, gamma, relu, grad, epsilon, want_sum)
}

/// Autodiff batch norm: parents (x, gamma, beta).
#[derive(Debug)]
struct BatchNormOp;
/// Autodiff batch norm plus a residual: parents (x, gamma, beta, residual).
#[derive(Debug)]
struct BatchNormResidualOp;

impl<B: KernelBackend> Backward<B, 3> for BatchNormOp {
    type State = BnState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _cp: &mut Checkpointer) {
        let g = bn_grads::<B>(ops.state, grads.consume::<B>(&ops.node), false);
        for (node, t) in ops.parents.into_iter().zip([g.x, g.gamma, g.beta]) {
            if let Some(node) = node {
                grads.register::<B>(node.id, t);
            }
        }
    }
}

impl<B: KernelBackend> Backward<B, 4> for BatchNormResidualOp {
    type State = BnState<B>;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _cp: &mut Checkpointer) {
        let g = bn_grads::<B>(ops.state, grads.consume::<B>(&ops.node), true);
        let sum = g.sum.expect("asked for the residual's gradient");
        for (node, t) in ops.parents.into_iter().zip([g.x, g.gamma, g.beta, sum]) {
            if let Some(node) = node {
                grads.register::<B>(node.id, t);
            }
        }
    }
}

impl<B: KernelBackend, C: CheckpointStrategy> KernelBackend for Autodiff<B, C> {
    const READBACK_EVERY: usize = B::READBACK_EVERY;

    fn keep_pool_warm() -> Option<pool::Warm> {
        B::keep_pool_warm()
    }

    fn fast_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        residual: Option<FloatTensor<Self>>,
        relu: bool,
    ) -> Option<[FloatTensor<Self>; 3]> {
        let [y, mean, var] = B::fast_batch_norm(
            x.primitive.clone(),
            gamma.primitive.clone(),
            beta.primitive.clone(),
            epsilon,
            residual.as_ref().map(|r| r.primitive.clone()),
            relu,
        )?;
        let relu = relu.then(|| ReluState {
            output: y.clone(),
            beta: residual.is_none().then(|| beta.primitive.clone()),
        });
        let state = (
            x.primitive,
            mean.clone(),
            var.clone(),
            gamma.primitive,
            relu,
            epsilon,
        );
        let y = match residual {
            None => match BatchNormOp
                .prepare::<C>([x.node, gamma.node, beta.node])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(state, y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            },
            Some(r) => match BatchNormResidualOp
                .prepare::<C>([x.node, gamma.node, beta.node, r.node])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(state, y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            },
        };
        Some([y, Self::from_inner(mean), Self::from_inner(var)])
    }

    fn fast_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        match bias {
            None => match ConvNoBias
                .prepare::<C>([x.node.clone(), weight.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let xs = prep.checkpoint(&x);
                    let ws = prep.checkpoint(&weight);
                    let out = B::fast_conv2d(x.primitive, weight.primitive, None, options.clone());
                    prep.finish((xs, ws, options), out)
                }
                OpsKind::UnTracked(prep) => {
                    prep.finish(B::fast_conv2d(x.primitive, weight.primitive, None, options))
                }
            },
            Some(bias) => match ConvWithBias
                .prepare::<C>([x.node.clone(), weight.node.clone(), bias.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let xs = prep.checkpoint(&x);
                    let ws = prep.checkpoint(&weight);
                    let bs = prep.checkpoint(&bias);
                    let out = B::fast_conv2d(
                        x.primitive,
                        weight.primitive,
                        Some(bias.primitive),
                        options.clone(),
                    );
                    prep.finish((xs, ws, bs, options), out)
                }
                OpsKind::UnTracked(prep) => prep.finish(B::fast_conv2d(
                    x.primitive,
                    weight.primitive,
                    Some(bias.primitive),
                    options,
                )),
            },
        }
    }
}

/// `conv.forward(x)` through [`KernelBackend::fast_conv2d`]: same parameters, same maths.
/// Padding the kernel cannot express (asymmetric, `Same` with an even kernel) goes to
/// burn-nn's own forward.
pub fn conv2d<B: KernelBackend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let Some(options) = conv_options(conv) else {
        return conv.forward(x);
    };
    let out = B::fast_conv2d(
        x.into_primitive().tensor(),
        conv.weight.val().into_primitive().tensor(),
        conv.bias
            .as_ref()
            .map(|b| b.val().into_primitive().tensor()),
        options,
    );
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// Global average pooling, `[n, c, h, w]` to `[n, c]`: each channel plane's mean, as one
/// reduction over the contiguous `[n, c, h * w]` view. (burn-nn's `AdaptiveAvgPool2d` to
/// 1x1 walks flex's planes one element at a time through a function pointer: 4% of a CNN
/// inference step in the profile.)
pub fn global_avg_pool<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c])
}

/// The layer's options for the backend's ops: symmetric padding only (others go to
/// burn-nn's `forward`).
fn conv_options<B: Backend>(conv: &Conv2d<B>) -> Option<ConvOptions<2>> {
    let padding = match conv.padding {
        PaddingConfig2d::Valid => [0, 0],
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            [top, left]
        }
        _ => return None,
    };
    Some(ConvOptions::new(
        conv.stride,
        padding,
        conv.dilation,
        conv.groups,
    ))
}

/// `conv` (without bias) followed by `* scale[c] + shift[c]`, `+ residual` and a ReLU as
/// asked, in one pass where the backend has a kernel for it
/// ([`KernelBackend::fast_conv2d_scale_shift`]); `None` otherwise.
pub fn conv2d_scale_shift<B: KernelBackend>(
    conv: &Conv2d<B>,
    x: Tensor<B, 4>,
    scale: Tensor<B, 1>,
    shift: Tensor<B, 1>,
    residual: Option<Tensor<B, 4>>,
    relu: bool,
) -> Option<Tensor<B, 4>> {
    if conv.bias.is_some() {
        return None;
    }
    let out = B::fast_conv2d_scale_shift(
        x.into_primitive().tensor(),
        conv.weight.val().into_primitive().tensor(),
        conv_options(conv)?,
        scale.into_primitive().tensor(),
        shift.into_primitive().tensor(),
        residual.map(|r| r.into_primitive().tensor()),
        relu,
    )?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(out)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::flex::FlexDevice;
    use burn::nn::conv::Conv2dConfig;

    type Ad = Autodiff<Flex>;

    trait MaxAbsDiff: Backend {
        fn float_max_abs_diff(a: FloatTensor<Self>, b: FloatTensor<Self>) -> f32;
    }

    impl MaxAbsDiff for Flex {
        fn float_max_abs_diff(a: FlexTensor, b: FlexTensor) -> f32 {
            let (a, b) = (
                a.into_data().to_vec::<f32>().unwrap(),
                b.into_data().to_vec::<f32>().unwrap(),
            );
            assert_eq!(a.len(), b.len());
            a.iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max)
        }
    }

    fn max_diff<const D: usize>(a: Tensor<Ad, D>, b: Tensor<Ad, D>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    fn grad_diff<const D: usize>(
        a: &Tensor<Ad, D>,
        ga: &<Ad as burn::tensor::backend::AutodiffBackend>::Gradients,
        gb: &<Ad as burn::tensor::backend::AutodiffBackend>::Gradients,
    ) -> f32 {
        let (x, y) = (a.grad(ga).unwrap(), a.grad(gb).unwrap());
        (x - y).abs().max().into_scalar()
    }

    /// Forward and all gradients equal burn-nn's `Conv2d` (the reference) for the layer
    /// kinds the models use and a biased, strided one.
    #[test]
    fn matches_burn_conv2d_forward_and_gradients() {
        let _rng = crate::model::rng_lock();
        let device = FlexDevice;
        let configs = [
            Conv2dConfig::new([3, 8], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false),
            Conv2dConfig::new([4, 6], [3, 3])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)),
            Conv2dConfig::new([4, 5], [1, 1])
                .with_stride([2, 2])
                .with_bias(false),
            Conv2dConfig::new([2, 3], [3, 2]).with_stride([1, 2]),
        ];
        for (t, config) in configs.iter().enumerate() {
            Ad::seed(&device, 10 + t as u64);
            let conv: Conv2d<Ad> = config.init(&device);
            let cin = config.channels[0];
            let x = Tensor::<Ad, 4>::random(
                [5, cin, 9, 8],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &device,
            )
            .require_grad();
            // These layers take the hand-written path, not the fallback to Burn's kernel.
            let x_inner = Tensor::<Flex, 4>::zeros([5, cin, 9, 8], &device);
            let options = ConvOptions::new(
                conv.stride,
                match conv.padding {
                    PaddingConfig2d::Explicit(t, l, ..) => [t, l],
                    _ => [0, 0],
                },
                conv.dilation,
                conv.groups,
            );
            let shape = flex_shape(
                &x_inner.into_primitive().tensor(),
                &conv.weight.val().inner().into_primitive().tensor(),
                &options,
            );
            assert!(shape.is_some(), "config {t} must use the fast kernel");
            let reference = conv.forward(x.clone());
            let ours = conv2d(&conv, x.clone());
            assert_eq!(reference.dims(), ours.dims());
            assert!(
                max_diff(reference.clone(), ours.clone()) < 1e-4,
                "forward {t}"
            );
            // A loss that weights every output differently.
            let weights = Tensor::<Ad, 4>::random(
                reference.dims(),
                burn::tensor::Distribution::Uniform(-1.0, 1.0),
                &device,
            );
            let g_ref = (reference * weights.clone()).sum().backward();
            let g_ours = (ours * weights).sum().backward();
            assert!(grad_diff(&x, &g_ref, &g_ours) < 1e-4, "x grad {t}");
            let w = conv.weight.val();
            assert!(grad_diff(&w, &g_ref, &g_ours) < 1e-3, "weight grad {t}");
            if let Some(b) = &conv.bias {
                assert!(grad_diff(&b.val(), &g_ref, &g_ours) < 1e-3, "bias grad {t}");
            }
        }
    }

    /// An input with two consumers gets the sum of their gradients when a convolution adds
    /// the other consumer's gradient in its own pass (`take_grad!`): a ResNet block's
    /// identity shortcut (the add runs backward first), and a downsampling block's two
    /// convolutions of the same input (same depth, either order).
    #[test]
    fn input_gradient_of_two_consumers_is_their_sum() {
        let _rng = crate::model::rng_lock();
        let device = FlexDevice;
        Ad::seed(&device, 77);
        let pad = PaddingConfig2d::Explicit(1, 1, 1, 1);
        let same: Conv2d<Ad> = Conv2dConfig::new([4, 4], [3, 3])
            .with_padding(pad.clone())
            .with_bias(false)
            .init(&device);
        let down: Conv2d<Ad> = Conv2dConfig::new([4, 6], [3, 3])
            .with_stride([2, 2])
            .with_padding(pad)
            .with_bias(false)
            .init(&device);
        let short: Conv2d<Ad> = Conv2dConfig::new([4, 6], [1, 1])
            .with_stride([2, 2])
            .with_bias(false)
            .init(&device);
        let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
        let x = Tensor::<Ad, 4>::random([3, 4, 8, 8], normal, &device).require_grad();
        let wa = Tensor::<Ad, 4>::random([3, 4, 8, 8], normal, &device);
        let wb = Tensor::<Ad, 4>::random([3, 6, 4, 4], normal, &device);
        // The same graph through Burn's convolution (reference) and ours.
        let loss = |ours: bool| {
            let f = |c: &Conv2d<Ad>, x: Tensor<Ad, 4>| {
                if ours {
                    conv2d(c, x)
                } else {
                    c.forward(x)
                }
            };
            // Identity shortcut, then the two convolutions of one input, on a block
            // output that itself has two consumers.
            let h = (f(&same, x.clone()) + x.clone()).tanh();
            let o = f(&down, h.clone()) + f(&short, h.clone());
            (o * wb.clone()).sum() + (h * wa.clone()).sum()
        };
        let (g_ref, g_ours) = (loss(false).backward(), loss(true).backward());
        let dx = grad_diff(&x, &g_ref, &g_ours);
        assert!(dx < 1e-4, "x grad: max abs diff {dx}");
        for (name, c) in [("same", &same), ("down", &down), ("short", &short)] {
            let d = grad_diff(&c.weight.val(), &g_ref, &g_ours);
            assert!(d < 1e-3, "{name} weight grad: max abs diff {d}");
        }
    }

    /// The flex batch-norm kernel takes f32 `[n, c, hw]` inputs, and its gradients equal the
    /// tensor-op formula (the trait's default, and what CUDA would use).
    #[test]
    fn batch_norm_kernel_gradients_match_the_reference() {
        let _rng = crate::model::rng_lock();
        let device = FlexDevice;
        Flex::seed(&device, 5);
        let normal = burn::tensor::Distribution::Normal(0.5, 2.0);
        let x = Tensor::<Flex, 3>::random([6, 4, 10], normal, &device);
        let gamma = Tensor::<Flex, 1>::from_floats([1.0, -0.5, 2.0, 0.3], &device);
        let beta = Tensor::<Flex, 1>::from_floats([0.0, 0.1, -0.2, 0.5], &device);
        let dy = Tensor::<Flex, 3>::random([6, 4, 10], normal, &device);
        let p = |t: Tensor<Flex, 3>| t.into_primitive().tensor();
        let q = |t: Tensor<Flex, 1>| t.into_primitive().tensor();
        // Without and with the fused ReLU.
        for relu in [false, true] {
            let [y, mean, var] = Flex::fast_batch_norm(
                p(x.clone()),
                q(gamma.clone()),
                q(beta.clone()),
                1e-5,
                None,
                relu,
            )
            .expect("f32 [n, c, hw] takes the kernel");
            // The ReLU's mask read from the output, or recomputed from x with beta.
            let relus = match relu {
                false => vec![None],
                true => vec![
                    Some(ReluState {
                        output: y.clone(),
                        beta: None,
                    }),
                    Some(ReluState {
                        output: y,
                        beta: Some(q(beta.clone())),
                    }),
                ],
            };
            // The kernel fuses the ReLU mask differently with and without the sum.
            for (relu_state, want_sum) in relus
                .into_iter()
                .flat_map(|r| [(r.clone(), false), (r, true)])
            {
                let args = || {
                    (
                        p(x.clone()),
                        mean.clone(),
                        var.clone(),
                        q(gamma.clone()),
                        relu_state.clone(),
                        p(dy.clone()),
                    )
                };
                let (a, b, c, d, e, f) = args();
                let ours = Flex::fast_batch_norm_backward(a, b, c, d, e, f, 1e-5, want_sum);
                let (a, b, c, d, e, f) = args();
                let e = e.map(|r| r.output);
                let reference =
                    batch_norm_backward_reference::<Flex>(a, b, c, d, e, f, 1e-5, want_sum);
                assert_eq!(ours.sum.is_some(), want_sum);
                assert_eq!(reference.sum.is_some(), want_sum);
                let mut pairs = vec![
                    ("x", ours.x, reference.x),
                    ("gamma", ours.gamma, reference.gamma),
                    ("beta", ours.beta, reference.beta),
                ];
                if let (Some(o), Some(r)) = (ours.sum, reference.sum) {
                    pairs.push(("sum", o, r));
                }
                for (name, o, r) in pairs {
                    let diff = Flex::float_max_abs_diff(o, r);
                    assert!(
                        diff < 1e-4,
                        "relu {relu}, sum {want_sum}, gradient of {name}: max abs diff {diff}"
                    );
                }
            }
        }
        // Other ranks go to the tensor-op version.
        let x4 = Tensor::<Flex, 4>::zeros([2, 4, 3, 3], &device)
            .into_primitive()
            .tensor();
        let g = Tensor::<Flex, 1>::ones([4], &device);
        assert!(Flex::fast_batch_norm(x4, q(g.clone()), q(g.clone()), 1e-5, None, false).is_none());
        // So does a residual of another size.
        let r = Tensor::<Flex, 3>::zeros([6, 4, 9], &device);
        assert!(Flex::fast_batch_norm(p(x), q(g.clone()), q(g), 1e-5, Some(p(r)), true).is_none());
    }

    /// Global average pooling equals burn-nn's adaptive pooling to 1x1, output and input
    /// gradient.
    #[test]
    fn global_avg_pool_matches_adaptive_pooling() {
        let _rng = crate::model::rng_lock();
        use burn::nn::pool::AdaptiveAvgPool2dConfig;
        let device = FlexDevice;
        Ad::seed(&device, 8);
        let x = Tensor::<Ad, 4>::random(
            [3, 5, 7, 6],
            burn::tensor::Distribution::Normal(1.0, 2.0),
            &device,
        )
        .require_grad();
        let reference: Tensor<Ad, 2> = AdaptiveAvgPool2dConfig::new([1, 1])
            .init()
            .forward(x.clone())
            .flatten(1, 3);
        let ours = global_avg_pool(x.clone());
        assert_eq!(ours.dims(), [3, 5]);
        assert!(max_diff(reference.clone(), ours.clone()) < 1e-5);
        let weights = Tensor::<Ad, 2>::random(
            [3, 5],
            burn::tensor::Distribution::Uniform(-1.0, 1.0),
            &device,
        );
        let g_ref = (reference * weights.clone()).sum().backward();
        let g_ours = (ours * weights).sum().backward();
        assert!(grad_diff(&x, &g_ref, &g_ours) < 1e-6);
    }

    /// Without autodiff (the teacher and evaluation path) the output is the same too.
    #[test]
    fn inner_backend_forward_matches() {
        let _rng = crate::model::rng_lock();
        let device = FlexDevice;
        Flex::seed(&device, 3);
        let conv: Conv2d<Flex> = Conv2dConfig::new([3, 4], [3, 3])
            .with_stride([2, 2])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(&device);
        let x = Tensor::<Flex, 4>::random(
            [3, 3, 7, 7],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let diff: f32 = (conv.forward(x.clone()) - conv2d(&conv, x))
            .abs()
            .max()
            .into_scalar();
        assert!(diff < 1e-4);
    }
}
