//! The subset of ONNX's protobuf messages qvision reads and writes, with a hand-written wire
//! codec (varints, length-delimited fields, packed and unpacked repeated scalars). Field numbers
//! follow `onnx.proto3`.

use crate::OnnxError;

/// ONNX `TensorProto.DataType` values used here.
pub mod dtype {
    pub const FLOAT: i32 = 1;
    pub const UINT8: i32 = 2;
    pub const INT8: i32 = 3;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const BOOL: i32 = 9;
    pub const DOUBLE: i32 = 11;
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    pub ir_version: i64,
    pub opset: Vec<(String, i64)>,
    pub producer_name: String,
    pub producer_version: String,
    pub graph: Graph,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    pub name: String,
    pub nodes: Vec<Node>,
    pub initializers: Vec<Tensor>,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Node {
    pub name: String,
    pub op_type: String,
    pub domain: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: Vec<Attribute>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Float(f32),
    Int(i64),
    String(Vec<u8>),
    Tensor(Tensor),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Attribute {
    pub name: String,
    pub value: AttrValue,
}

/// A tensor: dims, element type and little-endian raw bytes (or, for models over protobuf's
/// 2 GB limit, a place in an external data file: `(location, offset, length)`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dims: Vec<i64>,
    pub data_type: i32,
    pub raw: Vec<u8>,
    pub external: Option<(String, u64, u64)>,
}

/// A graph input or output: element type and dims (`None` for a symbolic dim).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    pub elem_type: i32,
    pub dims: Vec<Option<i64>>,
    /// Symbolic names of the `None` dims.
    pub dim_params: Vec<Option<String>>,
}

// ---------------------------------------------------------------- encoding

#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn tag(&mut self, field: u32, wire: u32) {
        self.varint(((field << 3) | wire) as u64);
    }
    fn int(&mut self, field: u32, v: i64) {
        self.tag(field, 0);
        self.varint(v as u64);
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.tag(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }
    fn float(&mut self, field: u32, v: f32) {
        self.tag(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn msg(&mut self, field: u32, m: W) {
        self.bytes(field, &m.0);
    }
    fn packed_ints(&mut self, field: u32, v: &[i64]) {
        let mut p = W::default();
        for &x in v {
            p.varint(x as u64);
        }
        self.bytes(field, &p.0);
    }
    fn packed_floats(&mut self, field: u32, v: &[f32]) {
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.bytes(field, &b);
    }
}

fn enc_tensor(t: &Tensor) -> W {
    let mut w = W::default();
    if !t.dims.is_empty() {
        w.packed_ints(1, &t.dims);
    }
    w.int(2, t.data_type as i64);
    w.str(8, &t.name);
    match &t.external {
        None => w.bytes(9, &t.raw),
        Some((loc, off, len)) => {
            for (k, v) in [
                ("location", loc.clone()),
                ("offset", off.to_string()),
                ("length", len.to_string()),
            ] {
                let mut e = W::default();
                e.str(1, k);
                e.str(2, &v);
                w.msg(13, e);
            }
            w.int(14, 1);
        }
    }
    w
}

fn enc_value_info(v: &ValueInfo) -> W {
    let mut shape = W::default();
    for (i, d) in v.dims.iter().enumerate() {
        let mut dim = W::default();
        match d {
            Some(x) => dim.int(1, *x),
            None => dim.str(
                2,
                v.dim_params
                    .get(i)
                    .and_then(|p| p.as_deref())
                    .unwrap_or("N"),
            ),
        }
        shape.msg(1, dim);
    }
    let mut tt = W::default();
    tt.int(1, v.elem_type as i64);
    tt.msg(2, shape);
    let mut ty = W::default();
    ty.msg(1, tt);
    let mut w = W::default();
    w.str(1, &v.name);
    w.msg(2, ty);
    w
}

fn enc_attr(a: &Attribute) -> W {
    let mut w = W::default();
    w.str(1, &a.name);
    match &a.value {
        AttrValue::Float(f) => {
            w.float(2, *f);
            w.int(20, 1);
        }
        AttrValue::Int(i) => {
            w.int(3, *i);
            w.int(20, 2);
        }
        AttrValue::String(s) => {
            w.bytes(4, s);
            w.int(20, 3);
        }
        AttrValue::Tensor(t) => {
            w.msg(5, enc_tensor(t));
            w.int(20, 4);
        }
        AttrValue::Floats(v) => {
            w.packed_floats(7, v);
            w.int(20, 6);
        }
        AttrValue::Ints(v) => {
            w.packed_ints(8, v);
            w.int(20, 7);
        }
    }
    w
}

fn enc_node(n: &Node) -> W {
    let mut w = W::default();
    for i in &n.inputs {
        w.str(1, i);
    }
    for o in &n.outputs {
        w.str(2, o);
    }
    w.str(3, &n.name);
    w.str(4, &n.op_type);
    for a in &n.attributes {
        w.msg(5, enc_attr(a));
    }
    if !n.domain.is_empty() {
        w.str(7, &n.domain);
    }
    w
}

/// Serialize a model.
pub fn encode(m: &Model) -> Vec<u8> {
    let mut g = W::default();
    for n in &m.graph.nodes {
        g.msg(1, enc_node(n));
    }
    g.str(2, &m.graph.name);
    for t in &m.graph.initializers {
        g.msg(5, enc_tensor(t));
    }
    for v in &m.graph.inputs {
        g.msg(11, enc_value_info(v));
    }
    for v in &m.graph.outputs {
        g.msg(12, enc_value_info(v));
    }
    let mut w = W::default();
    w.int(1, m.ir_version);
    w.str(2, &m.producer_name);
    w.str(3, &m.producer_version);
    w.msg(7, g);
    for (domain, version) in &m.opset {
        let mut o = W::default();
        if !domain.is_empty() {
            o.str(1, domain);
        }
        o.int(2, *version);
        w.msg(8, o);
    }
    w.0
}

// ---------------------------------------------------------------- decoding

#[derive(Clone, Copy)]
enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

struct R<'a> {
    b: &'a [u8],
    pos: usize,
}

fn err(msg: impl Into<String>) -> OnnxError {
    OnnxError::Decode(msg.into())
}

impl<'a> R<'a> {
    fn new(b: &'a [u8]) -> Self {
        R { b, pos: 0 }
    }
    fn varint(&mut self) -> Result<u64, OnnxError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .b
                .get(self.pos)
                .ok_or_else(|| err("truncated varint"))?;
            self.pos += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte < 0x80 {
                return Ok(v);
            }
        }
        Err(err("varint longer than 10 bytes"))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], OnnxError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| err(format!("field of {n} bytes runs past the end")))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn next(&mut self) -> Result<Option<(u32, Field<'a>)>, OnnxError> {
        if self.pos >= self.b.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = (key >> 3) as u32;
        let f = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => Field::Fixed64(u64::from_le_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            )),
            2 => {
                let n = self.varint()? as usize;
                Field::Bytes(self.take(n)?)
            }
            5 => Field::Fixed32(u32::from_le_bytes(
                self.take(4)?.try_into().expect("4 bytes"),
            )),
            w => return Err(err(format!("unsupported wire type {w}"))),
        };
        Ok(Some((field, f)))
    }
}

