//! qvision's own model file (`.qvm`): a self-contained graph with its tensors (fp32 or int8).
//!
//! Layout: `b"QVM\x01"`, a little-endian u64 header length, a JSON header (format version, user
//! metadata, the graph's structure and a table of tensors), the raw tensor bytes, and a
//! little-endian u64 FNV-1a checksum of header and data. A truncated or corrupted file fails the
//! length or checksum test with a clear error; nothing is parsed before that.

use crate::ir::{Graph, ValueId};
use crate::weights::fnv1a64_bytes;
use crate::GraphError;
use qvision_tensor::{DType, Data, Tensor};
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 4] = b"QVM\x01";

#[derive(Serialize, Deserialize)]
struct Header {
    format: u32,
    meta: serde_json::Value,
    name: String,
    values: Vec<crate::ir::Value>,
    nodes: Vec<crate::ir::Node>,
    inputs: Vec<ValueId>,
    outputs: Vec<ValueId>,
    tensors: Vec<TensorEntry>,
}

#[derive(Serialize, Deserialize)]
struct TensorEntry {
    value: ValueId,
    dtype: DType,
    shape: Vec<usize>,
    offset: usize,
    len: usize,
}

fn bad(msg: impl Into<String>) -> GraphError {
    GraphError::Invalid(msg.into())
}

/// Serialise a graph and its tensors, with free-form metadata (model name, eval transform).
pub fn to_bytes(g: &Graph, meta: serde_json::Value) -> Result<Vec<u8>, GraphError> {
    let mut data = Vec::new();
    let mut ids: Vec<&ValueId> = g.tensors.keys().collect();
    ids.sort();
    let mut tensors = Vec::with_capacity(ids.len());
    for id in ids {
        let t = &g.tensors[id];
        let offset = data.len();
        match t.data() {
            Data::F32(v) => v
                .iter()
                .for_each(|x| data.extend_from_slice(&x.to_le_bytes())),
            Data::I64(v) => v
                .iter()
                .for_each(|x| data.extend_from_slice(&x.to_le_bytes())),
            Data::I32(v) => v
                .iter()
                .for_each(|x| data.extend_from_slice(&x.to_le_bytes())),
            Data::U8(v) => data.extend_from_slice(v),
            Data::I8(v) => data.extend(v.iter().map(|&x| x as u8)),
            Data::Bool(v) => data.extend(v.iter().map(|&x| x as u8)),
        }
        tensors.push(TensorEntry {
            value: *id,
            dtype: t.dtype(),
            shape: t.shape().to_vec(),
            offset,
            len: data.len() - offset,
        });
    }
    let header = Header {
        format: 1,
        meta,
        name: g.name.clone(),
        values: g.values.clone(),
        nodes: g.nodes.clone(),
        inputs: g.inputs.clone(),
        outputs: g.outputs.clone(),
        tensors,
    };
    let h =
        serde_json::to_vec(&header).map_err(|e| bad(format!("cannot serialise the graph: {e}")))?;
    let mut out = Vec::with_capacity(4 + 8 + h.len() + data.len() + 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    let sum = fnv1a64_bytes(&out[12..]);
    out.extend_from_slice(&sum.to_le_bytes());
    Ok(out)
}

/// Read a `.qvm` back: the graph (validated) and its metadata.
pub fn from_bytes(bytes: &[u8]) -> Result<(Graph, serde_json::Value), GraphError> {
    if bytes.len() < 20 || &bytes[..4] != MAGIC {
        return Err(bad(
            "not a qvision model file (.qvm): wrong magic or too short",
        ));
    }
    let hlen = u64::from_le_bytes(bytes[4..12].try_into().expect("8 bytes")) as usize;
    let body_end = bytes.len() - 8;
    if hlen > body_end.saturating_sub(12) {
        return Err(bad("the .qvm file is truncated (header runs past the end)"));
    }
    let want = u64::from_le_bytes(bytes[body_end..].try_into().expect("8 bytes"));
    if fnv1a64_bytes(&bytes[12..body_end]) != want {
        return Err(bad(
            "the .qvm file is corrupt or truncated (checksum mismatch)",
        ));
    }
    let header: Header = serde_json::from_slice(&bytes[12..12 + hlen])
        .map_err(|e| bad(format!("the .qvm header is invalid: {e}")))?;
    if header.format != 1 {
        return Err(bad(format!(
            ".qvm format {} is not supported",
            header.format
        )));
    }
    let data = &bytes[12 + hlen..body_end];
    let mut g = Graph {
        name: header.name,
        values: header.values,
        nodes: header.nodes,
        inputs: header.inputs,
        outputs: header.outputs,
        tensors: Default::default(),
    };
    for e in header.tensors {
        let raw = data
            .get(e.offset..e.offset.saturating_add(e.len))
            .ok_or_else(|| {
                bad(format!(
                    "tensor of value {} lies outside the file",
                    e.value.0
                ))
            })?;
        if e.value.0 >= g.values.len() {
            return Err(bad(format!("tensor for unknown value {}", e.value.0)));
        }
        let d = match e.dtype {
            DType::F32 => Data::F32(
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
                    .collect(),
            ),
            DType::I64 => Data::I64(
                raw.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
                    .collect(),
            ),
            DType::I32 => Data::I32(
                raw.chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().expect("4")))
                    .collect(),
            ),
            DType::U8 => Data::U8(raw.to_vec()),
            DType::I8 => Data::I8(raw.iter().map(|&b| b as i8).collect()),
            DType::Bool => Data::Bool(raw.iter().map(|&b| b != 0).collect()),
        };
        let t = Tensor::new(e.shape, d)
            .map_err(|err| bad(format!("tensor '{}': {err}", g.values[e.value.0].name)))?;
        g.tensors.insert(e.value, t);
    }
    g.validate()?;
    Ok((g, header.meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::Conv;
    use crate::{weights, GraphBuilder, Session, SessionOptions};

    #[test]
    fn round_trip_runs_the_same() {
        let mut b = GraphBuilder::new("t");
        let x = b.input("input", &[1, 2, 5, 5]);
        let y = b.conv2d("conv", x, Conv::new(2, 3, 3).pad(1));
        let g = {
            let mut g = b.finish(&[y]);
            weights::init_formula(&mut g);
            g
        };
        let bytes = to_bytes(&g, serde_json::json!({"model": "t"})).unwrap();
        let (g2, meta) = from_bytes(&bytes).unwrap();
        assert_eq!(meta["model"], "t");
        let x =
            Tensor::from_f32(vec![1, 2, 5, 5], (0..50).map(|v| v as f32 / 10.0).collect()).unwrap();
        let a = Session::new(&g, SessionOptions::default())
            .unwrap()
            .run(vec![x.clone()])
            .unwrap();
        let c = Session::new(&g2, SessionOptions::default())
            .unwrap()
            .run(vec![x])
            .unwrap();
        assert_eq!(a, c);
        // every truncation and a flipped byte are clear errors
        for cut in [0, 3, 11, 40, bytes.len() / 2, bytes.len() - 1] {
            assert!(from_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut evil = bytes.clone();
        let mid = evil.len() / 2;
        evil[mid] ^= 0x40;
        assert!(from_bytes(&evil)
            .unwrap_err()
            .to_string()
            .contains("corrupt"));
    }
}
