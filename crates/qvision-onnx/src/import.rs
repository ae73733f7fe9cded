//! ONNX -> Graph. Opset 11 to 20 fp32 CNN graphs load with their initializers as parameters
//! (named as in the file: a torchvision export keeps the state-dict keys). QDQ models (ONNX
//! Runtime's `quantize_static`) import as their fp32 graph plus the quantization parameters
//! of every activation; [`Imported::int8`] folds the Q/DQ pairs into qvision's int8 ops.

use crate::proto::{self, dtype, AttrValue};
use crate::OnnxError;
use qvision_graph::{Activation, Graph, GraphBuilder, Op, ValueId};
use qvision_kernels::elementwise::BinaryOp;
use qvision_kernels::pool::Pool2dParams;
use qvision_kernels::Conv2dParams;
use qvision_quant::QuantParams;
use qvision_tensor::{Data, Tensor};
use std::collections::{BTreeMap, HashMap};

/// An imported model.
pub struct Imported {
    /// The fp32 graph (for a QDQ file: with its weights dequantized).
    pub graph: Graph,
    /// The example input shape (`[n, c, h, w]`, a symbolic batch as 1).
    pub input_shape: Vec<usize>,
    /// Activation quantization from a QDQ file, by value name (empty for fp32 files).
    pub qparams: BTreeMap<String, QuantParams>,
    pub opset: i64,
}

impl Imported {
    /// Whether the file was a QDQ (quantized) model.
    pub fn is_quantized(&self) -> bool {
        !self.qparams.is_empty()
    }

    /// Fold the file's Q/DQ pairs into qvision int8 ops (the activation parameters the file
    /// chose, weights per channel). Errors for an fp32 file.
    pub fn int8(&self) -> Result<(Graph, qvision_quant::convert::ConvertReport), OnnxError> {
        if !self.is_quantized() {
            return Err(OnnxError::Import {
                node: self.graph.name.clone(),
                op: "QuantizeLinear".into(),
                opset: self.opset,
                msg: "the model has no quantization; run `qvision quantize` on it".into(),
            });
        }
        let prepared =
            qvision_quant::prepare(&self.graph).map_err(|e| OnnxError::Decode(e.to_string()))?;
        let qparams = fused_qparams(&self.graph, &self.qparams);
        let shapes =
            qvision_graph::exec::infer_shapes(&prepared, std::slice::from_ref(&self.input_shape))
                .map_err(|e| OnnxError::Decode(e.to_string()))?;
        let named: BTreeMap<String, Vec<usize>> = prepared
            .values
            .iter()
            .zip(shapes)
            .filter_map(|(v, s)| s.map(|s| (v.name.clone(), s)))
            .collect();
        let mapping = qvision_quant::QConfigMapping::new(qvision_quant::QConfig::default_for(
            qvision_quant::Backend::X86,
        ));
        qvision_quant::convert::convert_with(&prepared, &qparams, &named, &mapping)
            .map_err(|e| OnnxError::Decode(e.to_string()))
    }
}

/// The file quantizes the outputs of Conv -> (BatchNorm) -> (Add) -> ReLU chains at their end;
/// after fusion the chain is one conv whose output keeps the conv's name. Give that name the
/// chain's last quantization.
fn fused_qparams(g: &Graph, q: &BTreeMap<String, QuantParams>) -> BTreeMap<String, QuantParams> {
    let uses = g.use_counts();
    let mut root: HashMap<ValueId, ValueId> = HashMap::new();
    let mut out = q.clone();
    for n in &g.nodes {
        let y = n.outputs[0];
        let from = match &n.op {
            Op::Conv2d { .. } | Op::Linear { .. } => {
                root.insert(y, y);
                continue;
            }
            Op::Act(_) | Op::BatchNorm2d { .. } => Some(n.inputs[0]),
            Op::Binary(BinaryOp::Add) => n.inputs.iter().copied().find(|i| root.contains_key(i)),
            _ => None,
        };
        if let Some(i) = from.filter(|i| uses[i.0] == 1) {
            if let Some(&r) = root.get(&i) {
                root.insert(y, r);
                if let Some(p) = q.get(&g.values[y.0].name) {
                    out.insert(g.values[r.0].name.clone(), *p);
                }
            }
        }
    }
    out
}