fn fields(b: &[u8]) -> Result<Vec<(u32, Field<'_>)>, OnnxError> {
    let mut r = R::new(b);
    let mut out = vec![];
    while let Some(f) = r.next()? {
        out.push(f);
    }
    Ok(out)
}

fn string(f: Field<'_>) -> Result<String, OnnxError> {
    match f {
        Field::Bytes(b) => String::from_utf8(b.to_vec()).map_err(|_| err("string is not UTF-8")),
        _ => Err(err("expected a string")),
    }
}

fn int(f: Field<'_>) -> Result<i64, OnnxError> {
    match f {
        Field::Varint(v) => Ok(v as i64),
        _ => Err(err("expected an integer")),
    }
}

/// Repeated integers, packed or not.
fn ints(f: Field<'_>, out: &mut Vec<i64>) -> Result<(), OnnxError> {
    match f {
        Field::Varint(v) => out.push(v as i64),
        Field::Bytes(b) => {
            let mut r = R::new(b);
            while r.pos < b.len() {
                out.push(r.varint()? as i64);
            }
        }
        _ => return Err(err("expected integers")),
    }
    Ok(())
}

fn floats(f: Field<'_>, out: &mut Vec<f32>) -> Result<(), OnnxError> {
    match f {
        Field::Fixed32(v) => out.push(f32::from_bits(v)),
        Field::Bytes(b) => {
            if b.len() % 4 != 0 {
                return Err(err("packed floats are not a multiple of 4 bytes"));
            }
            out.extend(
                b.chunks(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))),
            );
        }
        _ => return Err(err("expected floats")),
    }
    Ok(())
}

