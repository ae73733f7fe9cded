//! `qvision bench`: median latency after warm-up, fp32 and int8 side by side.
//!
//! With `--precision both` the fp32 graph and its PTQ int8 conversion (calibrated on a few
//! synthetic batches: speed does not depend on the values) run interleaved, round after round,
//! so both see the same machine state. `--all` does this for every zoo model and prints the
//! seed report's table (model, before, after, ratio); `--write-docs` puts it into
//! `docs/BENCHMARKS.md` and `--chart` draws the ratios as an SVG bar chart.

use crate::common::{build_model, core_round_trip_ns, cpu_isa, emit, load_qvm};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use qvision_graph::{weights, Graph, Session, SessionOptions};
use qvision_quant::calibrate::ObserverKind;
use qvision_quant::{quantize_ptq, Backend, QConfig};
use qvision_tensor::Tensor;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Model name (see `qvision models`), an int8 `.qvm` file or an `.onnx` file.
    #[arg(required_unless_present_any = ["all", "models"])]
    model: Option<String>,
    /// Every zoo model, one table row each.
    #[arg(long)]
    all: bool,
    /// A comma-separated list of zoo models (a table, as `--all`).
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Weights file; without it, deterministic formula weights are used (speed does not depend
    /// on the values).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// fp32, int8 or both (interleaved, with the int8/fp32 ratio).
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
    /// Replace the "int8 against fp32" section of this markdown file (docs/BENCHMARKS.md) with
    /// the table, atomically.
    #[arg(long)]
    write_docs: Option<PathBuf>,
    /// Write an SVG bar chart of the int8/fp32 ratios.
    #[arg(long)]
    chart: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Precision {
    Fp32,
    Int8,
    Both,
}

#[derive(serde::Serialize, Clone)]
struct Report {
    model: String,
    threads: usize,
    batch: usize,
    input_size: usize,
    /// CPU features.
    isa: String,
    /// The kernel path in use: ISA level and activation layout.
    kernels: String,
    /// Core-to-core cache-line round trip (ns) just before the timed runs, with 2+ threads.
    #[serde(skip_serializing_if = "Option::is_none")]
    core_round_trip_ns: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fp32_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fp32_p10_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fp32_p90_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    int8_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    int8_p10_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    int8_p90_ms: Option<f64>,
    /// int8 / fp32 median latency.
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio: Option<f64>,
}

/// (median, p10, p90) in ms.
fn stats(mut t: Vec<f64>) -> (f64, f64, f64) {
    t.sort_by(f64::total_cmp);
    let pct = |p: f64| t[((t.len() - 1) as f64 * p).round() as usize];
    (pct(0.5), pct(0.1), pct(0.9))
}

fn session(g: &Graph, threads: usize) -> Result<Session> {
    Ok(Session::new(
        g,
        SessionOptions {
            threads: Some(threads),
            ..Default::default()
        },
    )?)
}

/// The int8 conversion used for timing: min-max PTQ on `batches` synthetic inputs.
fn int8_graph(g: &Graph, shape: &[usize], threads: usize) -> Result<Graph> {
    let n: usize = shape.iter().product();
    let batches: Vec<Tensor> = (0..2)
        .map(|i| {
            let v = weights::formula_uniform(1000 + i, n);
            Tensor::from_f32(shape.to_vec(), v.into_iter().map(|x| x * 4.0).collect())
        })
        .collect::<Result<_, _>>()?;
    let (q, _) = quantize_ptq(
        g,
        batches,
        ObserverKind::MinMax,
        QConfig::default_for(Backend::X86),
        Some(threads),
    )?;
    Ok(q)
}

fn kernels(s: &Session) -> String {
    let blocked = s
        .graph()
        .nodes
        .iter()
        .any(|n| matches!(n.op, qvision_graph::Op::ConvBlocked { .. }));
    let int8 = s
        .graph()
        .nodes
        .iter()
        .any(|n| matches!(n.op, qvision_graph::Op::Q(_)));
    let mut k = format!(
        "{} {}",
        qvision_kernels::isa::current().name(),
        if blocked { "nchw16c" } else { "nchw" }
    );
    if int8 {
        k += &format!(", int8 {:?} nhwc", qvision_kernels::isa::current_int8());
        // Say why a CPU with AMX tiles does not use them (no tile permission, a failed check).
        let amx = qvision_kernels::isa::amx_state();
        if !matches!(
            amx,
            qvision_kernels::isa::AmxState::Ready | qvision_kernels::isa::AmxState::NotInCpu
        ) {
            k += &format!(" (AMX: {amx:?})");
        }
    }
    k
}

/// Time one model: fp32 and/or int8, interleaved.
fn bench_one(a: &Args, name: &str, precision: Precision, threads: usize) -> Result<Report> {
    let onnx = crate::common::is_onnx(name);
    let (fp32, int8, size) = if onnx {
        let (imp, t) = crate::common::load_onnx(Path::new(name))?;
        let size = a.size.unwrap_or(t.crop);
        if imp.is_quantized() {
            if precision != Precision::Int8 {
                anyhow::bail!("{name}: a QDQ model is int8 only; use --precision int8");
            }
            (None, Some(imp.int8()?.0), size)
        } else {
            let shape = [a.batch, 3, size, size];
            let int8 = match precision {
                Precision::Fp32 => None,
                _ => Some(int8_graph(&imp.graph, &shape, threads)?),
            };
            (
                (precision != Precision::Int8).then_some(imp.graph),
                int8,
                size,
            )
        }
    } else if name.ends_with(".qvm") {
        if precision != Precision::Int8 {
            anyhow::bail!("{name}: a .qvm holds only the int8 graph; use --precision int8");
        }
        let (g, t) = load_qvm(Path::new(name))?;
        (None, Some(g), a.size.unwrap_or(t.crop))
    } else {
        let mut model = build_model(name, a.weights.as_deref(), true)?;
        if a.weights.is_none() {
            weights::init_formula(&mut model.graph);
        }
        let size = a.size.unwrap_or(model.info.transform.crop);
        let shape = [a.batch, 3, size, size];
        let int8 = match precision {
            Precision::Fp32 => None,
            _ => Some(
                int8_graph(&model.graph, &shape, threads)
                    .with_context(|| format!("quantizing {name}"))?,
            ),
        };
        let fp32 = (precision != Precision::Int8).then_some(model.graph);
        (fp32, int8, size)
    };
    let sessions: Vec<Session> = fp32
        .iter()
        .chain(int8.iter())
        .map(|g| session(g, threads))
        .collect::<Result<_>>()?;
    let channels = fp32
        .iter()
        .chain(int8.iter())
        .next()
        .map_or(3, crate::common::input_channels);
    let shape = vec![a.batch, channels, size, size];
    let n: usize = shape.iter().product();
    let x = Tensor::from_f32(shape, qvision_kernels::reference::pseudo_random(n, 1))?;
    for _ in 0..a.warmup {
        for s in &sessions {
            s.run(vec![x.clone()])?;
        }
    }
    let round_trip = (threads > 1).then(core_round_trip_ns);
    let mut times = vec![Vec::with_capacity(a.iters); sessions.len()];
    for _ in 0..a.iters {
        for (s, t) in sessions.iter().zip(&mut times) {
            let input = x.clone();
            let t0 = Instant::now();
            s.run(vec![input])?;
            t.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    let mut it = times.into_iter().map(stats);
    let f = fp32.as_ref().and_then(|_| it.next());
    let q = int8.as_ref().and_then(|_| it.next());
    Ok(Report {
        model: name.to_string(),
        threads,
        batch: a.batch,
        input_size: size,
        isa: cpu_isa(),
        kernels: kernels(sessions.last().expect("one session")),
        core_round_trip_ns: round_trip,
        fp32_ms: f.map(|s| s.0),
        fp32_p10_ms: f.map(|s| s.1),
        fp32_p90_ms: f.map(|s| s.2),
        int8_ms: q.map(|s| s.0),
        int8_p10_ms: q.map(|s| s.1),
        int8_p90_ms: q.map(|s| s.2),
        ratio: f.zip(q).map(|(f, q)| q.0 / f.0),
    })
}

pub fn run(a: Args) -> Result<()> {
    let precision = match a.precision.as_str() {
        "fp32" => Precision::Fp32,
        "int8" => Precision::Int8,
        "both" => Precision::Both,
        other => anyhow::bail!("--precision {other}: use fp32, int8 or both"),
    };
    if a.iters == 0 || a.batch == 0 {
        anyhow::bail!("--iters and --batch must be at least 1");
    }
    let threads = a.threads.unwrap_or_else(rayon::current_num_threads);
    let names: Vec<String> = if a.all {
        qvision_zoo::models()
            .iter()
            .map(|m| m.name.to_string())
            .collect()
    } else if !a.models.is_empty() {
        a.models.clone()
    } else {
        vec![a.model.clone().expect("clap requires a model")]
    };
    if names.len() == 1 && a.write_docs.is_none() && a.chart.is_none() {
        let r = bench_one(&a, &names[0], precision, threads)?;
        return if a.json {
            emit(&(serde_json::to_string(&r)? + "\n"))
        } else {
            emit(&line(&r))
        };
    }
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(names.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("bench {bar:30} {pos}/{len} {msg}").expect("template"),
    );
    let mut rows = Vec::with_capacity(names.len());
    for name in &names {
        bar.set_message(name.clone());
        rows.push(bench_one(&a, name, precision, threads)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let table = markdown_table(&rows);
    if let Some(path) = &a.write_docs {
        write_docs(path, &rows, &table)?;
    }
    if let Some(path) = &a.chart {
        qvision_io::atomic::write(path, svg_chart(&rows).as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if a.json {
        emit(&(serde_json::to_string(&rows)? + "\n"))
    } else {
        emit(&format!(
            "{} threads, batch {}, {} ({})\n\n{table}",
            threads,
            a.batch,
            rows.first().map_or(String::new(), |r| r.isa.clone()),
            rows.first().map_or(String::new(), |r| r.kernels.clone()),
        ))
    }
}

fn line(r: &Report) -> String {
    let ms = |m: Option<f64>, p10: Option<f64>, p90: Option<f64>, tag: &str| {
        m.map(|m| {
            format!(
                "{tag} {m:.2} ms median (p10 {:.2}, p90 {:.2})",
                p10.unwrap_or(m),
                p90.unwrap_or(m)
            )
        })
    };
    let parts: Vec<String> = [
        ms(r.fp32_ms, r.fp32_p10_ms, r.fp32_p90_ms, "fp32"),
        ms(r.int8_ms, r.int8_p10_ms, r.int8_p90_ms, "int8"),
        r.ratio.map(|x| format!("ratio {x:.2}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let trip = r
        .core_round_trip_ns
        .map_or(String::new(), |ns| format!(" | core round trip {ns:.0} ns"));
    format!(
        "{}: {} | batch {} | {}x{} | {} threads{trip} | {} ({})\n",
        r.model,
        parts.join(", "),
        r.batch,
        r.input_size,
        r.input_size,
        r.threads,
        r.isa,
        r.kernels
    )
}

fn cell(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| {
        if v >= 100.0 {
            format!("{v:.0}")
        } else if v >= 10.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.2}")
        }
    })
}

/// The seed report's table: model, before (fp32) ms, after (int8) ms, ratio.
fn markdown_table(rows: &[Report]) -> String {
    let mut s =
        String::from("| model | fp32 (ms) | int8 (ms) | int8 / fp32 |\n|---|---:|---:|---:|\n");
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {} |\n",
            r.model,
            cell(r.fp32_ms),
            cell(r.int8_ms),
            r.ratio.map_or("–".into(), |x| format!("{x:.2}"))
        );
    }
    s
}

const START: &str = "<!-- qvision bench --write-docs: start -->";
const END: &str = "<!-- qvision bench --write-docs: end -->";

/// Replace the marked section of a markdown file (or append it) with the table and the
/// conditions it was measured under.
fn write_docs(path: &Path, rows: &[Report], table: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let r0 = rows.first();
    let section = format!(
        "{START}\nMeasured by `qvision bench --precision both` (fp32 and int8 interleaved, medians) at commit `{commit}`: {} threads, batch {}, CPU \"{cpu}\" ({}), kernels `{}`.\n\n{table}{END}",
        r0.map_or(0, |r| r.threads),
        r0.map_or(0, |r| r.batch),
        r0.map_or(String::new(), |r| r.isa.clone()),
        r0.map_or(String::new(), |r| r.kernels.clone()),
    );
    let new = match (old.find(START), old.find(END)) {
        (Some(a), Some(b)) if b > a => format!("{}{section}{}", &old[..a], &old[b + END.len()..]),
        _ => format!("{old}\n## int8 against fp32, every model\n\n{section}\n"),
    };
    qvision_io::atomic::write(path, new.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Horizontal bars of int8/fp32 per model, with the 1.0 line.
fn svg_chart(rows: &[Report]) -> String {
    let rows: Vec<(&str, f64)> = rows
        .iter()
        .filter_map(|r| r.ratio.map(|x| (r.model.as_str(), x)))
        .collect();
    let (left, bar_h, width) = (170.0, 16.0, 420.0);
    let max = rows.iter().map(|r| r.1).fold(1.2f64, f64::max);
    let h = 40.0 + rows.len() as f64 * (bar_h + 4.0) + 30.0;
    let x = |v: f64| left + v / max * width;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<text x=\"10\" y=\"20\" font-size=\"13\">int8 / fp32 latency (lower is faster)</text>\n",
        left + width + 60.0
    );
    for (i, (name, v)) in rows.iter().enumerate() {
        let y = 36.0 + i as f64 * (bar_h + 4.0);
        let color = if *v < 1.0 { "#3b7dd8" } else { "#d8573b" };
        s += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{name}</text><rect x=\"{left}\" y=\"{y}\" width=\"{:.1}\" height=\"{bar_h}\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{}\">{v:.2}</text>\n",
            left - 6.0,
            y + 12.0,
            x(*v) - left,
            x(*v) + 4.0,
            y + 12.0
        );
    }
    let y1 = h - 24.0;
    s += &format!(
        "<line x1=\"{0:.1}\" y1=\"30\" x2=\"{0:.1}\" y2=\"{y1}\" stroke=\"#333\" stroke-dasharray=\"4 3\"/><text x=\"{0:.1}\" y=\"{1}\" text-anchor=\"middle\">1.0</text>\n</svg>\n",
        x(1.0),
        y1 + 14.0
    );
    s
}
