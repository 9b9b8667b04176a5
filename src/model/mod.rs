//! The policy network's shape, its parameter arena and initialisation.
//!
//! Network (DESIGN.md): 4×84×84 uint8 frames ÷255 → conv 8×8/4 → 32 → conv 4×4/2 → 64 →
//! conv 3×3/1 → C3 → flatten → fc 512, ReLU after each; policy head (A logits) and value head (1).
//! Parameters of one agent live in one flat f32 buffer; `ParamLayout` names the views into it
//! with PyTorch names and layouts (`conv1.weight` is [out, in, kh, kw], `fc.weight` [out, in]),
//! in the order a PyTorch module declaring the same layers lists its `parameters()`.

pub mod init;

use serde::{Deserialize, Serialize};

pub use init::init_params;

/// Frames stacked per observation.
pub const FRAME_STACK: usize = 4;
/// Observation side (pixels).
pub const FRAME_HW: usize = 84;
/// Bytes in one observation (one frame stack).
pub const OBS_BYTES: usize = FRAME_STACK * FRAME_HW * FRAME_HW;

/// Network presets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NetPreset {
    /// GALA's released code (Kostrikov's ACKTR trunk): conv 32-64-32, fc 512.
    Gala,
    /// The Nature DQN / baselines `nature_cnn` trunk: conv 32-64-64, fc 512.
    Nature,
}

impl NetPreset {
    pub fn conv3_channels(self) -> usize {
        match self {
            NetPreset::Gala => 32,
            NetPreset::Nature => 64,
        }
    }
}

/// One convolution layer's geometry (square kernels, no padding, as in the DQN trunk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub in_hw: usize,
    pub out_hw: usize,
}

impl ConvShape {
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize, stride: usize, in_hw: usize) -> Self {
        assert!(in_hw >= kernel, "conv input {in_hw} smaller than kernel {kernel}");
        let out_hw = (in_hw - kernel) / stride + 1;
        ConvShape { in_channels, out_channels, kernel, stride, in_hw, out_hw }
    }
    /// Rows of the implicit-GEMM reduction: in_channels·kh·kw.
    pub fn patch_len(&self) -> usize {
        self.in_channels * self.kernel * self.kernel
    }
    pub fn in_len(&self) -> usize {
        self.in_channels * self.in_hw * self.in_hw
    }
    pub fn out_pixels(&self) -> usize {
        self.out_hw * self.out_hw
    }
    pub fn out_len(&self) -> usize {
        self.out_channels * self.out_pixels()
    }
}

/// The full network shape for a preset and an action count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    pub preset: NetPreset,
    pub convs: [ConvShape; 3],
    pub hidden: usize,
    pub actions: usize,
}

impl NetSpec {
    pub fn new(preset: NetPreset, actions: usize) -> Self {
        assert!(actions >= 1, "a policy needs at least one action");
        let c1 = ConvShape::new(FRAME_STACK, 32, 8, 4, FRAME_HW);
        let c2 = ConvShape::new(32, 64, 4, 2, c1.out_hw);
        let c3 = ConvShape::new(64, preset.conv3_channels(), 3, 1, c2.out_hw);
        NetSpec { preset, convs: [c1, c2, c3], hidden: 512, actions }
    }

    /// Features entering the fc layer: C3·7·7.
    pub fn flat_features(&self) -> usize {
        self.convs[2].out_len()
    }

    pub fn layout(&self) -> ParamLayout {
        ParamLayout::new(self)
    }
}

/// How a tensor is initialised (DESIGN.md: orthogonal with these gains, zero biases).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InitRule {
    Orthogonal { gain: f64 },
    Zeros,
}

/// A named view into an agent's flat parameter buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorView {
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub len: usize,
    pub init: InitRule,
}

impl TensorView {
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// Indices into `ParamLayout::tensors`, so hot code does not look tensors up by name.
pub mod tensor {
    pub const CONV_W: [usize; 3] = [0, 2, 4];
    pub const CONV_B: [usize; 3] = [1, 3, 5];
    pub const FC_W: usize = 6;
    pub const FC_B: usize = 7;
    pub const ACTOR_W: usize = 8;
    pub const ACTOR_B: usize = 9;
    pub const CRITIC_W: usize = 10;
    pub const CRITIC_B: usize = 11;
}

/// The ordered list of an agent's tensors and their offsets in its flat buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamLayout {
    pub tensors: Vec<TensorView>,
    pub total: usize,
}

impl ParamLayout {
    fn new(spec: &NetSpec) -> Self {
        let relu_gain = 2f64.sqrt();
        let mut tensors = Vec::new();
        let mut offset = 0;
        let mut push = |name: &'static str, shape: Vec<usize>, init: InitRule| {
            let len = shape.iter().product();
            tensors.push(TensorView { name, shape, offset, len, init });
            offset += len;
        };
        const CONV_NAMES: [(&str, &str); 3] =
            [("conv1.weight", "conv1.bias"), ("conv2.weight", "conv2.bias"), ("conv3.weight", "conv3.bias")];
        for (c, (w, b)) in spec.convs.iter().zip(CONV_NAMES) {
            push(w, vec![c.out_channels, c.in_channels, c.kernel, c.kernel], InitRule::Orthogonal { gain: relu_gain });
            push(b, vec![c.out_channels], InitRule::Zeros);
        }
        push("fc.weight", vec![spec.hidden, spec.flat_features()], InitRule::Orthogonal { gain: relu_gain });
        push("fc.bias", vec![spec.hidden], InitRule::Zeros);
        push("actor.weight", vec![spec.actions, spec.hidden], InitRule::Orthogonal { gain: 0.01 });
        push("actor.bias", vec![spec.actions], InitRule::Zeros);
        push("critic.weight", vec![1, spec.hidden], InitRule::Orthogonal { gain: 1.0 });
        push("critic.bias", vec![1], InitRule::Zeros);
        ParamLayout { tensors, total: offset }
    }

    pub fn get(&self, name: &str) -> Option<&TensorView> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The sub-slice of one agent's parameters holding tensor `index`.
    pub fn view<'a, T>(&self, params: &'a [T], index: usize) -> &'a [T] {
        &params[self.tensors[index].range()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gala_preset_has_the_papers_parameter_count() {
        assert_eq!(NetSpec::new(NetPreset::Gala, 6).layout().total, 866_439);
    }

    #[test]
    fn shapes_follow_the_dqn_trunk() {
        let s = NetSpec::new(NetPreset::Nature, 4);
        assert_eq!([s.convs[0].out_hw, s.convs[1].out_hw, s.convs[2].out_hw], [20, 9, 7]);
        assert_eq!(s.flat_features(), 64 * 49);
        let l = s.layout();
        assert_eq!(l.get("conv2.weight").unwrap().shape, vec![64, 32, 4, 4]);
        assert_eq!(l.get("fc.weight").unwrap().shape, vec![512, 3136]);
        assert_eq!(l.tensors[tensor::CRITIC_B].name, "critic.bias");
        assert_eq!(l.tensors[tensor::ACTOR_W].name, "actor.weight");
    }
}