fn doubles(f: Field<'_>, out: &mut Vec<f64>) -> Result<(), OnnxError> {
    match f {
        Field::Fixed64(v) => out.push(f64::from_bits(v)),
        Field::Bytes(b) => {
            if b.len() % 8 != 0 {
                return Err(err("packed doubles are not a multiple of 8 bytes"));
            }
            out.extend(
                b.chunks(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))),
            );
        }
        _ => return Err(err("expected doubles")),
    }
    Ok(())
}

fn bytes(f: Field<'_>) -> Result<&[u8], OnnxError> {
    match f {
        Field::Bytes(b) => Ok(b),
        _ => Err(err("expected a message")),
    }
}

fn dec_tensor(b: &[u8]) -> Result<Tensor, OnnxError> {
    let mut t = Tensor::default();
    let (mut fl, mut i64s, mut i32s, mut f64s) = (vec![], vec![], vec![], vec![]);
    let mut external = false;
    for (k, f) in fields(b)? {
        match k {
            1 => ints(f, &mut t.dims)?,
            2 => t.data_type = int(f)? as i32,
            4 => floats(f, &mut fl)?,
            5 => ints(f, &mut i32s)?,
            7 => ints(f, &mut i64s)?,
            8 => t.name = string(f)?,
            9 => t.raw = bytes(f)?.to_vec(),
            10 => doubles(f, &mut f64s)?,
            13 => external = true,
            14 if int(f)? == 1 => external = true,
            _ => {}
        }
    }
    if external {
        return Err(err(format!(
            "tensor '{}' keeps its data in an external file, which is not supported",
            t.name
        )));
    }
    if t.raw.is_empty() {
        t.raw = match t.data_type {
            dtype::FLOAT => fl.iter().flat_map(|v| v.to_le_bytes()).collect(),
            dtype::INT64 => i64s.iter().flat_map(|v| v.to_le_bytes()).collect(),
            dtype::DOUBLE => f64s.iter().flat_map(|v| v.to_le_bytes()).collect(),
            dtype::INT32 => i32s
                .iter()
                .flat_map(|&v| (v as i32).to_le_bytes())
                .collect(),
            dtype::UINT8 | dtype::INT8 | dtype::BOOL => i32s.iter().map(|&v| v as u8).collect(),
            _ => vec![],
        };
    }
    Ok(t)
}

