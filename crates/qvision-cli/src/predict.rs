//! `qvision predict`.

use crate::common::{build_model, emit, eval_transform};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use qvision_graph::{Session, SessionOptions};
use qvision_io::image_io::load_rgb;
use qvision_kernels::elementwise::softmax_rows;
use std::fmt::Write;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Model name (see `qvision models`), or a quantized model file (`.qvm`).
    model: String,
    /// torchvision weights: .pth (zip or legacy) or .safetensors (not needed for a `.qvm`).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Images (JPEG or PNG).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// How many classes to show per image.
    #[arg(long, default_value_t = 5)]
    topk: usize,
    /// Print JSON: one array, one object per image.
    #[arg(long)]
    json: bool,
    /// Load weights non-strictly: warn about unexpected keys instead of failing.
    #[arg(long)]
    non_strict: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    transform: crate::common::TransformArgs,
}

#[derive(serde::Serialize)]
struct Top {
    index: usize,
    prob: f32,
}

#[derive(serde::Serialize)]
struct Prediction {
    image: String,
    top: Vec<Top>,
}

pub fn run(a: Args) -> Result<()> {
    let (graph, transform) = if a.model.ends_with(".qvm") || crate::common::is_onnx(&a.model) {
        let (g, t) = crate::common::load_any(&a.model, None, true, false)?;
        (g, a.transform.apply(t))
    } else {
        let weights = a.weights.as_deref().ok_or_else(|| {
            anyhow::anyhow!("--weights FILE is required for a zoo model ('{}')", a.model)
        })?;
        let model = build_model(&a.model, Some(weights), !a.non_strict)?;
        let t = a.transform.apply(eval_transform(model.info, None, None));
        (model.graph, t)
    };
    let session = Session::new(
        &graph,
        SessionOptions {
            threads: a.threads,
            ..Default::default()
        },
    )?;
    let classes = qvision_zoo::imagenet_classes();
    let bar = if !a.json && std::io::stderr().is_terminal() && a.images.len() > 1 {
        let b = ProgressBar::new(a.images.len() as u64);
        b.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").expect("valid template"),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let mut out = vec![];
    for path in &a.images {
        bar.set_message(path.display().to_string());
        let img = load_rgb(path)?;
        let x = transform.apply(&img);
        let shape = [1, 3, transform.crop, transform.crop].to_vec();
        let x = x.reshape(shape)?;
        let y = session
            .run(vec![x])
            .with_context(|| format!("running {} on {}", a.model, path.display()))?;
        let mut logits = y[0].as_f32()?.to_vec();
        let n = logits.len();
        softmax_rows(&mut logits, n);
        let mut idx: Vec<usize> = (0..n).collect();
        idx.sort_by(|&i, &j| logits[j].total_cmp(&logits[i]));
        out.push(Prediction {
            image: path.display().to_string(),
            top: idx
                .iter()
                .take(a.topk)
                .map(|&i| Top {
                    index: i,
                    prob: logits[i],
                })
                .collect(),
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    if a.json {
        return emit(&(serde_json::to_string(&out)? + "\n"));
    }
    let mut s = String::new();
    for p in &out {
        writeln!(s, "{}", p.image)?;
        for (rank, t) in p.top.iter().enumerate() {
            let name = classes.get(t.index).copied().unwrap_or("?");
            writeln!(
                s,
                "  {}. {:>5.1}%  {:>4}  {}",
                rank + 1,
                t.prob * 100.0,
                t.index,
                name
            )?;
        }
    }
    emit(&s)
}
