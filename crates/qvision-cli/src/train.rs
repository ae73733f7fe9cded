//! `qvision train` and `qvision qat`: training and quantization-aware training.

use crate::common::{emit, qvm_meta};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use qvision_graph::{Graph, Op, ValueKind};
use qvision_io::transforms::{EvalTransform, Filter};
use qvision_quant::calibrate::ObserverKind;
use qvision_quant::{Backend, QConfig};
use qvision_tensor::Tensor;
use qvision_train::data::{FolderTransform, IdxAugment, FASHION_MNIST_NORM, MNIST_NORM};
use qvision_train::fit::{evaluate_graph, fit, EpochStats, FitConfig, Progress};
use qvision_train::{
    models, Dataset, IdxDataset, ImageFolder, OptimizerKind, ScheduleKind, TrainGraph,
};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options shared by `train` and `qat`.
#[derive(clap::Args, Clone)]
pub struct Common {
    /// A zoo model, `small_resnet` (the 28x28 recipe CNN) or an ONNX file.
    model: String,
    /// `fashion-mnist` (the Debian dataset), `mnist`/any directory of idx files, an image folder
    /// (`DIR/train/<class>/…` and `DIR/val/<class>/…`, or `DIR/<class>/…`), or `synthetic`.
    #[arg(long)]
    data: String,
    /// Start from these weights (.pth or safetensors).
    #[arg(long)]
    weights: Option<PathBuf>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Base learning rate.
    #[arg(long)]
    lr: Option<f32>,
    /// sgd or adamw.
    #[arg(long, default_value = "sgd")]
    optimizer: String,
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    /// Nesterov momentum (SGD).
    #[arg(long)]
    nesterov: bool,
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f32,
    /// cosine, step or constant.
    #[arg(long, default_value = "cosine")]
    schedule: String,
    /// Step schedule: epochs between decays.
    #[arg(long, default_value_t = 30)]
    step_size: usize,
    /// Step schedule: decay factor.
    #[arg(long, default_value_t = 0.1)]
    gamma: f32,
    #[arg(long, default_value_t = 0.0)]
    warmup_epochs: f32,
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f32,
    /// Train without augmentation.
    #[arg(long)]
    no_augment: bool,
    /// Classes (default: from the dataset).
    #[arg(long)]
    num_classes: Option<usize>,
    /// Base width of `small_resnet`.
    #[arg(long, default_value_t = 16)]
    width: usize,
    /// Image side for image folders and `synthetic` (default: the model's).
    #[arg(long)]
    input_size: Option<usize>,
    /// Use only the first N training samples.
    #[arg(long)]
    limit: Option<usize>,
    /// Stop after N optimizer steps (benchmarks and smoke runs).
    #[arg(long)]
    max_steps: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    threads: Option<usize>,
    /// Save a checkpoint here after every epoch.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Resume from a checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Machine-readable summary on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    c: Common,
    /// Trained weights (safetensors, torchvision key names), written atomically.
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
pub struct QatArgs {
    #[command(flatten)]
    c: Common,
    /// The int8 model (.qvm), written atomically.
    #[arg(long)]
    out: PathBuf,
    /// Freeze BatchNorm statistics from this epoch (0-based) on.
    #[arg(long)]
    freeze_bn_epoch: Option<usize>,
    /// Freeze the activation observers from this epoch on.
    #[arg(long)]
    freeze_observer_epoch: Option<usize>,
    /// x86 (per-channel weights) or arm (per-tensor).
    #[arg(long, default_value = "x86")]
    backend: String,
    /// Learn the activation scales (LSQ) instead of observing them.
    #[arg(long)]
    lsq: bool,
    /// Calibration batches for the PTQ baseline (0 skips it).
    #[arg(long, default_value_t = 16)]
    ptq_batches: usize,
}

struct Data {
    train: Box<dyn Dataset>,
    test: Option<Box<dyn Dataset>>,
    transform: EvalTransform,
    name: String,
}

fn idx_dir(
    dir: &Path,
    norm: (f32, f32),
    limit: Option<usize>,
    augment: IdxAugment,
    name: &str,
) -> Result<Data> {
    let mut train = IdxDataset::from_dir(dir, true, norm)?;
    if let Some(n) = limit {
        train.truncate(n);
    }
    train.augment = augment;
    let test = IdxDataset::from_dir(dir, false, norm).ok();
    Ok(Data {
        train: Box::new(train),
        test: test.map(|t| Box::new(t) as Box<dyn Dataset>),
        transform: EvalTransform {
            resize: 28,
            crop: 28,
            filter: Filter::Bilinear,
            mean: [norm.0; 3],
            std: [norm.1; 3],
        },
        name: name.to_string(),
    })
}

/// Synthetic samples: random images, random labels (throughput measurements).
struct Synthetic {
    n: usize,
    shape: [usize; 3],
    classes: usize,
}

impl Dataset for Synthetic {
    fn len(&self) -> usize {
        self.n
    }
    fn sample_shape(&self) -> [usize; 3] {
        self.shape
    }
    fn num_classes(&self) -> usize {
        self.classes
    }
    fn get(
        &self,
        i: usize,
        _: Option<&mut qvision_train::rng::Rng>,
    ) -> Result<(Vec<f32>, usize), qvision_train::TrainError> {
        let mut r = qvision_train::rng::Rng::derive(7, 0, i as u64);
        let n = self.shape.iter().product();
        Ok(((0..n).map(|_| r.normal()).collect(), r.below(self.classes)))
    }
}

fn load_data(c: &Common, model_input: Option<[usize; 3]>) -> Result<Data> {
    let flip = IdxAugment {
        flip: !c.no_augment,
        pad_crop: if c.no_augment { 0 } else { 2 },
    };
    match c.data.as_str() {
        "fashion-mnist" => {
            let dir = std::env::var_os("QVISION_FASHION_MNIST")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/usr/share/datasets/fashion-mnist"));
            if !dir.exists() {
                bail!(
                    "Fashion-MNIST not found at {} (install the Debian package dataset-fashion-mnist, run scripts/fetch-assets --all, or set QVISION_FASHION_MNIST)",
                    dir.display()
                );
            }
            idx_dir(&dir, FASHION_MNIST_NORM, c.limit, flip, "fashion-mnist")
        }
        "synthetic" => {
            let shape = match (model_input, c.input_size) {
                (Some([ch, _, _]), Some(s)) => [ch, s, s],
                (Some(s), None) => s,
                (None, s) => [3, s.unwrap_or(224), s.unwrap_or(224)],
            };
            let n = c.limit.unwrap_or(c.batch_size * c.max_steps.unwrap_or(4));
            let classes = c.num_classes.unwrap_or(10);
            Ok(Data {
                train: Box::new(Synthetic { n, shape, classes }),
                test: None,
                transform: EvalTransform {
                    resize: shape[1] * 256 / 224,
                    crop: shape[1],
                    filter: Filter::Bilinear,
                    mean: [0.485, 0.456, 0.406],
                    std: [0.229, 0.224, 0.225],
                },
                name: "synthetic".into(),
            })
        }
        d => {
            let dir = PathBuf::from(d);
            if !dir.is_dir() {
                bail!("--data {d}: not a directory, nor fashion-mnist or synthetic");
            }
            let idx = ["train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"]
                .iter()
                .any(|f| dir.join(f).exists());
            if idx {
                return idx_dir(&dir, MNIST_NORM, c.limit, flip, d);
            }
            let size = c.input_size.or(model_input.map(|s| s[1])).unwrap_or(224);
            let mut t = FolderTransform::imagenet(size);
            t.flip = !c.no_augment;
            if c.no_augment {
                t.min_scale = 1.0;
            }
            let (train_dir, test_dir) = if dir.join("train").is_dir() {
                (
                    dir.join("train"),
                    Some(dir.join("val")).filter(|p| p.is_dir()),
                )
            } else {
                (dir.clone(), None)
            };
            let mut train = ImageFolder::open(&train_dir, t)?;
            if let Some(n) = c.limit {
                train.files.truncate(n);
            }
            let test = match test_dir {
                Some(p) => Some(Box::new(ImageFolder::open(&p, t)?) as Box<dyn Dataset>),
                None => None,
            };
            Ok(Data {
                train: Box::new(train),
                test,
                transform: EvalTransform {
                    resize: size * 256 / 224,
                    crop: size,
                    filter: Filter::Bilinear,
                    mean: t.mean,
                    std: t.std,
                },
                name: d.to_string(),
            })
        }
    }
}

/// The model's input shape `[C, H, W]` when it is known before the data.
fn model_input(model: &str) -> Option<[usize; 3]> {
    if model == "small_resnet" {
        return Some([1, 28, 28]);
    }
    qvision_zoo::find(model).ok().map(|i| {
        let s = i.transform.crop;
        [3, s, s]
    })
}

/// Build the fp32 training graph for `c.model` with `classes` outputs.
fn build_graph(c: &Common, shape: [usize; 3], classes: usize) -> Result<Graph> {
    let mut g = if c.model == "small_resnet" {
        let mut g = models::small_resnet(shape[0], classes, c.width, [shape[1], shape[2]]);
        models::init_params(&mut g, c.seed);
        g
    } else if crate::common::is_onnx(&c.model) {
        let (imp, _) = crate::common::load_onnx(Path::new(&c.model))?;
        if imp.is_quantized() {
            bail!(
                "{}: a quantized ONNX model cannot be trained; export its fp32 model",
                c.model
            );
        }
        let mut g = imp.graph;
        // ONNX initializers arrive as constants: the weights of trainable layers become params.
        let slots: Vec<_> = g
            .nodes
            .iter()
            .filter(|n| {
                matches!(
                    n.op,
                    Op::Conv2d { .. }
                        | Op::Linear { .. }
                        | Op::BatchNorm2d { .. }
                        | Op::LayerNorm { .. }
                )
            })
            .flat_map(|n| n.inputs[1..].to_vec())
            .collect();
        for v in slots {
            if g.values[v.0].kind == ValueKind::Const {
                g.values[v.0].kind = ValueKind::Param { optional: false };
            }
        }
        g
    } else {
        let info = qvision_zoo::find(&c.model)?;
        let mut g = info.graph(&qvision_zoo::ModelOptions::default());
        models::init_params(&mut g, c.seed);
        g
    };
    if let Some(w) = &c.weights {
        let sd = qvision_io::load_state_dict(w)?;
        let strict_head = c.num_classes.is_none();
        let r = qvision_graph::weights::load_state_dict(&mut g, sd, false)
            .with_context(|| format!("loading {}", w.display()))?;
        for k in &r.missing {
            eprintln!(
                "warning: {}: '{k}' not in {} (initialised)",
                c.model,
                w.display()
            );
        }
        if strict_head && !r.unexpected.is_empty() {
            eprintln!(
                "warning: unexpected keys ignored: {}",
                r.unexpected.join(", ")
            );
        }
    }
    let out_classes = g
        .nodes
        .iter()
        .rev()
        .find(|n| n.outputs.contains(&g.outputs[0]))
        .and_then(|n| match n.op {
            Op::Linear { .. } => g.values[n.inputs[1].0].shape.as_ref().map(|s| s[0]),
            _ => None,
        });
    if out_classes.is_some_and(|k| k != classes) {
        eprintln!("note: new {classes}-class head for {}", c.model);
        models::reset_head(&mut g, classes, c.seed)?;
    }
    Ok(g)
}

/// The resume checkpoint, if `--resume` names one.
fn resume(c: &Common) -> Result<Option<qvision_train::checkpoint::Checkpoint>> {
    Ok(match &c.resume {
        Some(p) => Some(qvision_train::checkpoint::Checkpoint::load(p)?),
        None => None,
    })
}

/// The training configuration; `train_len` sizes the step schedule's epochs in steps.
fn fit_config(c: &Common, epochs: usize, lr: f32, train_len: usize) -> Result<FitConfig> {
    let optimizer = match c.optimizer.as_str() {
        "sgd" => OptimizerKind::sgd(c.momentum, c.nesterov, c.weight_decay),
        "adamw" => OptimizerKind::adamw(c.weight_decay),
        o => bail!("--optimizer {o}: expected sgd or adamw"),
    };
    let schedule = match c.schedule.as_str() {
        "cosine" => ScheduleKind::Cosine { min_lr: 0.0 },
        "constant" => ScheduleKind::Constant,
        "step" => ScheduleKind::Step {
            every: c.step_size * (train_len / c.batch_size.max(1)).max(1),
            gamma: c.gamma,
        },
        s => bail!("--schedule {s}: expected cosine, step or constant"),
    };
    Ok(FitConfig {
        epochs,
        batch_size: c.batch_size,
        lr,
        optimizer,
        schedule,
        warmup_epochs: c.warmup_epochs,
        label_smoothing: c.label_smoothing,
        seed: c.seed,
        augment: !c.no_augment,
        freeze_bn_epoch: None,
        freeze_observer_epoch: None,
        checkpoint: c.checkpoint.clone(),
        max_steps: c.max_steps,
    })
}

/// The progress bar: loss, accuracy and images/s while an epoch runs.
struct Bar {
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl Progress for Bar {
    fn start_epoch(&mut self, epoch: usize, epochs: usize, batches: usize) {
        let bar = if self.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(batches as u64)
        };
        bar.set_style(
            ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} {msg} [{elapsed}<{eta}]")
                .expect("template"),
        );
        bar.set_prefix(format!("epoch {}/{epochs}", epoch + 1));
        self.bar = Some(bar);
    }
    fn batch(&mut self, loss: f32, acc: f32, ips: f32) {
        if let Some(b) = &self.bar {
            b.set_message(format!(
                "loss {loss:.4} acc {:.2}% {ips:.0} img/s",
                acc * 100.0
            ));
            b.inc(1);
        }
    }
    fn end_epoch(&mut self, s: &EpochStats) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if !self.quiet {
            eprintln!(
                "epoch {:>3}  loss {:.4}  train {:.2}%  {}  {:.0} img/s  lr {:.5}  {:.1}s",
                s.epoch + 1,
                s.loss,
                s.train_acc * 100.0,
                s.test_acc
                    .map_or("".to_string(), |a| format!("test {:.2}%", a * 100.0)),
                s.images_per_s,
                s.lr,
                s.seconds
            );
        }
    }
}

