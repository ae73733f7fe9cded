//! The executor: prepares kernels (packed weights) once, then runs the graph's nodes in order,
//! freeing each intermediate after its last reader and reusing a dying input's buffer in place.

use crate::ir::{Graph, ValueId, ValueKind};
use crate::op::Op;
use crate::{passes, GraphError};
use qvision_kernels::blocked::{self, conv::BlockedConv};
use qvision_kernels::conv::{Conv2dParams, PreparedConv};
use qvision_kernels::elementwise::{
    binary, binary_broadcast_in_place, broadcast_shape, softmax_rows, BinaryOp,
};
use qvision_kernels::gemm::{self, Bias, Lhs};
use qvision_kernels::{layout, norm, pool};
use qvision_tensor::{pool as buffers, Tensor};

/// How to build a [`Session`].
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Fold BatchNorm into convs and fuse activations before running (on by default).
    pub optimize: bool,
    /// Worker threads; `None` uses rayon's global pool.
    pub threads: Option<usize>,
    /// Run convolutions in the blocked NCHW16c layout where a kernel exists (with `optimize`).
    /// `None` decides: on where the CPU has AVX-512, unless `QVISION_LAYOUT=nchw`.
    pub blocked: Option<bool>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            optimize: true,
            threads: None,
            blocked: None,
        }
    }
}

enum Prepared {
    None,
    Conv(PreparedConv),
    Q(crate::exec_q::QPrepared),
    Blocked(BlockedConv),
    /// A depthwise conv and the 1x1 conv after it ([`Op::DwProjectConv`]).
    DwProject {
        dw: BlockedConv,
        pw: BlockedConv,
    },
    /// Weight transposed to `in x out`, and the bias.
    Linear {
        wt: Vec<f32>,
        out: usize,
        bias: Option<Vec<f32>>,
    },
}

/// A graph ready to run.
pub struct Session {
    graph: Graph,
    prepared: Vec<Prepared>,
    use_counts: Vec<usize>,
    pool: Option<rayon::ThreadPool>,
    /// `QVISION_PROFILE=1`: print time per op kind after each run; `=2` also every node.
    profile: bool,
    profile_nodes: bool,
}

impl Session {
    pub fn new(graph: &Graph, opts: SessionOptions) -> Result<Self, GraphError> {
        graph.validate()?;
        let graph = if opts.optimize {
            let g = passes::optimize_for_inference(&passes::sink_channels_last(graph))?;
            let g = passes::fuse_concat_norm(&g);
            let blocked = opts.blocked.unwrap_or_else(|| {
                qvision_kernels::isa::current() == qvision_kernels::isa::Isa::Avx512
                    && std::env::var("QVISION_LAYOUT").map_or(true, |v| v != "nchw")
            });
            if blocked {
                let g = passes::fuse_concat_norm_conv(&passes::to_blocked_layout(&g));
                passes::fuse_dw_project(&g)
            } else {
                g
            }
        } else {
            graph.clone()
        };
        let prepared = graph
            .nodes
            .iter()
            .map(|n| prepare(&graph, n))
            .collect::<Result<Vec<_>, _>>()?;
        let use_counts = graph.use_counts();
        let pool = match opts.threads {
            Some(t) => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(t.max(1))
                    .build()
                    .map_err(|e| GraphError::Invalid(format!("thread pool: {e}")))?,
            ),
            None => None,
        };
        Ok(Session {
            graph,
            prepared,
            use_counts,
            pool,
            profile: std::env::var_os("QVISION_PROFILE").is_some_and(|v| v != "0"),
            profile_nodes: std::env::var_os("QVISION_PROFILE").is_some_and(|v| v == "2"),
        })
    }

    /// The (optimised) graph this session runs.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Run with one tensor per graph input; returns one tensor per graph output.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, GraphError> {
        self.run_observed(inputs, &mut |_, _| {})
    }

    /// Run, showing every node's outputs to `observe` as they are computed (calibration,
    /// per-layer error reports). Values are in the session's layout: build the session with
    /// `blocked: Some(false)` to see NCHW tensors only.
    pub fn run_observed(
        &self,
        inputs: Vec<Tensor>,
        observe: &mut (dyn FnMut(&crate::ir::Node, &[Tensor]) + Send),
    ) -> Result<Vec<Tensor>, GraphError> {
        let mut report = String::new();
        let out = match &self.pool {
            Some(p) => {
                p.install(|| with_hot_workers(|| self.run_inner(inputs, observe, &mut report)))
            }
            None => with_hot_workers(|| self.run_inner(inputs, observe, &mut report)),
        };
        // the profile is printed once the run (and its hot workers) are done: writing to a
        // terminal takes milliseconds, which would stall the run it describes
        if !report.is_empty() {
            eprint!("{report}");
        }
        out
    }

    fn run_inner(
        &self,
        inputs: Vec<Tensor>,
        observe: &mut (dyn FnMut(&crate::ir::Node, &[Tensor]) + Send),
        report: &mut String,
    ) -> Result<Vec<Tensor>, GraphError> {
        use std::fmt::Write;
        let g = &self.graph;
        if inputs.len() != g.inputs.len() {
            return Err(GraphError::Input {
                name: g.name.clone(),
                msg: format!("expects {} inputs, got {}", g.inputs.len(), inputs.len()),
            });
        }
        let mut env: Vec<Option<Tensor>> = vec![None; g.values.len()];
        for (id, t) in g.inputs.iter().zip(inputs) {
            env[id.0] = Some(t);
        }
        let mut remaining = self.use_counts.clone();
        let mut profile = self
            .profile
            .then(std::collections::BTreeMap::<String, (f64, usize, f64)>::new);
        let mut node_rows = Vec::new();
        for (node, prep) in g.nodes.iter().zip(&self.prepared) {
            let t0 = std::time::Instant::now();
            let outs = run_node(g, node, prep, &mut env, &remaining)
                .map_err(|msg| GraphError::node(&node.name, node.op.kind(), msg))?;
            // conv FLOPs for the profile (not computed otherwise)
            let flops = match (&node.op, outs.first()) {
                (
                    Op::Conv2d { .. }
                    | Op::ConvBlocked { .. }
                    | Op::ConcatNormConv { .. }
                    | Op::DwProjectConv { .. }
                    | Op::Q(crate::qop::QOp::Conv2d { .. }),
                    Some(y),
                ) if self.profile => 2.0 * node.op.macs(&[], &[y.shape().to_vec()]) as f64,
                _ => 0.0,
            };
            if self.profile_nodes {
                // reported after the run: writing to stderr between nodes would disturb
                // the next node's timing
                node_rows.push((
                    node,
                    t0.elapsed().as_secs_f64() * 1e3,
                    flops,
                    outs.first().map(|t| t.shape().to_vec()),
                ));
            }
            if let Some(p) = profile.as_mut() {
                let key = match (&node.op, prep) {
                    (
                        Op::Conv2d { params, .. }
                        | Op::ConvBlocked { params, .. }
                        | Op::ConcatNormConv { params, .. }
                        | Op::DwProjectConv { dw: params, .. }
                        | Op::Q(crate::qop::QOp::Conv2d { params, .. }),
                        _,
                    ) => format!(
                        "{} k{}x{} s{} {}",
                        node.op.kind(),
                        params.kernel[0],
                        params.kernel[1],
                        params.stride[0],
                        if params.groups == params.in_channels {
                            "dw"
                        } else if params.groups > 1 {
                            "grouped"
                        } else {
                            "dense"
                        }
                    ),
                    (op, _) => op.kind().to_string(),
                };
                let e = p.entry(key).or_insert((0.0, 0, 0.0));
                e.0 += t0.elapsed().as_secs_f64() * 1e3;
                e.1 += 1;
                e.2 += flops;
            }
            for i in &node.inputs {
                remaining[i.0] = remaining[i.0].saturating_sub(1);
                if remaining[i.0] == 0
                    && matches!(
                        g.values[i.0].kind,
                        ValueKind::NodeOutput { .. } | ValueKind::Input
                    )
                {
                    if let Some(t) = env[i.0].take() {
                        match t.into_data() {
                            qvision_tensor::Data::F32(v) => buffers::recycle(v),
                            qvision_tensor::Data::U8(v) => buffers::recycle_u8(v),
                            _ => {}
                        }
                    }
                }
            }
            observe(node, &outs);
            for (o, t) in node.outputs.iter().zip(outs) {
                env[o.0] = Some(t);
            }
        }
        for (node, ms, flops, shape) in node_rows {
            let shape = shape.map(|s| format!("{s:?}")).unwrap_or_default();
            let rate = gflops(flops, ms);
            let _ = writeln!(
                report,
                "  {:<40} {:<12} {shape:<22} {ms:8.3} ms {rate}",
                node.name,
                node.op.kind()
            );
        }
        if let Some(p) = profile {
            let total: f64 = p.values().map(|v| v.0).sum();
            let mut rows: Vec<_> = p.into_iter().collect();
            rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
            let _ = writeln!(report, "profile of {} ({total:.2} ms):", g.name);
            for (k, (ms, n, flops)) in rows {
                let rate = gflops(flops, ms);
                let _ = writeln!(
                    report,
                    "  {k:<28} {n:>4} nodes {ms:>9.3} ms {:>5.1}% {rate}",
                    100.0 * ms / total
                );
            }
        }
        g.outputs
            .iter()
            .map(|o| match env[o.0].take() {
                Some(t) => Ok(t),
                None => g.tensor(*o).cloned(),
            })
            .collect()
    }
}

