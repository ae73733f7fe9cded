//! Training mechanics: exact resume from checkpoints, the data pipeline, and the QAT Conv+BN
//! fold against plain training.

use qvision_quant::{Backend, QConfig};
use qvision_train::checkpoint::Checkpoint;
use qvision_train::data::{read_idx, DataLoader, Dataset};
use qvision_train::fit::{fit, FitConfig, Quiet};
use qvision_train::ops::Buf;
use qvision_train::rng::Rng;
use qvision_train::{models, OptimizerKind, ScheduleKind, TrainError, TrainGraph};
use std::io::Write;

/// 96 random 12x12 grayscale images whose label is the quadrant of their brightest pixel.
struct Blobs;

impl Dataset for Blobs {
    fn len(&self) -> usize {
        96
    }
    fn sample_shape(&self) -> [usize; 3] {
        [1, 12, 12]
    }
    fn num_classes(&self) -> usize {
        4
    }
    fn get(&self, i: usize, rng: Option<&mut Rng>) -> Result<(Vec<f32>, usize), TrainError> {
        let mut r = Rng::derive(1, 2, i as u64);
        let mut x: Vec<f32> = (0..144).map(|_| r.range(-0.2, 0.2)).collect();
        let label = r.below(4);
        let (y0, x0) = ((label / 2) * 6 + r.below(4), (label % 2) * 6 + r.below(4));
        x[y0 * 12 + x0] = 3.0;
        if let Some(rng) = rng {
            let k = rng.below(144);
            x[k] += 0.1;
        }
        Ok((x, label))
    }
}

fn graph() -> TrainGraph {
    let mut g = models::small_resnet(1, 4, 4, [12, 12]);
    models::init_params(&mut g, 5);
    TrainGraph::new(g, false).unwrap()
}

fn cfg(epochs: usize, ckpt: Option<std::path::PathBuf>) -> FitConfig {
    FitConfig {
        epochs,
        batch_size: 16,
        lr: 0.05,
        optimizer: OptimizerKind::sgd(0.9, true, 1e-4),
        schedule: ScheduleKind::Cosine { min_lr: 0.0 },
        warmup_epochs: 0.5,
        seed: 3,
        checkpoint: ckpt,
        ..Default::default()
    }
}

