//! `qvision bench`: median latency after warm-up.

use crate::common::{build_model, cpu_isa, emit};
use anyhow::Result;
use qvision_graph::{weights, Session, SessionOptions};
use qvision_tensor::Tensor;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Model name (see `qvision models`).
    model: String,
    /// Weights file; without it, deterministic formula weights are used (speed does not depend
    /// on the values).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// fp32 (int8 arrives with the quantization work).
    #[arg(long, default_value = "fp32")]
    precision: String,
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Input side (default: the model's eval crop).
    #[arg(long)]
    size: Option<usize>,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    #[arg(long, default_value_t = 20)]
    iters: usize,
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Report {
    model: String,
    threads: usize,
    batch: usize,
    input_size: usize,
    /// CPU features.
    isa: String,
    /// The kernel path in use: ISA level and activation layout.
    kernels: String,
    fp32_ms: f64,
    fp32_p10_ms: f64,
    fp32_p90_ms: f64,
}

pub fn run(a: Args) -> Result<()> {
    if a.precision != "fp32" {
        anyhow::bail!(
            "--precision {}: only fp32 is available until the quantization work lands",
            a.precision
        );
    }
    if a.iters == 0 || a.batch == 0 {
        anyhow::bail!("--iters and --batch must be at least 1");
    }
    let mut model = build_model(&a.model, a.weights.as_deref(), true)?;
    if a.weights.is_none() {
        weights::init_formula(&mut model.graph);
    }
    let threads = a.threads.unwrap_or_else(rayon::current_num_threads);
    let session = Session::new(
        &model.graph,
        SessionOptions {
            threads: Some(threads),
            ..Default::default()
        },
    )?;
    let size = a.size.unwrap_or(model.info.transform.crop);
    let shape = vec![a.batch, 3, size, size];
    let n: usize = shape.iter().product();
    let x = Tensor::from_f32(shape, qvision_kernels::reference::pseudo_random(n, 1))?;
    for _ in 0..a.warmup {
        session.run(vec![x.clone()])?;
    }
    let mut times = Vec::with_capacity(a.iters);
    for _ in 0..a.iters {
        let input = x.clone();
        let t = Instant::now();
        session.run(vec![input])?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    let r = Report {
        model: a.model.clone(),
        threads,
        batch: a.batch,
        input_size: size,
        isa: cpu_isa(),
        kernels: format!(
            "{} {}",
            qvision_kernels::isa::current().name(),
            if session
                .graph()
                .nodes
                .iter()
                .any(|n| matches!(n.op, qvision_graph::Op::ConvBlocked { .. }))
            {
                "nchw16c"
            } else {
                "nchw"
            }
        ),
        fp32_ms: pct(0.5),
        fp32_p10_ms: pct(0.1),
        fp32_p90_ms: pct(0.9),
    };
    if a.json {
        emit(&(serde_json::to_string(&r)? + "\n"))
    } else {
        emit(&format!(
            "{}: fp32 {:.2} ms median (p10 {:.2}, p90 {:.2}) | batch {} | {}x{} | {} threads | {} ({})\n",
            r.model, r.fp32_ms, r.fp32_p10_ms, r.fp32_p90_ms, r.batch, size, size, r.threads, r.isa, r.kernels
        ))
    }
}
