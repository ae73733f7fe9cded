//! Calibration: run representative batches through the fp32 graph and let an observer per
//! activation (every node output) choose its quantization range.

use crate::observer::{
    EntropyObserver, HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver, Observer,
    PercentileObserver,
};
use crate::qconfig::{QConfig, QConfigMapping};
use crate::qparams::QuantParams;
use crate::QuantError;
use qvision_graph::{Session, SessionOptions};
use qvision_tensor::Tensor;
use std::collections::BTreeMap;
use std::str::FromStr;

/// Which observer watches activations (`qvision quantize --observer NAME`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ObserverKind {
    MinMax,
    MovingAverage,
    Histogram,
    /// Clip at the given lower and upper percentiles.
    Percentile {
        lower: f64,
        upper: f64,
    },
    Entropy,
}

impl FromStr for ObserverKind {
    type Err = QuantError;
    fn from_str(s: &str) -> Result<Self, QuantError> {
        Ok(match s {
            "minmax" | "min-max" => ObserverKind::MinMax,
            "moving-average" | "moving_average" => ObserverKind::MovingAverage,
            "histogram" => ObserverKind::Histogram,
            "percentile" => ObserverKind::Percentile { lower: 0.01, upper: 99.99 },
            "entropy" | "kl" => ObserverKind::Entropy,
            other => {
                return Err(QuantError::Shape(format!(
                    "unknown observer '{other}' (minmax, moving-average, histogram, percentile, entropy)"
                )))
            }
        })
    }
}

/// One observer per observed value name.
pub struct Calibrator {
    kind: ObserverKind,
    qconfig: QConfig,
    observers: BTreeMap<String, Box<dyn Observer>>,
    shapes: BTreeMap<String, Vec<usize>>,
}

impl Calibrator {
    pub fn new(kind: ObserverKind, qconfig: QConfig) -> Self {
        Calibrator {
            kind,
            qconfig,
            observers: BTreeMap::new(),
            shapes: BTreeMap::new(),
        }
    }

    fn make(&self, kind: ObserverKind) -> Box<dyn Observer> {
        let (d, s, r) = (
            self.qconfig.activation_dtype,
            self.qconfig.activation_scheme,
            self.qconfig.reduce_range,
        );
        match kind {
            ObserverKind::MinMax => Box::new(MinMaxObserver::new(d, s, r)),
            ObserverKind::MovingAverage => Box::new(MovingAverageMinMaxObserver::new(d, s, r)),
            ObserverKind::Histogram => Box::new(HistogramObserver::new(d, s, r)),
            ObserverKind::Percentile { lower, upper } => {
                Box::new(PercentileObserver::new(d, s, r, lower, upper))
            }
            ObserverKind::Entropy => Box::new(EntropyObserver::new(d, s, r)),
        }
    }

    /// Record values of a graph input: always the full min/max range (an image is bounded, and
    /// clipping its brightest or darkest pixels costs more than a finer step gains).
    pub fn observe_input(&mut self, name: &str, x: &[f32]) {
        self.observe_with(ObserverKind::MinMax, name, x);
    }

    /// Record values of the activation `name`.
    pub fn observe(&mut self, name: &str, x: &[f32]) {
        self.observe_with(self.kind, name, x);
    }

    /// Record values of `name`, creating its observer of `kind` on first sight.
    fn observe_with(&mut self, kind: ObserverKind, name: &str, x: &[f32]) {
        if !self.observers.contains_key(name) {
            let o = self.make(kind);
            self.observers.insert(name.to_string(), o);
        }
        if let Some(o) = self.observers.get_mut(name) {
            o.observe(x);
        }
    }

    /// Remember the shape an activation had (convert checks broadcasting with it).
    pub fn record_shape(&mut self, name: &str, shape: &[usize]) {
        if !self.shapes.contains_key(name) {
            self.shapes.insert(name.to_string(), shape.to_vec());
        }
    }

    /// The shape each activation had in the first calibration batch.
    pub fn shapes(&self) -> &BTreeMap<String, Vec<usize>> {
        &self.shapes
    }

    /// Observed activations, by name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.observers.keys().map(String::as_str)
    }

    /// The chosen range of each activation.
    pub fn ranges(&self) -> BTreeMap<String, (f32, f32)> {
        self.observers
            .iter()
            .filter_map(|(k, o)| o.range().map(|r| (k.clone(), r)))
            .collect()
    }

    /// Scale and zero point of each activation.
    pub fn qparams(&self) -> BTreeMap<String, QuantParams> {
        self.observers
            .iter()
            .map(|(k, o)| (k.clone(), o.qparams()))
            .collect()
    }
}

/// A graph with an observer on every activation (PyTorch's prepared model): feed it
/// calibration batches with [`Prepared::calibrate`], then [`Prepared::convert`] it to int8.
/// The graph runs as given (NCHW, not re-fused), so what is observed is what converts.
pub struct Prepared {
    session: Session,
    cal: Calibrator,
    mapping: QConfigMapping,
    batches: usize,
}

