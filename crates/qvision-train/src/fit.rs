//! The training loop behind `qvision train` and `qvision qat`: epochs of shuffled, augmented
//! batches, one optimizer step per batch at the scheduled learning rate, optional BatchNorm and
//! observer freezing (QAT), a checkpoint after every epoch, and evaluation on a test set.

use crate::autograd::TrainGraph;
use crate::checkpoint::Checkpoint;
use crate::data::{DataLoader, Dataset};
use crate::loss::{argmax_rows, cross_entropy};
use crate::ops::Buf;
use crate::optim::{Optimizer, OptimizerKind};
use crate::rng::Rng;
use crate::schedule::{Schedule, ScheduleKind};
use crate::TrainError;
use qvision_graph::{Graph, Session, SessionOptions};
use qvision_tensor::Tensor;
use std::path::PathBuf;
use std::time::Instant;

/// What to train and how.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FitConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f32,
    #[serde(skip)]
    pub optimizer: OptimizerKind,
    #[serde(skip)]
    pub schedule: ScheduleKind,
    pub warmup_epochs: f32,
    pub label_smoothing: f32,
    pub seed: u64,
    pub augment: bool,
    /// QAT: BatchNorm statistics freeze from this epoch on (0-based).
    pub freeze_bn_epoch: Option<usize>,
    /// QAT: observers freeze from this epoch on.
    pub freeze_observer_epoch: Option<usize>,
    /// Save a checkpoint here after every epoch.
    pub checkpoint: Option<PathBuf>,
    /// Stop after this many optimizer steps (benchmarks, smoke runs).
    pub max_steps: Option<usize>,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            epochs: 1,
            batch_size: 64,
            lr: 0.1,
            optimizer: OptimizerKind::sgd(0.9, true, 5e-4),
            schedule: ScheduleKind::Cosine { min_lr: 0.0 },
            warmup_epochs: 0.0,
            label_smoothing: 0.0,
            seed: 0,
            augment: true,
            freeze_bn_epoch: None,
            freeze_observer_epoch: None,
            checkpoint: None,
            max_steps: None,
        }
    }
}

/// One epoch's numbers.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EpochStats {
    pub epoch: usize,
    pub loss: f32,
    pub train_acc: f32,
    pub images_per_s: f32,
    pub lr: f32,
    pub test_acc: Option<f32>,
    pub seconds: f32,
}

/// Progress callbacks (the CLI draws a progress bar with them).
pub trait Progress {
    fn start_epoch(&mut self, _epoch: usize, _epochs: usize, _batches: usize) {}
    fn batch(&mut self, _loss: f32, _acc: f32, _images_per_s: f32) {}
    fn end_epoch(&mut self, _stats: &EpochStats) {}
}

/// No progress output.
pub struct Quiet;
impl Progress for Quiet {}

/// One optimizer step on a batch; returns `(loss, correct)`.
pub fn train_step(
    tg: &mut TrainGraph,
    opt: &mut Optimizer,
    x: Buf,
    labels: &[usize],
    lr: f32,
    seed: u64,
    label_smoothing: f32,
) -> Result<(f32, usize), TrainError> {
    let tape = tg.forward(vec![x], true, seed)?;
    let logits = tape
        .outputs()
        .first()
        .copied()
        .ok_or_else(|| TrainError::Graph("the graph has no output".into()))?;
    if logits.shape.len() != 2 {
        return Err(TrainError::Graph(format!(
            "training needs [N, classes] logits, the graph gives {:?}",
            logits.shape
        )));
    }
    let classes = logits.shape[1];
    if let Some(&bad) = labels.iter().find(|&&l| l >= classes) {
        return Err(TrainError::Data(format!(
            "label {bad} but the model has {classes} classes (set --num-classes)"
        )));
    }
    let (loss, dlogits, correct) = cross_entropy(logits, labels, label_smoothing);
    if !loss.is_finite() {
        return Err(TrainError::Graph(format!(
            "the loss is {loss}: training diverged (lower the learning rate)"
        )));
    }
    let grads = tg.backward(&tape, vec![dlogits])?;
    drop(tape);
    for &p in &tg.trainable.clone() {
        if let Some(g) = grads.get(p) {
            let name = tg.graph.values[p.0].name.clone();
            if let Some(Ok(w)) = tg.graph.tensors.get_mut(&p).map(|t| t.as_f32_mut()) {
                opt.step(&name, w, g, lr);
            }
        }
    }
    if let Some(q) = tg.qat.as_mut() {
        let mut scales: Vec<_> = grads.scales.iter().collect();
        scales.sort_by_key(|(v, _)| **v);
        for (&v, &g) in scales {
            q.step_scale(v, g, opt, lr);
        }
    }
    Ok((loss, correct))
}