fn weights(tg: &TrainGraph) -> Vec<(String, Vec<f32>)> {
    let mut v: Vec<_> = tg
        .graph
        .params()
        .filter_map(|(id, p)| {
            tg.graph.tensors[&id]
                .as_f32()
                .ok()
                .map(|d| (p.name.clone(), d.to_vec()))
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn resume_is_exact(qat: bool) {
    let dir = std::env::temp_dir().join(format!("qvision-ckpt-{}-{qat}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("run.ckpt");
    let prep = |tg: &mut TrainGraph| {
        if qat {
            qvision_train::prepare_qat(tg, QConfig::default_for(Backend::X86)).unwrap();
        }
    };
    // Straight through: 3 epochs (BN freezes at epoch 2 under QAT).
    let mut a = graph();
    prep(&mut a);
    let mut c = cfg(3, None);
    if qat {
        c.freeze_bn_epoch = Some(2);
        c.freeze_observer_epoch = Some(2);
    }
    let stats = fit(&mut a, &Blobs, None, &c, None, &mut Quiet).unwrap();
    assert_eq!(stats.len(), 3);
    // Interrupted after epoch 2, resumed from the checkpoint in a fresh graph.
    let mut b = graph();
    prep(&mut b);
    let mut c2 = cfg(3, Some(path.clone()));
    c2.freeze_bn_epoch = c.freeze_bn_epoch;
    c2.freeze_observer_epoch = c.freeze_observer_epoch;
    c2.max_steps = Some(12); // 96 / 16 = 6 steps per epoch: stop after two epochs
    fit(&mut b, &Blobs, None, &c2, None, &mut Quiet).unwrap();
    let ck = Checkpoint::load(&path).unwrap();
    assert_eq!((ck.epoch, ck.step), (2, 12));
    let mut r = graph();
    prep(&mut r);
    c2.max_steps = None;
    fit(&mut r, &Blobs, None, &c2, Some(&ck), &mut Quiet).unwrap();
    assert_eq!(weights(&a), weights(&r), "resumed run differs (qat={qat})");
    if qat {
        let (qa, qr) = (a.qat.as_ref().unwrap(), r.qat.as_ref().unwrap());
        assert_eq!(qa.observers(), qr.observers());
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn checkpoint_resume_is_exact() {
    resume_is_exact(false);
}

#[test]
fn checkpoint_resume_is_exact_under_qat() {
    resume_is_exact(true);
}

#[test]
fn training_learns_and_qat_converts() {
    let mut tg = graph();
    let stats = fit(&mut tg, &Blobs, None, &cfg(6, None), None, &mut Quiet).unwrap();
    let (first, last) = (&stats[0], stats.last().unwrap());
    assert!(
        last.loss < first.loss * 0.6,
        "loss {} -> {}",
        first.loss,
        last.loss
    );
    assert!(last.train_acc > 0.8, "train accuracy {}", last.train_acc);
    let fp32 = qvision_train::fit::evaluate_graph(&tg.graph, &Blobs, 32).unwrap();
    qvision_train::prepare_qat(&mut tg, QConfig::default_for(Backend::X86)).unwrap();
    let mut c = cfg(2, None);
    c.lr = 0.005;
    c.freeze_bn_epoch = Some(1);
    fit(&mut tg, &Blobs, None, &c, None, &mut Quiet).unwrap();
    let (int8, _) = qvision_train::convert(&tg).unwrap();
    let q = qvision_train::fit::evaluate_graph(&int8, &Blobs, 32).unwrap();
    assert!(q >= fp32 - 0.05, "QAT int8 {q} vs fp32 {fp32}");
}

#[test]
fn truncated_checkpoint_is_refused_by_name() {
    let mut tg = graph();
    let opt = qvision_train::Optimizer::new(OptimizerKind::adamw(0.01));
    let dir = std::env::temp_dir().join(format!("qvision-ckpt-trunc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("x.ckpt");
    Checkpoint::capture(&tg, &opt, 1, 6, &Rng::new(1), serde_json::json!({}))
        .save(&p)
        .unwrap();
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = Checkpoint::load(&p).unwrap_err().to_string();
    assert!(
        e.contains("x.ckpt") && e.contains("truncated or corrupt"),
        "{e}"
    );
    // A checkpoint of another graph is refused.
    Checkpoint::capture(&tg, &opt, 1, 6, &Rng::new(1), serde_json::json!({}))
        .save(&p)
        .unwrap();
    let ck = Checkpoint::load(&p).unwrap();
    tg.graph.name = "other".into();
    assert!(ck.restore(&mut tg).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn qat_conv_bn_fold_without_fake_quant_is_plain_training() {
    let mut plain = graph();
    let mut folded = graph();
    qvision_train::prepare_qat(&mut folded, QConfig::default_for(Backend::X86)).unwrap();
    let q = folded.qat.as_mut().unwrap();
    q.fake_quant_enabled = false;
    assert_eq!(
        q.counts().2,
        9,
        "every conv of small_resnet has a BN to fold"
    );
    let (x, labels) = {
        let l = DataLoader::new(&Blobs, 8);
        let b = l.batch(&l.order(0), 0, 0).unwrap();
        (b.x, b.labels)
    };
    let run = |tg: &mut TrainGraph, x: Buf| {
        let tape = tg.forward(vec![x], true, 1).unwrap();
        let (loss, d, _) = qvision_train::loss::cross_entropy(tape.outputs()[0], &labels, 0.0);
        let g = tg.backward(&tape, vec![d]).unwrap();
        let mut grads: Vec<(String, Vec<f32>)> = tg
            .trainable
            .iter()
            .map(|&p| {
                (
                    tg.graph.values[p.0].name.clone(),
                    g.get(p).unwrap().to_vec(),
                )
            })
            .collect();
        grads.sort_by(|a, b| a.0.cmp(&b.0));
        (loss, grads)
    };
    let (la, ga) = run(&mut plain, x.clone());
    let (lb, gb) = run(&mut folded, x);
    assert!((la - lb).abs() < 1e-5, "{la} vs {lb}");
    for ((n, a), (_, b)) in ga.iter().zip(&gb) {
        let scale = a.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        for (u, v) in a.iter().zip(b) {
            assert!((u - v).abs() <= 1e-3 * scale, "{n}: {u} vs {v}");
        }
    }
}

#[test]
fn loader_is_deterministic_across_thread_counts() {
    let mut l = DataLoader::new(&Blobs, 10);
    l.shuffle = true;
    l.augment = true;
    l.seed = 9;
    let order = l.order(3);
    assert_ne!(order, l.order(4), "each epoch reshuffles");
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let two = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let a = one.install(|| l.batch(&order, 3, 2).unwrap());
    let b = two.install(|| l.batch(&order, 3, 2).unwrap());
    assert_eq!(a.x, b.x);
    assert_eq!(a.labels, b.labels);
    assert_eq!(l.num_batches(), 10);
}

#[test]
fn idx_files_raw_and_gzip() {
    let dir = std::env::temp_dir().join(format!("qvision-idx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut img = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3];
    img.extend(0u8..12);
    let lab = vec![0, 0, 8, 1, 0, 0, 0, 2, 7, 1];
    std::fs::write(dir.join("train-images-idx3-ubyte"), &img).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&lab).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte.gz"), gz.finish().unwrap()).unwrap();
    let (dims, data) = read_idx(&dir.join("train-images-idx3-ubyte")).unwrap();
    assert_eq!((dims, data.len()), (vec![2, 2, 3], 12));
    let ds = qvision_train::IdxDataset::from_dir(&dir, true, (0.0, 1.0)).unwrap();
    assert_eq!((ds.len(), ds.label(0), ds.label(1)), (2, 7, 1));
    let (x, _) = ds.get(1, None).unwrap();
    assert_eq!(x[0], 6.0 / 255.0);
    std::fs::write(dir.join("bad"), [1, 2, 3]).unwrap();
    let e = read_idx(&dir.join("bad")).unwrap_err().to_string();
    assert!(e.contains("bad") && e.contains("not an idx file"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_batch_the_graph_cannot_take_is_an_error_naming_the_node() {
    let mut tg = graph();
    let e = tg
        .forward(vec![Buf::new(vec![2, 3, 12, 12], vec![0.0; 864])], true, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("conv1") && e.contains("channels"), "{e}");
    let e = tg
        .forward(vec![Buf::new(vec![2, 1, 12], vec![0.0; 24])], true, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("conv1"), "{e}");
}

#[test]
fn lsq_learns_activation_scales_and_converts() {
    let mut tg = graph();
    fit(&mut tg, &Blobs, None, &cfg(4, None), None, &mut Quiet).unwrap();
    let fp32 = qvision_train::fit::evaluate_graph(&tg.graph, &Blobs, 32).unwrap();
    qvision_train::prepare_qat(&mut tg, QConfig::default_for(Backend::X86)).unwrap();
    qvision_train::qat::enable_lsq(&mut tg);
    let mut c = cfg(2, None);
    c.lr = 0.005;
    fit(&mut tg, &Blobs, None, &c, None, &mut Quiet).unwrap();
    let q = tg.qat.as_ref().unwrap();
    let learned: Vec<(f32, f32, f32)> = q
        .observers()
        .values()
        .filter_map(|f| f.learned.map(|(s, _)| (s, f.min, f.max)))
        .collect();
    assert_eq!(
        learned.len(),
        q.counts().0,
        "every activation has a learned scale"
    );
    // The scales moved away from the range they started from.
    let moved = learned
        .iter()
        .filter(|(s, lo, hi)| {
            let init = (hi.max(0.0) - lo.min(0.0)) / 255.0;
            (s - init).abs() > 1e-4 * init
        })
        .count();
    assert!(moved > 0, "no scale was learned: {learned:?}");
    // convert uses the learned scales: the int8 graph computes the LSQ graph.
    let (int8, _) = qvision_train::convert(&tg).unwrap();
    let l = DataLoader::new(&Blobs, 16);
    let b = l.batch(&l.order(0), 0, 0).unwrap();
    let sim = tg.forward(vec![b.x.clone()], false, 0).unwrap();
    let s = qvision_graph::Session::new(&int8, Default::default()).unwrap();
    let out = s
        .run(vec![qvision_tensor::Tensor::from_f32(
            b.x.shape.clone(),
            b.x.data,
        )
        .unwrap()])
        .unwrap();
    let db = qvision_quant::sqnr_db(&sim.outputs()[0].data, out[0].as_f32().unwrap());
    assert!(db >= 20.0, "int8 vs LSQ simulation {db:.1} dB");
    let acc = qvision_train::fit::evaluate_graph(&int8, &Blobs, 32).unwrap();
    assert!(acc >= fp32 - 0.05, "LSQ int8 {acc} vs fp32 {fp32}");
}
