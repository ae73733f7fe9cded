//! Graph -> ONNX. fp32 graphs (as the zoo builds them, or optimized) export with standard ops;
//! int8 graphs export in the QDQ format: every int8 op becomes `DequantizeLinear` on its u8
//! inputs, the float op, and `QuantizeLinear` on its output, with s8 weights dequantized
//! per channel on axis 0 and i32 biases at scale `s_in * s_w`. ONNX tensors are NCHW whatever
//! layout qvision keeps internally. Node names keep the torchvision module paths.

use crate::proto::{self, dtype, AttrValue, Attribute};
use crate::OnnxError;
use qvision_graph::{Activation, Graph, Op, QOp, Qp, ValueId, ValueKind};
use qvision_kernels::elementwise::BinaryOp;
use qvision_tensor::{Data, Tensor};
use std::collections::{HashMap, HashSet};

/// How to export.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// ONNX opset of the default domain (13 to 20).
    pub opset: i64,
    /// A symbolic batch dimension instead of the example input's.
    pub dynamic_batch: bool,
    /// The input shape (`[n, c, h, w]`) that fixes every other shape.
    pub input_shape: Vec<usize>,
    /// int8 as QOperator (`QLinearConv`, `MatMulInteger`) instead of QDQ.
    pub qoperator: bool,
    /// With `qoperator`: allow com.microsoft ops (`QLinearAdd`, `QLinearMul`).
    pub allow_contrib: bool,
}

impl ExportOptions {
    /// QDQ export at `opset` for an input shape.
    pub fn new(opset: i64, dynamic_batch: bool, input_shape: Vec<usize>) -> Self {
        ExportOptions {
            opset,
            dynamic_batch,
            input_shape,
            qoperator: false,
            allow_contrib: false,
        }
    }
}

struct Ex<'a> {
    g: &'a Graph,
    opts: &'a ExportOptions,
    names: Vec<String>,
    nodes: Vec<proto::Node>,
    inits: Vec<proto::Tensor>,
    exported: HashSet<ValueId>,
    /// Shapes in qvision's layout (NHWC for rank-4 u8 activations).
    shapes: Vec<Option<Vec<usize>>>,
    nhwc: HashSet<ValueId>,
    dequantized: HashMap<ValueId, String>,
    qparams: HashMap<(u32, i32), (String, String)>,
    consts: usize,
    node_names: HashSet<String>,
    /// com.microsoft ops were used.
    contrib: bool,
}

fn ints(name: &str, v: &[i64]) -> Attribute {
    Attribute {
        name: name.into(),
        value: AttrValue::Ints(v.to_vec()),
    }
}
fn int(name: &str, v: i64) -> Attribute {
    Attribute {
        name: name.into(),
        value: AttrValue::Int(v),
    }
}
fn float(name: &str, v: f32) -> Attribute {
    Attribute {
        name: name.into(),
        value: AttrValue::Float(v),
    }
}

