//! Convolution as a backend extension (Burn's custom-op pattern): a [`ConvBackend`] trait
//! with Burn's own kernels as the default, the CPU kernels of [`crate::kernels::conv2d`] for
//! flex, and an autodiff op whose backward pass computes the input and weight gradients
//! together. CUDA keeps Burn's kernels.

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
use burn::tensor::ops::{ConvOptions, FloatTensor, ModuleOps};
use burn::tensor::{DType, TensorPrimitive};

use crate::kernels::conv2d::{self as kernel, Conv2dShape, Wants};

/// Gradients of a convolution, each present when asked for.
pub struct ConvGrads<B: Backend> {
    pub x: Option<FloatTensor<B>>,
    pub weight: Option<FloatTensor<B>>,
    pub bias: Option<FloatTensor<B>>,
}

/// Backends with a (possibly faster) 2-D convolution. The defaults are Burn's own ops.
pub trait ConvBackend: Backend {
    fn fast_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d(x, weight, bias, options)
    }

    fn fast_conv2d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
        wants: Wants,
    ) -> ConvGrads<Self> {
        let gx = wants.x.then(|| {
            Self::conv2d_x_backward(
                x.clone(),
                weight.clone(),
                output_grad.clone(),
                options.clone(),
            )
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

#[cfg(feature = "cuda")]
impl ConvBackend for burn::backend::Cuda {}

/// A training backend: autodiff over a backend that has [`ConvBackend`] too (the teacher
/// and evaluation run on the inner backend).
pub trait TrainBackend: AutodiffBackend<InnerBackend: ConvBackend> + ConvBackend {}

impl<B> TrainBackend for B
where
    B: AutodiffBackend + ConvBackend,
    B::InnerBackend: ConvBackend,
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

impl ConvBackend for Flex {
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

    fn fast_conv2d_backward(
        x: FlexTensor,
        weight: FlexTensor,
        bias: Option<FlexTensor>,
        output_grad: FlexTensor,
        options: ConvOptions<2>,
        wants: Wants,
    ) -> ConvGrads<Self> {
        let fits = flex_shape(&x, &weight, &options)
            .filter(|_| output_grad.dtype() == DType::F32)
            .filter(|s| output_grad.layout().shape().num_elements() == s.output_len());
        let Some(s) = fits else {
            // Burn's default path (the trait's provided method is not callable once
            // overridden, so spell it out).
            let gx = wants.x.then(|| {
                Flex::conv2d_x_backward(
                    x.clone(),
                    weight.clone(),
                    output_grad.clone(),
                    options.clone(),
                )
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
        let g = kernel::backward(&s, f32_slice(&xc), f32_slice(&wc), f32_slice(&gc), wants);
        ConvGrads {
            x: g.x.map(|v| flex_from(v, vec![s.batch, s.c_in, s.h, s.w])),
            weight: g
                .weight
                .map(|v| flex_from(v, vec![s.c_out, s.c_in, s.kh, s.kw])),
            bias: g.bias.map(|v| flex_from(v, vec![s.c_out])),
        }
    }
}

/// Autodiff op without bias: parents (x, weight).
#[derive(Debug)]
struct ConvNoBias;
/// Autodiff op with bias: parents (x, weight, bias).
#[derive(Debug)]
struct ConvWithBias;

impl<B: ConvBackend> Backward<B, 2> for ConvNoBias {
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
        let g = B::fast_conv2d_backward(x, w, None, grad, options, wants);
        if let (Some(node), Some(t)) = (node_x, g.x) {
            grads.register::<B>(node.id, t);
        }
        if let (Some(node), Some(t)) = (node_w, g.weight) {
            grads.register::<B>(node.id, t);
        }
    }
}

impl<B: ConvBackend> Backward<B, 3> for ConvWithBias {
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
        let g = B::fast_conv2d_backward(x, w, Some(b), grad, options, wants);
        for (node, t) in [(node_x, g.x), (node_w, g.weight), (node_b, g.bias)] {
            if let (Some(node), Some(t)) = (node, t) {
                grads.register::<B>(node.id, t);
            }
        }
    }
}

impl<B: ConvBackend, C: CheckpointStrategy> ConvBackend for Autodiff<B, C> {
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

/// `conv.forward(x)` through [`ConvBackend::fast_conv2d`]: same parameters, same maths.
/// Padding the kernel cannot express (asymmetric, `Same` with an even kernel) goes to
/// burn-nn's own forward.
pub fn conv2d<B: ConvBackend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let padding = match conv.padding {
        PaddingConfig2d::Valid => Some([0, 0]),
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            Some([top, left])
        }
        _ => None,
    };
    let Some(padding) = padding else {
        return conv.forward(x);
    };
    let options = ConvOptions::new(conv.stride, padding, conv.dilation, conv.groups);
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::flex::FlexDevice;
    use burn::nn::conv::Conv2dConfig;

    type Ad = Autodiff<Flex>;

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

    /// Without autodiff (the teacher and evaluation path) the output is the same too.
    #[test]
    fn inner_backend_forward_matches() {
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
