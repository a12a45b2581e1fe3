//! The C ABI of the Transfusion edge runtime: `libtransfusion.so` / `libtransfusion.a` and
//! `include/transfusion.h` (generated from this crate by cbindgen; `tests/header.rs` keeps it
//! current). docs/api.md shows it in use; `examples/c/generate.c` is a complete program.
//!
//! Rules every function follows:
//! - it returns a [`tf_status`]; on failure [`tf_last_error`] has the message (per thread);
//! - no Rust panic crosses the ABI: a bug becomes `TF_ERR_INTERNAL`;
//! - handles are checked ids ([`handles`]): NULL, freed or foreign handles are
//!   `TF_ERR_INVALID_HANDLE`; freeing NULL does nothing;
//! - out-pointers are written only on success (and set to NULL on failure where they hold a
//!   handle), so a failed call leaves nothing to free.
//!
//! Everything here is thread-safe: a model may generate on several threads at once (each call
//! runs its own session), and a cancel token may be triggered from any thread.

#![allow(non_camel_case_types)]
// Every exported function checks its pointers before use; what it cannot check (a string or
// buffer pointer into memory the caller does not own) is the caller's promise, stated in the
// header. Clippy's lint would ask for `unsafe fn` on every export, which would promise less.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

pub mod handles;
mod image;
mod logging;
mod model;
pub mod options;
pub mod status;

use std::ffi::c_char;
use std::sync::atomic::{AtomicBool, Ordering};

use handles::Registry;
pub use image::*;
pub use logging::*;
pub use model::*;
pub use options::*;
pub use status::tf_status;
use status::{guard, write_out};

/// A loaded model (opaque).
pub struct tf_model {
    _opaque: [u8; 0],
}

/// An RGB8 image owned by the library (opaque): free it with `tf_image_free`.
pub struct tf_image {
    _opaque: [u8; 0],
}

/// A cancel token (opaque): `tf_cancel_request` from any thread stops the generations that
/// were given it.
pub struct tf_cancel {
    _opaque: [u8; 0],
}

pub(crate) static CANCELS: Registry<AtomicBool> = Registry::new("tf_cancel");

/// The library version, e.g. "0.1.0" (static; never freed).
#[no_mangle]
pub extern "C" fn tf_version() -> *const c_char {
    static VERSION: &std::ffi::CStr = match std::ffi::CStr::from_bytes_with_nul(
        concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes(),
    ) {
        Ok(v) => v,
        Err(_) => c"unknown",
    };
    VERSION.as_ptr()
}

/// The message of this thread's last failed call ("" when none failed). Valid until the
/// next failing call on this thread; never NULL.
#[no_mangle]
pub extern "C" fn tf_last_error() -> *const c_char {
    status::last_error()
}

/// A short name of `status` ("ok", "invalid handle", ...); static, never NULL ("unknown
/// status" for a value that is not a `tf_status`).
#[no_mangle]
pub extern "C" fn tf_status_name(status: i32) -> *const c_char {
    use tf_status::*;
    let all = [
        TF_OK,
        TF_ERR_NULL_ARGUMENT,
        TF_ERR_INVALID_UTF8,
        TF_ERR_INVALID_ARGUMENT,
        TF_ERR_INVALID_HANDLE,
        TF_ERR_BUFFER_SIZE,
        TF_ERR_IO,
        TF_ERR_BUNDLE,
        TF_ERR_IMAGE,
        TF_ERR_UNKNOWN_WORDS,
        TF_ERR_CONTEXT,
        TF_ERR_NUMERICAL,
        TF_ERR_CANCELLED,
        TF_ERR_INTERNAL,
    ];
    match all.into_iter().find(|s| *s as i32 == status) {
        Some(s) => status::status_name(s).as_ptr(),
        None => c"unknown status".as_ptr(),
    }
}

/// Fills `options` with the defaults (sets `struct_size`).
#[no_mangle]
pub extern "C" fn tf_load_options_init(options: *mut tf_load_options) -> tf_status {
    // SAFETY (write_out): the caller passes NULL or a writable `tf_load_options`.
    guard("tf_load_options_init", || unsafe {
        write_out(options, tf_load_options::default(), "options")
    })
}

/// Fills `options` with the defaults (sets `struct_size`).
#[no_mangle]
pub extern "C" fn tf_generate_options_init(options: *mut tf_generate_options) -> tf_status {
    // SAFETY (write_out): the caller passes NULL or a writable `tf_generate_options`.
    guard("tf_generate_options_init", || unsafe {
        write_out(options, tf_generate_options::default(), "options")
    })
}

/// A new cancel token in `*out`; free it with `tf_cancel_free`.
#[no_mangle]
pub extern "C" fn tf_cancel_new(out: *mut *mut tf_cancel) -> tf_status {
    guard("tf_cancel_new", || {
        if out.is_null() {
            return Err(status::Failure::null("out"));
        }
        let handle = CANCELS.insert(AtomicBool::new(false));
        // SAFETY: checked non-NULL; the caller passes a writable pointer.
        unsafe { write_out(out, handle, "out") }
    })
}

/// Asks every generation holding `cancel` to stop at its next step or token (safe from any
/// thread, also while they run). The token stays triggered: reset it with `tf_cancel_reset`.
#[no_mangle]
pub extern "C" fn tf_cancel_request(cancel: *const tf_cancel) -> tf_status {
    guard("tf_cancel_request", || {
        CANCELS.get(cancel, "cancel")?.store(true, Ordering::SeqCst);
        Ok(())
    })
}

/// Clears a triggered token, so the next generation given it runs.
#[no_mangle]
pub extern "C" fn tf_cancel_reset(cancel: *const tf_cancel) -> tf_status {
    guard("tf_cancel_reset", || {
        CANCELS
            .get(cancel, "cancel")?
            .store(false, Ordering::SeqCst);
        Ok(())
    })
}

/// Frees a cancel token (NULL: nothing). Generations still holding it finish unaffected.
#[no_mangle]
pub extern "C" fn tf_cancel_free(cancel: *mut tf_cancel) -> tf_status {
    guard("tf_cancel_free", || CANCELS.remove(cancel, "cancel"))
}

/// Live handles of each kind (models, images, cancel tokens, strings), for leak checks.
#[no_mangle]
pub extern "C" fn tf_live_handles(
    models: *mut usize,
    images: *mut usize,
    cancels: *mut usize,
    strings: *mut usize,
) -> tf_status {
    guard("tf_live_handles", || {
        for (out, n) in [
            (models, model::MODELS.len()),
            (images, image::IMAGES.len()),
            (cancels, CANCELS.len()),
            (strings, model::live_strings()),
        ] {
            if !out.is_null() {
                // SAFETY: non-NULL; the caller passes writable pointers or NULL.
                unsafe { out.write(n) };
            }
        }
        Ok(())
    })
}