fn tensor_of(t: &proto::Tensor) -> Result<Tensor, String> {
    let shape: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
    let n: usize = shape.iter().product();
    let need = |size: usize| -> Result<(), String> {
        if t.raw.len() != n * size {
            Err(format!(
                "tensor '{}' has {} bytes for shape {shape:?}",
                t.name,
                t.raw.len()
            ))
        } else {
            Ok(())
        }
    };
    let data = match t.data_type {
        dtype::FLOAT => {
            need(4)?;
            Data::F32(
                t.raw
                    .chunks(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
                    .collect(),
            )
        }
        dtype::DOUBLE => {
            need(8)?;
            Data::F32(
                t.raw
                    .chunks(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8")) as f32)
                    .collect(),
            )
        }
        dtype::INT64 => {
            need(8)?;
            Data::I64(
                t.raw
                    .chunks(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
                    .collect(),
            )
        }
        dtype::INT32 => {
            need(4)?;
            Data::I32(
                t.raw
                    .chunks(4)
                    .map(|c| i32::from_le_bytes(c.try_into().expect("4")))
                    .collect(),
            )
        }
        dtype::UINT8 => {
            need(1)?;
            Data::U8(t.raw.clone())
        }
        dtype::INT8 => {
            need(1)?;
            Data::I8(t.raw.iter().map(|&b| b as i8).collect())
        }
        other => {
            return Err(format!(
                "tensor '{}' has unsupported element type {other}",
                t.name
            ))
        }
    };
    Tensor::new(shape, data).map_err(|e| e.to_string())
}

struct Im {
    b: GraphBuilder,
    values: HashMap<String, ValueId>,
    tensors: HashMap<String, Tensor>,
    /// Tensors to attach to param/const values after `finish`.
    pending: Vec<(ValueId, Tensor)>,
    opset: i64,
    qparams: BTreeMap<String, QuantParams>,
    /// QuantizeLinear output -> its input (a Q/DQ pair on an activation is skipped).
    alias: HashMap<String, String>,
    /// Static shapes of the values made so far (for `Shape` and friends).
    shapes: HashMap<ValueId, Vec<usize>>,
    /// The input's batch dimension is symbolic: `Shape` gives [`BATCH`] for dim 0, which a
    /// `Reshape` turns back into "copy the input's dim 0".
    dynamic_batch: bool,
}

/// The symbolic batch size inside folded shape arithmetic.
const BATCH: i64 = -(1 << 40);

impl Im {
    fn err(&self, n: &proto::Node, msg: impl Into<String>) -> OnnxError {
        OnnxError::Import {
            node: n.name.clone(),
            op: n.op_type.clone(),
            opset: self.opset,
            msg: msg.into(),
        }
    }

    fn resolve(&self, name: &str) -> String {
        let mut n = name.to_string();
        while let Some(a) = self.alias.get(&n) {
            n = a.clone();
        }
        n
    }

    /// A value for an ONNX name: an activation, or an initializer made a parameter.
    fn value(&mut self, n: &proto::Node, name: &str) -> Result<ValueId, OnnxError> {
        let name = self.resolve(name);
        if let Some(&v) = self.values.get(&name) {
            return Ok(v);
        }
        let t =
            self.tensors.get(&name).cloned().ok_or_else(|| {
                self.err(n, format!("input '{name}' is not produced by any node"))
            })?;
        let v = match t.dtype() {
            qvision_tensor::DType::F32 => self.b.param(&name, t.shape()),
            _ => self.b.constant(&name, t.clone()),
        };
        self.shapes.insert(v, t.shape().to_vec());
        self.pending.push((v, t));
        self.values.insert(name, v);
        Ok(v)
    }

    fn const_tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(&self.resolve(name))
    }

    /// The constant `[k, o]` right-hand side of a Gemm/MatMul as a Linear weight `[o, k]`.
    fn transposed_weight(
        &mut self,
        n: &proto::Node,
        wname: &str,
        not_const: &str,
        not_2d: &str,
    ) -> Result<ValueId, OnnxError> {
        let t = self
            .const_tensor(wname)
            .ok_or_else(|| self.err(n, not_const))?
            .clone();
        let [k, o] = <[usize; 2]>::try_from(t.shape()).map_err(|_| self.err(n, not_2d))?;
        let v = t.as_f32().map_err(|e| self.err(n, e.to_string()))?;
        let mut tr = vec![0f32; v.len()];
        for r in 0..k {
            for c in 0..o {
                tr[c * k + r] = v[r * o + c];
            }
        }
        let t = Tensor::from_f32(vec![o, k], tr).map_err(|e| self.err(n, e.to_string()))?;
        Ok(self.b.constant(&format!("{wname}(transposed)"), t))
    }

    fn const_f32(&self, n: &proto::Node, i: usize) -> Result<Vec<f32>, OnnxError> {
        let name = n
            .inputs
            .get(i)
            .ok_or_else(|| self.err(n, format!("missing input {i}")))?;
        self.const_tensor(name)
            .and_then(|t| t.as_f32().ok().map(<[f32]>::to_vec))
            .ok_or_else(|| self.err(n, format!("input '{name}' must be a float initializer")))
    }

    fn const_i64(&self, n: &proto::Node, i: usize) -> Result<Vec<i64>, OnnxError> {
        let name = n
            .inputs
            .get(i)
            .ok_or_else(|| self.err(n, format!("missing input {i}")))?;
        self.const_tensor(name)
            .and_then(|t| t.as_i64().ok().map(<[i64]>::to_vec))
            .ok_or_else(|| self.err(n, format!("input '{name}' must be an int64 initializer")))
    }

    fn out(&mut self, n: &proto::Node, op: Op, ins: &[ValueId]) -> Result<(), OnnxError> {
        let name = if n.name.is_empty() {
            n.op_type.clone()
        } else {
            n.name.clone()
        };
        let in_shapes: Option<Vec<&[usize]>> = ins
            .iter()
            .map(|v| self.shapes.get(v).map(Vec::as_slice))
            .collect();
        let out_shapes = in_shapes.and_then(|s| op.infer_shapes(&s).ok());
        let outs = self.b.node(&name, op, ins, n.outputs.len().max(1));
        for (i, (o, v)) in n.outputs.iter().zip(outs).enumerate() {
            if let Some(s) = out_shapes.as_ref().and_then(|s| s.get(i)) {
                self.shapes.insert(v, s.clone());
            }
            self.values.insert(o.clone(), v);
        }
        Ok(())
    }

    fn pads2(&self, n: &proto::Node) -> Result<[usize; 2], OnnxError> {
        if let Some(AttrValue::String(s)) = n.attr("auto_pad") {
            if s != b"NOTSET" && s != b"VALID" {
                return Err(self.err(
                    n,
                    format!("auto_pad {} is not supported", String::from_utf8_lossy(s)),
                ));
            }
        }
        match n.ints("pads") {
            None => Ok([0, 0]),
            Some([t, l, b, r]) if t == b && l == r && *t >= 0 && *l >= 0 => {
                Ok([*t as usize, *l as usize])
            }
            Some(p) => Err(self.err(n, format!("asymmetric padding {p:?} is not supported"))),
        }
    }

    fn pair(&self, n: &proto::Node, name: &str, default: usize) -> Result<[usize; 2], OnnxError> {
        match n.ints(name) {
            None => Ok([default, default]),
            Some([a, b]) if *a > 0 && *b > 0 => Ok([*a as usize, *b as usize]),
            Some(v) => Err(self.err(n, format!("{name} {v:?}: only 2-D with positive values"))),
        }
    }

    fn pool(&self, n: &proto::Node) -> Result<Pool2dParams, OnnxError> {
        Ok(Pool2dParams {
            kernel: self.pair(n, "kernel_shape", 1)?,
            stride: self.pair(n, "strides", 1)?,
            padding: self.pads2(n)?,
            dilation: self.pair(n, "dilations", 1)?,
            ceil_mode: n.int("ceil_mode").unwrap_or(0) != 0,
        })
    }

    fn node(&mut self, n: &proto::Node) -> Result<(), OnnxError> {
        if !n.domain.is_empty() && n.domain != "ai.onnx" {
            return Err(self.err(n, format!("domain '{}' is not supported", n.domain)));
        }
        if let Some(t) = self.fold(n)? {
            self.tensors.insert(n.outputs[0].clone(), t);
            return Ok(());
        }
        let act = |a: Activation| Op::Act(a);
        let first = |s: &mut Self| -> Result<ValueId, OnnxError> {
            let i = n
                .inputs
                .first()
                .ok_or_else(|| s.err(n, "no input"))?
                .clone();
            s.value(n, &i)
        };
        match n.op_type.as_str() {
            "Conv" => {
                let x = first(self)?;
                let wname = n
                    .inputs
                    .get(1)
                    .ok_or_else(|| self.err(n, "no weight"))?
                    .clone();
                let w = self
                    .const_tensor(&wname)
                    .ok_or_else(|| self.err(n, "the weight must be an initializer"))?
                    .clone();
                let [cout, cin_g, kh, kw] = <[usize; 4]>::try_from(w.shape())
                    .map_err(|_| self.err(n, format!("weight shape {:?} is not 4-D", w.shape())))?;
                let groups = n.int("group").unwrap_or(1).max(1) as usize;
                let params = Conv2dParams {
                    in_channels: cin_g * groups,
                    out_channels: cout,
                    kernel: self.pair(n, "kernel_shape", 0).map(|k| {
                        if k == [0, 0] {
                            [kh, kw]
                        } else {
                            k
                        }
                    })?,
                    stride: self.pair(n, "strides", 1)?,
                    padding: self.pads2(n)?,
                    dilation: self.pair(n, "dilations", 1)?,
                    groups,
                };
                let mut ins = vec![x, self.value(n, &wname)?];
                if let Some(b) = n.inputs.get(2).filter(|b| !b.is_empty()) {
                    let b = b.clone();
                    ins.push(self.value(n, &b)?);
                }
                self.out(
                    n,
                    Op::Conv2d {
                        params,
                        act: None,
                        residual: false,
                    },
                    &ins,
                )
            }
            "BatchNormalization" => {
                let ins = n.inputs[..5.min(n.inputs.len())]
                    .iter()
                    .map(|i| self.value(n, i))
                    .collect::<Result<Vec<_>, _>>()?;
                if ins.len() != 5 {
                    return Err(self.err(n, "expects 5 inputs"));
                }
                let eps = n.float("epsilon").unwrap_or(1e-5);
                self.out(n, Op::BatchNorm2d { eps }, &ins)
            }
            "Relu" => {
                let x = first(self)?;
                self.out(n, act(Activation::Relu), &[x])
            }
            "Sigmoid" => {
                let x = first(self)?;
                self.out(n, act(Activation::Sigmoid), &[x])
            }
            "HardSwish" => {
                let x = first(self)?;
                self.out(n, act(Activation::Hardswish), &[x])
            }
            "Gelu" => {
                let x = first(self)?;
                self.out(n, act(Activation::Gelu), &[x])
            }
            "HardSigmoid" => {
                let (a, b) = (
                    n.float("alpha").unwrap_or(0.2),
                    n.float("beta").unwrap_or(0.5),
                );
                if (a - 1.0 / 6.0).abs() > 1e-6 || (b - 0.5).abs() > 1e-6 {
                    return Err(self.err(
                        n,
                        format!("alpha {a}, beta {b}: only PyTorch's hardsigmoid (1/6, 0.5)"),
                    ));
                }
                let x = first(self)?;
                self.out(n, act(Activation::Hardsigmoid), &[x])
            }
            "Clip" => {
                let bound = |s: &Self, i: usize, attr: &str| -> Result<Option<f32>, OnnxError> {
                    match n.inputs.get(i).filter(|v| !v.is_empty()) {
                        Some(_) => Ok(s.const_f32(n, i)?.first().copied()),
                        None => Ok(n.float(attr)),
                    }
                };
                let (lo, hi) = (bound(self, 1, "min")?, bound(self, 2, "max")?);
                let a = match (lo, hi) {
                    (Some(l), Some(h)) if l == 0.0 && h == 6.0 => Activation::Relu6,
                    (Some(0.0), None) => Activation::Relu,
                    _ => {
                        return Err(self.err(
                            n,
                            format!("Clip({lo:?}, {hi:?}): only ReLU and ReLU6 bounds"),
                        ))
                    }
                };
                let x = first(self)?;
                self.out(n, act(a), &[x])
            }
            "Add" | "Mul" | "Sub" | "Div" => {
                let op = match n.op_type.as_str() {
                    "Add" => BinaryOp::Add,
                    "Mul" => BinaryOp::Mul,
                    "Sub" => BinaryOp::Sub,
                    _ => BinaryOp::Div,
                };
                let (a, b) = (
                    n.inputs[0].clone(),
                    n.inputs
                        .get(1)
                        .ok_or_else(|| self.err(n, "one input"))?
                        .clone(),
                );
                let ins = [self.value(n, &a)?, self.value(n, &b)?];
                self.out(n, Op::Binary(op), &ins)
            }
            "Gemm" => {
                if n.int("transA").unwrap_or(0) != 0
                    || n.float("alpha").unwrap_or(1.0) != 1.0
                    || n.float("beta").unwrap_or(1.0) != 1.0
                {
                    return Err(self.err(n, "only transA=0, alpha=1, beta=1"));
                }
                let x = first(self)?;
                let wname = n
                    .inputs
                    .get(1)
                    .ok_or_else(|| self.err(n, "no weight"))?
                    .clone();
                let w = if n.int("transB").unwrap_or(0) != 0 {
                    self.value(n, &wname)?
                } else {
                    self.transposed_weight(n, &wname, "B must be an initializer", "B is not 2-D")?
                };
                let mut ins = vec![x, w];
                if let Some(b) = n.inputs.get(2).filter(|b| !b.is_empty()) {
                    let b = b.clone();
                    ins.push(self.value(n, &b)?);
                }
                self.out(n, Op::Linear { act: None }, &ins)
            }
            "MatMul" => {
                let x = first(self)?;
                let wname = n
                    .inputs
                    .get(1)
                    .ok_or_else(|| self.err(n, "no weight"))?
                    .clone();
                let w = self.transposed_weight(
                    n,
                    &wname,
                    "only a constant right-hand side",
                    "the weight is not 2-D",
                )?;
                self.out(n, Op::Linear { act: None }, &[x, w])
            }
            "Flatten" => {
                let x = first(self)?;
                let axis = n.int("axis").unwrap_or(1);
                if axis < 0 {
                    return Err(self.err(n, "negative axis"));
                }
                self.out(
                    n,
                    Op::Flatten {
                        start: axis as usize,
                    },
                    &[x],
                )
            }
            "Reshape" => {
                let x = first(self)?;
                let mut shape = self.const_i64(n, 1)?;
                for (i, d) in shape.iter_mut().enumerate() {
                    if *d == BATCH {
                        *d = if i == 0 { 0 } else { 1 };
                    }
                }
                self.out(n, Op::Reshape { shape }, &[x])
            }
            "Transpose" => {
                let x = first(self)?;
                let perm = n
                    .ints("perm")
                    .ok_or_else(|| self.err(n, "no perm"))?
                    .iter()
                    .map(|&p| p as usize)
                    .collect();
                self.out(n, Op::Permute { perm }, &[x])
            }
            "Concat" => {
                let axis = n.int("axis").unwrap_or(0);
                if axis < 0 {
                    return Err(self.err(n, "negative axis"));
                }
                let ins = n
                    .inputs
                    .clone()
                    .iter()
                    .map(|i| self.value(n, i))
                    .collect::<Result<Vec<_>, _>>()?;
                self.out(
                    n,
                    Op::Concat {
                        axis: axis as usize,
                    },
                    &ins,
                )
            }
            "Split" => {
                let x = first(self)?;
                let axis = n.int("axis").unwrap_or(0);
                let sizes: Vec<i64> = if n.inputs.len() > 1 && !n.inputs[1].is_empty() {
                    self.const_i64(n, 1)?
                } else {
                    n.ints("split")
                        .ok_or_else(|| self.err(n, "needs explicit split sizes"))?
                        .to_vec()
                };
                if axis < 0 || sizes.iter().any(|&s| s < 0) {
                    return Err(self.err(n, "negative axis or sizes"));
                }
                let sizes = sizes.iter().map(|&s| s as usize).collect();
                self.out(
                    n,
                    Op::Split {
                        axis: axis as usize,
                        sizes,
                    },
                    &[x],
                )
            }
            "Slice" => {
                // a slice of an activation along one axis (ShuffleNet's chunk): a split
                let x = first(self)?;
                let shape = self
                    .shapes
                    .get(&x)
                    .cloned()
                    .ok_or_else(|| self.err(n, "input shape unknown"))?;
                let get = |s: &Self, i: usize, attr: &str| -> Result<Option<Vec<i64>>, OnnxError> {
                    match n.inputs.get(i).filter(|v| !v.is_empty()) {
                        Some(_) => s.const_i64(n, i).map(Some),
                        None => Ok(n.ints(attr).map(<[i64]>::to_vec)),
                    }
                };
                let starts = get(self, 1, "starts")?.ok_or_else(|| self.err(n, "no starts"))?;
                let ends = get(self, 2, "ends")?.ok_or_else(|| self.err(n, "no ends"))?;
                let axes =
                    get(self, 3, "axes")?.unwrap_or_else(|| (0..starts.len() as i64).collect());
                let steps = get(self, 4, "_")?.unwrap_or_else(|| vec![1; starts.len()]);
                if starts.len() != 1 || axes.len() != 1 || steps.iter().any(|&s| s != 1) {
                    return Err(self.err(n, "only a unit-step slice along one axis"));
                }
                let r = shape.len() as i64;
                let axis = if axes[0] < 0 { axes[0] + r } else { axes[0] } as usize;
                let dim = *shape
                    .get(axis)
                    .ok_or_else(|| self.err(n, "axis out of range"))?
                    as i64;
                let c = |v: i64| if v < 0 { (v + dim).max(0) } else { v.min(dim) } as usize;
                let (a, b) = (c(starts[0]), c(ends[0]));
                if b <= a {
                    return Err(self.err(n, "empty slice"));
                }
                let mut sizes = vec![];
                if a > 0 {
                    sizes.push(a);
                }
                let pick = sizes.len();
                sizes.push(b - a);
                if (b as i64) < dim {
                    sizes.push(dim as usize - b);
                }
                let name = if n.name.is_empty() {
                    "Slice".to_string()
                } else {
                    n.name.clone()
                };
                let op = Op::Split { axis, sizes };
                let out_shapes = op.infer_shapes(&[&shape]).ok();
                let outs = self
                    .b
                    .node(&name, op, &[x], out_shapes.as_ref().map_or(1, Vec::len));
                if let Some(s) = out_shapes.as_ref().and_then(|s| s.get(pick)) {
                    self.shapes.insert(outs[pick], s.clone());
                }
                self.values.insert(n.outputs[0].clone(), outs[pick]);
                Ok(())
            }
            "MaxPool" => {
                let x = first(self)?;
                let p = self.pool(n)?;
                if n.outputs.len() > 1 {
                    return Err(self.err(n, "the indices output is not supported"));
                }
                self.out(n, Op::MaxPool2d(p), &[x])
            }
            "AveragePool" => {
                let x = first(self)?;
                let p = self.pool(n)?;
                let cip = n.int("count_include_pad").unwrap_or(0) != 0;
                self.out(
                    n,
                    Op::AvgPool2d {
                        pool: p,
                        count_include_pad: cip,
                    },
                    &[x],
                )
            }
            "ReduceMean" => {
                // the spatial mean of NCHW (`x.mean([2, 3])`): global average pooling
                let axes = match n.inputs.get(1).filter(|v| !v.is_empty()) {
                    Some(_) => self.const_i64(n, 1)?,
                    None => n.ints("axes").map(<[i64]>::to_vec).unwrap_or_default(),
                };
                let keep = n.int("keepdims").unwrap_or(1) != 0;
                let x = first(self)?;
                let rank = self.shapes.get(&x).map_or(4, Vec::len) as i64;
                let mut ax: Vec<i64> = axes
                    .iter()
                    .map(|&a| if a < 0 { a + rank } else { a })
                    .collect();
                ax.sort();
                if rank != 4 || ax != [2, 3] {
                    return Err(self.err(
                        n,
                        format!("mean over axes {axes:?}: only the spatial axes of NCHW"),
                    ));
                }
                if keep {
                    self.out(n, Op::AdaptiveAvgPool2d { output: [1, 1] }, &[x])
                } else {
                    let name = format!(
                        "{}.pool",
                        if n.name.is_empty() {
                            "ReduceMean"
                        } else {
                            &n.name
                        }
                    );
                    let p = self
                        .b
                        .node1(&name, Op::AdaptiveAvgPool2d { output: [1, 1] }, &[x]);
                    if let Some(s) = self.shapes.get(&x).cloned() {
                        self.shapes.insert(p, vec![s[0], s[1], 1, 1]);
                    }
                    self.out(n, Op::Flatten { start: 1 }, &[p])
                }
            }
            "GlobalAveragePool" => {
                let x = first(self)?;
                self.out(n, Op::AdaptiveAvgPool2d { output: [1, 1] }, &[x])
            }
            "LayerNormalization" => {
                let axis = n.int("axis").unwrap_or(-1);
                let x = first(self)?;
                let rank = self.shapes.get(&x).map_or(0, Vec::len) as i64;
                if axis != -1 && axis != rank - 1 {
                    return Err(self.err(
                        n,
                        format!("normalising from axis {axis}: only the last axis"),
                    ));
                }
                if n.outputs.len() > 1 && n.outputs[1..].iter().any(|o| !o.is_empty()) {
                    return Err(self.err(n, "the mean / inverse std outputs are not supported"));
                }
                let eps = n.float("epsilon").unwrap_or(1e-5);
                let w = self.value(n, &n.inputs.get(1).cloned().unwrap_or_default())?;
                let b = match n.inputs.get(2).filter(|b| !b.is_empty()) {
                    Some(b) => {
                        let b = b.clone();
                        self.value(n, &b)?
                    }
                    None => {
                        let c = self
                            .shapes
                            .get(&x)
                            .and_then(|s| s.last().copied())
                            .unwrap_or(0);
                        let t = Tensor::from_f32(vec![c], vec![0.0; c])
                            .map_err(|e| self.err(n, e.to_string()))?;
                        self.b.constant(&format!("{}.zero_bias", n.name), t)
                    }
                };
                let name = if n.name.is_empty() {
                    "LayerNorm".to_string()
                } else {
                    n.name.clone()
                };
                let v = self.b.node1(&name, Op::LayerNorm { eps }, &[x, w, b]);
                if let Some(s) = self.shapes.get(&x).cloned() {
                    self.shapes.insert(v, s);
                }
                self.values.insert(n.outputs[0].clone(), v);
                Ok(())
            }
            "Softmax" => {
                let axis = n
                    .int("axis")
                    .unwrap_or(if self.opset >= 13 { -1 } else { 1 });
                if axis != -1 && axis != 1 {
                    return Err(
                        self.err(n, format!("softmax over axis {axis}: only the last axis"))
                    );
                }
                let x = first(self)?;
                self.out(n, Op::Softmax, &[x])
            }
            "Dropout" | "Identity" => {
                let i = self.resolve(&n.inputs[0]);
                if let Some(o) = n.outputs.first() {
                    self.alias.insert(o.clone(), i);
                }
                Ok(())
            }
            "Constant" => {
                let t = match n.attr("value") {
                    Some(AttrValue::Tensor(t)) => tensor_of(t).map_err(|e| self.err(n, e))?,
                    _ => return Err(self.err(n, "only a tensor 'value'")),
                };
                self.tensors.insert(n.outputs[0].clone(), t);
                Ok(())
            }
            "QuantizeLinear" => {
                // an activation's quantization: remember it, and let the float value through
                let scale = self.const_f32(n, 1)?;
                let zp = n
                    .inputs
                    .get(2)
                    .and_then(|z| self.const_tensor(z))
                    .map_or(0, |t| match t.data() {
                        Data::U8(v) => v.first().map_or(0, |&x| x as i32),
                        Data::I8(v) => v.first().map_or(0, |&x| x as i32),
                        _ => 0,
                    });
                if scale.len() != 1 {
                    return Err(self.err(n, "only per-tensor activation quantization"));
                }
                let src = self.resolve(&n.inputs[0]);
                if let Some(&v) = self.values.get(&src) {
                    let name = self.b_value_name(v);
                    self.qparams.insert(
                        name,
                        QuantParams {
                            scale: scale[0],
                            zero_point: zp,
                        },
                    );
                }
                self.alias.insert(n.outputs[0].clone(), src);
                Ok(())
            }
            "DequantizeLinear" => {
                let src = self.resolve(&n.inputs[0]);
                if self.values.contains_key(&src) {
                    // DQ of an activation: the float value itself
                    self.alias.insert(n.outputs[0].clone(), src);
                    return Ok(());
                }
                // DQ of a constant (weights, bias): dequantize it now
                let t = self
                    .const_tensor(&src)
                    .ok_or_else(|| self.err(n, format!("'{src}' is unknown")))?
                    .clone();
                let scale = self.const_f32(n, 1)?;
                let zps: Vec<i32> = match n.inputs.get(2).and_then(|z| self.const_tensor(z)) {
                    Some(t) => match t.data() {
                        Data::U8(v) => v.iter().map(|&x| x as i32).collect(),
                        Data::I8(v) => v.iter().map(|&x| x as i32).collect(),
                        Data::I32(v) => v.clone(),
                        _ => vec![0],
                    },
                    None => vec![0],
                };
                let vals: Vec<i32> = match t.data() {
                    Data::U8(v) => v.iter().map(|&x| x as i32).collect(),
                    Data::I8(v) => v.iter().map(|&x| x as i32).collect(),
                    Data::I32(v) => v.clone(),
                    _ => return Err(self.err(n, "dequantizes an unsupported type")),
                };
                let axis = n.int("axis").unwrap_or(1);
                let shape = t.shape().to_vec();
                let axis = if axis < 0 {
                    axis + shape.len() as i64
                } else {
                    axis
                } as usize;
                let inner: usize = shape.get(axis + 1..).map_or(1, |s| s.iter().product());
                let ch = shape.get(axis).copied().unwrap_or(1);
                let f: Vec<f32> = vals
                    .iter()
                    .enumerate()
                    .map(|(i, &q)| {
                        let c = if scale.len() == 1 {
                            0
                        } else {
                            (i / inner) % ch
                        };
                        let z = zps.get(c).or(zps.first()).copied().unwrap_or(0);
                        (q - z) as f32 * scale[c.min(scale.len() - 1)]
                    })
                    .collect();
                let ft = Tensor::from_f32(shape, f).map_err(|e| self.err(n, e.to_string()))?;
                self.tensors.insert(n.outputs[0].clone(), ft);
                Ok(())
            }
            other => Err(self.err(n, format!("{other} is not supported"))),
        }
    }

    /// Shape arithmetic on constants (what `torch.onnx.export` leaves for `x.view(b, g, -1, ..)`
    /// with `x.size()`): folded at import, with the static input shape.
    fn fold(&self, n: &proto::Node) -> Result<Option<Tensor>, OnnxError> {
        let consts: Option<Vec<&Tensor>> = n
            .inputs
            .iter()
            .filter(|i| !i.is_empty())
            .map(|i| self.const_tensor(i))
            .collect();
        let ints = |t: &Tensor| -> Option<Vec<i64>> {
            match t.data() {
                Data::I64(v) => Some(v.clone()),
                Data::I32(v) => Some(v.iter().map(|&x| x as i64).collect()),
                _ => None,
            }
        };
        let mk = |shape: Vec<usize>, v: Vec<i64>| {
            Tensor::from_i64(shape, v).map_err(|e| self.err(n, e.to_string()))
        };
        let op = n.op_type.as_str();
        if op == "Shape" {
            let src = self.resolve(&n.inputs[0]);
            let shape = match self.values.get(&src).and_then(|v| self.shapes.get(v)) {
                Some(s) => s.clone(),
                None => match self.const_tensor(&src) {
                    Some(t) => t.shape().to_vec(),
                    None => return Err(self.err(n, format!("the shape of '{src}' is not static"))),
                },
            };
            let r = shape.len() as i64;
            let clampi = |v: i64| if v < 0 { (v + r).max(0) } else { v.min(r) } as usize;
            let (a, b) = (
                clampi(n.int("start").unwrap_or(0)),
                clampi(n.int("end").unwrap_or(r)),
            );
            let v: Vec<i64> = (a..b.max(a))
                .map(|i| {
                    if i == 0 && self.dynamic_batch && shape.len() > 1 {
                        BATCH
                    } else {
                        shape[i] as i64
                    }
                })
                .collect();
            return Ok(Some(mk(vec![v.len()], v)?));
        }
        let Some(cs) = consts else { return Ok(None) };
        let all_int = cs.iter().all(|t| ints(t).is_some());
        if !all_int || cs.is_empty() {
            return Ok(None);
        }
        let iv: Vec<Vec<i64>> = cs.iter().map(|t| ints(t).expect("checked")).collect();
        let t = match op {
            "Gather" => {
                let (data, idx) = (&iv[0], iv.get(1).ok_or_else(|| self.err(n, "no indices"))?);
                if n.int("axis").unwrap_or(0) != 0 || cs[0].ndim() > 1 {
                    return Ok(None);
                }
                let len = data.len() as i64;
                let v = idx
                    .iter()
                    .map(|&i| {
                        data.get((if i < 0 { i + len } else { i }) as usize)
                            .copied()
                    })
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| self.err(n, "index out of range"))?;
                mk(cs[1].shape().to_vec(), v)?
            }
            "Unsqueeze" | "Squeeze" | "Cast" | "Identity" => {
                let v = iv[0].clone();
                let shape = if v.len() == 1 && op == "Squeeze" {
                    vec![]
                } else {
                    vec![v.len()]
                };
                if op == "Cast"
                    && n.int("to")
                        .is_some_and(|t| t != dtype::INT64 as i64 && t != dtype::INT32 as i64)
                {
                    return Ok(None);
                }
                mk(shape, v)?
            }
            "Concat" => {
                let v: Vec<i64> = iv.concat();
                mk(vec![v.len()], v)?
            }
            "Add" | "Sub" | "Mul" | "Div" if iv.len() == 2 => {
                // arithmetic on the symbolic batch falls back to the example batch of 1
                let fix = |v: &Vec<i64>| {
                    v.iter()
                        .map(|&x| if x == BATCH { 1 } else { x })
                        .collect::<Vec<_>>()
                };
                let (a, b) = (&fix(&iv[0]), &fix(&iv[1]));
                let len = a.len().max(b.len());
                let get = |v: &Vec<i64>, i: usize| v[if v.len() == 1 { 0 } else { i }];
                let v = (0..len)
                    .map(|i| {
                        let (x, y) = (get(a, i), get(b, i));
                        match op {
                            "Add" => Some(x + y),
                            "Sub" => Some(x - y),
                            "Mul" => Some(x * y),
                            _ => (y != 0).then(|| x.div_euclid(y)),
                        }
                    })
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| self.err(n, "division by zero"))?;
                let shape = if cs[0].ndim() == 0 && cs[1].ndim() == 0 {
                    vec![]
                } else {
                    vec![len]
                };
                mk(shape, v)?
            }
            "Slice" if iv.len() >= 3 => {
                let data = &iv[0];
                let len = data.len() as i64;
                let c = |v: i64| if v < 0 { (v + len).max(0) } else { v.min(len) } as usize;
                let (a, b) = (c(iv[1][0]), c(iv[2][0]));
                let v = data[a..b.max(a)].to_vec();
                mk(vec![v.len()], v)?
            }
            _ => return Ok(None),
        };
        Ok(Some(t))
    }

    fn b_value_name(&self, v: ValueId) -> String {
        self.b.value_name(v)
    }
}

