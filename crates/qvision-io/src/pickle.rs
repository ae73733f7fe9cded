//! A restricted pickle reader for PyTorch state dicts.
//!
//! Only the opcodes a state dict needs are accepted, and `REDUCE`/`NEWOBJ` only for an allow-list
//! of callables, interpreted natively (`torch._utils._rebuild_tensor_v2`, `OrderedDict`, …).
//! Nothing in the file is ever executed; anything else is rejected with the name of the opcode or
//! callable.

use crate::IoError;

/// Element type of a torch storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageType {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageType {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => StorageType::F32,
            "DoubleStorage" => StorageType::F64,
            "HalfStorage" => StorageType::F16,
            "BFloat16Storage" => StorageType::BF16,
            "LongStorage" => StorageType::I64,
            "IntStorage" => StorageType::I32,
            "ShortStorage" => StorageType::I16,
            "CharStorage" => StorageType::I8,
            "ByteStorage" => StorageType::U8,
            "BoolStorage" => StorageType::Bool,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            StorageType::F64 | StorageType::I64 => 8,
            StorageType::F32 | StorageType::I32 => 4,
            StorageType::F16 | StorageType::BF16 | StorageType::I16 => 2,
            StorageType::I8 | StorageType::U8 | StorageType::Bool => 1,
        }
    }
}

/// A persistent storage reference (`('storage', type, key, location, numel, ...)`).
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRef {
    pub dtype: StorageType,
    pub key: String,
    pub numel: usize,
    /// Legacy view of a bigger storage: `(root offset in elements)`.
    pub view_offset: usize,
}

/// A tensor as a view into a storage.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

/// The values a state-dict pickle can hold.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits (the legacy format's magic number).
    BigInt(i128),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    Storage(StorageRef),
    Tensor(TensorRef),
    Mark,
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(..) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
            Value::Mark => "mark",
        }
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], IoError> {
        if self.data.len() - self.pos < n {
            return Err(IoError::bad("pickle is truncated"));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, IoError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, IoError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, IoError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, IoError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn line(&mut self) -> Result<String, IoError> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| IoError::bad("pickle is truncated"))?;
        self.pos += end + 1;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    }
    fn string(&mut self, n: usize) -> Result<String, IoError> {
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| IoError::bad("pickle holds a string that is not UTF-8"))
    }
}