fn setup_threads(t: Option<usize>) -> usize {
    if let Some(n) = t {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    rayon::current_num_threads()
}

fn prepare(c: &Common) -> Result<(Data, Graph, usize)> {
    let data = load_data(c, model_input(&c.model))?;
    let shape = data.train.sample_shape();
    let classes = c.num_classes.unwrap_or_else(|| data.train.num_classes());
    let g = build_graph(c, shape, classes)?;
    if let Some(s) = g.inputs.first().and_then(|i| g.values[i.0].shape.clone()) {
        if s.len() == 4 && s[1] != shape[0] {
            bail!(
                "{} takes {} input channels; {} gives {}",
                c.model,
                s[1],
                data.name,
                shape[0]
            );
        }
    }
    Ok((data, g, classes))
}

pub fn run_train(a: TrainArgs) -> Result<()> {
    let c = &a.c;
    let threads = setup_threads(c.threads);
    let (data, g, classes) = prepare(c)?;
    let mut tg = TrainGraph::new(g, false)?;
    let epochs = c.epochs.unwrap_or(5);
    let cfg = fit_config(c, epochs, c.lr.unwrap_or(0.1), data.train.len())?;
    let resume = resume(c)?;
    let t0 = Instant::now();
    let mut bar = Bar {
        bar: None,
        quiet: c.json,
    };
    let stats = fit(
        &mut tg,
        data.train.as_ref(),
        data.test.as_deref(),
        &cfg,
        resume.as_ref(),
        &mut bar,
    )?;
    let secs = t0.elapsed().as_secs_f64();
    eprint!("{}", qvision_train::profile::report());
    qvision_io::atomic::write(&a.out, &qvision_io::safetensors::write(&tg.state_dict())?)
        .with_context(|| format!("writing {}", a.out.display()))?;
    let last = stats.last();
    let ips = stats.iter().map(|s| s.images_per_s).sum::<f32>() / stats.len().max(1) as f32;
    let summary = serde_json::json!({
        "model": c.model,
        "data": data.name,
        "classes": classes,
        "epochs": stats.len(),
        "threads": threads,
        "batch_size": c.batch_size,
        "train_loss": last.map(|s| s.loss),
        "train_acc": last.map(|s| s.train_acc),
        "test_acc": last.and_then(|s| s.test_acc),
        "images_per_s": ips,
        "seconds": secs,
        "out": a.out.display().to_string(),
        "history": stats,
    });
    if c.json {
        emit(&format!("{summary}\n"))
    } else {
        emit(&format!(
            "trained {} on {} for {} epochs in {:.1}s ({:.0} img/s, {threads} threads)\n  final train loss {:.4}, train acc {:.2}%{}\n  weights -> {}\n",
            c.model,
            data.name,
            stats.len(),
            secs,
            ips,
            last.map_or(f32::NAN, |s| s.loss),
            last.map_or(f32::NAN, |s| s.train_acc * 100.0),
            last.and_then(|s| s.test_acc).map_or(String::new(), |a| format!(", test acc {:.2}%", a * 100.0)),
            a.out.display()
        ))
    }
}

pub fn run_qat(a: QatArgs) -> Result<()> {
    let c = &a.c;
    let threads = setup_threads(c.threads);
    if c.weights.is_none() && c.resume.is_none() {
        bail!("qat fine-tunes a trained model: pass --weights FILE");
    }
    let backend = match a.backend.as_str() {
        "x86" => Backend::X86,
        "arm" => Backend::Arm,
        b => bail!("--backend {b}: expected x86 or arm"),
    };
    let qconfig = QConfig::default_for(backend);
    let (data, g, _) = prepare(c)?;
    let test = data.test.as_deref();
    let t0 = Instant::now();
    let fp32_acc = match test {
        Some(t) => Some(evaluate_graph(&g, t, 256)?),
        None => None,
    };
    // PTQ baseline: calibrate on training images (no augmentation), same qconfig.
    let ptq_acc = if a.ptq_batches > 0 {
        let mut loader = qvision_train::DataLoader::new(data.train.as_ref(), c.batch_size);
        loader.shuffle = true;
        loader.seed = c.seed;
        let order = loader.order(0);
        let n = a.ptq_batches.min(loader.num_batches());
        let batches: Vec<Tensor> = (0..n)
            .map(|b| {
                let bt = loader.batch(&order, 0, b)?;
                Ok(Tensor::from_f32(bt.x.shape, bt.x.data)?)
            })
            .collect::<Result<_>>()?;
        let (q, _) =
            qvision_quant::quantize_ptq(&g, batches, ObserverKind::Histogram, qconfig, None)?;
        match test {
            Some(t) => Some(evaluate_graph(&q, t, 256)?),
            None => None,
        }
    } else {
        None
    };
    let mut tg = TrainGraph::new(g, false)?;
    qvision_train::prepare_qat(&mut tg, qconfig)?;
    if a.lsq {
        qvision_train::qat::enable_lsq(&mut tg);
    }
    let epochs = c.epochs.unwrap_or(1);
    let mut cfg = fit_config(c, epochs, c.lr.unwrap_or(0.01), data.train.len())?;
    cfg.freeze_bn_epoch = a.freeze_bn_epoch;
    cfg.freeze_observer_epoch = a.freeze_observer_epoch;
    let resume = resume(c)?;
    let mut bar = Bar {
        bar: None,
        quiet: c.json,
    };
    let stats = fit(
        &mut tg,
        data.train.as_ref(),
        test,
        &cfg,
        resume.as_ref(),
        &mut bar,
    )?;
    eprint!("{}", qvision_train::profile::report());
    let (int8, report) = qvision_train::convert(&tg)?;
    let qat_acc = stats.last().and_then(|s| s.test_acc);
    let (acts, weights, folded) = tg.qat.as_ref().map_or((0, 0, 0), |q| q.counts());
    let rep = serde_json::json!({
        "method": if a.lsq { "qat-lsq" } else { "qat" },
        "epochs": stats.len(),
        "int8_nodes": report.int8.len(),
        "fp32_nodes": report.fp32.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        "fake_quant_activations": acts,
        "fake_quant_weights": weights,
        "conv_bn_folded": folded,
    });
    let bytes =
        qvision_graph::serialize::to_bytes(&int8, qvm_meta(&c.model, &data.transform, &rep))?;
    qvision_io::atomic::write(&a.out, &bytes)
        .with_context(|| format!("writing {}", a.out.display()))?;
    let secs = t0.elapsed().as_secs_f64();
    let pct = |v: Option<f32>| v.map_or("-".to_string(), |a| format!("{:.2}%", a * 100.0));
    let summary = serde_json::json!({
        "model": c.model,
        "data": data.name,
        "threads": threads,
        "epochs": stats.len(),
        "fp32_acc": fp32_acc,
        "ptq_acc": ptq_acc,
        "qat_acc": qat_acc,
        "seconds": secs,
        "out": a.out.display().to_string(),
        "history": stats,
    });
    if c.json {
        emit(&format!("{summary}\n"))
    } else {
        emit(&format!(
            "{:<10} {:>10}\n{:<10} {:>10}\n{:<10} {:>10}\n{:<10} {:>10}\nQAT {} epochs in {:.1}s ({} fake-quant activations, {} weights, {} conv+bn folded); int8 model -> {}\n",
            "", "test acc",
            "fp32", pct(fp32_acc),
            "PTQ int8", pct(ptq_acc),
            "QAT int8", pct(qat_acc),
            stats.len(), secs, acts, weights, folded, a.out.display()
        ))
    }
}