/// The scalar value of an initializer or `Constant` output.
fn scalar(name: &str, tensors: &HashMap<String, Tensor>, nodes: &[proto::Node]) -> Option<f32> {
    if let Some(t) = tensors.get(name) {
        return t.as_f32().ok().filter(|v| v.len() == 1).map(|v| v[0]);
    }
    let n = nodes
        .iter()
        .find(|n| n.op_type == "Constant" && n.outputs.first().is_some_and(|o| o == name))?;
    match n.attr("value") {
        Some(AttrValue::Tensor(t)) => tensor_of(t)
            .ok()?
            .as_f32()
            .ok()
            .filter(|v| v.len() == 1)
            .map(|v| v[0]),
        _ => None,
    }
}

/// `torch.onnx.export` writes exact GELU below opset 20 as
/// `Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5)`: fold each such chain into one `Gelu` node.
fn fuse_gelu(nodes: &mut Vec<proto::Node>, tensors: &HashMap<String, Tensor>) {
    let near = |v: Option<f32>, want: f32| v.is_some_and(|v| (v - want).abs() < 1e-4);
    let mut i = 0;
    while i < nodes.len() {
        if nodes[i].op_type != "Erf" {
            i += 1;
            continue;
        }
        let by_output = |name: &str| {
            nodes
                .iter()
                .position(|n| n.outputs.iter().any(|o| o == name))
        };
        let readers = |name: &str| -> Vec<usize> {
            nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.inputs.iter().any(|x| x == name))
                .map(|(k, _)| k)
                .collect()
        };
        // the only reader of `value`, if it is `op` with the other input the constant `want`
        let next_const_op = |value: &str, op: &str, want: f32| -> Option<usize> {
            let [k] = readers(value)[..] else {
                return None;
            };
            let n = &nodes[k];
            let other = n.inputs.iter().find(|v| *v != value)?;
            (n.op_type == op && near(scalar(other, tensors, nodes), want)).then_some(k)
        };
        let found = (|| {
            let erf = &nodes[i];
            let div = by_output(&erf.inputs[0])?;
            let d = &nodes[div];
            let x = d.inputs.first()?.clone();
            let ok_div = (d.op_type == "Div"
                && near(
                    scalar(d.inputs.get(1)?, tensors, nodes),
                    std::f32::consts::SQRT_2,
                ))
                || (d.op_type == "Mul"
                    && near(
                        scalar(d.inputs.get(1)?, tensors, nodes),
                        std::f32::consts::FRAC_1_SQRT_2,
                    ));
            if !ok_div {
                return None;
            }
            let add = next_const_op(&erf.outputs[0], "Add", 1.0)?;
            let [m1] = readers(&nodes[add].outputs[0])[..] else {
                return None;
            };
            let m = &nodes[m1];
            if m.op_type != "Mul" || !m.inputs.contains(&x) {
                return None;
            }
            let m2 = next_const_op(&m.outputs[0], "Mul", 0.5)?;
            let h = &nodes[m2];
            let [_] = readers(&d.outputs[0])[..] else {
                return None;
            };
            Some((div, add, m1, m2, x, h.outputs[0].clone(), h.name.clone()))
        })();
        let Some((div, add, m1, m2, x, out, name)) = found else {
            i += 1;
            continue;
        };
        let gelu = proto::Node {
            name: if name.is_empty() { "Gelu".into() } else { name },
            op_type: "Gelu".into(),
            inputs: vec![x],
            outputs: vec![out],
            ..Default::default()
        };
        // the last node of the chain becomes the Gelu (keeping topological order)
        nodes[m2] = gelu;
        let mut drop = [div, i, add, m1];
        drop.sort_unstable();
        for k in drop.iter().rev() {
            nodes.remove(*k);
        }
        i = 0;
    }
}

