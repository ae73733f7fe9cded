//! The blocked layout `NCHW16c`: `[n][c / 16][h][w][16]`, channels zero-padded to a multiple of
//! 16. A 16-lane vector holds one pixel's 16 channels, so convolutions vectorise over output
//! channels and depthwise/pooling over channels, whatever the spatial size.
//!
//! Kernels are portable Rust over `[f32; 16]` blocks with register-blocked loops, compiled per ISA
//! (`crate::isa`); the references are the NCHW kernels and [`crate::reference`].

pub mod conv;
mod dw;
mod dw_project;
pub mod norm;
pub mod pool;

/// Channels per block.
pub const B: usize = 16;

/// The next register run for `rest` pixels left in a row: runs of at most 12, balanced, so a
/// row never ends in a short run with too few independent accumulators (7 -> 7, 14 -> 7 + 7).
pub(crate) fn run_len(rest: usize) -> usize {
    rest.div_ceil(rest.div_ceil(12).max(1))
}

/// `$kernel::<N>(args)` for a run length `N` in 1..=12 given at run time (each length is its
/// own register-blocked instantiation); `$kernel::<_, C..>(args)` passes further const
/// parameters after `N`.
macro_rules! by_run_len {
    ($n:expr, $kernel:ident $(::<_ $(, $c:tt)*>)? ($($arg:expr),* $(,)?)) => {
        match $n {
            12 => $kernel::<12 $($(, $c)*)?>($($arg),*),
            11 => $kernel::<11 $($(, $c)*)?>($($arg),*),
            10 => $kernel::<10 $($(, $c)*)?>($($arg),*),
            9 => $kernel::<9 $($(, $c)*)?>($($arg),*),
            8 => $kernel::<8 $($(, $c)*)?>($($arg),*),
            7 => $kernel::<7 $($(, $c)*)?>($($arg),*),
            6 => $kernel::<6 $($(, $c)*)?>($($arg),*),
            5 => $kernel::<5 $($(, $c)*)?>($($arg),*),
            4 => $kernel::<4 $($(, $c)*)?>($($arg),*),
            3 => $kernel::<3 $($(, $c)*)?>($($arg),*),
            2 => $kernel::<2 $($(, $c)*)?>($($arg),*),
            _ => $kernel::<1 $($(, $c)*)?>($($arg),*),
        }
    };
}
pub(crate) use by_run_len;

/// Number of channel blocks for `c` channels.
pub fn blocks(c: usize) -> usize {
    c.div_ceil(B)
}

/// NCHW to NCHW16c (padding channels are zero).
pub fn to_blocked(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<f32> {
    let cb = blocks(c);
    let mut out = qvision_tensor::pool::take_zeroed(n * cb * hw * B);
    for b in 0..n {
        for ch in 0..c {
            let src = &x[(b * c + ch) * hw..(b * c + ch + 1) * hw];
            let (blk, lane) = (ch / B, ch % B);
            let base = (b * cb + blk) * hw * B + lane;
            for (i, &v) in src.iter().enumerate() {
                out[base + i * B] = v;
            }
        }
    }
    out
}

/// NCHW16c to NCHW, dropping padding channels.
pub fn from_blocked(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<f32> {
    let cb = blocks(c);
    let mut out = qvision_tensor::pool::take(n * c * hw);
    for b in 0..n {
        for ch in 0..c {
            let dst = &mut out[(b * c + ch) * hw..(b * c + ch + 1) * hw];
            let (blk, lane) = (ch / B, ch % B);
            let base = (b * cb + blk) * hw * B + lane;
            for (i, d) in dst.iter_mut().enumerate() {
                *d = x[base + i * B];
            }
        }
    }
    out
}

/// `x = x * scale[c] + shift[c]` per channel over blocked planes (an inference BatchNorm);
/// `scale` and `shift` hold `c` values (padding lanes are left as they are).
pub fn channel_affine(x: &mut [f32], n: usize, c: usize, hw: usize, scale: &[f32], shift: &[f32]) {
    use rayon::prelude::*;
    let cb = blocks(c);
    let mut s = vec![1.0f32; cb * B];
    let mut t = vec![0.0f32; cb * B];
    s[..c].copy_from_slice(&scale[..c]);
    t[..c].copy_from_slice(&shift[..c]);
    x[..n * cb * hw * B]
        .par_chunks_mut(hw * B)
        .enumerate()
        .for_each(|(pl, plane)| {
            let blk = pl % cb;
            let (sv, tv) = (&s[blk * B..(blk + 1) * B], &t[blk * B..(blk + 1) * B]);
            for px in plane.chunks_exact_mut(B) {
                for l in 0..B {
                    px[l] = px[l] * sv[l] + tv[l];
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let x: Vec<f32> = (0..2 * 20 * 6).map(|v| v as f32).collect();
        let b = to_blocked(&x, 2, 20, 6);
        assert_eq!(b.len(), 2 * 2 * 6 * 16);
        assert_eq!(b[16 + 1], x[7], "pixel 1 of channel 1");
        assert_eq!(
            b[6 * 16 + 5],
            0.0,
            "channel 21 (block 1, lane 5) is padding"
        );
        assert_eq!(from_blocked(&b, 2, 20, 6), x);
    }

    #[test]
    fn channel_affine_matches_nchw_batch_norm() {
        let x: Vec<f32> = (0..2 * 20 * 6).map(|v| v as f32 * 0.1).collect();
        let scale: Vec<f32> = (0..20).map(|c| 1.0 + c as f32 * 0.01).collect();
        let shift: Vec<f32> = (0..20).map(|c| c as f32 * -0.2).collect();
        let mut want = x.clone();
        for (i, v) in want.iter_mut().enumerate() {
            let c = (i / 6) % 20;
            *v = *v * scale[c] + shift[c];
        }
        let mut b = to_blocked(&x, 2, 20, 6);
        channel_affine(&mut b, 2, 20, 6, &scale, &shift);
        assert_eq!(from_blocked(&b, 2, 20, 6), want);
    }
}
