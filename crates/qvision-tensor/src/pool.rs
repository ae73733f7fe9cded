//! Process-wide pools of f32 and u8 buffers.
//!
//! Activations are large and short-lived; allocating them fresh for every op makes the allocator
//! hand pages back to the OS and fault them in again, which costs more than some convolutions.
//! The executor returns dying buffers with [`recycle`], and kernels take output buffers with
//! [`take`]. The pool keeps a bounded number of bytes.

use std::sync::Mutex;

const MAX_BUFFERS: usize = 64;
const MAX_BYTES: usize = 1 << 30;

static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());
static POOL_U8: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A buffer of `len` values whose contents are unspecified (but initialised): callers must
/// overwrite every element they read.
pub fn take(len: usize) -> Vec<f32> {
    take_from(&POOL, len)
}

/// A u8 buffer of `len` values with unspecified (initialised) contents, as [`take`].
pub fn take_u8(len: usize) -> Vec<u8> {
    take_from(&POOL_U8, len)
}

/// Give a u8 buffer back for reuse.
pub fn recycle_u8(v: Vec<u8>) {
    recycle_to(&POOL_U8, v)
}

fn take_from<T: Copy + Default>(pool: &Mutex<Vec<Vec<T>>>, len: usize) -> Vec<T> {
    let found = {
        let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, v)| v.capacity() >= len && v.capacity() <= len.saturating_mul(2).max(4096))
            // the tightest fit; of equal ones the most recently recycled (still in cache)
            .max_by_key(|(i, v)| (std::cmp::Reverse(v.capacity()), *i))
            .map(|(i, _)| i);
        // `remove` keeps the others in the order they came back
        best.map(|i| pool.remove(i))
    };
    match found {
        Some(mut v) => {
            if v.len() >= len {
                v.truncate(len);
            } else {
                v.resize(len, T::default());
            }
            v
        }
        None => {
            // capacity rounded up to a size class (steps of 2^(1/4), at most 19 % more), so a
            // slightly larger request later (DenseNet's growing concatenations) still fits
            let mut v = Vec::with_capacity(size_class(len));
            v.resize(len, T::default());
            v
        }
    }
}

/// The smallest `2^(k/4)`-step size (rounded up to a multiple of 1024 elements) that holds
/// `len`; lengths under 1024 are kept as they are.
fn size_class(len: usize) -> usize {
    if len < 1024 {
        return len;
    }
    let mut c = 1024f64;
    while (c as usize) < len {
        c *= std::f64::consts::SQRT_2.sqrt();
    }
    (c as usize).div_ceil(1024) * 1024
}

/// A zero-filled buffer of `len` values.
pub fn take_zeroed(len: usize) -> Vec<f32> {
    let mut v = take(len);
    v.fill(0.0);
    v
}

/// Give a buffer back for reuse.
pub fn recycle(v: Vec<f32>) {
    recycle_to(&POOL, v)
}

fn recycle_to<T>(pool: &Mutex<Vec<Vec<T>>>, v: Vec<T>) {
    let size = std::mem::size_of::<T>();
    if v.capacity() * size < 4096 {
        return;
    }
    let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
    let bytes: usize = pool.iter().map(|b| b.capacity() * size).sum();
    if pool.len() < MAX_BUFFERS && bytes + v.capacity() * size <= MAX_BYTES {
        pool.push(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_buffers_of_fitting_size() {
        let mut v = take(5000);
        v[0] = 3.0;
        let ptr = v.as_ptr();
        recycle(v);
        let w = take(4000);
        assert_eq!(w.len(), 4000);
        // another test may have taken it concurrently; only check when it came back
        if w.as_ptr() == ptr {
            assert_eq!(w[0], 3.0);
        }
        assert!(take_zeroed(4000).iter().all(|&x| x == 0.0));
    }
}
