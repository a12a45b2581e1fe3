//! The C option structs, their defaults, and their translation to the SDK's options.
//!
//! Enumerated settings are `int32_t` fields with named constants, not C enums: a value the
//! library does not know (a newer header, a typo) is then an error, not undefined behaviour.
//! Each struct starts with `struct_size`, set by its `*_options_init` function: a struct from a
//! header of another size, or zeroed, is refused (uninitialised stack memory usually is too,
//! but only `*_options_init` makes a struct valid).

use std::ffi::c_void;

use transfusion_sdk::limits::DEFAULT_MEMORY_CAP;
use transfusion_sdk::{
    Device, GenerateOptions, LoadOptions, PartPrecisions, Precision, PrecisionChoice,
    SamplingOptions, UnknownWords,
};

use crate::handles::Registry;
use crate::status::{tf_status, CallResult, Failure};
use crate::tf_cancel;

/// `tf_load_options.precision`: per graph, what the SDK finds fastest on this device.
pub const TF_PRECISION_AUTO: i32 = 0;
/// `tf_load_options.precision`: every graph at FP32.
pub const TF_PRECISION_FP32: i32 = 1;
/// `tf_load_options.precision`: every graph at FP16.
pub const TF_PRECISION_FP16: i32 = 2;
/// `tf_load_options.precision`: every graph at INT8 (graphs without integer kernels: FP32).
pub const TF_PRECISION_INT8: i32 = 3;

/// `tf_load_options.device`: tract's CPU kernels.
pub const TF_DEVICE_CPU: i32 = 0;
/// `tf_load_options.device`: the NVIDIA GPU (a CUDA build of the library); fails when unusable.
pub const TF_DEVICE_CUDA: i32 = 1;
/// `tf_load_options.device`: the GPU when usable, else the CPU.
pub const TF_DEVICE_AUTO: i32 = 2;

/// `tf_generate_options.unknown_words`: go on, and report them to `on_warning`.
pub const TF_UNKNOWN_WORDS_WARN: i32 = 0;
/// `tf_generate_options.unknown_words`: fail with `TF_ERR_UNKNOWN_WORDS`.
pub const TF_UNKNOWN_WORDS_ERROR: i32 = 1;
/// `tf_generate_options.unknown_words`: go on silently.
pub const TF_UNKNOWN_WORDS_ALLOW: i32 = 2;

/// How to load a bundle. Fill with `tf_load_options_init`, then change fields.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct tf_load_options {
    /// `sizeof(tf_load_options)`, set by `tf_load_options_init`.
    pub struct_size: u32,
    /// `TF_PRECISION_*` (default `TF_PRECISION_AUTO`).
    pub precision: i32,
    /// `TF_DEVICE_*` (default `TF_DEVICE_CPU`).
    pub device: i32,
    /// Matrix-product threads of this model, 1 to 1024 (default 1). The model's own setting:
    /// other models in the process keep theirs.
    pub threads: u32,
    /// Most bytes the model may plan to use; a bundle planning more is refused before any
    /// graph is read. 0: no cap. Default 4 GiB.
    pub memory_cap: u64,
}

/// Called after every diffusion step: `step` (1-based) of `total`. Return 0 to go on, any
/// other value to cancel (the call then fails with `TF_ERR_CANCELLED`). NULL: none.
pub type tf_progress_fn =
    Option<extern "C" fn(user_data: *mut c_void, step: u32, total: u32) -> i32>;

/// Called after every diffusion step with a cheap preview of the image so far (RGB8,
/// `width * height * 3` bytes at latent resolution, valid only during the call). Return 0 to
/// go on, any other value to cancel. NULL: none (and no previews are computed).
pub type tf_preview_fn = Option<
    extern "C" fn(
        user_data: *mut c_void,
        step: u32,
        rgb: *const u8,
        width: u32,
        height: u32,
    ) -> i32,
>;

/// Called with a warning (NUL-terminated UTF-8, valid only during the call), e.g. the prompt
/// words the model does not know. NULL: none (with `tf_set_log` they are logged too).
pub type tf_warning_fn =
    Option<extern "C" fn(user_data: *mut c_void, message: *const std::ffi::c_char)>;

/// How to generate. Fill with `tf_generate_options_init`, then change fields.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct tf_generate_options {
    /// `sizeof(tf_generate_options)`, set by `tf_generate_options_init`.
    pub struct_size: u32,
    /// Seed of every random draw: same seed, same image.
    pub seed: u64,
    /// Diffusion steps, 1 to 1000 (0: the model's recommendation).
    pub steps: u32,
    /// Classifier-free guidance scale, >= 1 (0: the model's; ignored by guidance-distilled
    /// models).
    pub guidance: f32,
    /// Text sampling temperature, >= 0 (0: greedy, the default).
    pub temperature: f32,
    /// Text tokens of a caption at most (0: the SDK's default, 64).
    pub max_tokens: u32,
    /// `TF_UNKNOWN_WORDS_*` (default `TF_UNKNOWN_WORDS_WARN`).
    pub unknown_words: i32,
    /// Progress callback, or NULL.
    pub on_progress: tf_progress_fn,
    /// Preview callback, or NULL (previews are computed only when set).
    pub on_preview: tf_preview_fn,
    /// Warning callback, or NULL (with `tf_set_log` warnings are logged too).
    pub on_warning: tf_warning_fn,
    /// Passed to every callback.
    pub user_data: *mut c_void,
    /// A cancel token (`tf_cancel_new`) another thread may trigger, or NULL.
    pub cancel: *const tf_cancel,
}

