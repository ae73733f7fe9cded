//! PyTorch `.pth` files: the zip format (torch >= 1.6) and the legacy format (magic number,
//! protocol, sys info, the pickled object, storage keys, then raw storages).

use crate::pickle::{self, StorageType, TensorRef, Value};
use crate::{IoError, StateDict};
use qvision_tensor::{Data, Tensor};
use std::collections::HashMap;
use std::io::{Cursor, Read};

const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;

/// Read a zip-format `.pth`.
pub fn read_zip(bytes: &[u8]) -> Result<StateDict, IoError> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| IoError::bad(format!("bad zip archive: {e}")))?;
    let pkl_name = zip
        .file_names()
        .find(|n| n.ends_with("data.pkl"))
        .map(str::to_string)
        .ok_or_else(|| IoError::bad("zip archive has no data.pkl: not a PyTorch checkpoint"))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    if let Ok(mut f) = zip.by_name(&format!("{prefix}byteorder")) {
        let mut s = String::new();
        f.read_to_string(&mut s)
            .map_err(|e| IoError::bad(format!("byteorder: {e}")))?;
        if s.trim() != "little" {
            return Err(IoError::bad(format!(
                "byte order '{}' is not supported",
                s.trim()
            )));
        }
    }
    let pkl = read_entry(&mut zip, &pkl_name)?;
    let (root, _) = pickle::parse(&pkl)?;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut load = |key: &str| -> Result<Vec<u8>, IoError> {
        if let Some(b) = storages.get(key) {
            return Ok(b.clone());
        }
        let b = read_entry(&mut zip, &format!("{prefix}data/{key}"))?;
        storages.insert(key.to_string(), b.clone());
        Ok(b)
    };
    state_dict_from(root, &mut |t| {
        let raw = load(&t.storage.key)?;
        materialize(t, &raw)
    })
}

fn read_entry(zip: &mut zip::ZipArchive<Cursor<&[u8]>>, name: &str) -> Result<Vec<u8>, IoError> {
    let mut f = zip
        .by_name(name)
        .map_err(|e| IoError::bad(format!("{name}: {e}")))?;
    let mut buf = Vec::with_capacity(f.size() as usize);
    f.read_to_end(&mut buf)
        .map_err(|e| IoError::bad(format!("{name}: {e}")))?;
    Ok(buf)
}

/// Read a legacy (pre-1.6, non-zip) `.pth`.
pub fn read_legacy(bytes: &[u8]) -> Result<StateDict, IoError> {
    let mut pos = 0;
    let mut next = |what: &str| -> Result<Value, IoError> {
        let (v, n) =
            pickle::parse(&bytes[pos..]).map_err(|e| IoError::bad(format!("{what}: {e}")))?;
        pos += n;
        Ok(v)
    };
    match next("magic number")? {
        Value::BigInt(m) if m == LEGACY_MAGIC => {}
        _ => {
            return Err(IoError::bad(
                "not a PyTorch legacy checkpoint (wrong magic number)",
            ))
        }
    }
    match next("protocol version")? {
        Value::Int(1001) => {}
        v => return Err(IoError::bad(format!("unsupported legacy protocol {v:?}"))),
    }
    next("sys info")?;
    let root = next("state dict")?;
    let keys = match next("storage keys")? {
        Value::List(k) => k,
        _ => return Err(IoError::bad("storage key list is missing")),
    };
    // Storages follow in key order: i64 element count, then the raw data.
    let mut offsets: HashMap<String, (usize, usize)> = HashMap::new();
    let sizes = collect_storage_sizes(&root);
    for k in keys {
        let key = match k {
            Value::Str(s) => s,
            Value::Int(i) => i.to_string(),
            _ => return Err(IoError::bad("storage key is not a string")),
        };
        let numel_bytes = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| IoError::bad(format!("storage {key} is truncated")))?;
        let numel = i64::from_le_bytes(numel_bytes.try_into().expect("8 bytes"));
        let elem = *sizes
            .get(&key)
            .ok_or_else(|| IoError::bad(format!("storage {key} is never used")))?;
        let len = usize::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(elem))
            .ok_or_else(|| IoError::bad(format!("storage {key} has a bad size")))?;
        pos += 8;
        if bytes.len() < pos + len {
            return Err(IoError::bad(format!(
                "storage {key} is truncated: file ends before its {len} bytes"
            )));
        }
        offsets.insert(key, (pos, len));
        pos += len;
    }
    state_dict_from(root, &mut |t| {
        let &(start, len) = offsets.get(&t.storage.key).ok_or_else(|| {
            IoError::bad(format!(
                "storage {} is missing from the file",
                t.storage.key
            ))
        })?;
        materialize(t, &bytes[start..start + len])
    })
}

