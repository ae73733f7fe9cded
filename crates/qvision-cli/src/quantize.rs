//! `qvision quantize`: post-training int8 quantization into a `.qvm` file.

use crate::common::{build_model, emit, eval_transform, qvm_meta};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use qvision_graph::weights;
use qvision_io::image_io::load_rgb;
use qvision_quant::calibrate::ObserverKind;
use qvision_quant::{prepare, report, Backend, Prepared, QConfig, QConfigMapping, QScheme};
use qvision_tensor::Tensor;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Model name (see `qvision models`) or an fp32 `.onnx` file.
    model: String,
    /// torchvision weights (.pth or .safetensors).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Deterministic formula weights instead of a file (benchmarks only).
    #[arg(long)]
    random_weights: bool,
    /// Calibration images: a directory of JPEG/PNG files, or `synthetic` (random inputs,
    /// benchmarks only).
    #[arg(long)]
    calib: String,
    /// How many calibration images to use.
    #[arg(long, default_value_t = 100)]
    samples: usize,
    /// minmax, moving-average, histogram (PyTorch's default), percentile (0.01–99.99 %, the
    /// default: best agreement with fp32 on MobileNetV2) or entropy.
    #[arg(long, default_value = "percentile")]
    observer: String,
    /// x86 (per-channel weights) or arm (per-tensor weights).
    #[arg(long, default_value = "x86")]
    backend: String,
    /// Output file (.qvm), written atomically.
    #[arg(long)]
    out: PathBuf,
    /// Keep matching nodes in fp32: an op type (`Linear`, `Add`, `Hardswish`, ...) or a node
    /// name with `*` wildcards (`features.0.*`). Repeatable.
    #[arg(long)]
    skip: Vec<String>,
    /// Per-tensor weights for matching nodes (op type or name pattern). Repeatable.
    #[arg(long)]
    per_tensor: Vec<String>,
    /// Per-channel weights for matching nodes (op type or name pattern). Repeatable.
    #[arg(long)]
    per_channel: Vec<String>,
    /// Also print each int8 layer's output SQNR against fp32 (on up to 4 calibration inputs)
    /// and the fp32 islands.
    #[arg(long)]
    report: bool,
    #[arg(long)]
    threads: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    transform: crate::common::TransformArgs,
}

