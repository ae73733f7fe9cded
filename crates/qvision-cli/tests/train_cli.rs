//! `qvision train` and `qvision qat` end to end on a small idx dataset written by the test:
//! fp32 training with a checkpoint, resume, QAT to a .qvm, and that .qvm running in `bench`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn qvision() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qvision"))
}

/// 256 training / 64 test 28x28 images: class k has a bright square in cell k of a 2x2 grid.
fn write_idx(dir: &Path) {
    let make = |n: usize, seed: u64| -> (Vec<u8>, Vec<u8>) {
        let mut img = vec![0u8, 0, 8, 3, 0, 0, 0, 0, 0, 0, 0, 28, 0, 0, 0, 28];
        img[4..8].copy_from_slice(&(n as u32).to_be_bytes());
        let mut lab = vec![0u8, 0, 8, 1, 0, 0, 0, 0];
        lab[4..8].copy_from_slice(&(n as u32).to_be_bytes());
        let mut s = seed;
        for _ in 0..n {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let k = (s >> 33) as usize % 4;
            let (oy, ox) = ((k / 2) * 14 + 3, (k % 2) * 14 + 3);
            for y in 0..28 {
                for x in 0..28 {
                    let on = (oy..oy + 8).contains(&y) && (ox..ox + 8).contains(&x);
                    img.push(if on {
                        220
                    } else {
                        ((x * 7 + y * 3 + k) % 40) as u8
                    });
                }
            }
            lab.push(k as u8);
        }
        (img, lab)
    };
    let (a, b) = make(256, 1);
    std::fs::write(dir.join("train-images-idx3-ubyte"), a).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), b).unwrap();
    let (a, b) = make(64, 2);
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), a).unwrap();
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), b).unwrap();
}

fn run(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

#[test]
fn train_then_qat_then_bench() {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("qvision-train-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    write_idx(&dir);
    let w = dir.join("fp32.safetensors");
    let ck = dir.join("run.ckpt");
    let common = |c: &mut Command| {
        c.args(["--data"]).arg(&dir).args([
            "--width",
            "4",
            "--batch-size",
            "16",
            "--threads",
            "2",
            "--json",
            // a flip would move the square to another class's cell
            "--no-augment",
        ]);
    };
    let mut c = qvision();
    c.args([
        "train",
        "small_resnet",
        "--epochs",
        "3",
        "--lr",
        "0.05",
        "--checkpoint",
    ])
    .arg(&ck)
    .arg("--out")
    .arg(&w);
    common(&mut c);
    let t = run(&mut c);
    assert_eq!(t["epochs"], 3);
    assert_eq!(t["classes"], 10);
    assert!(t["test_acc"].as_f64().unwrap() > 0.9, "{t}");
    assert!(t["images_per_s"].as_f64().unwrap() > 0.0);
    // Resuming a finished run trains no further and gives the same weights.
    let w2 = dir.join("resumed.safetensors");
    let mut c = qvision();
    c.args([
        "train",
        "small_resnet",
        "--epochs",
        "3",
        "--lr",
        "0.05",
        "--resume",
    ])
    .arg(&ck)
    .arg("--out")
    .arg(&w2);
    common(&mut c);
    run(&mut c);
    assert_eq!(std::fs::read(&w).unwrap(), std::fs::read(&w2).unwrap());
    let qvm = dir.join("qat.qvm");
    let mut c = qvision();
    c.args([
        "qat",
        "small_resnet",
        "--epochs",
        "1",
        "--lr",
        "0.005",
        "--weights",
    ])
    .arg(&w)
    .arg("--out")
    .arg(&qvm);
    common(&mut c);
    let q = run(&mut c);
    for k in ["fp32_acc", "ptq_acc", "qat_acc"] {
        assert!(q[k].as_f64().unwrap() > 0.9, "{k}: {q}");
    }
    let b = run(qvision().args(["bench"]).arg(&qvm).args([
        "--precision",
        "int8",
        "--iters",
        "2",
        "--json",
    ]));
    assert!(b.to_string().contains("ms"), "{b}");
    // The QAT model exports to ONNX like any PTQ model.
    let onnx = dir.join("qat.onnx");
    run(qvision()
        .arg("export")
        .arg(&qvm)
        .arg("--out")
        .arg(&onnx)
        .arg("--json"));
    assert!(std::fs::metadata(&onnx).unwrap().len() > 1000);
    // A QAT run needs trained weights.
    let out = qvision()
        .args(["qat", "small_resnet", "--data"])
        .arg(&dir)
        .arg("--out")
        .arg(&qvm)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--weights"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_onnx_model_trains() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::temp_dir().join(format!("qvision-train-onnx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("w.safetensors");
    let t = run(qvision()
        .arg("train")
        .arg(root.join("fixtures/onnx/squeezenet1_1_opset13.onnx"))
        .args([
            "--data",
            "synthetic",
            "--input-size",
            "64",
            "--batch-size",
            "2",
        ])
        .args(["--max-steps", "2", "--threads", "2", "--json", "--out"])
        .arg(&out));
    assert!(t["train_loss"].as_f64().unwrap().is_finite(), "{t}");
    // The ONNX initializers of the convs became trainable parameters, and all 727,626 were saved.
    let sd = std::fs::read(&out).unwrap();
    assert!(sd.len() > 727_626 * 4, "{} bytes", sd.len());
    std::fs::remove_dir_all(&dir).ok();
}
