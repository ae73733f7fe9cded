//! `qvision export`: write a model as ONNX (fp32 with standard ops, int8 as QDQ).

use crate::common::{emit, load_any};
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Zoo model name (with --weights or --random-weights), an int8 `.qvm`, or an `.onnx`.
    model: String,
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Deterministic formula weights (tests, benchmarks).
    #[arg(long)]
    random_weights: bool,
    /// Output file, written atomically.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 13)]
    opset: i64,
    /// int8 graphs as `qdq` (QuantizeLinear/DequantizeLinear pairs around float ops) or
    /// `qoperator` (QLinearConv, MatMulInteger; QDQ where an op has no standard integer form).
    #[arg(long, default_value = "qdq")]
    format: String,
    /// With --format qoperator: allow com.microsoft ops (QLinearAdd, QLinearMul).
    #[arg(long)]
    allow_contrib: bool,
    /// `dynamic` (a symbolic batch dimension) or a fixed batch size.
    #[arg(long, default_value = "dynamic")]
    batch: String,
    /// Input side (default: the model's eval crop).
    #[arg(long)]
    size: Option<usize>,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    if a.format != "qdq" && a.format != "qoperator" {
        anyhow::bail!("--format {}: use qdq or qoperator", a.format);
    }
    let (dynamic, n) = match a.batch.as_str() {
        "dynamic" => (true, 1),
        s => (
            false,
            s.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| anyhow::anyhow!("--batch {s}: use dynamic or a positive number"))?,
        ),
    };
    let (g, t) = load_any(&a.model, a.weights.as_deref(), true, a.random_weights)?;
    let size = a.size.unwrap_or(t.crop);
    let opts = qvision_onnx::ExportOptions {
        qoperator: a.format == "qoperator",
        allow_contrib: a.allow_contrib,
        ..qvision_onnx::ExportOptions::new(
            a.opset,
            dynamic,
            vec![n, crate::common::input_channels(&g), size, size],
        )
    };
    let files = qvision_onnx::to_files(&g, &opts, &a.out)
        .with_context(|| format!("exporting {}", a.model))?;
    let bytes: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let int8 = g
        .nodes
        .iter()
        .any(|n| matches!(n.op, qvision_graph::Op::Q(_)));
    let r = serde_json::json!({
        "model": a.model,
        "out": a.out.display().to_string(),
        "opset": a.opset,
        "format": if int8 { a.format.as_str() } else { "fp32" },
        "bytes": bytes,
        "files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
    });
    if a.json {
        emit(&(serde_json::to_string(&r)? + "\n"))
    } else {
        emit(&format!(
            "{}: wrote {} ({} ONNX, opset {}, {:.1} MB)\n",
            a.model,
            a.out.display(),
            if int8 {
                if a.format == "qoperator" {
                    "int8 QOperator"
                } else {
                    "int8 QDQ"
                }
            } else {
                "fp32"
            },
            a.opset,
            bytes as f64 / 1e6
        ))
    }
}