pub fn run(a: Args) -> Result<()> {
    let observer: ObserverKind = a.observer.parse()?;
    if !crate::common::is_onnx(&a.model) && a.weights.is_none() && !a.random_weights {
        anyhow::bail!("--weights FILE (or --random-weights) is required for a zoo model");
    }
    let backend = match a.backend.as_str() {
        "x86" => Backend::X86,
        "arm" => Backend::Arm,
        other => anyhow::bail!("--backend {other}: use x86 or arm"),
    };
    if a.samples == 0 {
        anyhow::bail!("--samples must be at least 1");
    }
    let (graph, t) = if crate::common::is_onnx(&a.model) {
        let (imp, t) = crate::common::load_onnx(std::path::Path::new(&a.model))?;
        if imp.is_quantized() {
            anyhow::bail!("{}: the model is already quantized (QDQ)", a.model);
        }
        (imp.graph, t)
    } else {
        let mut model = build_model(&a.model, a.weights.as_deref(), true)?;
        if a.random_weights {
            weights::init_formula(&mut model.graph);
        }
        (model.graph, eval_transform(model.info, None, None))
    };
    let t = a.transform.apply(t);
    let shape = vec![1, 3, t.crop, t.crop];
    // Inputs are made (decoded) one at a time during calibration: memory stays at one image.
    let files: Vec<PathBuf> = if a.calib == "synthetic" {
        vec![]
    } else {
        let dir = PathBuf::from(&a.calib);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading calibration directory {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png")
                })
            })
            .collect();
        files.sort();
        files.truncate(a.samples);
        if files.is_empty() {
            anyhow::bail!("{}: no JPEG or PNG images to calibrate with", dir.display());
        }
        files
    };
    let n = if files.is_empty() {
        a.samples
    } else {
        files.len()
    };
    let input = |i: usize| -> Result<Tensor> {
        if files.is_empty() {
            let v = weights::formula_uniform(i as u64, 3 * t.crop * t.crop);
            Ok(Tensor::from_f32(
                shape.clone(),
                v.into_iter().map(|x| x * 4.0).collect(),
            )?)
        } else {
            Ok(t.apply(&load_rgb(&files[i])?).reshape(shape.clone())?)
        }
    };
    let global = QConfig::default_for(backend);
    let mapping = qconfig_mapping(global, &a.skip, &a.per_tensor, &a.per_channel);
    let prepared = prepare(&graph)?;
    drop(graph);
    let held: Vec<Tensor> = if a.report {
        (0..n.min(4)).map(input).collect::<Result<_>>()?
    } else {
        vec![]
    };
    let cal_bar = if std::io::stderr().is_terminal() && !a.json {
        ProgressBar::new(n as u64)
    } else {
        ProgressBar::hidden()
    };
    cal_bar.set_style(
        ProgressStyle::with_template("calibrating {bar:30} {pos}/{len} images").expect("template"),
    );
    let mut p = Prepared::new(&prepared, mapping.clone(), observer, a.threads)?;
    drop(prepared);
    for i in 0..n {
        p.calibrate(input(i)?)?;
        cal_bar.inc(1);
    }
    cal_bar.finish_and_clear();
    let (q, report) = p.convert()?;
    let layers = if a.report {
        report::layer_sqnr(p.graph(), &q, &report, &held, a.threads)?
    } else {
        vec![]
    };
    drop(p);
    let summary = serde_json::json!({
        "model": a.model,
        "observer": a.observer,
        "backend": a.backend,
        "calibration_samples": n,
        "int8_nodes": report.int8.len(),
        "fp32_nodes": report.fp32.iter().map(|(name, kind)| serde_json::json!({"node": name, "op": kind})).collect::<Vec<_>>(),
    });
    let mut summary = summary;
    if a.report {
        summary["layers"] = serde_json::to_value(
            layers
                .iter()
                .map(|l| serde_json::json!({"node": l.node, "op": l.kind, "sqnr_db": if l.sqnr_db.is_finite() { serde_json::json!(l.sqnr_db) } else { serde_json::Value::Null }}))
                .collect::<Vec<_>>(),
        )?;
    }
    let bytes = qvision_graph::serialize::to_bytes(&q, qvm_meta(&a.model, &t, &summary))?;
    qvision_io::atomic::write(&a.out, &bytes)?;
    if a.json {
        return emit(&(serde_json::to_string(&summary)? + "\n"));
    }
    let mut s = format!(
        "{}: {} nodes in int8 ({} convs, {} linear), {} nodes in fp32, calibrated on {n} images with the {} observer\nwrote {} ({:.1} MB)\n",
        a.model,
        report.int8.len(),
        report.int8_count("Conv2d"),
        report.int8_count("Linear"),
        report.fp32.len(),
        a.observer,
        a.out.display(),
        bytes.len() as f64 / 1e6
    );
    if a.report {
        s += &format!("\n{:<44} {:<18} {:>9}\n", "int8 layer", "op", "SQNR dB");
        for l in &layers {
            s += &format!("{:<44} {:<18} {:>9.1}\n", l.node, l.kind, l.sqnr_db);
        }
        s += "\n";
    }
    if !report.fp32.is_empty() {
        s += "fp32 islands:\n";
        for (name, kind) in &report.fp32 {
            s += &format!("  {name:<40} {kind}\n");
        }
    }
    emit(&s)
}

/// The qconfig per node from the command line's overrides: a pattern naming an op type
/// (capitalised, no dots or wildcards) overrides that type, anything else is a node name pattern.
fn qconfig_mapping(
    global: QConfig,
    skip: &[String],
    per_tensor: &[String],
    per_channel: &[String],
) -> QConfigMapping {
    let is_type = |p: &str| {
        p.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && !p.contains(['.', '*'])
    };
    let with = |scheme: QScheme| QConfig {
        weight_scheme: scheme,
        ..global
    };
    let mut m = QConfigMapping::new(global);
    let rules = per_channel
        .iter()
        .map(|p| (p, Some(with(QScheme::PerChannelSymmetric))))
        .chain(
            per_tensor
                .iter()
                .map(|p| (p, Some(with(QScheme::PerTensorSymmetric)))),
        )
        .chain(skip.iter().map(|p| (p, None)));
    for (p, q) in rules {
        m = if is_type(p) {
            m.set_object_type(p, q)
        } else {
            m.set_module_name(p, q)
        };
    }
    m
}
