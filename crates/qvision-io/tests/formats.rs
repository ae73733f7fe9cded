//! Weight files made by PyTorch (scripts/make_fixtures.py weights) read back exactly, and broken
//! files get clear errors, never panics.

use qvision_io::{load_state_dict, StateDict};
use qvision_tensor::Data;
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/weights")
}

fn check(sd: &StateDict) {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("tiny_expected.json")).unwrap())
            .unwrap();
    let exp = expected.as_object().unwrap();
    assert_eq!(sd.len(), exp.len());
    for (name, t) in sd {
        let e = &exp[name];
        let shape: Vec<usize> = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape(), shape.as_slice(), "{name}");
        let want: Vec<f64> = e["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let got: Vec<f64> = match t.data() {
            Data::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I64(v) => v.iter().map(|&x| x as f64).collect(),
            d => panic!("{name}: unexpected dtype {}", d.dtype()),
        };
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(*g as f32, *w as f32, "{name}");
        }
    }
}

#[test]
fn zip_pth() {
    check(&load_state_dict(&dir().join("tiny_zip.pth")).unwrap());
}

#[test]
fn legacy_pth() {
    check(&load_state_dict(&dir().join("tiny_legacy.pth")).unwrap());
}

#[test]
fn checkpoint_with_nested_state_dict() {
    check(&load_state_dict(&dir().join("tiny_checkpoint.pth")).unwrap());
}

#[test]
fn safetensors() {
    check(&load_state_dict(&dir().join("tiny.safetensors")).unwrap());
}

#[test]
fn truncated_and_garbage_files_are_clear_errors() {
    let tmp = std::env::temp_dir().join(format!("qv-formats-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for f in ["tiny_zip.pth", "tiny_legacy.pth", "tiny.safetensors"] {
        let bytes = std::fs::read(dir().join(f)).unwrap();
        for frac in [0.1, 0.5, 0.9, 0.99] {
            let p = tmp.join(format!("cut_{f}"));
            std::fs::write(&p, &bytes[..(bytes.len() as f64 * frac) as usize]).unwrap();
            let err = load_state_dict(&p)
                .expect_err("truncated file must not load")
                .to_string();
            assert!(err.contains("cut_"), "error names the file: {err}");
        }
    }
    let p = tmp.join("notes.txt");
    std::fs::write(&p, "hello").unwrap();
    let err = load_state_dict(&p).unwrap_err().to_string();
    assert!(err.contains("not a weights file"), "{err}");
    let err = load_state_dict(&tmp.join("missing.pth"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.pth"), "{err}");
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn pickles_that_call_code_are_refused() {
    // A legacy-style file whose payload calls os.system: the reader must refuse, not run it.
    let tmp = std::env::temp_dir().join(format!("qv-evil-{}.pth", std::process::id()));
    std::fs::write(
        &tmp,
        b"\x80\x02cos\nsystem\nX\x0b\x00\x00\x00touch /tmp/x\x85R.",
    )
    .unwrap();
    let err = load_state_dict(&tmp).unwrap_err().to_string();
    assert!(err.contains("os.system") || err.contains("magic"), "{err}");
    std::fs::remove_file(&tmp).unwrap();
}
