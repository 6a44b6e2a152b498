use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;

#[derive(Config, Debug)]
pub struct MlpConfig {
    pub inputs: usize,
    pub hidden: usize,
    pub classes: usize,
}

/// Two hidden ReLU layers on the flattened image.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    fc1: Linear<B>,
    fc2: Linear<B>,
    out: Linear<B>,
}

impl MlpConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> Mlp<B> {
        Mlp {
            fc1: LinearConfig::new(self.inputs, self.hidden).init(device),
            fc2: LinearConfig::new(self.hidden, self.hidden).init(device),
            out: LinearConfig::new(self.hidden, self.classes).init(device),
        }
    }
}

impl<B: Backend> Mlp<B> {
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let x: Tensor<B, 2> = images.flatten(1, 3);
        let x = relu(self.fc1.forward(x));
        let x = relu(self.fc2.forward(x));
        self.out.forward(x)
    }
}