fn collect_storage_sizes(v: &Value) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    fn walk(v: &Value, out: &mut HashMap<String, usize>) {
        match v {
            Value::Tensor(t) => {
                out.insert(t.storage.key.clone(), t.storage.dtype.size());
            }
            Value::Storage(s) => {
                out.insert(s.key.clone(), s.dtype.size());
            }
            Value::Dict(items) => items.iter().for_each(|(k, v)| {
                walk(k, out);
                walk(v, out)
            }),
            Value::List(items) | Value::Tuple(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(v, &mut out);
    out
}

/// Find the state dict in a checkpoint (the top-level dict, or its `state_dict` / `model` entry)
/// and materialize its tensors.
fn state_dict_from(
    root: Value,
    load: &mut dyn FnMut(&TensorRef) -> Result<Tensor, IoError>,
) -> Result<StateDict, IoError> {
    let Value::Dict(items) = root else {
        return Err(IoError::bad(
            "the pickled object is not a dict, so not a state dict",
        ));
    };
    let has_tensors = items.iter().any(|(_, v)| matches!(v, Value::Tensor(_)));
    if !has_tensors {
        for (k, v) in &items {
            if let (Value::Str(name), Value::Dict(_)) = (k, v) {
                if matches!(
                    name.as_str(),
                    "state_dict" | "model" | "model_state_dict" | "ema"
                ) {
                    return state_dict_from(v.clone(), load);
                }
            }
        }
        return Err(IoError::bad("no tensors found: not a state dict"));
    }
    let mut out = Vec::with_capacity(items.len());
    for (k, v) in items {
        let Value::Str(name) = k else { continue };
        if let Value::Tensor(t) = v {
            let tensor = load(&t).map_err(|e| IoError::bad(format!("tensor '{name}': {e}")))?;
            out.push((name, tensor));
        }
    }
    Ok(out)
}

/// Gather a (possibly strided) tensor out of its storage bytes, widening floats to f32.
fn materialize(t: &TensorRef, raw: &[u8]) -> Result<Tensor, IoError> {
    let dt = t.storage.dtype;
    let es = dt.size();
    let avail = raw.len() / es;
    if t.shape.len() != t.stride.len() {
        return Err(IoError::bad("shape and stride ranks differ"));
    }
    let numel: usize = t.shape.iter().product();
    let base = t.storage.view_offset + t.offset;
    if numel > 0 {
        let last = t
            .shape
            .iter()
            .zip(&t.stride)
            .map(|(d, s)| (d - 1) * s)
            .sum::<usize>()
            + base;
        if last >= avail {
            return Err(IoError::bad(format!(
                "view reaches element {last} but the storage holds {avail}"
            )));
        }
    }
    // element indices in row-major order
    let mut idx = Vec::with_capacity(numel);
    let mut coord = vec![0usize; t.shape.len()];
    for _ in 0..numel {
        idx.push(
            base + coord
                .iter()
                .zip(&t.stride)
                .map(|(c, s)| c * s)
                .sum::<usize>(),
        );
        for d in (0..coord.len()).rev() {
            coord[d] += 1;
            if coord[d] < t.shape[d] {
                break;
            }
            coord[d] = 0;
        }
    }
    let at = |i: usize| &raw[i * es..(i + 1) * es];
    let data = match dt {
        StorageType::F32 => Data::F32(
            idx.iter()
                .map(|&i| f32::from_le_bytes(at(i).try_into().expect("4")))
                .collect(),
        ),
        StorageType::F64 => Data::F32(
            idx.iter()
                .map(|&i| f64::from_le_bytes(at(i).try_into().expect("8")) as f32)
                .collect(),
        ),
        StorageType::F16 => Data::F32(
            idx.iter()
                .map(|&i| f16_to_f32(u16::from_le_bytes(at(i).try_into().expect("2"))))
                .collect(),
        ),
        StorageType::BF16 => Data::F32(
            idx.iter()
                .map(|&i| {
                    f32::from_bits((u16::from_le_bytes(at(i).try_into().expect("2")) as u32) << 16)
                })
                .collect(),
        ),
        StorageType::I64 => Data::I64(
            idx.iter()
                .map(|&i| i64::from_le_bytes(at(i).try_into().expect("8")))
                .collect(),
        ),
        StorageType::I32 => Data::I32(
            idx.iter()
                .map(|&i| i32::from_le_bytes(at(i).try_into().expect("4")))
                .collect(),
        ),
        StorageType::I16 => Data::I32(
            idx.iter()
                .map(|&i| i16::from_le_bytes(at(i).try_into().expect("2")) as i32)
                .collect(),
        ),
        StorageType::I8 => Data::I8(idx.iter().map(|&i| raw[i] as i8).collect()),
        StorageType::U8 => Data::U8(idx.iter().map(|&i| raw[i]).collect()),
        StorageType::Bool => Data::Bool(idx.iter().map(|&i| raw[i] != 0).collect()),
    };
    Tensor::new(t.shape.clone(), data).map_err(|e| IoError::bad(e.to_string()))
}

/// IEEE half to single precision.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // subnormal: normalise
            let mut e = 127 - 15 + 1;
            let mut m = m;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((m & 0x3ff) << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert!(f16_to_f32(0x7c00).is_infinite());
    }

    #[test]
    fn legacy_magic_is_checked() {
        // pickle of the int 5 then nothing
        let err = read_legacy(b"\x80\x02K\x05.").unwrap_err().to_string();
        assert!(err.contains("magic"), "{err}");
    }
}
