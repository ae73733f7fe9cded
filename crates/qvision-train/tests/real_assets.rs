//! Training on real data: a short QAT fine-tune of the official torchvision MobileNetV2 on
//! foolbox's 20 labelled ImageNet photos, and a small ResNet learning Fashion-MNIST.
//!
//! Needs `scripts/fetch-assets --all`. Under `CI=true` a missing asset fails the test.

use qvision_graph::{Session, SessionOptions};
use qvision_io::transforms::{EvalTransform, Filter};
use qvision_quant::{Backend, QConfig};
use qvision_tensor::Tensor;
use qvision_train::fit::{evaluate_graph, fit, FitConfig, Quiet};
use qvision_train::ops::Buf;
use qvision_train::{models, Dataset, OptimizerKind, ScheduleKind, TrainGraph};
use std::path::PathBuf;

fn missing(what: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} is missing: run scripts/fetch-assets --all");
    }
    eprintln!("SKIPPED: {what} is missing (run scripts/fetch-assets --all)");
}

fn assets() -> Option<PathBuf> {
    let dir = std::env::var_os("QVISION_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/assets"));
    if dir.join("mobilenet_v2-b0353104.pth").exists() && dir.join("foolbox").is_dir() {
        return Some(dir);
    }
    missing(&format!("MobileNetV2 / foolbox in {}", dir.display()));
    None
}

fn fashion_mnist() -> Option<PathBuf> {
    let dir = std::env::var_os("QVISION_FASHION_MNIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/datasets/fashion-mnist"));
    if dir.is_dir() {
        return Some(dir);
    }
    missing(&format!("Fashion-MNIST ({})", dir.display()));
    None
}

