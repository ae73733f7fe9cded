//! A small API for writing graphs with torchvision's module paths as names.
//!
//! ```
//! use qvision_graph::{GraphBuilder, builder::Conv, Activation};
//! let mut b = GraphBuilder::new("tiny");
//! let x = b.input("input", &[1, 3, 8, 8]);
//! let x = b.conv2d("conv1", x, Conv::new(3, 4, 3).pad(1).bias(false));
//! let x = b.batch_norm("bn1", x, 4);
//! let x = b.act("relu", x, Activation::Relu);
//! let g = b.finish(&[x]);
//! assert!(g.param_id("bn1.running_var").is_some());
//! ```

use crate::ir::{Graph, Node, NodeId, Value, ValueId, ValueKind};
use crate::op::Op;
use qvision_kernels::conv::Conv2dParams;
use qvision_kernels::elementwise::BinaryOp;
use qvision_kernels::pool::Pool2dParams;
use qvision_kernels::Activation;
use qvision_tensor::{DType, Tensor};
use std::collections::HashSet;

/// Geometry of a `Conv2d` module, in torch's argument order.
#[derive(Clone, Copy, Debug)]
pub struct Conv {
    pub cin: usize,
    pub cout: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
    pub bias: bool,
}

impl Conv {
    /// A square-kernel conv with stride 1, no padding, one group and a bias (torch's defaults).
    pub fn new(cin: usize, cout: usize, k: usize) -> Self {
        Conv {
            cin,
            cout,
            kernel: [k, k],
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
            bias: true,
        }
    }
    pub fn kernel2(mut self, kh: usize, kw: usize) -> Self {
        self.kernel = [kh, kw];
        self
    }
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = [s, s];
        self
    }
    pub fn pad(mut self, p: usize) -> Self {
        self.padding = [p, p];
        self
    }
    pub fn pad2(mut self, ph: usize, pw: usize) -> Self {
        self.padding = [ph, pw];
        self
    }
    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = [d, d];
        self
    }
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
    pub fn bias(mut self, b: bool) -> Self {
        self.bias = b;
        self
    }
}

/// Pooling window in torch's argument order (`stride` defaults to the kernel size).
pub fn pool(k: usize, stride: usize, padding: usize, ceil_mode: bool) -> Pool2dParams {
    Pool2dParams {
        kernel: [k, k],
        stride: [stride, stride],
        padding: [padding, padding],
        dilation: [1, 1],
        ceil_mode,
    }
}

