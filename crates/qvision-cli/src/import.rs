//! `qvision import`: read an ONNX file, report what it holds, optionally save it as `.qvm`.

use crate::common::{emit, load_onnx, qvm_meta};
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The ONNX file.
    file: PathBuf,
    /// Save as a qvision model (a QDQ file is saved as its int8 graph).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let (imp, t) = load_onnx(&a.file)?;
    let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &imp.graph.nodes {
        *ops.entry(n.op.kind()).or_default() += 1;
    }
    let params: usize = imp
        .graph
        .params()
        .filter_map(|(id, _)| imp.graph.tensors.get(&id).map(|t| t.numel()))
        .sum();
    if let Some(out) = &a.out {
        let g = if imp.is_quantized() {
            imp.int8()?.0
        } else {
            imp.graph.clone()
        };
        let name = a
            .file
            .file_stem()
            .map_or("model".into(), |s| s.to_string_lossy().to_string());
        let bytes = qvision_graph::serialize::to_bytes(
            &g,
            qvm_meta(
                &name,
                &t,
                &serde_json::json!({"imported": a.file.display().to_string()}),
            ),
        )?;
        qvision_io::atomic::write(out, &bytes)?;
    }
    let r = serde_json::json!({
        "file": a.file.display().to_string(),
        "opset": imp.opset,
        "input_shape": imp.input_shape,
        "quantized": imp.is_quantized(),
        "nodes": imp.graph.nodes.len(),
        "parameters": params,
        "ops": ops,
    });
    if a.json {
        return emit(&(serde_json::to_string(&r)? + "\n"));
    }
    let mut s = format!(
        "{}: opset {}, input {:?}, {} nodes, {} parameters{}\n",
        a.file.display(),
        imp.opset,
        imp.input_shape,
        imp.graph.nodes.len(),
        params,
        if imp.is_quantized() { ", QDQ int8" } else { "" }
    );
    for (k, n) in ops {
        s += &format!("  {k:<20} {n}\n");
    }
    emit(&s)
}
