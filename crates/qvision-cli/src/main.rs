//! `qvision`: list, run, benchmark, quantize, train, export and import vision models.

mod bench;
mod common;
mod eval;
mod export;
mod import;
mod models;
mod predict;
mod quantize;
mod train;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "qvision",
    version,
    about = "Quantization toolkit and int8 CPU runtime for vision CNNs"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the model zoo with parameter counts and MACs.
    Models(models::Args),
    /// Classify images with a model and a torchvision weights file.
    Predict(predict::Args),
    /// Measure inference latency.
    Bench(bench::Args),
    /// Post-training int8 quantization into a .qvm file.
    Quantize(quantize::Args),
    /// fp32 and int8 accuracy on labelled images, agreement and SQNR.
    Eval(eval::Args),
    /// Write a model as ONNX (fp32, or int8 QDQ).
    Export(export::Args),
    /// Read an ONNX file: what it holds; optionally save it as .qvm.
    Import(import::Args),
    /// Train a model in fp32 (from scratch or fine-tuning from --weights).
    Train(train::TrainArgs),
    /// Quantization-aware training: fine-tune with fake quantization, convert to int8 (.qvm).
    Qat(train::QatArgs),
}

fn main() {
    let cli = Cli::parse();
    let result: Result<()> = match cli.cmd {
        Command::Models(a) => models::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Export(a) => export::run(a),
        Command::Import(a) => import::run(a),
        Command::Train(a) => train::run_train(a),
        Command::Qat(a) => train::run_qat(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