/// Train `tg` on `train`; evaluates on `test` after each epoch (fp32 graph, or the converted
/// int8 graph under QAT when `eval_int8`).
pub fn fit(
    tg: &mut TrainGraph,
    train: &dyn Dataset,
    test: Option<&dyn Dataset>,
    cfg: &FitConfig,
    resume: Option<&Checkpoint>,
    progress: &mut dyn Progress,
) -> Result<Vec<EpochStats>, TrainError> {
    if train.is_empty() {
        return Err(TrainError::Data("the training set is empty".into()));
    }
    let mut loader = DataLoader::new(train, cfg.batch_size);
    loader.shuffle = true;
    loader.augment = cfg.augment;
    loader.drop_last = train.len() >= cfg.batch_size;
    loader.seed = cfg.seed;
    let per_epoch = loader.num_batches().max(1);
    let total = per_epoch * cfg.epochs;
    let schedule = Schedule {
        base_lr: cfg.lr,
        kind: cfg.schedule.clone(),
        warmup_steps: (cfg.warmup_epochs * per_epoch as f32) as usize,
        warmup_start: 0.1,
        total_steps: total,
    };
    let config = serde_json::to_value(cfg).unwrap_or_default();
    let (mut opt, start_epoch, mut step, mut rng) = match resume {
        Some(c) => (c.restore(tg)?, c.epoch, c.step, c.rng.clone()),
        None => (
            Optimizer::new(cfg.optimizer.clone()),
            0,
            0,
            Rng::new(cfg.seed),
        ),
    };
    let mut stats = vec![];
    for epoch in start_epoch..cfg.epochs {
        if cfg.freeze_bn_epoch.is_some_and(|f| epoch >= f) {
            crate::qat::freeze_bn_stats(tg);
        }
        if cfg.freeze_observer_epoch.is_some_and(|f| epoch >= f) {
            crate::qat::freeze_observers(tg);
        }
        progress.start_epoch(epoch, cfg.epochs, per_epoch);
        let order = loader.order(epoch);
        let t0 = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        let mut lr = schedule.lr(step);
        for b in 0..per_epoch {
            if cfg.max_steps.is_some_and(|m| step >= m) {
                break;
            }
            let batch = loader.batch(&order, epoch, b)?;
            lr = schedule.lr(step);
            let n = batch.labels.len();
            let seed = rng.next_u64();
            let (loss, c) = train_step(
                tg,
                &mut opt,
                batch.x,
                &batch.labels,
                lr,
                seed,
                cfg.label_smoothing,
            )?;
            step += 1;
            loss_sum += loss as f64 * n as f64;
            correct += c;
            seen += n;
            let secs = t0.elapsed().as_secs_f32().max(1e-6);
            progress.batch(
                (loss_sum / seen as f64) as f32,
                correct as f32 / seen as f32,
                seen as f32 / secs,
            );
        }
        let seconds = t0.elapsed().as_secs_f32();
        let test_acc = match test {
            Some(t) => Some(evaluate_graph(&inference_graph(tg)?, t, 256)?),
            None => None,
        };
        let s = EpochStats {
            epoch,
            loss: (loss_sum / seen.max(1) as f64) as f32,
            train_acc: correct as f32 / seen.max(1) as f32,
            images_per_s: seen as f32 / seconds.max(1e-6),
            lr,
            test_acc,
            seconds,
        };
        progress.end_epoch(&s);
        stats.push(s);
        if let Some(path) = &cfg.checkpoint {
            Checkpoint::capture(tg, &opt, epoch + 1, step, &rng, config.clone()).save(path)?;
        }
        if cfg.max_steps.is_some_and(|m| step >= m) {
            break;
        }
    }
    Ok(stats)
}

/// The graph to evaluate: the fp32 graph as trained, or under QAT the converted int8 graph.
pub fn inference_graph(tg: &TrainGraph) -> Result<Graph, TrainError> {
    if tg.qat.is_some() {
        Ok(crate::qat::convert(tg)?.0)
    } else {
        Ok(tg.graph.clone())
    }
}

/// Top-1 accuracy of `graph` (fp32 or int8) on a dataset, through the inference engine.
pub fn evaluate_graph(
    graph: &Graph,
    ds: &dyn Dataset,
    batch_size: usize,
) -> Result<f32, TrainError> {
    let session = Session::new(graph, SessionOptions::default())
        .map_err(|e| TrainError::Graph(e.to_string()))?;
    let loader = DataLoader::new(ds, batch_size);
    let order = loader.order(0);
    let mut correct = 0usize;
    for b in 0..loader.num_batches() {
        let batch = loader.batch(&order, 0, b)?;
        let x = Tensor::from_f32(batch.x.shape.clone(), batch.x.data)
            .map_err(|e| TrainError::Graph(e.to_string()))?;
        let out = session
            .run(vec![x])
            .map_err(|e| TrainError::Graph(e.to_string()))?;
        let logits = out
            .first()
            .and_then(|t| {
                t.as_f32()
                    .ok()
                    .map(|d| Buf::new(t.shape().to_vec(), d.to_vec()))
            })
            .ok_or_else(|| TrainError::Graph("the graph gives no f32 output".into()))?;
        correct += argmax_rows(&logits)
            .iter()
            .zip(&batch.labels)
            .filter(|(a, b)| a == b)
            .count();
    }
    Ok(correct as f32 / ds.len().max(1) as f32)
}
