//! Status codes, the per-thread last error, and the guard every exported function runs in
//! (no Rust panic crosses the ABI).

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use transfusion_sdk::Error;

/// What a call returned. `TF_OK` is 0; every other value is a failure whose message
/// `tf_last_error()` gives on the same thread.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum tf_status {
    /// Success.
    TF_OK = 0,
    /// A required pointer argument was NULL.
    TF_ERR_NULL_ARGUMENT = 1,
    /// A string argument is not valid UTF-8.
    TF_ERR_INVALID_UTF8 = 2,
    /// An option or argument is out of range, or an options struct was not initialised with
    /// its `*_options_init` function.
    TF_ERR_INVALID_ARGUMENT = 3,
    /// A handle is NULL where one is required, already freed, or of another kind.
    TF_ERR_INVALID_HANDLE = 4,
    /// A buffer's length does not match what the call needs.
    TF_ERR_BUFFER_SIZE = 5,
    /// A file could not be read or written.
    TF_ERR_IO = 6,
    /// The bundle is invalid (manifest, config, tokenizer or graph file).
    TF_ERR_BUNDLE = 7,
    /// An image could not be decoded, encoded or built.
    TF_ERR_IMAGE = 8,
    /// The prompt has words the model does not know (with `TF_UNKNOWN_WORDS_ERROR`).
    TF_ERR_UNKNOWN_WORDS = 9,
    /// The prompt does not fit the model's context.
    TF_ERR_CONTEXT = 10,
    /// The model produced non-finite values.
    TF_ERR_NUMERICAL = 11,
    /// A callback or a cancel token stopped the generation.
    TF_ERR_CANCELLED = 12,
    /// An internal error (a bug): the library caught it instead of crashing the app.
    TF_ERR_INTERNAL = 13,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// A failed call: its status and message.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: tf_status,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(status: tf_status, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn null(argument: &str) -> Self {
        Failure::new(
            tf_status::TF_ERR_NULL_ARGUMENT,
            format!("`{argument}` is NULL"),
        )
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::Io { .. } => tf_status::TF_ERR_IO,
            Error::Json { .. }
            | Error::InvalidConfig { .. }
            | Error::Graph { .. }
            | Error::Manifest { .. }
            | Error::Tokenizer { .. } => tf_status::TF_ERR_BUNDLE,
            Error::InvalidOption { .. } => tf_status::TF_ERR_INVALID_ARGUMENT,
            Error::Numerical { .. } => tf_status::TF_ERR_NUMERICAL,
            Error::Context { .. } => tf_status::TF_ERR_CONTEXT,
            Error::UnknownWords { .. } => tf_status::TF_ERR_UNKNOWN_WORDS,
            Error::Image { .. } => tf_status::TF_ERR_IMAGE,
        };
        Failure::new(status, e.to_string())
    }
}

impl From<transfusion_sdk::image::ImageError> for Failure {
    fn from(e: transfusion_sdk::image::ImageError) -> Self {
        Error::from(e).into()
    }
}

pub(crate) type CallResult<T = ()> = Result<T, Failure>;

fn set_last_error(message: &str) {
    // A message with an interior NUL (from a path, say) is cut there rather than lost.
    let bytes: Vec<u8> = message.bytes().take_while(|&b| b != 0).collect();
    let text = CString::new(bytes).unwrap_or_default();
    // `try_with`: on a thread whose thread-locals are being destroyed (a call from a C
    // thread-exit destructor) the message is dropped instead of panicking across the ABI.
    let _ = LAST_ERROR.try_with(|last| {
        if let Ok(mut last) = last.try_borrow_mut() {
            *last = text;
        }
    });
}

/// Runs an exported function's body: a failure becomes its status and this thread's last
/// error; a panic becomes `TF_ERR_INTERNAL` with the panic's message.
pub(crate) fn guard(name: &str, body: impl FnOnce() -> CallResult) -> tf_status {
    let outcome = catch_unwind(AssertUnwindSafe(body));
    let failure = match outcome {
        Ok(Ok(())) => return tf_status::TF_OK,
        Ok(Err(failure)) => failure,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            // Dropping the payload runs its destructor: that too stays on this side.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            Failure::new(
                tf_status::TF_ERR_INTERNAL,
                format!("internal error (please report): {what}"),
            )
        }
    };
    let message = format!("{name}: {}", failure.message);
    // The app's log callback runs here: a panic in the logger is not the caller's either.
    let _ = catch_unwind(AssertUnwindSafe(|| log::debug!("{message}")));
    set_last_error(&message);
    failure.status
}

/// The message of this thread's last failed call (empty when none failed yet). The pointer
/// stays valid until the next failing call on this thread.
pub(crate) fn last_error() -> *const c_char {
    LAST_ERROR
        .try_with(|last| last.try_borrow().map(|m| m.as_ptr()).ok())
        .ok()
        .flatten()
        .unwrap_or(c"".as_ptr())
}

/// A `const char*` argument as `&str`, naming `argument` in errors.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that stays valid for the call.
pub(crate) unsafe fn str_arg<'a>(ptr: *const c_char, argument: &str) -> CallResult<&'a str> {
    if ptr.is_null() {
        return Err(Failure::null(argument));
    }
    // SAFETY: non-NULL, and the caller promises a NUL-terminated string.
    let bytes = unsafe { CStr::from_ptr(ptr) };
    bytes.to_str().map_err(|e| {
        Failure::new(
            tf_status::TF_ERR_INVALID_UTF8,
            format!("`{argument}` is not valid UTF-8 ({e})"),
        )
    })
}

/// Writes `value` through an out-pointer, naming `argument` when it is NULL.
///
/// # Safety
/// `out` is NULL or valid for a write of `T`.
pub(crate) unsafe fn write_out<T>(out: *mut T, value: T, argument: &str) -> CallResult {
    if out.is_null() {
        return Err(Failure::null(argument));
    }
    // SAFETY: non-NULL, and the caller promises it is writable.
    unsafe { out.write(value) };
    Ok(())
}

/// The message of a status code, for logs (static, never freed).
pub(crate) fn status_name(status: tf_status) -> &'static CStr {
    match status {
        tf_status::TF_OK => c"ok",
        tf_status::TF_ERR_NULL_ARGUMENT => c"null argument",
        tf_status::TF_ERR_INVALID_UTF8 => c"invalid UTF-8",
        tf_status::TF_ERR_INVALID_ARGUMENT => c"invalid argument",
        tf_status::TF_ERR_INVALID_HANDLE => c"invalid handle",
        tf_status::TF_ERR_BUFFER_SIZE => c"wrong buffer size",
        tf_status::TF_ERR_IO => c"I/O error",
        tf_status::TF_ERR_BUNDLE => c"invalid bundle",
        tf_status::TF_ERR_IMAGE => c"image error",
        tf_status::TF_ERR_UNKNOWN_WORDS => c"unknown prompt words",
        tf_status::TF_ERR_CONTEXT => c"context full",
        tf_status::TF_ERR_NUMERICAL => c"numerical failure",
        tf_status::TF_ERR_CANCELLED => c"cancelled",
        tf_status::TF_ERR_INTERNAL => c"internal error",
    }
}
