//! safetensors: an 8-byte little-endian header length, a JSON header, then raw data.

use crate::{IoError, StateDict};
use qvision_tensor::{Data, Tensor};

/// Whether the bytes start like a safetensors file.
pub fn looks_like(bytes: &[u8]) -> bool {
    bytes.len() >= 10
        && bytes[8] == b'{'
        && u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize <= bytes.len() - 8
}

/// Read every tensor of a safetensors file (floats widened to f32).
pub fn read(bytes: &[u8]) -> Result<StateDict, IoError> {
    if bytes.len() < 8 {
        return Err(IoError::bad("safetensors file is truncated"));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = bytes
        .get(8..8usize.saturating_add(n))
        .ok_or_else(|| IoError::bad("safetensors header is truncated"))?;
    let data = &bytes[8 + n..];
    let json: serde_json::Value = serde_json::from_slice(header)
        .map_err(|e| IoError::bad(format!("safetensors header: {e}")))?;
    let obj = json
        .as_object()
        .ok_or_else(|| IoError::bad("safetensors header is not an object"))?;
    let mut entries: Vec<(usize, String, Tensor)> = Vec::new();
    for (name, info) in obj {
        if name == "__metadata__" {
            continue;
        }
        let bad = |m: &str| IoError::bad(format!("tensor '{name}': {m}"));
        let dtype = info["dtype"].as_str().ok_or_else(|| bad("no dtype"))?;
        let shape: Vec<usize> = info["shape"]
            .as_array()
            .ok_or_else(|| bad("no shape"))?
            .iter()
            .map(|d| {
                d.as_u64()
                    .map(|d| d as usize)
                    .ok_or_else(|| bad("bad shape"))
            })
            .collect::<Result<_, _>>()?;
        let off = info["data_offsets"]
            .as_array()
            .ok_or_else(|| bad("no data_offsets"))?;
        let (start, end) = match off.as_slice() {
            [a, b] => (
                a.as_u64().ok_or_else(|| bad("bad offset"))? as usize,
                b.as_u64().ok_or_else(|| bad("bad offset"))? as usize,
            ),
            _ => return Err(bad("bad data_offsets")),
        };
        if start > end || end > data.len() {
            return Err(bad(&format!(
                "data {start}..{end} lies outside the file's {} data bytes",
                data.len()
            )));
        }
        let raw = &data[start..end];
        let numel: usize = shape.iter().product();
        let es = match dtype {
            "F64" | "I64" => 8,
            "F32" | "I32" => 4,
            "F16" | "BF16" | "I16" => 2,
            "I8" | "U8" | "BOOL" => 1,
            other => return Err(bad(&format!("dtype {other} is not supported"))),
        };
        if raw.len() != numel * es {
            return Err(bad(&format!(
                "{} bytes do not hold {numel} {dtype} values",
                raw.len()
            )));
        }
        let c = raw.chunks_exact(es);
        let d = match dtype {
            "F32" => Data::F32(
                c.map(|b| f32::from_le_bytes(b.try_into().expect("4")))
                    .collect(),
            ),
            "F64" => Data::F32(
                c.map(|b| f64::from_le_bytes(b.try_into().expect("8")) as f32)
                    .collect(),
            ),
            "F16" => Data::F32(
                c.map(|b| crate::pth::f16_to_f32(u16::from_le_bytes(b.try_into().expect("2"))))
                    .collect(),
            ),
            "BF16" => Data::F32(
                c.map(|b| {
                    f32::from_bits((u16::from_le_bytes(b.try_into().expect("2")) as u32) << 16)
                })
                .collect(),
            ),
            "I64" => Data::I64(
                c.map(|b| i64::from_le_bytes(b.try_into().expect("8")))
                    .collect(),
            ),
            "I32" => Data::I32(
                c.map(|b| i32::from_le_bytes(b.try_into().expect("4")))
                    .collect(),
            ),
            "I16" => Data::I32(
                c.map(|b| i16::from_le_bytes(b.try_into().expect("2")) as i32)
                    .collect(),
            ),
            "I8" => Data::I8(raw.iter().map(|&b| b as i8).collect()),
            "U8" => Data::U8(raw.to_vec()),
            _ => Data::Bool(raw.iter().map(|&b| b != 0).collect()),
        };
        let t = Tensor::new(shape, d).map_err(|e| bad(&e.to_string()))?;
        entries.push((start, name.clone(), t));
    }
    entries.sort_by_key(|(s, _, _)| *s);
    Ok(entries.into_iter().map(|(_, n, t)| (n, t)).collect())
}

/// Serialise f32/i64 tensors as safetensors (used by tests and by `qvision` to save weights).
pub fn write(tensors: &[(String, Tensor)]) -> Result<Vec<u8>, IoError> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, t) in tensors {
        let (dtype, bytes): (&str, Vec<u8>) = match t.data() {
            Data::F32(v) => ("F32", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Data::I64(v) => ("I64", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            other => {
                return Err(IoError::bad(format!(
                    "tensor '{name}': cannot write {}",
                    other.dtype()
                )))
            }
        };
        let start = data.len();
        data.extend_from_slice(&bytes);
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": t.shape(), "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| IoError::bad(e.to_string()))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let sd = vec![
            (
                "a.weight".to_string(),
                Tensor::from_f32(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap(),
            ),
            (
                "a.num".to_string(),
                Tensor::from_i64(vec![], vec![7]).unwrap(),
            ),
        ];
        let bytes = write(&sd).unwrap();
        assert!(looks_like(&bytes));
        assert_eq!(read(&bytes).unwrap(), sd);
    }

    #[test]
    fn corrupt_files_are_errors() {
        let sd = vec![(
            "w".to_string(),
            Tensor::from_f32(vec![4], vec![1.0; 4]).unwrap(),
        )];
        let bytes = write(&sd).unwrap();
        for cut in [3, 12, bytes.len() - 1] {
            assert!(read(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut evil = bytes.clone();
        evil[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(read(&evil).is_err());
    }
}
