use crate::op::Op;
use crate::GraphError;
use qvision_tensor::{DType, Tensor};
use std::collections::HashMap;

/// Index of a value in [`Graph::values`].
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ValueId(pub usize);

/// Index of a node in [`Graph::nodes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct NodeId(pub usize);

/// Where a value comes from.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ValueKind {
    /// A graph input. `shape` holds the default (example) shape; dim 0 is the batch.
    Input,
    /// A learnable parameter or buffer, named by its state-dict key. `optional` ones
    /// (BatchNorm's `num_batches_tracked`) may be absent from a weights file.
    Param { optional: bool },
    /// A constant made by the builder or by a pass (folded weights); never loaded from a file.
    Const,
    /// Output `index` of a node.
    NodeOutput { node: NodeId, index: usize },
}

/// A value: its name, where it comes from, and (for inputs, params, consts) its shape.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Value {
    pub name: String,
    pub kind: ValueKind,
    pub dtype: DType,
    pub shape: Option<Vec<usize>>,
}

/// One operation: a module path name (`layer1.0.conv1`), the op, its inputs and outputs.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

/// A dataflow graph in topological order, with the tensors of its parameters and constants.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    pub values: Vec<Value>,
    pub nodes: Vec<Node>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
    /// Tensors of params and consts. A param without an entry has not been loaded yet.
    pub tensors: HashMap<ValueId, Tensor>,
}

impl Graph {
    pub fn value(&self, id: ValueId) -> &Value {
        &self.values[id.0]
    }

    /// Append a node and mark its output values as produced by it (for rewriting passes).
    pub fn push_node(&mut self, name: String, op: Op, inputs: Vec<ValueId>, outputs: Vec<ValueId>) {
        let node = NodeId(self.nodes.len());
        for (index, o) in outputs.iter().enumerate() {
            self.values[o.0].kind = ValueKind::NodeOutput { node, index };
        }
        self.nodes.push(Node {
            name,
            op,
            inputs,
            outputs,
        });
    }

    /// Drop the tensors no node reads and no output names (e.g. fp32 weights replaced by int8).
    pub fn retain_used_tensors(&mut self) {
        let used: std::collections::HashSet<ValueId> = self
            .nodes
            .iter()
            .flat_map(|n| n.inputs.iter().copied())
            .chain(self.outputs.iter().copied())
            .collect();
        self.tensors.retain(|id, _| used.contains(id));
    }

    /// Parameters in declaration order.
    pub fn params(&self) -> impl Iterator<Item = (ValueId, &Value)> {
        self.values
            .iter()
            .enumerate()
            .filter(|(_, v)| matches!(v.kind, ValueKind::Param { .. }))
            .map(|(i, v)| (ValueId(i), v))
    }

    pub fn param_id(&self, name: &str) -> Option<ValueId> {
        self.params()
            .find(|(_, v)| v.name == name)
            .map(|(id, _)| id)
    }

    /// Number of learnable parameters (as `sum(p.numel() for p in model.parameters())`:
    /// BatchNorm running statistics are buffers and do not count).
    pub fn num_params(&self) -> usize {
        self.params()
            .filter(|(_, v)| !is_buffer_name(&v.name))
            .map(|(_, v)| v.shape.as_ref().map_or(0, |s| s.iter().product()))
            .sum()
    }

    /// How many nodes read each value (graph outputs count as one extra reader).
    pub fn use_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.values.len()];
        for n in &self.nodes {
            for i in &n.inputs {
                counts[i.0] += 1;
            }
        }
        for o in &self.outputs {
            counts[o.0] += 1;
        }
        counts
    }

    /// The tensor of a param or const, or an error naming it.
    pub fn tensor(&self, id: ValueId) -> Result<&Tensor, GraphError> {
        self.tensors
            .get(&id)
            .ok_or_else(|| GraphError::MissingParam {
                name: self.values[id.0].name.clone(),
            })
    }

    /// Check structure: inputs defined before use, every output produced.
    pub fn validate(&self) -> Result<(), GraphError> {
        let mut defined = vec![false; self.values.len()];
        for (i, v) in self.values.iter().enumerate() {
            if !matches!(v.kind, ValueKind::NodeOutput { .. }) {
                defined[i] = true;
            }
        }
        for n in &self.nodes {
            let (ins, outs) = n.op.arity();
            let outs_ok = match n.op {
                Op::Split { .. } => n.outputs.len() == outs,
                _ => n.outputs.len() >= outs,
            };
            if n.inputs.len() < ins || !outs_ok {
                return Err(GraphError::Invalid(format!(
                    "node '{}' ({}) has {} inputs and {} outputs, needs at least {ins} and {outs}",
                    n.name,
                    n.op.kind(),
                    n.inputs.len(),
                    n.outputs.len()
                )));
            }
            for i in &n.inputs {
                if !defined.get(i.0).copied().unwrap_or(false) {
                    return Err(GraphError::Invalid(format!(
                        "node '{}' reads '{}' before it is computed",
                        n.name,
                        self.values.get(i.0).map_or("?", |v| v.name.as_str())
                    )));
                }
            }
            for o in &n.outputs {
                match defined.get_mut(o.0) {
                    Some(d) => *d = true,
                    None => {
                        return Err(GraphError::Invalid(format!(
                            "node '{}' writes value {} of {}",
                            n.name,
                            o.0,
                            self.values.len()
                        )))
                    }
                }
            }
        }
        for o in &self.outputs {
            if !defined.get(o.0).copied().unwrap_or(false) {
                return Err(GraphError::Invalid(format!(
                    "output '{}' is never computed",
                    self.values.get(o.0).map_or("?", |v| v.name.as_str())
                )));
            }
        }
        Ok(())
    }
}

/// State-dict entries that are buffers rather than parameters.
pub(crate) fn is_buffer_name(name: &str) -> bool {
    name.ends_with("running_mean")
        || name.ends_with("running_var")
        || name.ends_with("num_batches_tracked")
}
