//! `qvision eval`: fp32 and int8 top-1/top-5 on labelled images, their agreement and the output
//! SQNR. Labels come from file names (`..._<label>.jpg`, as foolbox names them) or from an
//! image-folder layout (`DIR/<label>/*.jpg`).

use crate::common::emit;
use anyhow::{Context, Result};
use qvision_graph::{Session, SessionOptions};
use qvision_io::image_io::load_rgb;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// Model name (see `qvision models`).
    model: String,
    /// torchvision weights (.pth or .safetensors) for a zoo model.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// The int8 model made by `qvision quantize` (optional: fp32 only without it).
    #[arg(long)]
    quantized: Option<PathBuf>,
    /// Labelled images: names ending in `_<label>`, or one sub-directory per label.
    #[arg(long)]
    data: PathBuf,
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    transform: crate::common::TransformArgs,
}

/// `(path, label)` pairs: from `DIR/<label>/*` when there are sub-directories, else from the
/// trailing `_<label>` of each file name (files without one are skipped).
fn labelled(dir: &Path) -> Result<Vec<(PathBuf, usize)>> {
    let is_image = |p: &Path| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
    };
    let mut out = vec![];
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    for p in &entries {
        if p.is_dir() {
            if let Some(label) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<usize>().ok())
            {
                for f in std::fs::read_dir(p)?.filter_map(|e| e.ok().map(|e| e.path())) {
                    if is_image(&f) {
                        out.push((f, label));
                    }
                }
            }
        } else if is_image(p) {
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            if let Some(label) = stem
                .rsplit('_')
                .next()
                .and_then(|l| l.parse::<usize>().ok())
            {
                if stem.contains('_') {
                    out.push((p.clone(), label));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

#[derive(serde::Serialize, Default)]
struct Report {
    images: usize,
    fp32_top1: f64,
    fp32_top5: f64,
    int8_top1: Option<f64>,
    int8_top5: Option<f64>,
    agreement: Option<f64>,
    sqnr_db: Option<f64>,
}

fn top5(v: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
    idx.truncate(5);
    idx
}

pub fn run(a: Args) -> Result<()> {
    let (graph, t) = crate::common::load_any(&a.model, a.weights.as_deref(), true, false)?;
    let t = a.transform.apply(t);
    let opts = SessionOptions {
        threads: a.threads,
        ..Default::default()
    };
    let fp = Session::new(&graph, opts.clone())?;
    let q = match &a.quantized {
        Some(p) => Some(Session::new(
            &crate::common::load_any(&p.to_string_lossy(), None, true, false)?.0,
            opts,
        )?),
        None => None,
    };
    let items = labelled(&a.data)?;
    if items.is_empty() {
        anyhow::bail!(
            "{}: no labelled images (names ending in _<label>, or <label>/ folders)",
            a.data.display()
        );
    }
    let (mut f1, mut f5, mut q1, mut q5, mut agree) = (0usize, 0usize, 0usize, 0usize, 0usize);
    let (mut sig, mut noise) = (0f64, 0f64);
    for (path, label) in &items {
        let x = t
            .apply(&load_rgb(path)?)
            .reshape(vec![1, 3, t.crop, t.crop])?;
        let yf = fp.run(vec![x.clone()])?.remove(0);
        let yf = yf.as_f32()?;
        let tf = top5(yf);
        f1 += usize::from(tf[0] == *label);
        f5 += usize::from(tf.contains(label));
        if let Some(qs) = &q {
            let yq = qs.run(vec![x])?.remove(0);
            let yq = yq.as_f32()?;
            let tq = top5(yq);
            q1 += usize::from(tq[0] == *label);
            q5 += usize::from(tq.contains(label));
            agree += usize::from(tq[0] == tf[0]);
            sig += yf.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
            noise += yf
                .iter()
                .zip(yq)
                .map(|(&a, &b)| ((a - b) as f64).powi(2))
                .sum::<f64>();
        }
    }
    let n = items.len() as f64;
    let pct = |k: usize| 100.0 * k as f64 / n;
    let r = Report {
        images: items.len(),
        fp32_top1: pct(f1),
        fp32_top5: pct(f5),
        int8_top1: q.as_ref().map(|_| pct(q1)),
        int8_top5: q.as_ref().map(|_| pct(q5)),
        agreement: q.as_ref().map(|_| pct(agree)),
        sqnr_db: q
            .as_ref()
            .map(|_| 10.0 * (sig / noise.max(f64::MIN_POSITIVE)).log10()),
    };
    if a.json {
        return emit(&(serde_json::to_string(&r)? + "\n"));
    }
    let mut s = format!("{} on {} images\n", a.model, r.images);
    s += &format!(
        "  fp32  top-1 {:5.1}%  top-5 {:5.1}%\n",
        r.fp32_top1, r.fp32_top5
    );
    if let (Some(t1), Some(t5), Some(ag), Some(db)) =
        (r.int8_top1, r.int8_top5, r.agreement, r.sqnr_db)
    {
        s += &format!("  int8  top-1 {t1:5.1}%  top-5 {t5:5.1}%\n  top-1 agreement {ag:.1}%   output SQNR {db:.1} dB\n");
    }
    emit(&s)
}