/// Parse one pickle from the start of `data`; returns the value and the bytes consumed.
pub fn parse(data: &[u8]) -> Result<(Value, usize), IoError> {
    let mut r = Reader { data, pos: 0 };
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: Vec<Option<Value>> = Vec::new();
    let pop = |stack: &mut Vec<Value>| {
        stack
            .pop()
            .ok_or_else(|| IoError::bad("pickle stack underflow"))
    };
    let pop_mark = |stack: &mut Vec<Value>| -> Result<Vec<Value>, IoError> {
        let m = stack
            .iter()
            .rposition(|v| *v == Value::Mark)
            .ok_or_else(|| IoError::bad("pickle has no MARK"))?;
        let items = stack.split_off(m + 1);
        stack.pop();
        Ok(items)
    };
    let memo_put = |memo: &mut Vec<Option<Value>>, idx: usize, v: Value| -> Result<(), IoError> {
        if idx > 10_000_000 {
            return Err(IoError::bad("pickle memo index out of range"));
        }
        if memo.len() <= idx {
            memo.resize(idx + 1, None);
        }
        memo[idx] = Some(v);
        Ok(())
    };
    loop {
        let op = r.u8()?;
        match op {
            0x80 => {
                r.u8()?; // PROTO
            }
            0x95 => {
                r.u64()?; // FRAME
            }
            b'.' => {
                let v = pop(&mut stack)?;
                return Ok((v, r.pos));
            }
            b'}' => stack.push(Value::Dict(vec![])),
            b']' => stack.push(Value::List(vec![])),
            b')' => stack.push(Value::Tuple(vec![])),
            b'(' => stack.push(Value::Mark),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'X' => {
                let n = r.u32()? as usize;
                stack.push(Value::Str(r.string(n)?));
            }
            0x8c => {
                let n = r.u8()? as usize;
                stack.push(Value::Str(r.string(n)?));
            }
            0x8d => {
                let n = r.u64()? as usize;
                stack.push(Value::Str(r.string(n)?));
            }
            b'T' => {
                let n = r.u32()? as usize;
                stack.push(Value::Str(r.take(n)?.iter().map(|&b| b as char).collect()));
            }
            b'U' => {
                let n = r.u8()? as usize;
                stack.push(Value::Str(r.take(n)?.iter().map(|&b| b as char).collect()));
            }
            b'B' => {
                let n = r.u32()? as usize;
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            b'C' => {
                let n = r.u8()? as usize;
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            b'J' => stack.push(Value::Int(r.u32()? as i32 as i64)),
            b'K' => stack.push(Value::Int(r.u8()? as i64)),
            b'M' => stack.push(Value::Int(r.u16()? as i64)),
            0x8a => {
                let n = r.u8()? as usize;
                let b = r.take(n)?;
                if n > 16 {
                    return Err(IoError::bad("pickle integer wider than 128 bits"));
                }
                let mut v: i128 = 0;
                for (i, &byte) in b.iter().enumerate() {
                    v |= (byte as i128) << (8 * i);
                }
                if n > 0 && n < 16 && b[n - 1] & 0x80 != 0 {
                    v -= 1i128 << (8 * n);
                }
                stack.push(match i64::try_from(v) {
                    Ok(v) => Value::Int(v),
                    Err(_) => Value::BigInt(v),
                });
            }
            b'G' => stack.push(Value::Float(f64::from_be_bytes(
                r.take(8)?.try_into().expect("8 bytes"),
            ))),
            b'q' => {
                let i = r.u8()? as usize;
                let v = stack
                    .last()
                    .cloned()
                    .ok_or_else(|| IoError::bad("pickle stack underflow"))?;
                memo_put(&mut memo, i, v)?;
            }
            b'r' => {
                let i = r.u32()? as usize;
                let v = stack
                    .last()
                    .cloned()
                    .ok_or_else(|| IoError::bad("pickle stack underflow"))?;
                memo_put(&mut memo, i, v)?;
            }
            0x94 => {
                let v = stack
                    .last()
                    .cloned()
                    .ok_or_else(|| IoError::bad("pickle stack underflow"))?;
                let i = memo.len();
                memo_put(&mut memo, i, v)?;
            }
            b'h' | b'j' => {
                let i = if op == b'h' {
                    r.u8()? as usize
                } else {
                    r.u32()? as usize
                };
                let v = memo
                    .get(i)
                    .cloned()
                    .flatten()
                    .ok_or_else(|| IoError::bad(format!("pickle memo {i} is empty")))?;
                stack.push(v);
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                stack.push(Value::Global(module, name));
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(m, n)),
                    _ => return Err(IoError::bad("STACK_GLOBAL needs two strings")),
                }
            }
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Tuple(items));
            }
            0x85 => {
                let a = pop(&mut stack)?;
                stack.push(Value::Tuple(vec![a]));
            }
            0x86 => {
                let b = pop(&mut stack)?;
                let a = pop(&mut stack)?;
                stack.push(Value::Tuple(vec![a, b]));
            }
            0x87 => {
                let c = pop(&mut stack)?;
                let b = pop(&mut stack)?;
                let a = pop(&mut stack)?;
                stack.push(Value::Tuple(vec![a, b, c]));
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                stack.push(persistent_load(pid)?);
            }
            b'R' | 0x81 => {
                let args = pop(&mut stack)?;
                let callable = pop(&mut stack)?;
                stack.push(call(callable, args)?);
            }
            b'b' => {
                // BUILD: state for the object below. Tensors and OrderedDicts take attribute
                // state (`_metadata`, hooks) that a state dict does not need.
                pop(&mut stack)?;
                if stack.is_empty() {
                    return Err(IoError::bad("pickle stack underflow"));
                }
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::Dict(d)) => d.push((k, v)),
                    _ => return Err(IoError::bad("SETITEM on a non-dict")),
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::Dict(d)) => {
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            d.push((k, v));
                        }
                    }
                    _ => return Err(IoError::bad("SETITEMS on a non-dict")),
                }
            }
            b'a' => {
                let v = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.push(v),
                    _ => return Err(IoError::bad("APPEND on a non-list")),
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    _ => return Err(IoError::bad("APPENDS on a non-list")),
                }
            }
            other => {
                return Err(IoError::bad(format!(
                    "pickle opcode 0x{other:02x} at byte {} is not allowed in a state dict",
                    r.pos - 1
                )))
            }
        }
    }
}

