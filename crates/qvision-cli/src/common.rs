//! Helpers shared by the subcommands.

use anyhow::{Context, Result};
use qvision_io::transforms::{EvalTransform, Filter};
use qvision_zoo::{Interpolation, Model, ModelInfo, ModelOptions, Weights};
use std::path::Path;

/// Build a model, loading a weights file if given.
pub fn build_model(name: &str, weights: Option<&Path>, strict: bool) -> Result<Model> {
    let info = qvision_zoo::find(name)?;
    let w = match weights {
        Some(p) => Weights::StateDict(qvision_io::load_state_dict(p)?),
        None => Weights::None,
    };
    let opts = ModelOptions {
        weights: w,
        strict,
        ..Default::default()
    };
    let model = qvision_zoo::build(info.name, &opts).with_context(|| match weights {
        Some(p) => format!("loading {} into {name}", p.display()),
        None => format!("building {name}"),
    })?;
    if let Some(r) = &model.load_report {
        for k in &r.missing {
            eprintln!("warning: {name}: missing key '{k}' (left empty)");
        }
        for k in &r.unexpected {
            eprintln!("warning: {name}: unexpected key '{k}' ignored");
        }
        if !r.missing.is_empty() {
            anyhow::bail!(
                "{name}: {} parameters have no value; cannot run",
                r.missing.len()
            );
        }
    }
    Ok(model)
}

/// The model's default eval transform, with optional overrides.
pub fn eval_transform(
    info: &ModelInfo,
    resize: Option<usize>,
    crop: Option<usize>,
) -> EvalTransform {
    let t = info.transform;
    EvalTransform {
        resize: resize.unwrap_or(t.resize),
        crop: crop.unwrap_or(t.crop),
        filter: match t.interpolation {
            Interpolation::Bilinear => Filter::Bilinear,
            Interpolation::Bicubic => Filter::Bicubic,
        },
        mean: t.mean,
        std: t.std,
    }
}

/// The CPU's vector ISA as the kernels see it.
pub fn cpu_isa() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let mut f = vec![];
        for (name, on) in [
            ("avx2", std::is_x86_feature_detected!("avx2")),
            ("fma", std::is_x86_feature_detected!("fma")),
            ("avx512f", std::is_x86_feature_detected!("avx512f")),
            ("avx512vnni", std::is_x86_feature_detected!("avx512vnni")),
            ("avxvnni", std::is_x86_feature_detected!("avxvnni")),
        ] {
            if on {
                f.push(name);
            }
        }
        f.join("+")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH.to_string()
    }
}

/// Median round trip in ns of a cache line bounced between two spinning threads (on a
/// two-core machine, between the two cores). A benchmark's context: on a VM whose two vCPUs
/// share a CPU complex this is ~80 ns, across dies ~300+ ns, and then every op that reads what
/// the other core wrote pays for it (see docs/BENCHMARKS.md).
pub fn core_round_trip_ns() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    const N: u64 = 2000;
    let ball = AtomicU64::new(0);
    let mut laps = Vec::with_capacity(9);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..9 * N {
                while ball.load(Ordering::Acquire) != 2 * i + 1 {
                    std::hint::spin_loop();
                }
                ball.store(2 * i + 2, Ordering::Release);
            }
        });
        for lap in 0..9 {
            let t0 = std::time::Instant::now();
            for i in lap * N..(lap + 1) * N {
                ball.store(2 * i + 1, Ordering::Release);
                while ball.load(Ordering::Acquire) != 2 * i + 2 {
                    std::hint::spin_loop();
                }
            }
            laps.push(t0.elapsed().as_nanos() as f64 / N as f64);
        }
    });
    laps.sort_by(f64::total_cmp);
    laps[laps.len() / 2]
}

/// Write to stdout; a closed pipe (`qvision models | head`) ends the program quietly.
pub fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => Ok(r?),
    }
}

/// The metadata a `.qvm` carries so that it runs without its zoo entry.
pub fn qvm_meta(model: &str, t: &EvalTransform, report: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "transform": {
            "resize": t.resize,
            "crop": t.crop,
            "interpolation": match t.filter { Filter::Bilinear => "bilinear", Filter::Bicubic => "bicubic" },
            "mean": t.mean,
            "std": t.std,
        },
        "quantization": report,
    })
}

