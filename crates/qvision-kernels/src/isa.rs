//! Run-time choice of the vector ISA for qvision's own kernels.
//!
//! Kernels are written once as portable Rust (`#[inline(always)]` bodies) and compiled again
//! inside `#[target_feature]` wrappers; [`current`] picks the best the CPU has. No artifact is
//! built with `target-cpu=native`. `QVISION_ISA=scalar|avx2|avxvnni|avx512` forces a path (clamped to
//! what the CPU supports), so every path can be tested on one machine.

use std::sync::OnceLock;

/// An instruction-set level for the portable kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Baseline code for the target (SSE2 on x86_64, NEON on aarch64).
    Scalar,
    /// AVX2 + FMA.
    Avx2,
    /// AVX-512 F/VL + AVX2 + FMA.
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }
}

/// The best ISA this CPU supports.
pub fn best() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
        {
            return Isa::Avx512;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Scalar
}

/// The ISA the kernels use: [`best`], or `QVISION_ISA` if it names a supported level.
pub fn current() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = best();
        match std::env::var("QVISION_ISA").as_deref() {
            Ok("scalar") => Isa::Scalar,
            Ok("avx2") => Isa::Avx2.min(best),
            Ok("avx512") | Ok("vnni") | Ok("amx") => Isa::Avx512.min(best),
            _ => best,
        }
    })
}

/// Instruction-set level for the int8 kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Int8Isa {
    /// Portable code (the reference).
    Scalar,
    /// The portable kernel compiled for AVX2 (exact 32-bit accumulation, no `vpmaddubsw`
    /// saturation).
    Avx2,
    /// AVX-VNNI (`vpdpbusd` on 256-bit registers: Alder Lake and later client cores, which
    /// have no AVX-512).
    AvxVnni,
    /// AVX-512 VNNI `vpdpbusd` (with F/BW/VL, AVX2, FMA): four u8 x s8 products summed into each
    /// i32 lane.
    Avx512Vnni,
    /// AMX-INT8 tiles (`tdpbusd`, 16x64 u8 times 64x16 s8 per instruction) for the GEMM convs,
    /// on top of AVX-512 VNNI for everything else (Sapphire Rapids and later). Needs the OS to
    /// grant the tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`, Linux 5.16+).
    Amx,
}

/// Whether this CPU can run an int8 level.
pub fn supports_int8(level: Int8Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        return match level {
            Int8Isa::Scalar => true,
            Int8Isa::Avx2 => avx2,
            Int8Isa::AvxVnni => avx2 && std::is_x86_feature_detected!("avxvnni"),
            Int8Isa::Avx512Vnni => {
                avx2 && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512vnni")
            }
            Int8Isa::Amx => amx_state() == AmxState::Ready,
        };
    }
    #[allow(unreachable_code)]
    {
        level == Int8Isa::Scalar
    }
}

/// The best vector (non-tile) int8 level this CPU supports: what runs beside AMX, and what the
/// AMX check compares against (it must not ask for AMX itself while being detected).
pub fn best_vector_int8() -> Int8Isa {
    [Int8Isa::Avx512Vnni, Int8Isa::AvxVnni, Int8Isa::Avx2]
        .into_iter()
        .find(|&l| supports_int8(l))
        .unwrap_or(Int8Isa::Scalar)
}

/// The best int8 level this CPU supports.
pub fn best_int8() -> Int8Isa {
    if supports_int8(Int8Isa::Amx) {
        Int8Isa::Amx
    } else {
        best_vector_int8()
    }
}

/// The int8 level in use: [`best_int8`], or what `QVISION_ISA` names if the CPU has it
/// (`scalar`, `avx2`, `avxvnni`, `vnni`/`avx512` for AVX-512 VNNI, `amx`), else the best level
/// below it.
pub fn current_int8() -> Int8Isa {
    static ISA: OnceLock<Int8Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let want = match std::env::var("QVISION_ISA").as_deref() {
            Ok("scalar") => Int8Isa::Scalar,
            Ok("avx2") => Int8Isa::Avx2,
            Ok("avxvnni") => Int8Isa::AvxVnni,
            Ok("avx512") | Ok("vnni") => Int8Isa::Avx512Vnni,
            _ => Int8Isa::Amx,
        };
        available_int8()
            .into_iter()
            .filter(|&l| l <= want)
            .max()
            .unwrap_or(Int8Isa::Scalar)
    })
}

/// Every int8 level this CPU can run, for differential tests.
pub fn available_int8() -> Vec<Int8Isa> {
    [
        Int8Isa::Scalar,
        Int8Isa::Avx2,
        Int8Isa::AvxVnni,
        Int8Isa::Avx512Vnni,
        Int8Isa::Amx,
    ]
    .into_iter()
    .filter(|&i| supports_int8(i))
    .collect()
}

