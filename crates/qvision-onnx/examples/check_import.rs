//! Import ONNX files written by `torch.onnx.export` and compare qvision's logits with the ones
//! PyTorch recorded: `check_import DIR` reads `DIR/meta.json` ({model: {size, batch, logits}})
//! and `DIR/<model>.onnx` (inputs: formula_uniform(5, n) * 4).
use qvision_graph::{Session, SessionOptions};
use qvision_tensor::Tensor;

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("DIR"));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let mut fails = 0;
    for (name, m) in meta.as_object().unwrap() {
        let path = dir.join(format!("{name}.onnx"));
        let r = (|| -> Result<f32, String> {
            let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
            let imp = qvision_onnx::import(&bytes, name).map_err(|e| e.to_string())?;
            let size = m["size"].as_u64().unwrap() as usize;
            let batch = m["batch"].as_u64().unwrap() as usize;
            let shape = vec![batch, 3, size, size];
            let v = qvision_graph::weights::formula_uniform(5, shape.iter().product());
            let x = Tensor::from_f32(shape, v.into_iter().map(|x| x * 4.0).collect()).unwrap();
            let y = Session::new(&imp.graph, SessionOptions::default())
                .map_err(|e| e.to_string())?
                .run(vec![x])
                .map_err(|e| e.to_string())?;
            let y = y[0].as_f32().unwrap();
            let want: Vec<f32> = m["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            if y.len() != want.len() {
                return Err(format!("{} logits, want {}", y.len(), want.len()));
            }
            let scale = want.iter().fold(1f32, |a, v| a.max(v.abs()));
            Ok(y.iter()
                .zip(&want)
                .fold(0f32, |a, (p, q)| a.max((p - q).abs()))
                / scale)
        })();
        match r {
            Ok(d) if d <= 1e-4 => println!("{name:<22} ok   rel diff {d:.2e}"),
            Ok(d) => {
                fails += 1;
                println!("{name:<22} FAIL rel diff {d:.2e}")
            }
            Err(e) => {
                fails += 1;
                println!("{name:<22} ERR  {e}")
            }
        }
    }
    std::process::exit(i32::from(fails > 0));
}