/// Load a `.qvm`: its graph and eval transform.
pub fn load_qvm(path: &Path) -> Result<(qvision_graph::Graph, EvalTransform)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (g, meta) = qvision_graph::serialize::from_bytes(&bytes)
        .with_context(|| format!("loading {}", path.display()))?;
    let t = &meta["transform"];
    let num = |v: &serde_json::Value| v.as_u64().map(|x| x as usize);
    let arr = |v: &serde_json::Value| -> Option<[f32; 3]> {
        let a = v.as_array()?;
        Some([
            a.first()?.as_f64()? as f32,
            a.get(1)?.as_f64()? as f32,
            a.get(2)?.as_f64()? as f32,
        ])
    };
    let transform = (|| {
        Some(EvalTransform {
            resize: num(&t["resize"])?,
            crop: num(&t["crop"])?,
            filter: if t["interpolation"] == "bicubic" {
                Filter::Bicubic
            } else {
                Filter::Bilinear
            },
            mean: arr(&t["mean"])?,
            std: arr(&t["std"])?,
        })
    })()
    .ok_or_else(|| {
        anyhow::anyhow!(
            "{}: the model file has no eval transform in its metadata",
            path.display()
        )
    })?;
    Ok((g, transform))
}

/// An imported ONNX file and the eval transform torchvision would apply to its input size:
/// antialiased bilinear resize of the short side to 256/224 of the input, center crop, ImageNet
/// mean/std.
pub fn load_onnx(path: &Path) -> Result<(qvision_onnx::Imported, EvalTransform)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let imp = qvision_onnx::import(&bytes, &path.display().to_string())?;
    let s = &imp.input_shape;
    if s.len() != 4 || s[1] != 3 || s[2] != s[3] {
        anyhow::bail!(
            "{}: input shape {s:?} is not a square RGB image [n, 3, s, s]",
            path.display()
        );
    }
    let crop = s[2];
    let t = EvalTransform {
        resize: (crop * 256 + 112) / 224,
        crop,
        filter: Filter::Bilinear,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
    Ok((imp, t))
}

/// Is this model argument an ONNX file?
pub fn is_onnx(model: &str) -> bool {
    model.to_ascii_lowercase().ends_with(".onnx")
}

/// The graph a model argument names, and its eval transform: a zoo name (weights from a file,
/// or formula weights when `formula`), a `.qvm` (int8), or an `.onnx` (a QDQ file runs on the
/// int8 kernels).
pub fn load_any(
    model: &str,
    weights: Option<&Path>,
    strict: bool,
    formula: bool,
) -> Result<(qvision_graph::Graph, EvalTransform)> {
    if model.ends_with(".qvm") {
        return load_qvm(Path::new(model));
    }
    if is_onnx(model) {
        let (imp, t) = load_onnx(Path::new(model))?;
        let g = if imp.is_quantized() {
            imp.int8()?.0
        } else {
            imp.graph
        };
        return Ok((g, t));
    }
    let mut m = build_model(model, weights, strict)?;
    if weights.is_none() {
        if !formula {
            anyhow::bail!("--weights FILE is required for a zoo model ('{model}')");
        }
        qvision_graph::weights::init_formula(&mut m.graph);
    }
    let t = eval_transform(m.info, None, None);
    Ok((m.graph, t))
}

/// Eval-transform overrides (`--resize`, `--crop`, `--mean`, `--std`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TransformArgs {
    /// Override the resize (short side) of the eval transform.
    #[arg(long)]
    pub resize: Option<usize>,
    /// Override the center crop of the eval transform.
    #[arg(long)]
    pub crop: Option<usize>,
    /// Normalisation mean, e.g. `0.485,0.456,0.406` (ImageNet's by default).
    #[arg(long, value_parser = parse3)]
    pub mean: Option<[f32; 3]>,
    /// Normalisation std (ImageNet's by default).
    #[arg(long, value_parser = parse3)]
    pub std: Option<[f32; 3]>,
}

impl TransformArgs {
    pub fn apply(&self, mut t: EvalTransform) -> EvalTransform {
        t.resize = self.resize.unwrap_or(t.resize);
        t.crop = self.crop.unwrap_or(t.crop);
        t.mean = self.mean.unwrap_or(t.mean);
        t.std = self.std.unwrap_or(t.std);
        t
    }
}

fn parse3(s: &str) -> Result<[f32; 3], String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|x| x.trim().parse::<f32>().map_err(|e| format!("{x}: {e}")))
        .collect::<Result<_, _>>()?;
    <[f32; 3]>::try_from(v).map_err(|_| format!("{s}: want three comma-separated numbers"))
}

/// Input channels as the graph declares them (3 for the zoo; 1 for a grayscale recipe model).
pub fn input_channels(g: &qvision_graph::Graph) -> usize {
    g.inputs
        .first()
        .and_then(|i| g.values[i.0].shape.as_ref())
        .filter(|s| s.len() == 4)
        .map_or(3, |s| s[1])
}