/// Why AMX-INT8 is or is not used on this machine (checked once per process).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AmxState {
    /// CPUID leaf 7 does not report AMX-TILE and AMX-INT8, or the CPU lacks AVX-512 VNNI
    /// (which runs everything AMX does not), or this is not x86_64.
    NotInCpu,
    /// The CPU has AMX, but the OS refused the tile data state
    /// (`arch_prctl(ARCH_REQ_XCOMP_PERM)` failed: Linux before 5.16, or another OS).
    NoTilePermission,
    /// The tile kernel disagreed with the scalar reference on the check conv.
    Disagrees,
    /// AMX is in use.
    Ready,
}

/// Whether AMX-INT8 is used, and if not why: it is where the CPU reports AMX-TILE and
/// AMX-INT8 (CPUID leaf 7) beside AVX-512 VNNI, the kernel grants this process the tile data
/// state, and the tile kernel then agrees with the scalar one on a test conv (checked once; a
/// mismatch is reported on stderr and AMX stays off).
pub fn amx_state() -> AmxState {
    static STATE: OnceLock<AmxState> = OnceLock::new();
    *STATE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if !amx_in_cpu() || !supports_int8(Int8Isa::Avx512Vnni) {
                return AmxState::NotInCpu;
            }
            if !amx_permitted() {
                return AmxState::NoTilePermission;
            }
            if !crate::qnhwc::amx_hardware_agrees() {
                eprintln!("qvision: the AMX int8 kernel disagrees with the scalar reference on this CPU; using AVX-512 VNNI");
                return AmxState::Disagrees;
            }
            AmxState::Ready
        }
        #[cfg(not(target_arch = "x86_64"))]
        AmxState::NotInCpu
    })
}

/// Whether the CPU has AMX-TILE and AMX-INT8 and this process may use the tiles (asked once);
/// unlike [`amx_state`] this does not run the kernel's agreement check, so tests can compare
/// the tile instructions themselves with the emulator.
#[cfg(target_arch = "x86_64")]
pub(crate) fn amx_permitted() -> bool {
    static PERMITTED: OnceLock<bool> = OnceLock::new();
    *PERMITTED.get_or_init(|| amx_in_cpu() && request_tile_permission())
}

/// CPUID leaf 7 (read only where the CPU has it): EDX bit 24 AMX-TILE, bit 25 AMX-INT8.
#[cfg(target_arch = "x86_64")]
fn amx_in_cpu() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    __cpuid(0).eax >= 7 && (__cpuid_count(7, 0).edx >> 24) & 3 == 3
}

/// Ask Linux for the AMX tile data state (XFEATURE 18), which a process must request once
/// before its first tile instruction.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with two integer arguments; it changes only which extended
    // states this process may use.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

/// Other systems: AMX is left off (no way to request the tile state here).
#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_tile_permission() -> bool {
    false
}

/// Every ISA this CPU can run, for differential tests.
pub fn available() -> Vec<Isa> {
    [Isa::Scalar, Isa::Avx2, Isa::Avx512]
        .into_iter()
        .filter(|&i| i <= best())
        .collect()
}

/// Define `$name(isa, args...)` that runs `$body` (an `#[inline(always)]` fn) compiled for the
/// requested ISA; `scalar $plain` gives a separate body for the baseline (e.g. without
/// `mul_add`, which is a slow libm call where the CPU has no FMA).
#[allow(unused_macros)]
macro_rules! multiversion {
    ($vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) => $body:path) => {
        $crate::isa::multiversion!($vis fn $name($($arg: $ty),*) => $body, scalar $body);
    };
    ($vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) => $body:path, scalar $plain:path) => {
        $vis fn $name(isa: $crate::isa::Isa, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                match isa {
                    // SAFETY: `isa` never exceeds `isa::best()`, which checked these features.
                    $crate::isa::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above, AVX2 and FMA were detected.
                    $crate::isa::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::isa::Isa::Scalar => {}
                }
            }
            let _ = isa;
            $plain($($arg),*)
        }
    };
}
#[allow(unused_imports)]
pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the tiles are usable the kernel must agree with the reference; and
    /// `QVISION_REQUIRE_AMX=1` turns a quiet fall-back to AVX-512 VNNI into a failure that says
    /// why: `scripts/amx-emulated` sets it inside its emulated Sapphire Rapids, so the every-ISA
    /// tests there are known to have run the tile instructions themselves.
    #[test]
    fn amx_is_used_where_required() {
        let state = amx_state();
        assert_eq!(supports_int8(Int8Isa::Amx), state == AmxState::Ready);
        assert_eq!(
            available_int8().contains(&Int8Isa::Amx),
            state == AmxState::Ready
        );
        // A CPU that has the tiles and grants them must run them right: a disagreement is a
        // bug in the tile kernel (or the CPU), never a reason to pass quietly.
        assert_ne!(
            state,
            AmxState::Disagrees,
            "the AMX kernel disagrees with the reference"
        );
        if std::env::var_os("QVISION_REQUIRE_AMX").is_some() {
            assert_eq!(
                state,
                AmxState::Ready,
                "QVISION_REQUIRE_AMX is set but AMX is not used"
            );
            assert_eq!(best_int8(), Int8Isa::Amx);
        }
    }
}