fn prepare(g: &Graph, n: &crate::ir::Node) -> Result<Prepared, GraphError> {
    let f32_of = |id: ValueId| -> Result<&[f32], GraphError> {
        g.tensor(id)?.as_f32().map_err(|e| {
            GraphError::node(
                &n.name,
                n.op.kind(),
                format!("{}: {e}", g.values[id.0].name),
            )
        })
    };
    Ok(match &n.op {
        Op::Q(q) => Prepared::Q(crate::exec_q::prepare(g, n, q)?),
        Op::Conv2d {
            params,
            act,
            residual,
        } => {
            let w = f32_of(n.inputs[1])?;
            let has_bias = n.inputs.len() == 3 + *residual as usize;
            let b = if has_bias {
                Some(f32_of(n.inputs[2])?)
            } else {
                None
            };
            Prepared::Conv(
                PreparedConv::new(*params, w, b, *act)
                    .map_err(|e| GraphError::from_kernel(&n.name, "Conv2d", e))?,
            )
        }
        Op::ConvBlocked {
            params, residual, ..
        } => {
            let w = f32_of(n.inputs[1])?;
            let has_bias = n.inputs.len() == 3 + *residual as usize;
            let b = if has_bias {
                Some(f32_of(n.inputs[2])?)
            } else {
                None
            };
            Prepared::Blocked(
                BlockedConv::new(*params, w, b)
                    .map_err(|e| GraphError::from_kernel(&n.name, "ConvBlocked", e))?,
            )
        }
        Op::ConcatNormConv { params, bias, .. } => {
            let k = n.inputs.len() - 1 - *bias as usize;
            let w = f32_of(n.inputs[k])?;
            let b = if *bias {
                Some(f32_of(n.inputs[k + 1])?)
            } else {
                None
            };
            Prepared::Blocked(
                BlockedConv::new(*params, w, b)
                    .map_err(|e| GraphError::from_kernel(&n.name, "ConcatNormConv", e))?,
            )
        }
        Op::DwProjectConv {
            dw,
            dw_bias,
            params,
            bias,
            ..
        } => {
            let conv = |p: Conv2dParams, w: usize, b: bool| {
                let bias = if b {
                    Some(f32_of(n.inputs[w + 1])?)
                } else {
                    None
                };
                BlockedConv::new(p, f32_of(n.inputs[w])?, bias)
                    .map_err(|e| GraphError::from_kernel(&n.name, "DwProjectConv", e))
            };
            let (dw, pw) = (
                conv(*dw, 1, *dw_bias)?,
                conv(*params, 2 + *dw_bias as usize, *bias)?,
            );
            if !pw.supports_dw_project(&dw) {
                return Err(GraphError::node(
                    &n.name,
                    "DwProjectConv",
                    "needs a depthwise conv and a 1x1 conv over its (at least 16) channels",
                ));
            }
            Prepared::DwProject { dw, pw }
        }
        Op::Linear { .. } => {
            let wt = g.tensor(n.inputs[1])?;
            let (out, inn) = match wt.shape() {
                [o, i] => (*o, *i),
                s => {
                    return Err(GraphError::node(
                        &n.name,
                        "Linear",
                        format!("weight shape {s:?} is not 2-D"),
                    ))
                }
            };
            let w = f32_of(n.inputs[1])?;
            let mut t = vec![0.0f32; w.len()];
            for o in 0..out {
                for i in 0..inn {
                    t[i * out + o] = w[o * inn + i];
                }
            }
            let bias = n
                .inputs
                .get(2)
                .map(|&b| f32_of(b).map(|v| v.to_vec()))
                .transpose()?;
            Prepared::Linear { wt: t, out, bias }
        }
        _ => Prepared::None,
    })
}

