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

/// Write to stdout; a closed pipe (`qvision models | head`) ends the program quietly.
pub fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => Ok(r?),
    }
}