#[test]
fn mobilenet_v2_qat_fine_tune_converts_and_keeps_its_accuracy() {
    let Some(dir) = assets() else { return };
    let sd = qvision_io::load_state_dict(&dir.join("mobilenet_v2-b0353104.pth")).unwrap();
    let model = qvision_zoo::build(
        "mobilenet_v2",
        &qvision_zoo::ModelOptions {
            weights: qvision_zoo::Weights::StateDict(sd),
            quantize: true,
            is_qat: true,
            ..Default::default()
        },
    )
    .unwrap();
    let t = EvalTransform {
        resize: 256,
        crop: 224,
        filter: Filter::Bilinear,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
    let mut xs = vec![];
    let mut labels = vec![];
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("foolbox"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("imagenet")
        })
        .collect();
    files.sort();
    assert_eq!(files.len(), 20);
    for p in &files {
        let img = qvision_io::image_io::load_rgb(p).unwrap();
        xs.push(t.apply(&img).into_f32().unwrap());
        let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
        labels.push(stem.rsplit('_').next().unwrap().parse::<usize>().unwrap());
    }
    let fp32 = Session::new(&model.graph, SessionOptions::default()).unwrap();
    let top1 = |s: &Session| -> usize {
        xs.iter()
            .zip(&labels)
            .filter(|(x, &l)| {
                let out = s
                    .run(vec![
                        Tensor::from_f32(vec![1, 3, 224, 224], (*x).clone()).unwrap()
                    ])
                    .unwrap();
                let v = out[0].as_f32().unwrap();
                (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap() == l
            })
            .count()
    };
    let fp32_top1 = top1(&fp32);
    let mut tg = TrainGraph::new(model.graph, false).unwrap();
    qvision_train::prepare_qat(&mut tg, QConfig::default_for(Backend::X86)).unwrap();
    // Fine-tuning on tiny batches: BatchNorm keeps its ImageNet statistics.
    qvision_train::qat::freeze_bn_stats(&mut tg);
    let mut opt = qvision_train::Optimizer::new(OptimizerKind::sgd(0.9, false, 0.0));
    for step in 0..5 {
        let ids: Vec<usize> = (0..4).map(|k| (step * 4 + k) % 20).collect();
        let data: Vec<f32> = ids.iter().flat_map(|&i| xs[i].clone()).collect();
        let y: Vec<usize> = ids.iter().map(|&i| labels[i]).collect();
        let (loss, _) = qvision_train::fit::train_step(
            &mut tg,
            &mut opt,
            Buf::new(vec![4, 3, 224, 224], data),
            &y,
            1e-4,
            step as u64,
            0.0,
        )
        .unwrap();
        assert!(loss.is_finite());
    }
    let (int8, report) = qvision_train::convert(&tg).unwrap();
    assert!(report.int8.len() >= 50, "{} int8 nodes", report.int8.len());
    let q_top1 = top1(&Session::new(&int8, SessionOptions::default()).unwrap());
    assert!(
        q_top1 + 1 >= fp32_top1,
        "QAT int8 top-1 {q_top1}/20 vs fp32 {fp32_top1}/20"
    );
}

#[test]
fn small_resnet_learns_fashion_mnist_and_qat_keeps_it() {
    let Some(dir) = fashion_mnist() else { return };
    let norm = qvision_train::data::FASHION_MNIST_NORM;
    let mut train = qvision_train::IdxDataset::from_dir(&dir, true, norm).unwrap();
    train.truncate(4000);
    let mut test = qvision_train::IdxDataset::from_dir(&dir, false, norm).unwrap();
    test.truncate(2000);
    assert_eq!(train.sample_shape(), [1, 28, 28]);
    let mut g = models::small_resnet(1, 10, 8, [28, 28]);
    models::init_params(&mut g, 1);
    let mut tg = TrainGraph::new(g, false).unwrap();
    let cfg = FitConfig {
        epochs: 2,
        batch_size: 64,
        lr: 0.1,
        optimizer: OptimizerKind::sgd(0.9, true, 5e-4),
        schedule: ScheduleKind::Cosine { min_lr: 0.0 },
        ..Default::default()
    };
    fit(&mut tg, &train, None, &cfg, None, &mut Quiet).unwrap();
    let fp32 = evaluate_graph(&tg.graph, &test, 256).unwrap();
    assert!(fp32 > 0.70, "fp32 test accuracy {fp32}");
    qvision_train::prepare_qat(&mut tg, QConfig::default_for(Backend::X86)).unwrap();
    // One QAT epoch with live BatchNorm statistics (freezing them this early, before the
    // network has converged, makes the step size too large for the unnormalised convs).
    let qcfg = FitConfig {
        epochs: 1,
        lr: 0.01,
        ..cfg
    };
    fit(&mut tg, &train, None, &qcfg, None, &mut Quiet).unwrap();
    let (int8, _) = qvision_train::convert(&tg).unwrap();
    let q = evaluate_graph(&int8, &test, 256).unwrap();
    assert!(q > fp32 - 0.02, "QAT int8 {q} vs fp32 {fp32}");
}

#[test]
fn image_folder_with_random_resized_crop_and_flip() {
    use qvision_train::data::{DataLoader, FolderTransform};
    let Some(dir) = assets() else { return };
    let root = std::env::temp_dir().join(format!("qvision-folder-{}", std::process::id()));
    let mut n = 0;
    for (i, e) in std::fs::read_dir(dir.join("foolbox")).unwrap().enumerate() {
        let p = e.unwrap().path();
        if !p
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("imagenet")
        {
            continue;
        }
        let class = root.join(if i % 2 == 0 { "even" } else { "odd" });
        std::fs::create_dir_all(&class).unwrap();
        std::fs::copy(&p, class.join(p.file_name().unwrap())).unwrap();
        n += 1;
    }
    std::fs::write(root.join("even/notes.txt"), "not an image").unwrap();
    let ds = qvision_train::ImageFolder::open(&root, FolderTransform::imagenet(64)).unwrap();
    assert_eq!((ds.len(), ds.num_classes()), (n, 2));
    assert_eq!(ds.classes, vec!["even".to_string(), "odd".to_string()]);
    let mut l = DataLoader::new(&ds, 8);
    l.shuffle = true;
    l.augment = true;
    let order = l.order(0);
    let a = l.batch(&order, 0, 0).unwrap();
    assert_eq!(a.x.shape, vec![8, 3, 64, 64]);
    assert_eq!(
        a.x,
        l.batch(&order, 0, 0).unwrap().x,
        "augmentation is seeded"
    );
    assert_ne!(
        a.x,
        l.batch(&order, 1, 0).unwrap().x,
        "and differs per epoch"
    );
    // Without augmentation: resize + center crop, identical every time.
    l.augment = false;
    let e = l.batch(&order, 5, 0).unwrap();
    assert_eq!(e.x, l.batch(&order, 6, 0).unwrap().x);
    std::fs::remove_dir_all(&root).ok();
}
