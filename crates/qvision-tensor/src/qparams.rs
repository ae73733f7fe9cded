/// Affine quantization parameters: `real = scale * (q - zero_point)`.
#[derive(Clone, Debug, PartialEq)]
pub enum QParams {
    /// One scale and zero point for the whole tensor.
    PerTensor { scale: f32, zero_point: i32 },
    /// One scale and zero point per index along `axis` (PyTorch's `per_channel_affine`).
    PerAxis {
        axis: usize,
        scales: Vec<f32>,
        zero_points: Vec<i32>,
    },
}