fn fetch<'a>(g: &'a Graph, env: &'a [Option<Tensor>], id: ValueId) -> Result<&'a Tensor, String> {
    match &env[id.0] {
        Some(t) => Ok(t),
        None => g.tensor(id).map_err(|e| e.to_string()),
    }
}

/// The residual operand (the node's last input) of a conv that adds one.
fn residual_of<'a>(
    g: &'a Graph,
    env: &'a [Option<Tensor>],
    ins: &[ValueId],
    residual: bool,
) -> Result<Option<&'a Tensor>, String> {
    residual
        .then(|| fetch(g, env, ins[ins.len() - 1]))
        .transpose()
}

/// `[n, h, w]` of an NCHW conv input, checked to hold `channels` channels.
fn nchw_nhw(x: &Tensor, channels: usize) -> Result<[usize; 3], String> {
    let [n, c, h, w] = nchw(x)?;
    if c != channels {
        return Err(format!("input has {c} channels, conv expects {channels}"));
    }
    Ok([n, h, w])
}

/// `[n, h, w]` of a blocked input, checked to hold the blocks of `channels` channels.
fn blocked_nhw(x: &Tensor, channels: usize) -> Result<[usize; 3], String> {
    let [n, cb, h, w, _] = blocked5(x)?;
    if cb != blocked::blocks(channels) {
        return Err(format!(
            "input has {cb} channel blocks, conv expects {}",
            blocked::blocks(channels)
        ));
    }
    Ok([n, h, w])
}

/// Take the value if this node is its last reader, else copy it.
fn take(
    g: &Graph,
    env: &mut [Option<Tensor>],
    remaining: &[usize],
    id: ValueId,
) -> Result<Tensor, String> {
    if remaining[id.0] == 1 {
        if let Some(t) = env[id.0].take() {
            return Ok(t);
        }
    }
    fetch(g, env, id).cloned()
}

fn f32s(t: &Tensor) -> Result<&[f32], String> {
    t.as_f32().map_err(|e| e.to_string())
}

fn nchw(t: &Tensor) -> Result<[usize; 4], String> {
    <[usize; 4]>::try_from(t.shape())
        .map_err(|_| format!("expects an NCHW input, got shape {:?}", t.shape()))
}

/// Run a conv whose epilogue adds `residual` then applies `act`. A residual of another shape
/// (broadcasting) falls back to conv, then add, then act.
fn with_residual(
    shape: &[usize],
    residual: Option<&Tensor>,
    act: Option<qvision_kernels::Activation>,
    conv: impl Fn(Option<&[f32]>, Option<qvision_kernels::Activation>) -> Result<Vec<f32>, String>,
) -> Result<Vec<f32>, String> {
    match residual {
        Some(r) if r.shape() != shape => {
            let y = conv(None, None)?;
            let (mut y, _) =
                binary(BinaryOp::Add, &y, shape, f32s(r)?, r.shape()).map_err(|e| e.to_string())?;
            if let Some(a) = act {
                a.apply(&mut y);
            }
            Ok(y)
        }
        r => conv(r.map(f32s).transpose()?, act),
    }
}

fn blocked5(t: &Tensor) -> Result<[usize; 5], String> {
    match <[usize; 5]>::try_from(t.shape()) {
        Ok(s) if s[4] == 16 => Ok(s),
        _ => Err(format!(
            "expects a blocked [n, c/16, h, w, 16] input, got shape {:?}",
            t.shape()
        )),
    }
}