impl Default for tf_load_options {
    fn default() -> Self {
        tf_load_options {
            struct_size: size_of::<tf_load_options>() as u32,
            precision: TF_PRECISION_AUTO,
            device: TF_DEVICE_CPU,
            threads: 1,
            memory_cap: DEFAULT_MEMORY_CAP,
        }
    }
}

impl Default for tf_generate_options {
    fn default() -> Self {
        tf_generate_options {
            struct_size: size_of::<tf_generate_options>() as u32,
            seed: 0,
            steps: 0,
            guidance: 0.0,
            temperature: 0.0,
            max_tokens: 0,
            unknown_words: TF_UNKNOWN_WORDS_WARN,
            on_progress: None,
            on_preview: None,
            on_warning: None,
            user_data: std::ptr::null_mut(),
            cancel: std::ptr::null(),
        }
    }
}

fn invalid(field: &str, message: String) -> Failure {
    Failure::new(
        tf_status::TF_ERR_INVALID_ARGUMENT,
        format!("option `{field}`: {message}"),
    )
}

fn check_size(found: u32, expected: usize, name: &str) -> CallResult {
    if found as usize == expected {
        return Ok(());
    }
    Err(invalid(
        "struct_size",
        format!(
            "is {found}, expected {expected}: initialise the struct with {name}_init (and build \
             against this library's header)"
        ),
    ))
}

/// A caller's options struct (`NULL`: the defaults). Its `struct_size` is read and checked
/// first, so a struct of another size (an older header, or one never initialised) is refused
/// before any more of it is read.
///
/// # Safety
/// `ptr` is NULL or points to a readable `T` whose first field is its `u32` `struct_size` (or
/// at least to a readable `u32`, when that size is wrong).
pub(crate) unsafe fn read_options<T: Default + Copy>(ptr: *const T, name: &str) -> CallResult<T> {
    if ptr.is_null() {
        return Ok(T::default());
    }
    // SAFETY: non-NULL; every options struct starts with its u32 `struct_size`.
    let size = unsafe { ptr.cast::<u32>().read() };
    check_size(size, size_of::<T>(), name)?;
    // SAFETY: the caller's struct has this library's size: a whole, readable `T`.
    Ok(unsafe { ptr.read() })
}

impl tf_load_options {
    /// The SDK's options; every field checked, errors naming it.
    pub(crate) fn to_sdk(self) -> CallResult<LoadOptions> {
        check_size(
            self.struct_size,
            size_of::<tf_load_options>(),
            "tf_load_options",
        )?;
        let precision = match self.precision {
            TF_PRECISION_AUTO => PrecisionChoice::Auto,
            TF_PRECISION_FP32 => PrecisionChoice::Exact(Precision::Fp32),
            TF_PRECISION_FP16 => PrecisionChoice::Exact(Precision::Fp16),
            TF_PRECISION_INT8 => PrecisionChoice::Exact(Precision::Int8),
            other => {
                return Err(invalid(
                    "precision",
                    format!("unknown value {other} (expected a TF_PRECISION_* constant)"),
                ))
            }
        };
        let device = match self.device {
            TF_DEVICE_CPU => Device::Cpu,
            TF_DEVICE_CUDA => Device::Cuda,
            TF_DEVICE_AUTO => Device::Auto,
            other => {
                return Err(invalid(
                    "device",
                    format!("unknown value {other} (expected a TF_DEVICE_* constant)"),
                ))
            }
        };
        let options = LoadOptions {
            precision: PartPrecisions::all(precision),
            threads: Some(self.threads as usize),
            device,
            memory_cap: (self.memory_cap != 0).then_some(self.memory_cap),
            ..LoadOptions::default()
        };
        options.validate()?;
        Ok(options)
    }
}

impl tf_generate_options {
    /// The SDK's options (without the callbacks); every field checked, errors naming it.
    pub(crate) fn to_sdk(self) -> CallResult<GenerateOptions> {
        check_size(
            self.struct_size,
            size_of::<tf_generate_options>(),
            "tf_generate_options",
        )?;
        let unknown_words = match self.unknown_words {
            TF_UNKNOWN_WORDS_WARN => UnknownWords::Warn,
            TF_UNKNOWN_WORDS_ERROR => UnknownWords::Error,
            TF_UNKNOWN_WORDS_ALLOW => UnknownWords::Allow,
            other => {
                return Err(invalid(
                    "unknown_words",
                    format!("unknown value {other} (expected a TF_UNKNOWN_WORDS_* constant)"),
                ))
            }
        };
        if self.guidance != 0.0 && !(self.guidance.is_finite() && self.guidance >= 1.0) {
            return Err(invalid(
                "guidance",
                format!(
                    "must be 0 (the model's) or a finite number >= 1, got {}",
                    self.guidance
                ),
            ));
        }
        let options = GenerateOptions {
            seed: self.seed,
            steps: (self.steps != 0).then_some(self.steps as usize),
            guidance: (self.guidance != 0.0).then_some(self.guidance),
            sampling: SamplingOptions {
                temperature: self.temperature,
                ..SamplingOptions::default()
            },
            max_tokens: (self.max_tokens != 0).then_some(self.max_tokens as usize),
            previews: self.on_preview.is_some(),
            unknown_words,
            ..GenerateOptions::default()
        };
        options.validate()?;
        Ok(options)
    }

    /// The cancel token's flag, when one is set.
    pub(crate) fn cancel_flag(
        &self,
        tokens: &Registry<std::sync::atomic::AtomicBool>,
    ) -> CallResult<Option<std::sync::Arc<std::sync::atomic::AtomicBool>>> {
        if self.cancel.is_null() {
            return Ok(None);
        }
        tokens.get(self.cancel, "options.cancel").map(Some)
    }
}
