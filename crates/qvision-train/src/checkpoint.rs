//! Training checkpoints: every parameter and buffer, the optimizer state, the epoch and step, the
//! RNG, and under QAT the observer ranges and freeze flags. Saved atomically; a run resumed from
//! one continues exactly as if it had not stopped.
//!
//! Format: `QVCKPT1\n`, a little-endian u64 header length, a JSON header, a safetensors blob with
//! the tensors (`model.<key>`, `optim.m.<key>`, `optim.v.<key>`), and an FNV-1a checksum of all
//! preceding bytes.

use crate::autograd::TrainGraph;
use crate::fake_quant::ActFakeQuant;
use crate::optim::{Optimizer, OptimizerKind, ParamState};
use crate::rng::Rng;
use crate::TrainError;
use qvision_graph::weights::fnv1a64_bytes;
use qvision_tensor::Tensor;
use std::collections::BTreeMap;
use std::path::Path;

const MAGIC: &[u8; 8] = b"QVCKPT1\n";

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QatCheckpoint {
    pub observers: BTreeMap<String, ActFakeQuant>,
    pub bn_frozen: bool,
    pub observers_frozen: bool,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Header {
    graph: String,
    epoch: usize,
    step: usize,
    rng: Rng,
    optimizer: OptimizerKind,
    steps: BTreeMap<String, u64>,
    qat: Option<QatCheckpoint>,
    config: serde_json::Value,
}

/// A training state.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub graph: String,
    /// Completed epochs.
    pub epoch: usize,
    /// Completed optimizer steps.
    pub step: usize,
    pub rng: Rng,
    pub optimizer: Optimizer,
    pub qat: Option<QatCheckpoint>,
    /// The training configuration, for the record and to check a resume.
    pub config: serde_json::Value,
    pub tensors: Vec<(String, Tensor)>,
}

impl Checkpoint {
    /// Capture the state of `tg` and `opt`.
    pub fn capture(
        tg: &TrainGraph,
        opt: &Optimizer,
        epoch: usize,
        step: usize,
        rng: &Rng,
        config: serde_json::Value,
    ) -> Self {
        let tensors = tg.state_dict();
        Checkpoint {
            graph: tg.graph.name.clone(),
            epoch,
            step,
            rng: rng.clone(),
            optimizer: opt.clone(),
            qat: tg.qat.as_ref().map(|q| QatCheckpoint {
                observers: q.observers(),
                bn_frozen: tg.bn_frozen,
                observers_frozen: !q.observers_enabled,
            }),
            config,
            tensors,
        }
    }

    /// Put the saved weights, buffers and QAT state back into `tg`; returns the optimizer.
    pub fn restore(&self, tg: &mut TrainGraph) -> Result<Optimizer, TrainError> {
        let err = |m: String| TrainError::Checkpoint {
            path: self.graph.clone(),
            msg: m,
        };
        if self.graph != tg.graph.name {
            return Err(err(format!(
                "was saved from graph '{}', not '{}'",
                self.graph, tg.graph.name
            )));
        }
        for (name, t) in &self.tensors {
            let id = tg
                .graph
                .param_id(name)
                .ok_or_else(|| err(format!("the model has no parameter '{name}'")))?;
            if tg.graph.values[id.0]
                .shape
                .as_deref()
                .is_some_and(|s| s != t.shape())
            {
                return Err(err(format!(
                    "'{name}' has shape {:?} in the checkpoint",
                    t.shape()
                )));
            }
            tg.graph.tensors.insert(id, t.clone());
        }
        if let (Some(q), Some(s)) = (tg.qat.as_mut(), &self.qat) {
            q.set_observers(&s.observers);
            q.observers_enabled = !s.observers_frozen;
            tg.bn_frozen = s.bn_frozen;
        } else if tg.qat.is_some() != self.qat.is_some() {
            return Err(err(
                "QAT state does not match (one run is QAT, the other not)".into(),
            ));
        } else {
            tg.bn_frozen = false;
        }
        Ok(self.optimizer.clone())
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, TrainError> {
        let mut tensors: Vec<(String, Tensor)> = self
            .tensors
            .iter()
            .map(|(n, t)| (format!("model.{n}"), t.clone()))
            .collect();
        let mut steps = BTreeMap::new();
        for (name, st) in &self.optimizer.state {
            steps.insert(name.clone(), st.step);
            for (k, v) in [("m", &st.m), ("v", &st.v)] {
                if !v.is_empty() {
                    let t = Tensor::from_f32(vec![v.len()], v.clone())
                        .map_err(|e| self.fail(e.to_string()))?;
                    tensors.push((format!("optim.{k}.{name}"), t));
                }
            }
        }
        let header = Header {
            graph: self.graph.clone(),
            epoch: self.epoch,
            step: self.step,
            rng: self.rng.clone(),
            optimizer: self.optimizer.kind.clone(),
            steps,
            qat: self.qat.clone(),
            config: self.config.clone(),
        };
        let h = serde_json::to_vec(&header).map_err(|e| self.fail(e.to_string()))?;
        let blob =
            qvision_io::safetensors::write(&tensors).map_err(|e| self.fail(e.to_string()))?;
        let mut out = Vec::with_capacity(16 + h.len() + blob.len() + 8);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(h.len() as u64).to_le_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(&blob);
        let sum = fnv1a64_bytes(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        Ok(out)
    }

    fn fail(&self, msg: String) -> TrainError {
        TrainError::Checkpoint {
            path: self.graph.clone(),
            msg,
        }
    }

    /// Write atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let bytes = self.to_bytes()?;
        qvision_io::atomic::write(path, &bytes).map_err(|e| TrainError::Checkpoint {
            path: path.display().to_string(),
            msg: e.to_string(),
        })
    }

    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let err = |m: String| TrainError::Checkpoint {
            path: path.display().to_string(),
            msg: m,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        if bytes.len() < 24 || &bytes[..8] != MAGIC {
            return Err(err("not a qvision checkpoint (bad magic)".into()));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 8);
        if fnv1a64_bytes(body).to_le_bytes() != sum {
            return Err(err(
                "checksum mismatch: the file is truncated or corrupt".into()
            ));
        }
        let hl = u64::from_le_bytes(body[8..16].try_into().unwrap_or([0; 8])) as usize;
        if 16 + hl > body.len() {
            return Err(err("header runs past the end of the file".into()));
        }
        let header: Header =
            serde_json::from_slice(&body[16..16 + hl]).map_err(|e| err(format!("header: {e}")))?;
        let sd = qvision_io::safetensors::read(&body[16 + hl..]).map_err(|e| err(e.to_string()))?;
        let mut tensors = vec![];
        let mut optimizer = Optimizer::new(header.optimizer.clone());
        for (name, st) in &header.steps {
            optimizer.state.insert(
                name.clone(),
                ParamState {
                    step: *st,
                    ..Default::default()
                },
            );
        }
        for (key, t) in sd {
            if let Some(n) = key.strip_prefix("model.") {
                tensors.push((n.to_string(), t));
            } else if let Some(rest) = key.strip_prefix("optim.") {
                let (k, n) = rest.split_at(1);
                let n = n.trim_start_matches('.');
                let v = t.into_f32().map_err(|e| err(format!("{key}: {e}")))?;
                let st = optimizer.state.entry(n.to_string()).or_default();
                if k == "m" {
                    st.m = v;
                } else {
                    st.v = v;
                }
            }
        }
        Ok(Checkpoint {
            graph: header.graph,
            epoch: header.epoch,
            step: header.step,
            rng: header.rng,
            optimizer,
            qat: header.qat,
            config: header.config,
            tensors,
        })
    }
}