fn dec_value_info(b: &[u8]) -> Result<ValueInfo, OnnxError> {
    let mut v = ValueInfo::default();
    for (k, f) in fields(b)? {
        match k {
            1 => v.name = string(f)?,
            2 => {
                for (k2, f2) in fields(bytes(f)?)? {
                    if k2 != 1 {
                        continue; // not a tensor type
                    }
                    for (k3, f3) in fields(bytes(f2)?)? {
                        match k3 {
                            1 => v.elem_type = int(f3)? as i32,
                            2 => {
                                for (k4, f4) in fields(bytes(f3)?)? {
                                    if k4 != 1 {
                                        continue;
                                    }
                                    let (mut val, mut param) = (None, None);
                                    for (k5, f5) in fields(bytes(f4)?)? {
                                        match k5 {
                                            1 => val = Some(int(f5)?),
                                            2 => param = Some(string(f5)?),
                                            _ => {}
                                        }
                                    }
                                    v.dims.push(val);
                                    v.dim_params.push(param);
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(v)
}

fn dec_attr(b: &[u8]) -> Result<Attribute, OnnxError> {
    let mut name = String::new();
    let (mut fv, mut iv, mut sv, mut tv) = (None, None, None, None);
    let (mut fs, mut is) = (vec![], vec![]);
    let mut ty = 0;
    for (k, f) in fields(b)? {
        match k {
            1 => name = string(f)?,
            2 => {
                if let Field::Fixed32(v) = f {
                    fv = Some(f32::from_bits(v))
                }
            }
            3 => iv = Some(int(f)?),
            4 => sv = Some(bytes(f)?.to_vec()),
            5 => tv = Some(dec_tensor(bytes(f)?)?),
            7 => floats(f, &mut fs)?,
            8 => ints(f, &mut is)?,
            20 => ty = int(f)?,
            _ => {}
        }
    }
    let value = match ty {
        1 => AttrValue::Float(fv.unwrap_or(0.0)),
        2 => AttrValue::Int(iv.unwrap_or(0)),
        3 => AttrValue::String(sv.unwrap_or_default()),
        4 => AttrValue::Tensor(tv.ok_or_else(|| err(format!("attribute {name}: no tensor")))?),
        6 => AttrValue::Floats(fs),
        7 => AttrValue::Ints(is),
        // untyped (old exporters): infer from what is present
        _ => match (fv, iv, sv, tv) {
            (Some(f), _, _, _) => AttrValue::Float(f),
            (_, Some(i), _, _) => AttrValue::Int(i),
            (_, _, Some(s), _) => AttrValue::String(s),
            (_, _, _, Some(t)) => AttrValue::Tensor(t),
            _ if !fs.is_empty() => AttrValue::Floats(fs),
            _ => AttrValue::Ints(is),
        },
    };
    Ok(Attribute { name, value })
}

fn dec_node(b: &[u8]) -> Result<Node, OnnxError> {
    let mut n = Node::default();
    for (k, f) in fields(b)? {
        match k {
            1 => n.inputs.push(string(f)?),
            2 => n.outputs.push(string(f)?),
            3 => n.name = string(f)?,
            4 => n.op_type = string(f)?,
            5 => n.attributes.push(dec_attr(bytes(f)?)?),
            7 => n.domain = string(f)?,
            _ => {}
        }
    }
    Ok(n)
}

/// Parse a serialized model.
pub fn decode(b: &[u8]) -> Result<Model, OnnxError> {
    let mut m = Model::default();
    let mut graph = None;
    for (k, f) in fields(b)? {
        match k {
            1 => m.ir_version = int(f)?,
            2 => m.producer_name = string(f)?,
            3 => m.producer_version = string(f)?,
            7 => graph = Some(bytes(f)?),
            8 => {
                let (mut d, mut v) = (String::new(), 0);
                for (k2, f2) in fields(bytes(f)?)? {
                    match k2 {
                        1 => d = string(f2)?,
                        2 => v = int(f2)?,
                        _ => {}
                    }
                }
                m.opset.push((d, v));
            }
            _ => {}
        }
    }
    let gb = graph.ok_or_else(|| err("the model has no graph"))?;
    for (k, f) in fields(gb)? {
        match k {
            1 => m.graph.nodes.push(dec_node(bytes(f)?)?),
            2 => m.graph.name = string(f)?,
            5 => m.graph.initializers.push(dec_tensor(bytes(f)?)?),
            11 => m.graph.inputs.push(dec_value_info(bytes(f)?)?),
            12 => m.graph.outputs.push(dec_value_info(bytes(f)?)?),
            _ => {}
        }
    }
    Ok(m)
}

impl Node {
    pub fn attr(&self, name: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|a| a.name == name)
            .map(|a| &a.value)
    }
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.attr(name) {
            Some(AttrValue::Int(i)) => Some(*i),
            _ => None,
        }
    }
    pub fn float(&self, name: &str) -> Option<f32> {
        match self.attr(name) {
            Some(AttrValue::Float(f)) => Some(*f),
            _ => None,
        }
    }
    pub fn ints(&self, name: &str) -> Option<&[i64]> {
        match self.attr(name) {
            Some(AttrValue::Ints(v)) => Some(v),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_round_trip() {
        let m = Model {
            ir_version: 7,
            opset: vec![(String::new(), 13)],
            producer_name: "qvision".into(),
            producer_version: "0.1".into(),
            graph: Graph {
                name: "g".into(),
                nodes: vec![Node {
                    name: "conv".into(),
                    op_type: "Conv".into(),
                    domain: String::new(),
                    inputs: vec!["x".into(), "w".into()],
                    outputs: vec!["y".into()],
                    attributes: vec![
                        Attribute {
                            name: "pads".into(),
                            value: AttrValue::Ints(vec![1, 1, 1, 1]),
                        },
                        Attribute {
                            name: "alpha".into(),
                            value: AttrValue::Float(0.5),
                        },
                        Attribute {
                            name: "group".into(),
                            value: AttrValue::Int(-3),
                        },
                    ],
                }],
                initializers: vec![Tensor {
                    name: "w".into(),
                    dims: vec![2, 3],
                    data_type: dtype::FLOAT,
                    raw: vec![0; 24],
                    external: None,
                }],
                inputs: vec![ValueInfo {
                    name: "x".into(),
                    elem_type: dtype::FLOAT,
                    dims: vec![None, Some(3)],
                    dim_params: vec![Some("batch".into()), None],
                }],
                outputs: vec![],
            },
        };
        assert_eq!(decode(&encode(&m)).unwrap(), m);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode(&[0x0a, 0xff, 0xff, 0xff]).is_err());
        assert!(decode(b"").is_err());
        let good = encode(&Model::default());
        for cut in 1..good.len() {
            let _ = decode(&good[..cut]);
        }
    }
}