fn raw_of(t: &Tensor) -> (i32, Vec<u8>) {
    match t.data() {
        Data::F32(v) => (
            dtype::FLOAT,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        Data::I64(v) => (
            dtype::INT64,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        Data::I32(v) => (
            dtype::INT32,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        Data::U8(v) => (dtype::UINT8, v.clone()),
        Data::I8(v) => (dtype::INT8, v.iter().map(|&x| x as u8).collect()),
        Data::Bool(v) => (dtype::BOOL, v.iter().map(|&x| x as u8).collect()),
    }
}

impl<'a> Ex<'a> {
    fn err(&self, node: &str, msg: impl Into<String>) -> OnnxError {
        OnnxError::Export {
            node: node.to_string(),
            msg: msg.into(),
        }
    }

    fn fresh(&mut self, base: &str) -> String {
        self.consts += 1;
        format!("{base}__{}", self.consts)
    }

    fn node(
        &mut self,
        op: &str,
        name: String,
        ins: Vec<String>,
        outs: Vec<String>,
        attrs: Vec<Attribute>,
    ) {
        let mut name = name;
        let base = name.clone();
        let mut k = 1;
        while !self.node_names.insert(name.clone()) {
            k += 1;
            name = format!("{base}_{k}");
        }
        self.nodes.push(proto::Node {
            name,
            op_type: op.into(),
            domain: String::new(),
            inputs: ins,
            outputs: outs,
            attributes: attrs,
        });
    }

    /// One output, a fresh name.
    fn op1(&mut self, op: &str, name: &str, ins: Vec<String>, attrs: Vec<Attribute>) -> String {
        let o = self.fresh(name);
        self.node(op, format!("{name}/{op}"), ins, vec![o.clone()], attrs);
        o
    }

    fn init(&mut self, name: String, dims: Vec<i64>, data_type: i32, raw: Vec<u8>) -> String {
        self.inits.push(proto::Tensor {
            name: name.clone(),
            dims,
            data_type,
            raw,
            external: None,
        });
        name
    }

    fn const_f32(&mut self, base: &str, dims: Vec<i64>, v: &[f32]) -> String {
        let n = self.fresh(base);
        self.init(
            n,
            dims,
            dtype::FLOAT,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }

    fn const_i64(&mut self, base: &str, v: &[i64]) -> String {
        let n = self.fresh(base);
        self.init(
            n,
            vec![v.len() as i64],
            dtype::INT64,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }

    /// The ONNX name of a value; params and consts become initializers on first use.
    fn name(&mut self, v: ValueId) -> Result<String, OnnxError> {
        let n = self.names[v.0].clone();
        if matches!(
            self.g.values[v.0].kind,
            ValueKind::Param { .. } | ValueKind::Const
        ) && self.exported.insert(v)
        {
            let t = self.g.tensor(v).map_err(|e| self.err(&n, e.to_string()))?;
            let (ty, raw) = raw_of(t);
            let dims = t.shape().iter().map(|&d| d as i64).collect();
            self.init(n.clone(), dims, ty, raw);
        }
        Ok(n)
    }

    fn shape(&self, v: ValueId, node: &str) -> Result<Vec<usize>, OnnxError> {
        self.shapes[v.0]
            .clone()
            .ok_or_else(|| self.err(node, format!("shape of '{}' is unknown", self.names[v.0])))
    }

    /// Logical (NCHW) shape of a value.
    fn logical(&self, v: ValueId, node: &str) -> Result<Vec<usize>, OnnxError> {
        let s = self.shape(v, node)?;
        Ok(if self.nhwc.contains(&v) && s.len() == 4 {
            vec![s[0], s[3], s[1], s[2]]
        } else {
            s
        })
    }

    /// `(scale, zero point)` initializers for a u8 tensor, shared.
    fn qp_names(&mut self, q: Qp) -> (String, String) {
        if let Some(n) = self.qparams.get(&(q.0.to_bits(), q.1)) {
            return n.clone();
        }
        let s = self.const_f32("scale", vec![], &[q.0]);
        let z = self.fresh("zero_point");
        let z = self.init(z, vec![], dtype::UINT8, vec![q.1.clamp(0, 255) as u8]);
        self.qparams
            .insert((q.0.to_bits(), q.1), (s.clone(), z.clone()));
        (s, z)
    }

    fn quantize(&mut self, x: String, q: Qp, name: &str, out: Option<String>) -> String {
        let (s, z) = self.qp_names(q);
        let o = out.unwrap_or_else(|| self.fresh(name));
        self.node(
            "QuantizeLinear",
            format!("{name}/QuantizeLinear"),
            vec![x, s, z],
            vec![o.clone()],
            vec![],
        );
        o
    }

    fn dequantize(&mut self, v: ValueId, q: Qp, name: &str) -> Result<String, OnnxError> {
        if let Some(n) = self.dequantized.get(&v) {
            return Ok(n.clone());
        }
        let x = self.name(v)?;
        let (s, z) = self.qp_names(q);
        let o = self.op1("DequantizeLinear", name, vec![x, s, z], vec![]);
        self.dequantized.insert(v, o.clone());
        Ok(o)
    }

    fn act(&mut self, a: Activation, x: String, name: &str) -> String {
        match a {
            Activation::Relu => self.op1("Relu", name, vec![x], vec![]),
            Activation::Relu6 => {
                let lo = self.const_f32("zero", vec![], &[0.0]);
                let hi = self.const_f32("six", vec![], &[6.0]);
                self.op1("Clip", name, vec![x, lo, hi], vec![])
            }
            Activation::Hardsigmoid => self.op1(
                "HardSigmoid",
                name,
                vec![x],
                vec![float("alpha", 1.0 / 6.0), float("beta", 0.5)],
            ),
            Activation::Hardswish if self.opts.opset >= 14 => {
                self.op1("HardSwish", name, vec![x], vec![])
            }
            Activation::Hardswish => {
                let h = self.op1(
                    "HardSigmoid",
                    name,
                    vec![x.clone()],
                    vec![float("alpha", 1.0 / 6.0), float("beta", 0.5)],
                );
                self.op1("Mul", name, vec![x, h], vec![])
            }
            Activation::Sigmoid => self.op1("Sigmoid", name, vec![x], vec![]),
            Activation::Silu => {
                let s = self.op1("Sigmoid", name, vec![x.clone()], vec![]);
                self.op1("Mul", name, vec![x, s], vec![])
            }
            Activation::Gelu if self.opts.opset >= 20 => self.op1("Gelu", name, vec![x], vec![]),
            Activation::Gelu => {
                let r2 = self.const_f32("sqrt2", vec![], &[std::f32::consts::SQRT_2]);
                let one = self.const_f32("one", vec![], &[1.0]);
                let half = self.const_f32("half", vec![], &[0.5]);
                let d = self.op1("Div", name, vec![x.clone(), r2], vec![]);
                let e = self.op1("Erf", name, vec![d], vec![]);
                let p = self.op1("Add", name, vec![e, one], vec![]);
                let h = self.op1("Mul", name, vec![x, half], vec![]);
                self.op1("Mul", name, vec![h, p], vec![])
            }
        }
    }

    fn conv_attrs(p: &qvision_kernels::Conv2dParams) -> Vec<Attribute> {
        let i = |v: [usize; 2]| [v[0] as i64, v[1] as i64];
        vec![
            ints("kernel_shape", &i(p.kernel)),
            ints("strides", &i(p.stride)),
            ints("pads", &pads(p.padding)),
            ints("dilations", &i(p.dilation)),
            int("group", p.groups as i64),
        ]
    }

    fn pool_attrs(p: &qvision_kernels::pool::Pool2dParams, dilations: bool) -> Vec<Attribute> {
        let i = |v: [usize; 2]| [v[0] as i64, v[1] as i64];
        let mut a = vec![
            ints("kernel_shape", &i(p.kernel)),
            ints("strides", &i(p.stride)),
            ints("pads", &pads(p.padding)),
            int("ceil_mode", p.ceil_mode as i64),
        ];
        if dilations {
            a.push(ints("dilations", &i(p.dilation)));
        }
        a
    }

    /// Adaptive average pooling as ONNX has it: global, or an exact tiling.
    fn adaptive(
        &mut self,
        x: String,
        input: &[usize],
        size: [usize; 2],
        name: &str,
    ) -> Result<String, OnnxError> {
        let (h, w) = (input[2], input[3]);
        if size == [1, 1] {
            return Ok(self.op1("GlobalAveragePool", name, vec![x], vec![]));
        }
        if [h, w] == size {
            return Ok(self.op1("Identity", name, vec![x], vec![]));
        }
        if h % size[0] != 0 || w % size[1] != 0 {
            // the general case: a constant pooling matrix, [n, c, h*w] x [h*w, oh*ow]
            let (oh, ow) = (size[0], size[1]);
            let mut m = vec![0f32; h * w * oh * ow];
            for oy in 0..oh {
                let (hs, he) = (oy * h / oh, ((oy + 1) * h).div_ceil(oh));
                for ox in 0..ow {
                    let (ws, we) = (ox * w / ow, ((ox + 1) * w).div_ceil(ow));
                    let inv = 1.0 / ((he - hs) * (we - ws)) as f32;
                    for iy in hs..he {
                        for ix in ws..we {
                            m[(iy * w + ix) * oh * ow + oy * ow + ox] = inv;
                        }
                    }
                }
            }
            let mm = self.const_f32(
                &format!("{name}.pool_matrix"),
                vec![(h * w) as i64, (oh * ow) as i64],
                &m,
            );
            let s1 = self.const_i64("shape", &[0, input[1] as i64, (h * w) as i64]);
            let r = self.op1("Reshape", name, vec![x, s1], vec![]);
            let y = self.op1("MatMul", name, vec![r, mm], vec![]);
            let s2 = self.const_i64("shape", &[0, input[1] as i64, oh as i64, ow as i64]);
            return Ok(self.op1("Reshape", name, vec![y, s2], vec![]));
        }
        let k = [(h / size[0]) as i64, (w / size[1]) as i64];
        Ok(self.op1(
            "AveragePool",
            name,
            vec![x],
            vec![ints("kernel_shape", &k), ints("strides", &k)],
        ))
    }

    fn layer_norm(&mut self, x: String, w: String, b: String, eps: f32, name: &str) -> String {
        if self.opts.opset >= 17 {
            return self.op1(
                "LayerNormalization",
                name,
                vec![x, w, b],
                vec![int("axis", -1), float("epsilon", eps)],
            );
        }
        let axes = vec![ints("axes", &[-1]), int("keepdims", 1)];
        let mean = self.op1("ReduceMean", name, vec![x.clone()], axes.clone());
        let d = self.op1("Sub", name, vec![x, mean], vec![]);
        let sq = self.op1("Mul", name, vec![d.clone(), d.clone()], vec![]);
        let var = self.op1("ReduceMean", name, vec![sq], axes);
        let e = self.const_f32("eps", vec![], &[eps]);
        let ve = self.op1("Add", name, vec![var, e], vec![]);
        let sd = self.op1("Sqrt", name, vec![ve], vec![]);
        let n = self.op1("Div", name, vec![d, sd], vec![]);
        let m = self.op1("Mul", name, vec![n, w], vec![]);
        self.op1("Add", name, vec![m, b], vec![])
    }

    fn shuffle(&mut self, x: String, s: &[usize], groups: usize, name: &str) -> String {
        let (c, h, w) = (s[1] as i64, s[2] as i64, s[3] as i64);
        let g = groups as i64;
        let s1 = self.const_i64("shape", &[0, g, c / g, h, w]);
        let r = self.op1("Reshape", name, vec![x, s1], vec![]);
        let t = self.op1(
            "Transpose",
            name,
            vec![r],
            vec![ints("perm", &[0, 2, 1, 3, 4])],
        );
        let s2 = self.const_i64("shape", &[0, c, h, w]);
        self.op1("Reshape", name, vec![t, s2], vec![])
    }

    /// Rename the last node's output to the value's ONNX name.
    fn bind(&mut self, out: String, v: ValueId) {
        let want = self.names[v.0].clone();
        for n in self.nodes.iter_mut().rev() {
            if let Some(o) = n.outputs.iter_mut().find(|o| **o == out) {
                *o = want;
                return;
            }
        }
    }

    fn fp32_node(&mut self, n: &qvision_graph::Node) -> Result<(), OnnxError> {
        let name = n.name.as_str();
        let y = n.outputs[0];
        let ins: Vec<String> = n
            .inputs
            .iter()
            .map(|&v| self.name(v))
            .collect::<Result<_, _>>()?;
        let out = match &n.op {
            Op::Conv2d {
                params,
                act,
                residual,
            } => {
                let nw = ins.len() - usize::from(*residual);
                let mut o = self.op1("Conv", name, ins[..nw].to_vec(), Self::conv_attrs(params));
                if *residual {
                    o = self.op1("Add", name, vec![o, ins[nw].clone()], vec![]);
                }
                if let Some(a) = act {
                    o = self.act(*a, o, name);
                }
                o
            }
            Op::BatchNorm2d { eps } => self.op1(
                "BatchNormalization",
                name,
                ins,
                vec![float("epsilon", *eps)],
            ),
            Op::Linear { act } => {
                let mut o = self.linear(n, &ins, name)?;
                if let Some(a) = act {
                    o = self.act(*a, o, name);
                }
                o
            }
            Op::Act(a) => self.act(*a, ins[0].clone(), name),
            Op::MaxPool2d(p) => self.op1("MaxPool", name, ins, Self::pool_attrs(p, true)),
            Op::AvgPool2d {
                pool,
                count_include_pad,
            } => {
                let mut a = Self::pool_attrs(pool, false);
                a.push(int("count_include_pad", *count_include_pad as i64));
                self.op1("AveragePool", name, ins, a)
            }
            Op::AdaptiveAvgPool2d { output } => {
                let s = self.shape(n.inputs[0], name)?;
                self.adaptive(ins[0].clone(), &s, *output, name)?
            }
            Op::Binary(b) => {
                let op = match b {
                    BinaryOp::Add => "Add",
                    BinaryOp::Mul => "Mul",
                    BinaryOp::Sub => "Sub",
                    BinaryOp::Div => "Div",
                };
                self.op1(op, name, ins, vec![])
            }
            Op::Concat { axis } => self.op1("Concat", name, ins, vec![int("axis", *axis as i64)]),
            Op::Split { axis, sizes } => {
                let sp = self.const_i64(
                    "split",
                    &sizes.iter().map(|&s| s as i64).collect::<Vec<_>>(),
                );
                let outs: Vec<String> =
                    n.outputs.iter().map(|&o| self.names[o.0].clone()).collect();
                self.node(
                    "Split",
                    name.into(),
                    vec![ins[0].clone(), sp],
                    outs,
                    vec![int("axis", *axis as i64)],
                );
                return Ok(());
            }
            Op::Flatten { start: 1 } => self.op1("Flatten", name, ins, vec![int("axis", 1)]),
            Op::Flatten { start } => {
                let mut s = vec![0i64; *start];
                s.push(-1);
                let sh = self.const_i64("shape", &s);
                self.op1("Reshape", name, vec![ins[0].clone(), sh], vec![])
            }
            Op::Reshape { shape } => {
                let sh = self.const_i64("shape", shape);
                self.op1("Reshape", name, vec![ins[0].clone(), sh], vec![])
            }
            Op::Permute { perm } => self.op1(
                "Transpose",
                name,
                ins,
                vec![ints(
                    "perm",
                    &perm.iter().map(|&p| p as i64).collect::<Vec<_>>(),
                )],
            ),
            Op::LayerNorm { eps } => {
                self.layer_norm(ins[0].clone(), ins[1].clone(), ins[2].clone(), *eps, name)
            }
            Op::LayerNorm2d { eps } => {
                // over the channels: NHWC, LayerNorm over the last axis, back to NCHW
                let to = format!("{name}.to_nhwc");
                let x = self.op1(
                    "Transpose",
                    &to,
                    vec![ins[0].clone()],
                    vec![ints("perm", &[0, 2, 3, 1])],
                );
                let y = self.layer_norm(x, ins[1].clone(), ins[2].clone(), *eps, name);
                let back = format!("{name}.to_nchw");
                self.op1(
                    "Transpose",
                    &back,
                    vec![y],
                    vec![ints("perm", &[0, 3, 1, 2])],
                )
            }
            Op::Softmax => self.op1("Softmax", name, ins, vec![int("axis", -1)]),
            Op::Dropout { .. } => self.op1("Identity", name, ins, vec![]),
            Op::ChannelShuffle { groups } => {
                let s = self.shape(n.inputs[0], name)?;
                self.shuffle(ins[0].clone(), &s, *groups, name)
            }
            Op::ToBlocked | Op::FromBlocked { .. } | Op::ConvBlocked { .. } | Op::ConcatNorm { .. }
            | Op::ConcatNormConv { .. }
            | Op::DwProjectConv { .. } => {
                return Err(self.err(
                    name,
                    "runtime-fused and blocked-layout ops are internal; export the graph before the session's passes",
                ))
            }
            Op::Q(_) => unreachable!("handled by q_node"),
        };
        self.bind(out, y);
        Ok(())
    }

    /// Gemm for 2-D input, MatMul + Add otherwise (the weight transposed once).
    fn linear(
        &mut self,
        n: &qvision_graph::Node,
        ins: &[String],
        name: &str,
    ) -> Result<String, OnnxError> {
        let rank = self.shape(n.inputs[0], name)?.len();
        if rank == 2 {
            let mut i = ins.to_vec();
            i.truncate(3);
            return Ok(self.op1("Gemm", name, i, vec![int("transB", 1)]));
        }
        let w = self
            .g
            .tensor(n.inputs[1])
            .map_err(|e| self.err(name, e.to_string()))?;
        let [o, k] =
            <[usize; 2]>::try_from(w.shape()).map_err(|_| self.err(name, "weight is not 2-D"))?;
        let wv = w.as_f32().map_err(|e| self.err(name, e.to_string()))?;
        let mut t = vec![0f32; wv.len()];
        for r in 0..o {
            for c in 0..k {
                t[c * o + r] = wv[r * k + c];
            }
        }
        let wt = self.const_f32(&format!("{name}.weight_t"), vec![k as i64, o as i64], &t);
        let mut y = self.op1("MatMul", name, vec![ins[0].clone(), wt], vec![]);
        if let Some(b) = ins.get(2) {
            y = self.op1("Add", name, vec![y, b.clone()], vec![]);
        }
        Ok(y)
    }

    /// A linear layer's activation, then its output: f32 logits as they are, else quantized.
    fn linear_tail(
        &mut self,
        y: String,
        act: Option<Activation>,
        f32_out: bool,
        output: Qp,
        name: &str,
        yname: String,
    ) {
        let y = match act {
            Some(a) => self.act(a, y, name),
            None => y,
        };
        if f32_out {
            self.node(
                "Identity",
                format!("{name}/Identity"),
                vec![y],
                vec![yname],
                vec![],
            );
        } else {
            self.quantize(y, output, name, Some(yname));
        }
    }

    fn float_tensor(&self, v: ValueId, name: &str) -> Result<Vec<f32>, OnnxError> {
        self.g
            .tensor(v)
            .map_err(|e| self.err(name, e.to_string()))?
            .as_f32()
            .map(<[f32]>::to_vec)
            .map_err(|e| self.err(name, e.to_string()))
    }

    /// The s8 weight initializer with its per-channel scale and zero point (QOperator).
    fn q_weight_tensors(
        &mut self,
        n: &qvision_graph::Node,
        name: &str,
    ) -> Result<(String, String, String), OnnxError> {
        let w = self.name(n.inputs[1])?;
        let scales = self.float_tensor(n.inputs[3], name)?;
        let c = scales.len();
        let ws = self.const_f32(&format!("{name}.weight_scale"), vec![c as i64], &scales);
        let wz = self.fresh(&format!("{name}.weight_zero_point"));
        let wz = self.init(wz, vec![c as i64], dtype::INT8, vec![0; c]);
        Ok((w, ws, wz))
    }

    /// s8 weight, its per-channel dequantization, and the i32 bias dequantized at `s_in * s_w`.
    fn q_weights(
        &mut self,
        n: &qvision_graph::Node,
        s_in: f32,
        name: &str,
    ) -> Result<(String, String), OnnxError> {
        let w = self.name(n.inputs[1])?;
        let scales = self
            .g
            .tensor(n.inputs[3])
            .and_then(|t| {
                t.as_f32()
                    .map(<[f32]>::to_vec)
                    .map_err(|e| qvision_graph::GraphError::Invalid(e.to_string()))
            })
            .map_err(|e| self.err(name, e.to_string()))?;
        let c = scales.len();
        let ws = self.const_f32(&format!("{name}.weight_scale"), vec![c as i64], &scales);
        let wz = self.fresh(&format!("{name}.weight_zero_point"));
        let wz = self.init(wz, vec![c as i64], dtype::INT8, vec![0; c]);
        let wd = self.op1(
            "DequantizeLinear",
            name,
            vec![w, ws, wz],
            vec![int("axis", 0)],
        );
        let b = self.name(n.inputs[2])?;
        let bs: Vec<f32> = scales.iter().map(|s| s * s_in).collect();
        let bs = self.const_f32(&format!("{name}.bias_scale"), vec![c as i64], &bs);
        let bz = self.fresh(&format!("{name}.bias_zero_point"));
        let bz = self.init(bz, vec![c as i64], dtype::INT32, vec![0; 4 * c]);
        let bd = self.op1(
            "DequantizeLinear",
            name,
            vec![b, bs, bz],
            vec![int("axis", 0)],
        );
        Ok((wd, bd))
    }

    fn q_node(&mut self, n: &qvision_graph::Node, q: &QOp) -> Result<(), OnnxError> {
        let name = n.name.as_str();
        let x = n.inputs[0];
        let y = n.outputs[0];
        let yname = self.names[y.0].clone();
        let nhwc_in = self.nhwc.contains(&x);
        let mut y_nhwc = nhwc_in;
        match q {
            QOp::Quantize { q, nhwc } => {
                let xi = self.name(x)?;
                self.quantize(xi, *q, name, Some(yname));
                y_nhwc = *nhwc;
            }
            QOp::QuantizeBlocked { .. } => {
                return Err(self.err(name, "blocked-layout ops are internal"))
            }
            QOp::Dequantize { q, .. } => {
                let xi = self.name(x)?;
                let (s, z) = self.qp_names(*q);
                self.node(
                    "DequantizeLinear",
                    format!("{name}/DequantizeLinear"),
                    vec![xi, s, z],
                    vec![yname],
                    vec![],
                );
                y_nhwc = false;
            }
            QOp::Conv2d {
                params,
                input,
                output,
                residual: None,
                act: None | Some(Activation::Relu) | Some(Activation::Relu6),
            } if self.opts.qoperator => {
                // QLinearConv: a ReLU is the output's saturation (post-ReLU qparams start at 0)
                let xi = self.name(x)?;
                let (xs, xz) = self.qp_names(*input);
                let (ys, yz) = self.qp_names(*output);
                let (w, ws, wz) = self.q_weight_tensors(n, name)?;
                let b = self.name(n.inputs[2])?;
                self.node(
                    "QLinearConv",
                    format!("{name}/QLinearConv"),
                    vec![xi, xs, xz, w, ws, wz, ys, yz, b],
                    vec![yname],
                    Self::conv_attrs(params),
                );
                y_nhwc = true;
            }
            QOp::Conv2d {
                params,
                input,
                output,
                residual,
                act,
            } => {
                let xd = self.dequantize(x, *input, name)?;
                let (wd, bd) = self.q_weights(n, input.0, name)?;
                let mut o = self.op1("Conv", name, vec![xd, wd, bd], Self::conv_attrs(params));
                if let Some(rq) = residual {
                    let rd = self.dequantize(n.inputs[4], *rq, name)?;
                    o = self.op1("Add", name, vec![o, rd], vec![]);
                }
                if let Some(a) = act {
                    o = self.act(*a, o, name);
                }
                self.quantize(o, *output, name, Some(yname));
                y_nhwc = true;
            }
            QOp::Linear {
                input,
                output,
                act,
                f32_out,
            } if self.opts.qoperator => {
                // MatMulInteger (exact i32) + bias, then the float epilogue
                let xi = self.name(x)?;
                let (_, xz) = self.qp_names(*input);
                let w = self
                    .g
                    .tensor(n.inputs[1])
                    .map_err(|e| self.err(name, e.to_string()))?;
                let [o, k] = <[usize; 2]>::try_from(w.shape())
                    .map_err(|_| self.err(name, "weight is not 2-D"))?;
                let wv = w.as_i8().map_err(|e| self.err(name, e.to_string()))?;
                let mut t = vec![0u8; wv.len()];
                for r in 0..o {
                    for c in 0..k {
                        t[c * o + r] = wv[r * k + c] as u8;
                    }
                }
                let wt = self.fresh(&format!("{name}.weight_t(s8)"));
                let wt = self.init(wt, vec![k as i64, o as i64], dtype::INT8, t);
                let wz = self.fresh(&format!("{name}.weight_zero_point"));
                let wz = self.init(wz, vec![o as i64], dtype::INT8, vec![0; o]);
                let acc = self.op1("MatMulInteger", name, vec![xi, wt, xz, wz], vec![]);
                let b = self.name(n.inputs[2])?;
                let acc = self.op1("Add", name, vec![acc, b], vec![]);
                let f = self.op1(
                    "Cast",
                    name,
                    vec![acc],
                    vec![int("to", dtype::FLOAT as i64)],
                );
                let scales = self.float_tensor(n.inputs[3], name)?;
                let sc: Vec<f32> = scales.iter().map(|s| s * input.0).collect();
                let scn = self.const_f32(&format!("{name}.scale"), vec![o as i64], &sc);
                let y = self.op1("Mul", name, vec![f, scn], vec![]);
                self.linear_tail(y, *act, *f32_out, *output, name, yname);
                y_nhwc = false;
            }
            QOp::Linear {
                input,
                output,
                act,
                f32_out,
            } => {
                let xd = self.dequantize(x, *input, name)?;
                let (wd, bd) = self.q_weights(n, input.0, name)?;
                let rank = self.shape(x, name)?.len();
                let o = if rank == 2 {
                    self.op1("Gemm", name, vec![xd, wd, bd], vec![int("transB", 1)])
                } else {
                    let t = self.op1("Transpose", name, vec![wd], vec![ints("perm", &[1, 0])]);
                    let m = self.op1("MatMul", name, vec![xd, t], vec![]);
                    self.op1("Add", name, vec![m, bd], vec![])
                };
                self.linear_tail(o, *act, *f32_out, *output, name, yname);
                y_nhwc = false;
            }
            QOp::Add {
                a,
                b,
                output,
                relu: false,
            }
            | QOp::Mul { a, b, output }
                if self.opts.qoperator && self.opts.allow_contrib =>
            {
                let op = if matches!(q, QOp::Add { .. }) {
                    "QLinearAdd"
                } else {
                    "QLinearMul"
                };
                let (ai, bi) = (self.name(x)?, self.name(n.inputs[1])?);
                let (as_, az) = self.qp_names(*a);
                let (bs, bz) = self.qp_names(*b);
                let (ys, yz) = self.qp_names(*output);
                self.nodes.push(proto::Node {
                    name: format!("{name}/{op}"),
                    op_type: op.into(),
                    domain: "com.microsoft".into(),
                    inputs: vec![ai, as_, az, bi, bs, bz, ys, yz],
                    outputs: vec![yname],
                    attributes: vec![],
                });
                self.contrib = true;
            }
            QOp::Add { a, b, output, .. } | QOp::Mul { a, b, output } => {
                let op = if matches!(q, QOp::Add { .. }) {
                    "Add"
                } else {
                    "Mul"
                };
                let ad = self.dequantize(x, *a, name)?;
                let bd = self.dequantize(n.inputs[1], *b, name)?;
                let mut o = self.op1(op, name, vec![ad, bd], vec![]);
                if matches!(q, QOp::Add { relu: true, .. }) {
                    o = self.op1("Relu", name, vec![o], vec![]);
                }
                self.quantize(o, *output, name, Some(yname));
            }
            QOp::Lut {
                act, input, output, ..
            } => {
                let (Some(input), Some(output)) = (input, output) else {
                    return Err(self.err(
                        name,
                        "this lookup table has no recorded quantization (re-quantize the model)",
                    ));
                };
                let xd = self.dequantize(x, *input, name)?;
                let o = match act {
                    Some(a) => self.act(*a, xd, name),
                    None => xd,
                };
                self.quantize(o, *output, name, Some(yname));
            }
            QOp::ChannelAffine {
                input,
                output,
                relu,
            } => {
                let xd = self.dequantize(x, *input, name)?;
                let c = self
                    .g
                    .tensor(n.inputs[1])
                    .map_err(|e| self.err(name, e.to_string()))?
                    .numel();
                let sc = self
                    .g
                    .tensor(n.inputs[1])
                    .and_then(|t| {
                        Ok(t.as_f32()
                            .map_err(|e| qvision_graph::GraphError::Invalid(e.to_string()))?
                            .to_vec())
                    })
                    .map_err(|e| self.err(name, e.to_string()))?;
                let sh = self
                    .g
                    .tensor(n.inputs[2])
                    .and_then(|t| {
                        Ok(t.as_f32()
                            .map_err(|e| qvision_graph::GraphError::Invalid(e.to_string()))?
                            .to_vec())
                    })
                    .map_err(|e| self.err(name, e.to_string()))?;
                let scn = self.const_f32(&format!("{name}.scale"), vec![c as i64, 1, 1], &sc);
                let shn = self.const_f32(&format!("{name}.shift"), vec![c as i64, 1, 1], &sh);
                let m = self.op1("Mul", name, vec![xd, scn], vec![]);
                let mut o = self.op1("Add", name, vec![m, shn], vec![]);
                if *relu {
                    o = self.op1("Relu", name, vec![o], vec![]);
                }
                self.quantize(o, *output, name, Some(yname));
            }
            QOp::MaxPool2d(p) => {
                let xi = self.name(x)?;
                self.node(
                    "MaxPool",
                    format!("{name}/MaxPool"),
                    vec![xi],
                    vec![yname],
                    Self::pool_attrs(p, true),
                );
            }
            QOp::AvgPool2d {
                pool,
                count_include_pad,
                input,
                output,
            } => {
                let xd = self.dequantize(x, *input, name)?;
                let mut a = Self::pool_attrs(pool, false);
                a.push(int("count_include_pad", *count_include_pad as i64));
                let o = self.op1("AveragePool", name, vec![xd], a);
                self.quantize(o, *output, name, Some(yname));
            }
            QOp::AdaptiveAvgPool2d {
                size,
                input,
                output,
            } => {
                let s = self.logical(x, name)?;
                let xd = self.dequantize(x, *input, name)?;
                let o = self.adaptive(xd, &s, *size, name)?;
                self.quantize(o, *output, name, Some(yname));
            }
            QOp::Concat { inputs, output } => {
                let mut ds = vec![];
                for (&v, q) in n.inputs.iter().zip(inputs) {
                    ds.push(self.dequantize(v, *q, name)?);
                }
                let o = self.op1("Concat", name, ds, vec![int("axis", 1)]);
                self.quantize(o, *output, name, Some(yname));
                y_nhwc = true;
            }
            QOp::Split { sizes } => {
                let xi = self.name(x)?;
                let sp = self.const_i64(
                    "split",
                    &sizes.iter().map(|&s| s as i64).collect::<Vec<_>>(),
                );
                let outs: Vec<String> =
                    n.outputs.iter().map(|&o| self.names[o.0].clone()).collect();
                self.node(
                    "Split",
                    name.into(),
                    vec![xi, sp],
                    outs,
                    vec![int("axis", 1)],
                );
                for &o in &n.outputs {
                    self.nhwc.insert(o);
                }
                return Ok(());
            }
            QOp::ChannelShuffle { groups } => {
                let s = self.logical(x, name)?;
                let xi = self.name(x)?;
                let o = self.shuffle(xi, &s, *groups, name);
                self.bind(o, y);
            }
            QOp::Flatten => {
                let xi = self.name(x)?;
                self.node(
                    "Flatten",
                    format!("{name}/Flatten"),
                    vec![xi],
                    vec![yname],
                    vec![int("axis", 1)],
                );
                y_nhwc = false;
            }
            QOp::Relayout { to_nhwc } => {
                let xi = self.name(x)?;
                let perm: &[i64] = if *to_nhwc {
                    &[0, 3, 1, 2]
                } else {
                    &[0, 2, 3, 1]
                };
                self.node(
                    "Transpose",
                    format!("{name}/Transpose"),
                    vec![xi],
                    vec![yname],
                    vec![ints("perm", perm)],
                );
                y_nhwc = *to_nhwc;
            }
            QOp::LayerNorm { eps, input, output } => {
                let xd = self.dequantize(x, *input, name)?;
                let w = self.name(n.inputs[1])?;
                let b = self.name(n.inputs[2])?;
                let o = self.layer_norm(xd, w, b, *eps, name);
                self.quantize(o, *output, name, Some(yname));
            }
        }
        if y_nhwc {
            self.nhwc.insert(y);
        }
        Ok(())
    }
}

/// Export a graph to an ONNX model.
pub fn export(g: &Graph, opts: &ExportOptions) -> Result<proto::Model, OnnxError> {
    if !(13..=20).contains(&opts.opset) {
        return Err(OnnxError::Export {
            node: g.name.clone(),
            msg: format!("opset {} is not supported (13 to 20)", opts.opset),
        });
    }
    let shapes = qvision_graph::exec::infer_shapes(g, std::slice::from_ref(&opts.input_shape))
        .map_err(|e| OnnxError::Export {
            node: g.name.clone(),
            msg: e.to_string(),
        })?;
    // unique ONNX names
    let mut seen = HashSet::new();
    let names = g
        .values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let base = if v.name.is_empty() {
                format!("v{i}")
            } else {
                v.name.clone()
            };
            if seen.insert(base.clone()) {
                base
            } else {
                let n = format!("{base}#{i}");
                seen.insert(n.clone());
                n
            }
        })
        .collect();
    let mut ex = Ex {
        g,
        opts,
        names,
        nodes: vec![],
        inits: vec![],
        exported: HashSet::new(),
        shapes,
        nhwc: HashSet::new(),
        dequantized: HashMap::new(),
        qparams: HashMap::new(),
        consts: 0,
        node_names: HashSet::new(),
        contrib: false,
    };
    for n in &g.nodes {
        match &n.op {
            Op::Q(q) => ex.q_node(n, q)?,
            _ => ex.fp32_node(n)?,
        }
    }
    let vi = |ex: &Ex, v: ValueId, batch_dim: bool| -> Result<proto::ValueInfo, OnnxError> {
        let s = ex.logical(v, &g.name)?;
        let elem = match g.values[v.0].dtype {
            qvision_tensor::DType::U8 => dtype::UINT8,
            qvision_tensor::DType::I64 => dtype::INT64,
            _ => dtype::FLOAT,
        };
        let dyn_b = opts.dynamic_batch && batch_dim;
        Ok(proto::ValueInfo {
            name: ex.names[v.0].clone(),
            elem_type: elem,
            dims: s
                .iter()
                .enumerate()
                .map(|(i, &d)| (!(dyn_b && i == 0)).then_some(d as i64))
                .collect(),
            dim_params: s
                .iter()
                .enumerate()
                .map(|(i, _)| (dyn_b && i == 0).then(|| "batch".to_string()))
                .collect(),
        })
    };
    let inputs = g
        .inputs
        .iter()
        .map(|&v| vi(&ex, v, true))
        .collect::<Result<_, _>>()?;
    let outputs = g
        .outputs
        .iter()
        .map(|&v| vi(&ex, v, true))
        .collect::<Result<_, _>>()?;
    let mut opset = vec![(String::new(), opts.opset)];
    if ex.contrib {
        opset.push(("com.microsoft".to_string(), 1));
    }
    Ok(proto::Model {
        ir_version: 8,
        opset,
        producer_name: "qvision".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: proto::Graph {
            name: g.name.clone(),
            nodes: ex.nodes,
            initializers: ex.inits,
            inputs,
            outputs,
        },
    })
}

/// ONNX `pads` (begin h, begin w, end h, end w) for symmetric padding.
fn pads(p: [usize; 2]) -> [i64; 4] {
    [p[0] as i64, p[1] as i64, p[0] as i64, p[1] as i64]
}