fn as_usize(v: &Value, what: &str) -> Result<usize, IoError> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as usize),
        other => Err(IoError::bad(format!(
            "{what}: expected a non-negative int, found {}",
            other.type_name()
        ))),
    }
}

fn as_dims(v: &Value, what: &str) -> Result<Vec<usize>, IoError> {
    match v {
        Value::Tuple(items) | Value::List(items) => {
            items.iter().map(|i| as_usize(i, what)).collect()
        }
        other => Err(IoError::bad(format!(
            "{what}: expected a tuple, found {}",
            other.type_name()
        ))),
    }
}

fn persistent_load(pid: Value) -> Result<Value, IoError> {
    let Value::Tuple(items) = pid else {
        return Err(IoError::bad("persistent id is not a tuple"));
    };
    match items.as_slice() {
        [Value::Str(tag), Value::Global(module, name), key, _location, numel, rest @ ..]
            if tag == "storage" =>
        {
            let dtype = StorageType::from_name(name)
                .filter(|_| module == "torch")
                .ok_or_else(|| IoError::bad(format!("unsupported storage type {module}.{name}")))?;
            let key = match key {
                Value::Str(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                _ => return Err(IoError::bad("storage key is not a string")),
            };
            let numel = as_usize(numel, "storage size")?;
            let view_offset = match rest.first() {
                Some(Value::Tuple(view)) if view.len() == 3 => {
                    as_usize(&view[1], "storage view offset")?
                }
                _ => 0,
            };
            Ok(Value::Storage(StorageRef {
                dtype,
                key,
                numel,
                view_offset,
            }))
        }
        _ => Err(IoError::bad("persistent id is not a torch storage")),
    }
}

/// The allow-listed callables, interpreted natively.
fn call(callable: Value, args: Value) -> Result<Value, IoError> {
    let Value::Global(module, name) = &callable else {
        return Err(IoError::bad(format!(
            "pickle calls a {}",
            callable.type_name()
        )));
    };
    let args = match args {
        Value::Tuple(a) => a,
        other => {
            return Err(IoError::bad(format!(
                "{module}.{name}: arguments are a {}",
                other.type_name()
            )))
        }
    };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => Ok(Value::Dict(vec![])),
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            let [storage, offset, size, stride, ..] = args.as_slice() else {
                return Err(IoError::bad(format!("{name}: too few arguments")));
            };
            let Value::Storage(s) = storage else {
                return Err(IoError::bad(format!(
                    "{name}: first argument is not a storage"
                )));
            };
            Ok(Value::Tensor(TensorRef {
                storage: s.clone(),
                offset: as_usize(offset, "tensor offset")?,
                shape: as_dims(size, "tensor size")?,
                stride: as_dims(stride, "tensor stride")?,
            }))
        }
        ("torch._utils", "_rebuild_parameter")
        | ("torch._utils", "_rebuild_parameter_with_state") => args
            .into_iter()
            .next()
            .ok_or_else(|| IoError::bad(format!("{name}: no data"))),
        _ => Err(IoError::bad(format!(
            "pickle calls {module}.{name}, which a state dict never needs; refusing to run it"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_arbitrary_callables() {
        // cos\nsystem\n(S'echo hi'\ntR.  (protocol 0 string) -> our reader refuses 'S' or the call
        let p = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00hi\x85R.";
        let err = parse(p).unwrap_err().to_string();
        assert!(err.contains("os.system"), "{err}");
    }

    #[test]
    fn truncated_is_an_error() {
        assert!(parse(b"\x80\x02}q\x00(X\x05\x00\x00\x00ab").is_err());
        assert!(parse(b"").is_err());
    }

    #[test]
    fn parses_small_structures() {
        // {'a': 1, 'b': [2.5, True]}
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00b]q\x01(G@\x04\x00\x00\x00\x00\x00\x00\x88eu.";
        let (v, n) = parse(p).unwrap();
        assert_eq!(n, p.len());
        assert_eq!(
            v,
            Value::Dict(vec![
                (Value::Str("a".into()), Value::Int(1)),
                (
                    Value::Str("b".into()),
                    Value::List(vec![Value::Float(2.5), Value::Bool(true)])
                ),
            ])
        );
    }
}