/// Import a model from ONNX bytes; `file` names it in errors.
pub fn import(bytes: &[u8], file: &str) -> Result<Imported, OnnxError> {
    let m = proto::decode(bytes).map_err(|e| match e {
        OnnxError::Decode(msg) => OnnxError::Decode(format!("{file}: {msg}")),
        e => e,
    })?;
    let opset = m
        .opset
        .iter()
        .find(|(d, _)| d.is_empty() || d == "ai.onnx")
        .map_or(0, |o| o.1);
    if !(11..=20).contains(&opset) {
        return Err(OnnxError::Decode(format!(
            "{file}: opset {opset} is not supported (11 to 20)"
        )));
    }
    let mut tensors = HashMap::new();
    for t in &m.graph.initializers {
        tensors.insert(
            t.name.clone(),
            tensor_of(t).map_err(|e| OnnxError::Decode(format!("{file}: {e}")))?,
        );
    }
    let mut m = m;
    fuse_gelu(&mut m.graph.nodes, &tensors);
    let name = if m.graph.name.is_empty() {
        file.to_string()
    } else {
        m.graph.name.clone()
    };
    let mut im = Im {
        b: GraphBuilder::new(&name),
        values: HashMap::new(),
        tensors,
        pending: vec![],
        opset,
        qparams: BTreeMap::new(),
        alias: HashMap::new(),
        shapes: HashMap::new(),
        dynamic_batch: false,
    };
    let mut input_shape = vec![];
    for vi in m
        .graph
        .inputs
        .iter()
        .filter(|v| !im.tensors.contains_key(&v.name))
    {
        if vi.elem_type != dtype::FLOAT {
            return Err(OnnxError::Decode(format!(
                "{file}: input '{}' is not float",
                vi.name
            )));
        }
        let shape: Vec<usize> = vi
            .dims
            .iter()
            .map(|d| d.map_or(1, |x| x.max(1) as usize))
            .collect();
        if input_shape.is_empty() {
            input_shape = shape.clone();
        }
        if vi.dims.first() == Some(&None) {
            im.dynamic_batch = true;
        }
        let v = im.b.input(&vi.name, &shape);
        im.shapes.insert(v, shape);
        im.values.insert(vi.name.clone(), v);
    }
    if input_shape.is_empty() {
        return Err(OnnxError::Decode(format!("{file}: the graph has no input")));
    }
    for n in &m.graph.nodes {
        im.node(n)?;
    }
    let mut outs = vec![];
    for o in &m.graph.outputs {
        let r = im.resolve(&o.name);
        let v = *im.values.get(&r).ok_or_else(|| {
            OnnxError::Decode(format!("{file}: output '{}' is not computed", o.name))
        })?;
        outs.push(v);
    }
    let Im {
        b,
        pending,
        qparams,
        ..
    } = im;
    let mut graph = b.finish(&outs);
    for (v, t) in pending {
        graph.tensors.insert(v, t);
    }
    graph
        .validate()
        .map_err(|e| OnnxError::Decode(format!("{file}: {e}")))?;
    Ok(Imported {
        graph,
        input_shape,
        qparams,
        opset,
    })
}
