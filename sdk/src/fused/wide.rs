//! The SDK's plain loops compiled for the CPU's wider vectors.
//!
//! The SDK is built for the baseline of its target (SSE2 on x86-64), so the loops the compiler
//! vectorises on its own — quantization, element-wise arithmetic, softmax, norms — run four f32
//! lanes at a time. [`avx2`] runs a closure in a function compiled with AVX2 (eight lanes, and
//! single-instruction min/max, rounding and integer conversion), chosen at run time where the
//! CPU has it. Only the instruction set changes: the compiler contracts no multiply and add
//! into one fused operation, so every value is the one the baseline build computes.

/// Runs `f` compiled with AVX2 where this CPU has it, else as it is.
///
/// The loops to vectorise must be in `f` itself or in functions the compiler inlines into it
/// (small ones, or marked `#[inline]`); a call it does not inline runs the baseline code.
#[inline(always)]
pub fn avx2<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        /// `f`, with AVX2 enabled.
        #[target_feature(enable = "avx2")]
        fn call<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: AVX2 was detected on this CPU just above.
        return unsafe { call(f) };
    }
    f()
}