/// Builds a [`Graph`] node by node.
pub struct GraphBuilder {
    g: Graph,
    names: HashSet<String>,
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        GraphBuilder {
            g: Graph {
                name: name.to_string(),
                ..Default::default()
            },
            names: HashSet::new(),
        }
    }

    fn value(
        &mut self,
        name: String,
        kind: ValueKind,
        dtype: DType,
        shape: Option<Vec<usize>>,
    ) -> ValueId {
        self.g.values.push(Value {
            name,
            kind,
            dtype,
            shape,
        });
        ValueId(self.g.values.len() - 1)
    }

    fn unique(&mut self, name: &str) -> String {
        let mut n = name.to_string();
        let mut i = 1;
        while !self.names.insert(n.clone()) {
            n = format!("{name}_{i}");
            i += 1;
        }
        n
    }

    /// A graph input with an example shape (dim 0 is the batch).
    pub fn input(&mut self, name: &str, shape: &[usize]) -> ValueId {
        let id = self.value(
            name.to_string(),
            ValueKind::Input,
            DType::F32,
            Some(shape.to_vec()),
        );
        self.g.inputs.push(id);
        id
    }

    /// A learnable f32 parameter or buffer named by its state-dict key.
    pub fn param(&mut self, name: &str, shape: &[usize]) -> ValueId {
        self.value(
            name.to_string(),
            ValueKind::Param { optional: false },
            DType::F32,
            Some(shape.to_vec()),
        )
    }

    /// A state-dict entry a weights file may omit (e.g. `num_batches_tracked`).
    pub fn optional_param(&mut self, name: &str, shape: &[usize], dtype: DType) -> ValueId {
        self.value(
            name.to_string(),
            ValueKind::Param { optional: true },
            dtype,
            Some(shape.to_vec()),
        )
    }

    /// A constant tensor (not loaded from weights).
    pub fn constant(&mut self, name: &str, t: Tensor) -> ValueId {
        let id = self.value(
            name.to_string(),
            ValueKind::Const,
            t.dtype(),
            Some(t.shape().to_vec()),
        );
        self.g.tensors.insert(id, t);
        id
    }

    /// Add a node with `n_out` outputs.
    pub fn node(&mut self, name: &str, op: Op, inputs: &[ValueId], n_out: usize) -> Vec<ValueId> {
        let name = self.unique(name);
        let node = NodeId(self.g.nodes.len());
        let outputs: Vec<ValueId> = (0..n_out)
            .map(|index| {
                let vname = if n_out == 1 {
                    name.clone()
                } else {
                    format!("{name}:{index}")
                };
                self.value(
                    vname,
                    ValueKind::NodeOutput { node, index },
                    DType::F32,
                    None,
                )
            })
            .collect();
        self.g.nodes.push(Node {
            name,
            op,
            inputs: inputs.to_vec(),
            outputs: outputs.clone(),
        });
        outputs
    }

    /// Add a single-output node.
    pub fn node1(&mut self, name: &str, op: Op, inputs: &[ValueId]) -> ValueId {
        self.node(name, op, inputs, 1)[0]
    }

    /// `nn.Conv2d` with parameters `{name}.weight` and `{name}.bias`.
    pub fn conv2d(&mut self, name: &str, x: ValueId, c: Conv) -> ValueId {
        let w = self.param(
            &format!("{name}.weight"),
            &[c.cout, c.cin / c.groups.max(1), c.kernel[0], c.kernel[1]],
        );
        let mut ins = vec![x, w];
        if c.bias {
            ins.push(self.param(&format!("{name}.bias"), &[c.cout]));
        }
        let params = Conv2dParams {
            in_channels: c.cin,
            out_channels: c.cout,
            kernel: c.kernel,
            stride: c.stride,
            padding: c.padding,
            dilation: c.dilation,
            groups: c.groups,
        };
        let op = Op::Conv2d {
            params,
            act: None,
            residual: false,
        };
        self.node1(name, op, &ins)
    }

    /// `nn.BatchNorm2d(c)` with eps 1e-5.
    pub fn batch_norm(&mut self, name: &str, x: ValueId, c: usize) -> ValueId {
        self.batch_norm_eps(name, x, c, 1e-5)
    }

    pub fn batch_norm_eps(&mut self, name: &str, x: ValueId, c: usize, eps: f32) -> ValueId {
        let ins = [
            x,
            self.param(&format!("{name}.weight"), &[c]),
            self.param(&format!("{name}.bias"), &[c]),
            self.param(&format!("{name}.running_mean"), &[c]),
            self.param(&format!("{name}.running_var"), &[c]),
        ];
        self.optional_param(&format!("{name}.num_batches_tracked"), &[], DType::I64);
        self.node1(name, Op::BatchNorm2d { eps }, &ins)
    }

    /// `nn.LayerNorm(c)` over the last axis.
    pub fn layer_norm(&mut self, name: &str, x: ValueId, c: usize, eps: f32) -> ValueId {
        let ins = [
            x,
            self.param(&format!("{name}.weight"), &[c]),
            self.param(&format!("{name}.bias"), &[c]),
        ];
        self.node1(name, Op::LayerNorm { eps }, &ins)
    }

    /// `nn.Linear(cin, cout, bias)`.
    pub fn linear(
        &mut self,
        name: &str,
        x: ValueId,
        cin: usize,
        cout: usize,
        bias: bool,
    ) -> ValueId {
        let mut ins = vec![x, self.param(&format!("{name}.weight"), &[cout, cin])];
        if bias {
            ins.push(self.param(&format!("{name}.bias"), &[cout]));
        }
        self.node1(name, Op::Linear { act: None }, &ins)
    }

    pub fn act(&mut self, name: &str, x: ValueId, a: Activation) -> ValueId {
        self.node1(name, Op::Act(a), &[x])
    }

    pub fn max_pool(&mut self, name: &str, x: ValueId, p: Pool2dParams) -> ValueId {
        self.node1(name, Op::MaxPool2d(p), &[x])
    }

    pub fn avg_pool(
        &mut self,
        name: &str,
        x: ValueId,
        p: Pool2dParams,
        count_include_pad: bool,
    ) -> ValueId {
        self.node1(
            name,
            Op::AvgPool2d {
                pool: p,
                count_include_pad,
            },
            &[x],
        )
    }

    pub fn adaptive_avg_pool(&mut self, name: &str, x: ValueId, oh: usize, ow: usize) -> ValueId {
        self.node1(name, Op::AdaptiveAvgPool2d { output: [oh, ow] }, &[x])
    }

    pub fn add(&mut self, name: &str, a: ValueId, b: ValueId) -> ValueId {
        self.node1(name, Op::Binary(BinaryOp::Add), &[a, b])
    }

    pub fn mul(&mut self, name: &str, a: ValueId, b: ValueId) -> ValueId {
        self.node1(name, Op::Binary(BinaryOp::Mul), &[a, b])
    }

    pub fn concat(&mut self, name: &str, xs: &[ValueId], axis: usize) -> ValueId {
        self.node1(name, Op::Concat { axis }, xs)
    }

    pub fn split(&mut self, name: &str, x: ValueId, axis: usize, sizes: &[usize]) -> Vec<ValueId> {
        self.node(
            name,
            Op::Split {
                axis,
                sizes: sizes.to_vec(),
            },
            &[x],
            sizes.len(),
        )
    }

    pub fn flatten(&mut self, name: &str, x: ValueId, start: usize) -> ValueId {
        self.node1(name, Op::Flatten { start }, &[x])
    }

    pub fn reshape(&mut self, name: &str, x: ValueId, shape: &[i64]) -> ValueId {
        self.node1(
            name,
            Op::Reshape {
                shape: shape.to_vec(),
            },
            &[x],
        )
    }

    pub fn permute(&mut self, name: &str, x: ValueId, perm: &[usize]) -> ValueId {
        self.node1(
            name,
            Op::Permute {
                perm: perm.to_vec(),
            },
            &[x],
        )
    }

    pub fn channel_shuffle(&mut self, name: &str, x: ValueId, groups: usize) -> ValueId {
        self.node1(name, Op::ChannelShuffle { groups }, &[x])
    }

    pub fn dropout(&mut self, name: &str, x: ValueId, p: f32) -> ValueId {
        self.node1(name, Op::Dropout { p }, &[x])
    }

    /// The name of a value made so far.
    pub fn value_name(&self, v: ValueId) -> String {
        self.g.values[v.0].name.clone()
    }

    /// Finish with the given outputs.
    pub fn finish(mut self, outputs: &[ValueId]) -> Graph {
        self.g.outputs = outputs.to_vec();
        self.g
    }
}