impl Prepared {
    /// Attach observers of `kind` (activations follow the global qconfig of `mapping`).
    pub fn new(
        graph: &qvision_graph::Graph,
        mapping: impl Into<QConfigMapping>,
        kind: ObserverKind,
        threads: Option<usize>,
    ) -> Result<Self, QuantError> {
        let mapping = mapping.into();
        let opts = SessionOptions {
            threads,
            optimize: false,
            blocked: Some(false),
        };
        let session = Session::new(graph, opts).map_err(|e| QuantError::Shape(e.to_string()))?;
        Ok(Prepared {
            session,
            cal: Calibrator::new(kind, mapping.global),
            mapping,
            batches: 0,
        })
    }

    /// Run one calibration batch (a forward pass that feeds every observer); returns the
    /// graph's outputs.
    pub fn calibrate(&mut self, batch: Tensor) -> Result<Vec<Tensor>, QuantError> {
        let (session, cal) = (&self.session, &mut self.cal);
        // the graph input too (PyTorch's QuantStub): a stem conv reading it converts to int8
        if let (Some(&v), Ok(x)) = (session.graph().inputs.first(), batch.as_f32()) {
            let name = &session.graph().values[v.0].name;
            cal.observe_input(name, x);
            cal.record_shape(name, batch.shape());
        }
        let out = session
            .run_observed(vec![batch], &mut |node, outs| {
                for (v, t) in node.outputs.iter().zip(outs) {
                    if let Ok(x) = t.as_f32() {
                        let name = &session.graph().values[v.0].name;
                        cal.observe(name, x);
                        cal.record_shape(name, t.shape());
                    }
                }
            })
            .map_err(|e| QuantError::Shape(e.to_string()))?;
        self.batches += 1;
        Ok(out)
    }

    /// Calibration batches seen so far.
    pub fn batches(&self) -> usize {
        self.batches
    }

    pub fn calibrator(&self) -> &Calibrator {
        &self.cal
    }

    /// The observed graph.
    pub fn graph(&self) -> &qvision_graph::Graph {
        self.session.graph()
    }

    /// PyTorch's `convert`: the int8 graph and what stayed fp32.
    pub fn convert(
        &self,
    ) -> Result<(qvision_graph::Graph, crate::convert::ConvertReport), QuantError> {
        if self.batches == 0 {
            return Err(QuantError::Shape(
                "convert before any calibration batch: run Prepared::calibrate first".into(),
            ));
        }
        crate::convert::convert(self.graph(), &self.cal, &self.mapping)
    }
}

/// Run every batch through `graph` as it is (already prepared: see [`crate::prepare`]), in NCHW
/// layout, and observe every node output.
pub fn calibrate(
    graph: &qvision_graph::Graph,
    batches: impl IntoIterator<Item = Tensor>,
    threads: Option<usize>,
    cal: &mut Calibrator,
) -> Result<usize, QuantError> {
    let mut p = Prepared::new(graph, cal.qconfig, cal.kind, threads)?;
    p.cal = std::mem::replace(cal, Calibrator::new(cal.kind, cal.qconfig));
    let mut n = 0;
    let result = batches.into_iter().try_for_each(|b| {
        n += 1;
        p.calibrate(b).map(|_| ())
    });
    *cal = p.cal;
    result.map(|_| n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qconfig::Backend;
    use qvision_graph::builder::Conv;
    use qvision_graph::{weights, Activation, GraphBuilder};

    #[test]
    fn min_max_calibration_sees_every_activation() {
        let mut b = GraphBuilder::new("cal");
        let x = b.input("input", &[1, 3, 8, 8]);
        let y = b.conv2d("conv", x, Conv::new(3, 4, 3).pad(1));
        let y = b.act("relu", y, Activation::Relu);
        let y = b.flatten("flatten", y, 1);
        let y = b.linear("fc", y, 256, 5, true);
        let mut g = b.finish(&[y]);
        weights::init_formula(&mut g);
        let g = crate::prepare(&g).unwrap();
        let batches: Vec<Tensor> = (0..3)
            .map(|i| {
                Tensor::from_f32(
                    vec![1, 3, 8, 8],
                    qvision_graph::weights::formula_uniform(i, 192),
                )
                .unwrap()
            })
            .collect();
        let mut cal = Calibrator::new(ObserverKind::MinMax, QConfig::default_for(Backend::X86));
        assert_eq!(
            calibrate(&g, batches.clone(), Some(1), &mut cal).unwrap(),
            3
        );
        let ranges = cal.ranges();
        // conv+relu fuse into one node named "conv": its output is >= 0
        let (lo, hi) = ranges["conv"];
        assert!(lo >= 0.0 && hi > 0.0, "{lo} {hi}");
        // the logits range equals the min/max over the three batches
        let s = Session::new(
            &g,
            SessionOptions {
                blocked: Some(false),
                ..Default::default()
            },
        )
        .unwrap();
        let (mut mn, mut mx) = (f32::INFINITY, f32::NEG_INFINITY);
        for b in batches {
            for &v in s.run(vec![b]).unwrap()[0].as_f32().unwrap() {
                mn = mn.min(v);
                mx = mx.max(v);
            }
        }
        assert_eq!(ranges["fc"], (mn, mx));
        assert!("median".parse::<ObserverKind>().is_err());
        assert_eq!(
            "histogram".parse::<ObserverKind>().unwrap(),
            ObserverKind::Histogram
        );
    }
}