fn tensor(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor, String> {
    Tensor::from_f32(shape, data).map_err(|e| e.to_string())
}

fn run_node(
    g: &Graph,
    node: &crate::ir::Node,
    prep: &Prepared,
    env: &mut [Option<Tensor>],
    remaining: &[usize],
) -> Result<Vec<Tensor>, String> {
    let ins = &node.inputs;
    let ke = |e: qvision_kernels::KernelError| e.to_string();
    let one = |t: Tensor| Ok(vec![t]);
    match (&node.op, prep) {
        (Op::Conv2d { residual, act, .. }, Prepared::Conv(conv)) => {
            let x = fetch(g, env, ins[0])?;
            let p = conv.params();
            let [n, h, w] = nchw_nhw(x, p.in_channels)?;
            let (oh, ow) = p.output_size(h, w).map_err(ke)?;
            let shape = vec![n, p.out_channels, oh, ow];
            let res = residual_of(g, env, ins, *residual)?;
            let xs = f32s(x)?;
            let y = with_residual(&shape, res, *act, |r, a| {
                conv.run_with(xs, n, h, w, r, a).map(|o| o.0).map_err(ke)
            })?;
            one(tensor(shape, y)?)
        }
        (Op::ConvBlocked { residual, act, .. }, Prepared::Blocked(conv)) => {
            let x = fetch(g, env, ins[0])?;
            let p = conv.params();
            let [n, h, w] = if conv.nchw_input() {
                nchw_nhw(x, p.in_channels)?
            } else {
                blocked_nhw(x, p.in_channels)?
            };
            let (oh, ow) = p.output_size(h, w).map_err(ke)?;
            let shape = vec![n, blocked::blocks(p.out_channels), oh, ow, 16];
            let res = residual_of(g, env, ins, *residual)?;
            let xs = f32s(x)?;
            let y = with_residual(&shape, res, *act, |r, a| {
                conv.run(xs, n, h, w, r, a).map(|o| o.0).map_err(ke)
            })?;
            one(tensor(shape, y)?)
        }
        (
            Op::DwProjectConv {
                dw_act,
                act,
                residual,
                ..
            },
            Prepared::DwProject { dw, pw },
        ) => {
            let x = fetch(g, env, ins[0])?;
            let p = pw.params();
            let [n, h, w] = blocked_nhw(x, p.in_channels)?;
            let (oh, ow) = dw.params().output_size(h, w).map_err(ke)?;
            let shape = vec![n, blocked::blocks(p.out_channels), oh, ow, 16];
            let res = residual_of(g, env, ins, *residual)?;
            let xs = f32s(x)?;
            let isa = qvision_kernels::isa::current();
            let y = with_residual(&shape, res, *act, |r, a| {
                pw.run_dw_project(isa, dw, xs, n, h, w, *dw_act, r, a)
                    .map(|o| o.0)
                    .map_err(ke)
            })?;
            one(tensor(shape, y)?)
        }
        (Op::Q(q), Prepared::Q(p)) => {
            let ts: Vec<&Tensor> = ins
                .iter()
                .map(|&i| fetch(g, env, i))
                .collect::<Result<_, _>>()?;
            crate::exec_q::run(q, p, &ts)
        }
        (Op::ToBlocked, _) => {
            let x = fetch(g, env, ins[0])?;
            let [n, c, h, w] = nchw(x)?;
            let y = blocked::to_blocked(f32s(x)?, n, c, h * w);
            one(tensor(vec![n, blocked::blocks(c), h, w, 16], y)?)
        }
        (Op::FromBlocked { channels }, _) => {
            let x = fetch(g, env, ins[0])?;
            let [n, _, h, w, _] = blocked5(x)?;
            let y = blocked::from_blocked(f32s(x)?, n, *channels, h * w);
            one(tensor(vec![n, *channels, h, w], y)?)
        }
        (Op::MaxPool2d(p), _) if fetch(g, env, ins[0])?.ndim() == 5 => {
            let x = fetch(g, env, ins[0])?;
            let [n, cb, h, w, _] = blocked5(x)?;
            let (y, oh, ow) = blocked::pool::max_pool(p, f32s(x)?, n * cb, h, w).map_err(ke)?;
            one(tensor(vec![n, cb, oh, ow, 16], y)?)
        }
        (
            Op::AvgPool2d {
                pool: p,
                count_include_pad,
            },
            _,
        ) if fetch(g, env, ins[0])?.ndim() == 5 => {
            let x = fetch(g, env, ins[0])?;
            let [n, cb, h, w, _] = blocked5(x)?;
            let (y, oh, ow) =
                blocked::pool::avg_pool(p, *count_include_pad, f32s(x)?, n * cb, h, w)
                    .map_err(ke)?;
            one(tensor(vec![n, cb, oh, ow, 16], y)?)
        }
        (Op::AdaptiveAvgPool2d { output }, _) if fetch(g, env, ins[0])?.ndim() == 5 => {
            let x = fetch(g, env, ins[0])?;
            let [n, cb, h, w, _] = blocked5(x)?;
            let y = blocked::pool::adaptive_avg_pool(f32s(x)?, n * cb, h, w, output[0], output[1])
                .map_err(ke)?;
            one(tensor(vec![n, cb, output[0], output[1], 16], y)?)
        }
        (Op::Linear { act }, Prepared::Linear { wt, out, bias }) => {
            let x = fetch(g, env, ins[0])?;
            let inn = wt.len() / out;
            if x.shape().last() != Some(&inn) {
                return Err(format!("input shape {:?} does not end in {inn}", x.shape()));
            }
            let rows = x.numel() / inn;
            let mut y = if rows == 1 {
                // batch 1: bound by streaming the weights (a classifier head)
                qvision_kernels::gemv::gemv(f32s(x)?, wt, *out, bias.as_deref()).map_err(ke)?
            } else {
                let mut y = buffers::take(rows * out);
                gemm::matmul(
                    &mut y,
                    Lhs::Plain {
                        data: f32s(x)?,
                        rows,
                        cols: inn,
                    },
                    wt,
                    *out,
                    *out,
                    bias.as_deref().map(Bias::PerCol),
                )
                .map_err(ke)?;
                y
            };
            if let Some(a) = act {
                a.apply(&mut y);
            }
            let mut shape = x.shape().to_vec();
            *shape.last_mut().unwrap_or(&mut 0) = *out;
            one(tensor(shape, y)?)
        }
        (Op::BatchNorm2d { eps }, _) if fetch(g, env, ins[0])?.ndim() == 5 => {
            let mut x = take(g, env, remaining, ins[0])?;
            let [n, _, h, w, _] = blocked5(&x)?;
            let p: Vec<&[f32]> = ins[1..5]
                .iter()
                .map(|&i| fetch(g, env, i).and_then(f32s))
                .collect::<Result<_, _>>()?;
            let c = p[0].len();
            let (scale, shift) = norm::batch_norm_affine(p[0], p[1], p[2], p[3], *eps);
            let xs = x.as_f32_mut().map_err(|e| e.to_string())?;
            if xs.len() != n * blocked::blocks(c) * h * w * 16 {
                return Err(format!("{c} channels do not match the blocked input"));
            }
            blocked::channel_affine(xs, n, c, h * w, &scale, &shift);
            one(x)
        }
        (Op::BatchNorm2d { eps }, _) => {
            let mut x = take(g, env, remaining, ins[0])?;
            let s = x.shape().to_vec();
            if s.len() < 2 {
                return Err(format!("expects at least 2 dims, got {s:?}"));
            }
            let p: Vec<&[f32]> = ins[1..5]
                .iter()
                .map(|&i| fetch(g, env, i).and_then(f32s))
                .collect::<Result<_, _>>()?;
            let hw = s[2..].iter().product();
            let xs = x.as_f32_mut().map_err(|e| e.to_string())?;
            norm::batch_norm(xs, s[0], s[1], hw, p[0], p[1], p[2], p[3], *eps).map_err(ke)?;
            one(x)
        }
        (Op::LayerNorm { eps }, _) => {
            let mut x = take(g, env, remaining, ins[0])?;
            let w = f32s(fetch(g, env, ins[1])?)?.to_vec();
            let b = f32s(fetch(g, env, ins[2])?)?;
            let len = *x.shape().last().ok_or("0-d input")?;
            let xs = x.as_f32_mut().map_err(|e| e.to_string())?;
            norm::layer_norm(xs, len, &w, b, *eps).map_err(ke)?;
            one(x)
        }
        (Op::LayerNorm2d { eps }, _) => {
            let mut x = take(g, env, remaining, ins[0])?;
            let gamma = f32s(fetch(g, env, ins[1])?)?.to_vec();
            let beta = f32s(fetch(g, env, ins[2])?)?;
            let c = gamma.len();
            let shape = x.shape().to_vec();
            let isa = qvision_kernels::isa::current();
            let xs = x.as_f32_mut().map_err(|e| e.to_string())?;
            match shape[..] {
                [n, cc, h, w] if cc == c => {
                    norm::layer_norm_2d(isa, xs, n, c, h * w, &gamma, beta, *eps).map_err(ke)?
                }
                [n, _, h, w, 16] => {
                    blocked::norm::layer_norm_2d(isa, xs, n, c, h * w, &gamma, beta, *eps)
                        .map_err(ke)?
                }
                _ => return Err(format!("input {shape:?} does not have {c} channels")),
            }
            one(x)
        }
        (Op::Act(a), _) => {
            let mut x = take(g, env, remaining, ins[0])?;
            a.apply(x.as_f32_mut().map_err(|e| e.to_string())?);
            one(x)
        }
        (Op::Softmax, _) => {
            let mut x = take(g, env, remaining, ins[0])?;
            let len = *x.shape().last().ok_or("0-d input")?;
            softmax_rows(x.as_f32_mut().map_err(|e| e.to_string())?, len);
            one(x)
        }
        (Op::Dropout { .. }, _) => one(take(g, env, remaining, ins[0])?),
        (Op::MaxPool2d(p), _) => {
            let x = fetch(g, env, ins[0])?;
            let [n, c, h, w] = nchw(x)?;
            let (y, oh, ow) = pool::max_pool2d(p, f32s(x)?, n * c, h, w).map_err(ke)?;
            one(tensor(vec![n, c, oh, ow], y)?)
        }
        (
            Op::AvgPool2d {
                pool: p,
                count_include_pad,
            },
            _,
        ) => {
            let x = fetch(g, env, ins[0])?;
            let [n, c, h, w] = nchw(x)?;
            let (y, oh, ow) =
                pool::avg_pool2d(p, *count_include_pad, f32s(x)?, n * c, h, w).map_err(ke)?;
            one(tensor(vec![n, c, oh, ow], y)?)
        }
        (Op::AdaptiveAvgPool2d { output }, _) => {
            let x = fetch(g, env, ins[0])?;
            let [n, c, h, w] = nchw(x)?;
            let y = pool::adaptive_avg_pool2d(f32s(x)?, n * c, h, w, output[0], output[1])
                .map_err(ke)?;
            one(tensor(vec![n, c, output[0], output[1]], y)?)
        }
        (Op::Binary(op), _) => {
            // reuse a dying left operand of the output's shape (equal shapes, or the right
            // operand broadcast along one run of axes, e.g. a squeeze-excitation scale)
            if remaining[ins[0].0] == 1 && ins[0] != ins[1] && env[ins[0].0].is_some() {
                let (sa, sb) = (
                    fetch(g, env, ins[0])?.shape(),
                    fetch(g, env, ins[1])?.shape(),
                );
                if broadcast_shape(sa, sb).is_ok_and(|s| s == sa) {
                    let mut a = take(g, env, remaining, ins[0])?;
                    let b = fetch(g, env, ins[1])?;
                    let shape = a.shape().to_vec();
                    let data = a.as_f32_mut().map_err(|e| e.to_string())?;
                    if binary_broadcast_in_place(*op, data, &shape, f32s(b)?, b.shape())
                        .map_err(ke)?
                    {
                        return one(a);
                    }
                    let (y, shape) =
                        binary(*op, f32s(&a)?, &shape, f32s(b)?, b.shape()).map_err(ke)?;
                    return one(tensor(shape, y)?);
                }
            }
            let a = fetch(g, env, ins[0])?;
            let b = fetch(g, env, ins[1])?;
            let (y, shape) = binary(*op, f32s(a)?, a.shape(), f32s(b)?, b.shape()).map_err(ke)?;
            one(tensor(shape, y)?)
        }
        (Op::Concat { axis }, _) => {
            let parts: Vec<&Tensor> = ins
                .iter()
                .map(|&i| fetch(g, env, i))
                .collect::<Result<_, _>>()?;
            let views: Vec<(&[f32], &[usize])> = parts
                .iter()
                .map(|t| Ok((f32s(t)?, t.shape())))
                .collect::<Result<_, String>>()?;
            let (y, shape) = layout::concat(&views, *axis).map_err(ke)?;
            one(tensor(shape, y)?)
        }
        (Op::ConcatNorm { eps, act }, _) => {
            let k = ins
                .len()
                .checked_sub(4)
                .filter(|&k| k > 0)
                .ok_or("too few inputs")?;
            let cn = ConcatNormArgs::fetch(g, env, &ins[..k + 4], *eps)?;
            let data: Vec<&[f32]> = cn.parts.iter().map(|t| f32s(t)).collect::<Result<_, _>>()?;
            let isa = qvision_kernels::isa::current();
            let plane = cn.hw * if cn.blocked { 16 } else { 1 };
            let y = norm::concat_affine(
                isa, &data, &cn.planes, plane, cn.n, &cn.scale, &cn.shift, *act,
            )
            .map_err(ke)?;
            one(tensor(cn.shape(), y)?)
        }
        (
            Op::ConcatNormConv {
                eps,
                norm_act,
                act,
                bias,
                ..
            },
            Prepared::Blocked(conv),
        ) => {
            let k = ins
                .len()
                .checked_sub(5 + *bias as usize)
                .filter(|&k| k > 0)
                .ok_or("too few inputs")?;
            let cn = ConcatNormArgs::fetch(g, env, &ins[..k + 4], *eps)?;
            if !cn.blocked || !conv.supports_concat_norm() {
                return Err("expects blocked parts and a 1x1 conv".into());
            }
            let data: Vec<&[f32]> = cn.parts.iter().map(|t| f32s(t)).collect::<Result<_, _>>()?;
            let input = blocked::conv::ConcatNormInput {
                parts: &data,
                blocks: &cn.planes,
                scale: &cn.scale,
                shift: &cn.shift,
                act: *norm_act,
            };
            let isa = qvision_kernels::isa::current();
            let y = conv
                .run_concat_norm(isa, &input, cn.n, cn.hw, *act)
                .map_err(ke)?;
            let mut shape = cn.shape();
            shape[1] = blocked::blocks(conv.params().out_channels);
            one(tensor(shape, y)?)
        }
        (Op::Split { axis, sizes }, _) => {
            let x = fetch(g, env, ins[0])?;
            let parts = layout::split(f32s(x)?, x.shape(), *axis, sizes).map_err(ke)?;
            parts.into_iter().map(|(d, s)| tensor(s, d)).collect()
        }
        (Op::Flatten { .. } | Op::Reshape { .. }, _) => {
            let x = take(g, env, remaining, ins[0])?;
            let shape = node.op.infer_shapes(&[x.shape()])?.remove(0);
            one(x.reshape(shape).map_err(|e| e.to_string())?)
        }
        (Op::ChannelShuffle { groups }, _) => {
            let x = fetch(g, env, ins[0])?;
            let [n, c, h, w] = nchw(x)?;
            let y = layout::channel_shuffle(f32s(x)?, n, c, h * w, *groups).map_err(ke)?;
            one(tensor(vec![n, c, h, w], y)?)
        }
        (Op::Permute { perm }, _) => {
            let x = fetch(g, env, ins[0])?;
            let (y, shape) = layout::permute(f32s(x)?, x.shape(), perm).map_err(ke)?;
            one(tensor(shape, y)?)
        }
        (op, _) => Err(format!("{} was not prepared", op.kind())),
    }
}

/// `flops` in `ms` as a profile's rate column (empty for ops whose FLOPs are not counted).
fn gflops(flops: f64, ms: f64) -> String {
    if flops > 0.0 {
        format!("{:>6.1} GFLOP/s", flops / ms / 1e6)
    } else {
        String::new()
    }
}

/// Run `f` in the current rayon pool with its other workers kept looking for work until `f`
/// returns. A parked worker takes ~20 µs to wake on a VM, as long as a small op (a MobileNet
/// depthwise conv at 14x14) takes: without this, such ops ran on one thread. ONNX Runtime's
/// intra-op threads spin the same way (`QVISION_SPIN=0` turns it off). A keeper that finds no
/// work for 2 ms leaves (a long serial stretch, or a keeper picked up inside another job's
/// wait).
fn with_hot_workers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    static SPIN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let spin = *SPIN.get_or_init(|| std::env::var("QVISION_SPIN").map_or(true, |v| v != "0"));
    let n = rayon::current_num_threads();
    if n < 2 || !spin {
        return f();
    }
    let done = AtomicBool::new(false);
    rayon::scope(|s| {
        let main = rayon::current_thread_index();
        let done = &done;
        for _ in 1..n {
            s.spawn(move |_| {
                if rayon::current_thread_index() == main {
                    return;
                }
                let mut idle_since = std::time::Instant::now();
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() == Some(rayon::Yield::Executed) {
                        idle_since = std::time::Instant::now();
                    } else if idle_since.elapsed() > std::time::Duration::from_millis(2) {
                        return;
                    } else {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        let r = f();
        done.store(true, Ordering::Release);
        r
    })
}

/// The inputs of a concat-norm: the parts and, per output plane (a channel, or a block of 16),
/// 16 lanes of the BatchNorm's scale and shift.
struct ConcatNormArgs<'a> {
    parts: Vec<&'a Tensor>,
    planes: Vec<usize>,
    blocked: bool,
    n: usize,
    hw: usize,
    first: Vec<usize>,
    scale: Vec<[f32; 16]>,
    shift: Vec<[f32; 16]>,
}

impl<'a> ConcatNormArgs<'a> {
    /// `ins`: the parts, then weight, bias, mean and var.
    fn fetch(
        g: &'a Graph,
        env: &'a [Option<Tensor>],
        ins: &[ValueId],
        eps: f32,
    ) -> Result<Self, String> {
        let k = ins.len() - 4;
        let parts: Vec<&Tensor> = ins[..k]
            .iter()
            .map(|&i| fetch(g, env, i))
            .collect::<Result<_, _>>()?;
        let p: Vec<&[f32]> = ins[k..]
            .iter()
            .map(|&i| fetch(g, env, i).and_then(f32s))
            .collect::<Result<_, _>>()?;
        let (scale, shift) = norm::batch_norm_affine(p[0], p[1], p[2], p[3], eps);
        let c = scale.len();
        let first = parts[0].shape().to_vec();
        let (n, hw, blocked) = match first[..] {
            [n, _, h, w] => (n, h * w, false),
            [n, _, h, w, 16] => (n, h * w, true),
            _ => return Err(format!("input {first:?} is neither NCHW nor blocked")),
        };
        let lanes = if blocked { 16 } else { 1 };
        // every part shaped like the first off the channel axis
        let off_axis = |s: &[usize]| (s.len(), s.first().copied(), s.get(2..).map(<[_]>::to_vec));
        if let Some(t) = parts
            .iter()
            .find(|t| off_axis(t.shape()) != off_axis(&first))
        {
            return Err(format!(
                "part {:?} does not concatenate with {first:?}",
                t.shape()
            ));
        }
        let planes: Vec<usize> = parts.iter().map(|t| t.shape()[1]).collect();
        let total: usize = planes.iter().sum();
        if total * lanes < c || (total - 1) * lanes >= c {
            return Err(format!("{total} channel planes do not hold {c} channels"));
        }
        // per plane: 16 lanes of scale / shift (a block's channels, or one channel's)
        let lane = |v: &[f32], p: usize| -> [f32; 16] {
            std::array::from_fn(|l| {
                let ch = if blocked { p * 16 + l } else { p };
                v.get(ch).copied().unwrap_or(0.0)
            })
        };
        Ok(ConcatNormArgs {
            scale: (0..total).map(|p| lane(&scale, p)).collect(),
            shift: (0..total).map(|p| lane(&shift, p)).collect(),
            parts,
            planes,
            blocked,
            n,
            hw,
            first,
        })
    }

    /// The concatenation's shape.
    fn shape(&self) -> Vec<usize> {
        let mut s = self.first.clone();
        s[1] = self.planes.iter().sum();
        s
    }
}

/// Infer every value's shape for the given input shapes (params and consts use their own).
pub fn infer_shapes(
    g: &Graph,
    input_shapes: &[Vec<usize>],
) -> Result<Vec<Option<Vec<usize>>>, GraphError> {
    let mut shapes: Vec<Option<Vec<usize>>> = g
        .values
        .iter()
        .map(|v| match v.kind {
            ValueKind::NodeOutput { .. } | ValueKind::Input => None,
            _ => v.shape.clone(),
        })
        .collect();
    for (id, s) in g.inputs.iter().zip(input_shapes) {
        shapes[id.0] = Some(s.clone());
    }
    for n in &g.nodes {
        let ins: Vec<&[usize]> = n
            .inputs
            .iter()
            .map(|i| {
                shapes[i.0].as_deref().ok_or_else(|| {
                    GraphError::node(
                        &n.name,
                        n.op.kind(),
                        format!("shape of '{}' is unknown", g.values[i.0].name),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let outs =
            n.op.infer_shapes(&ins)
                .map_err(|m| GraphError::node(&n.name, n.op.kind(), m))?;
        for (o, s) in n.outputs.iter().zip(outs) {
            shapes[o.0] = Some(s);
        }
    }
    Ok(shapes)
}

/// Total multiply-accumulates of one run at the given input shapes.
pub fn count_macs(g: &Graph, input_shapes: &[Vec<usize>]) -> Result<u64, GraphError> {
    let shapes = infer_shapes(g, input_shapes)?;
    let mut total = 0;
    for n in &g.nodes {
        let ins: Vec<&[usize]> = n
            .inputs
            .iter()
            .map(|i| shapes[i.0].as_deref().unwrap_or(&[]))
            .collect();
        let outs: Vec<Vec<usize>> = n
            .outputs
            .iter()
            .map(|o| shapes[o.0].clone().unwrap_or_default())
            .collect();
        total += n.op.macs(&ins, &outs);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{pool, Conv};
    use crate::{weights, Activation, GraphBuilder};

    fn block() -> Graph {
        let mut b = GraphBuilder::new("block");
        let x = b.input("input", &[2, 3, 9, 9]);
        let y = b.conv2d("conv1", x, Conv::new(3, 8, 3).pad(1).stride(2).bias(false));
        let y = b.batch_norm("bn1", y, 8);
        let y = b.act("relu", y, Activation::Relu);
        let z = b.conv2d("dw", y, Conv::new(8, 8, 3).pad(1).groups(8));
        let z = b.act("hs", z, Activation::Hardswish);
        let s = b.adaptive_avg_pool("se.pool", z, 1, 1);
        let s = b.act("se.sig", s, Activation::Sigmoid);
        let z = b.mul("se.mul", z, s);
        let y = b.add("add", y, z);
        let y = b.batch_norm("post_bn", y, 8); // not after a conv: stays a (blocked) BatchNorm
        let y = b.max_pool("pool", y, pool(3, 2, 1, true));
        let y = b.flatten("flatten", y, 1);
        let y = b.dropout("drop", y, 0.2);
        let y = b.linear("fc", y, 8 * 3 * 3, 5, true);
        b.finish(&[y])
    }

    /// A per-channel scale folds into the conv before it whichever side of the `Mul` it is on.
    #[test]
    fn channel_scale_folds_on_either_side() {
        for conv_first in [true, false] {
            let mut b = GraphBuilder::new("scaled");
            let x = b.input("input", &[1, 3, 6, 5]);
            let y = b.conv2d("conv", x, Conv::new(3, 4, 3).pad(1));
            let s = b.param("scale", &[4, 1, 1]);
            let y = if conv_first {
                b.mul("mul", y, s)
            } else {
                b.mul("mul", s, y)
            };
            let mut g = b.finish(&[y]);
            weights::init_formula(&mut g);
            let x = Tensor::from_f32(
                vec![1, 3, 6, 5],
                qvision_kernels::reference::pseudo_random(90, 4),
            )
            .unwrap();
            let want = crate::testutil::run_unoptimized(&g, &x);
            let s = Session::new(&g, SessionOptions::default()).unwrap();
            assert!(s.graph().nodes.iter().all(|n| n.op.kind() != "Mul"));
            let got = s.run(vec![x]).unwrap();
            crate::testutil::assert_close(&got, &want, 1e-5);
        }
    }

    /// A malformed graph (a node short of inputs, an output that names no value) is refused by
    /// `Session::new` with the node named, not a panic in a pass or kernel.
    #[test]
    fn malformed_graphs_are_refused() {
        let mut g = block();
        weights::init_formula(&mut g);
        let bn = g
            .nodes
            .iter()
            .position(|n| matches!(n.op, Op::BatchNorm2d { .. }))
            .unwrap();
        let mut short = g.clone();
        short.nodes[bn].inputs.truncate(2);
        let e = Session::new(&short, SessionOptions::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains(&g.nodes[bn].name), "{e}");
        let mut stray = g.clone();
        stray.nodes[0].outputs[0] = ValueId(stray.values.len() + 7);
        assert!(Session::new(&stray, SessionOptions::default()).is_err());
    }

    /// Runs from inside a busy pool (calibration-style parallel batches): the keepers each run
    /// spawns may be picked up inside another job's wait; they leave when their run ends or
    /// after 2 ms without work, so every run completes with the same outputs.
    #[test]
    fn concurrent_runs_in_one_pool_complete() {
        use rayon::prelude::*;
        let mut g = block();
        weights::init_formula(&mut g);
        let s = Session::new(&g, SessionOptions::default()).unwrap();
        let x = Tensor::from_f32(
            vec![2, 3, 9, 9],
            qvision_kernels::reference::pseudo_random(486, 5),
        )
        .unwrap();
        let want = s.run(vec![x.clone()]).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let outs: Vec<Vec<Tensor>> = pool.install(|| {
            (0..12)
                .into_par_iter()
                .map(|_| s.run(vec![x.clone()]).unwrap())
                .collect()
        });
        for o in outs {
            assert_eq!(o[0].as_f32().unwrap(), want[0].as_f32().unwrap());
        }
    }

    #[test]
    fn optimized_run_equals_plain_run() {
        let mut g = block();
        weights::init_formula(&mut g);
        let x = Tensor::from_f32(
            vec![2, 3, 9, 9],
            qvision_kernels::reference::pseudo_random(486, 5),
        )
        .unwrap();
        let nchw = SessionOptions {
            blocked: Some(false),
            ..Default::default()
        };
        let opt = Session::new(&g, nchw).unwrap();
        assert!(
            opt.graph().nodes.len() < g.nodes.len(),
            "bn, relu, hardswish and dropout fold away"
        );
        let a = crate::testutil::run_unoptimized(&g, &x);
        let b = opt.run(vec![x]).unwrap();
        assert_eq!(a[0].shape(), &[2, 5]);
        crate::testutil::assert_close(&b, &a, 1e-5);
        assert_eq!(
            count_macs(&g, &[vec![1, 3, 9, 9]]).unwrap(),
            8 * 25 * 27 + 8 * 25 * 9 + 72 * 5
        );
    }

    /// `y = conv_bn(x); z = conv_bn(conv_bn(y)); y + z`: y's conv has two readers after BN
    /// folding, so only z's conv may take the residual.
    #[test]
    fn residual_fusion_respects_readers_after_folding() {
        let mut b = GraphBuilder::new("inverted-residual");
        let x = b.input("input", &[1, 4, 6, 6]);
        let y = b.conv2d("c1", x, Conv::new(4, 8, 3).pad(1).bias(false));
        let y = b.batch_norm("bn1", y, 8);
        let z = b.conv2d("c2", y, Conv::new(8, 8, 1).bias(false));
        let z = b.batch_norm("bn2", z, 8);
        let z = b.act("relu", z, Activation::Relu6);
        let z = b.conv2d("c3", z, Conv::new(8, 8, 1).bias(false));
        let z = b.batch_norm("bn3", z, 8);
        let out = b.add("add", y, z);
        let mut g = b.finish(&[out]);
        weights::init_formula(&mut g);
        let x = Tensor::from_f32(
            vec![1, 4, 6, 6],
            qvision_kernels::reference::pseudo_random(144, 2),
        )
        .unwrap();
        let nchw = SessionOptions {
            blocked: Some(false),
            ..Default::default()
        };
        let opt = Session::new(&g, nchw).unwrap();
        assert_eq!(opt.graph().nodes.len(), 3, "bn folded, relu6 and add fused");
        let a = crate::testutil::run_unoptimized(&g, &x);
        let b = opt.run(vec![x]).unwrap();
        crate::testutil::assert_close(&b, &a, 1e-5);
    }

    /// The blocked NCHW16c rewrite computes what the NCHW graph computes: dense and depthwise
    /// convs, squeeze-excitation, residual add, pools, a channel count that is not a multiple of
    /// 16, and a fall back to NCHW for the flatten/linear tail.
    #[test]
    fn blocked_layout_equals_nchw() {
        let mut b = GraphBuilder::new("blocked");
        let x = b.input("input", &[2, 3, 17, 15]);
        let y = b.conv2d("stem", x, Conv::new(3, 24, 3).pad(1).stride(2).bias(false));
        let y = b.batch_norm("stem_bn", y, 24);
        let y = b.act("stem_relu", y, Activation::Relu);
        let y = b.conv2d("pw", y, Conv::new(24, 40, 1).bias(false));
        let y = b.act("pw_act", y, Activation::Hardswish);
        let z = b.conv2d("dw", y, Conv::new(40, 40, 5).pad(2).groups(40));
        let s = b.adaptive_avg_pool("se.pool", z, 1, 1);
        let s = b.conv2d("se.fc1", s, Conv::new(40, 16, 1));
        let s = b.act("se.relu", s, Activation::Relu);
        let s = b.conv2d("se.fc2", s, Conv::new(16, 40, 1));
        let s = b.act("se.sig", s, Activation::Sigmoid);
        let z = b.mul("se.mul", z, s);
        let z = b.conv2d("proj", z, Conv::new(40, 40, 3).pad(1).bias(false));
        let z = b.batch_norm("proj_bn", z, 40);
        let y = b.add("add", y, z);
        let y = b.batch_norm("post_bn", y, 40); // not after a conv: stays a (blocked) BatchNorm
        let y = b.max_pool("pool", y, pool(3, 2, 1, true));
        let y = b.avg_pool("avg", y, pool(2, 1, 0, false), true);
        let y = b.flatten("flatten", y, 1);
        let n = 40 * 4 * 4;
        let y = b.linear("fc", y, n, 7, true);
        let mut g = b.finish(&[y]);
        weights::init_formula(&mut g);
        let x = Tensor::from_f32(
            vec![2, 3, 17, 15],
            qvision_kernels::reference::pseudo_random(2 * 3 * 17 * 15, 9),
        )
        .unwrap();
        let nchw = Session::new(
            &g,
            SessionOptions {
                blocked: Some(false),
                ..Default::default()
            },
        )
        .unwrap();
        let blocked = Session::new(
            &g,
            SessionOptions {
                blocked: Some(true),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(blocked
            .graph()
            .nodes
            .iter()
            .any(|n| matches!(n.op, Op::ConvBlocked { .. })));
        let a = nchw.run(vec![x.clone()]).unwrap();
        let b = blocked.run(vec![x]).unwrap();
        assert_eq!(a[0].shape(), b[0].shape());
        for (p, q) in a[0].as_f32().unwrap().iter().zip(b[0].as_f32().unwrap()) {
            assert!((p - q).abs() < 1e-4 * (1.0 + p.abs()), "{p} vs {q}");
        }
    }

    #[test]
    fn errors_name_the_node() {
        let mut g = block();
        weights::init_formula(&mut g);
        let s = Session::new(&g, SessionOptions::default()).unwrap();
        let err = s
            .run(vec![Tensor::zeros(&[1, 4, 9, 9])])
            .unwrap_err()
            .to_string();
        assert!(err.contains("conv1") && err.contains("channels"), "{err}");
        let g2 = block();
        let err = Session::new(&g2, SessionOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("conv1.weight"), "{err}");
    }
}
