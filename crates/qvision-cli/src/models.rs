//! `qvision models`.

use crate::common::emit;
use anyhow::Result;
use qvision_graph::exec::count_macs;
use qvision_zoo::{models, ModelOptions};
use std::fmt::Write;

#[derive(clap::Args)]
pub struct Args {
    /// Only models of this task.
    #[arg(long)]
    task: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Row {
    name: &'static str,
    family: &'static str,
    task: &'static str,
    params: usize,
    macs: u64,
    input_size: usize,
}

pub fn run(a: Args) -> Result<()> {
    let mut rows = vec![];
    for m in models() {
        if let Some(t) = &a.task {
            if m.task.name() != t {
                continue;
            }
        }
        let g = m.graph(&ModelOptions::default());
        let macs = count_macs(&g, &[m.input_shape()])?;
        rows.push(Row {
            name: m.name,
            family: m.family,
            task: m.task.name(),
            params: g.num_params(),
            macs,
            input_size: m.transform.crop,
        });
    }
    if let Some(t) = &a.task {
        if rows.is_empty() {
            anyhow::bail!("no models for task '{t}' (tasks: classification)");
        }
    }
    if a.json {
        return emit(&(serde_json::to_string_pretty(&rows)? + "\n"));
    }
    let mut s = String::new();
    writeln!(
        s,
        "{:<22} {:<13} {:<15} {:>10} {:>9} {:>6}",
        "model", "family", "task", "params(M)", "GMACs", "input"
    )?;
    for r in &rows {
        writeln!(
            s,
            "{:<22} {:<13} {:<15} {:>10.2} {:>9.3} {:>6}",
            r.name,
            r.family,
            r.task,
            r.params as f64 / 1e6,
            r.macs as f64 / 1e9,
            r.input_size
        )?;
    }
    writeln!(s, "{} models", rows.len())?;
    emit(&s)
}
