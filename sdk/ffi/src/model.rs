//! Models across the ABI: load, generate an image, caption an image.

use std::collections::HashSet;
use std::ffi::{c_char, CString};
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use transfusion_sdk::{Control, Event, GenerateOptions, Model, Request, StopReason};

use crate::handles::Registry;
use crate::image::{clear, give_image, IMAGES};
use crate::options::{read_options, tf_generate_options, tf_load_options};
use crate::status::{guard, str_arg, tf_status, write_out, CallResult, Failure};
use crate::{tf_image, tf_model, CANCELS};

pub(crate) static MODELS: Registry<Model> = Registry::new("tf_model");

/// Addresses of the strings handed out and not yet freed: `tf_string_free` of anything else
/// (a double free, a string the library did not make) is refused, not undefined behaviour.
static STRINGS: Mutex<Option<HashSet<usize>>> = Mutex::new(None);

fn strings() -> std::sync::MutexGuard<'static, Option<HashSet<usize>>> {
    STRINGS.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn live_strings() -> usize {
    strings().as_ref().map_or(0, HashSet::len)
}

/// Loads the bundle in directory `bundle_dir` with `options` (NULL: the defaults) into
/// `*out`. On failure `*out` is NULL and `tf_last_error()` names the file or option.
#[no_mangle]
pub extern "C" fn tf_model_load(
    bundle_dir: *const c_char,
    options: *const tf_load_options,
    out: *mut *mut tf_model,
) -> tf_status {
    clear(out);
    guard("tf_model_load", || {
        // SAFETY: the caller passes NULL or a NUL-terminated string.
        let dir = unsafe { str_arg(bundle_dir, "bundle_dir") }?;
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        // SAFETY: the caller passes NULL or an initialised `tf_load_options`.
        let options = unsafe { read_options(options, "tf_load_options") }?;
        let model = Model::load(dir, &options.to_sdk()?)?;
        let handle = MODELS.insert(model);
        // SAFETY: checked non-NULL; the caller passes a writable pointer.
        unsafe { write_out(out, handle, "out") }
    })
}

/// Frees a model (NULL: nothing). Generations running on it on other threads finish first:
/// the model's memory goes when the last of them returns.
#[no_mangle]
pub extern "C" fn tf_model_free(model: *mut tf_model) -> tf_status {
    guard("tf_model_free", || MODELS.remove(model, "model"))
}

/// The side of the model's square images, in pixels (64 for shapes64).
#[no_mangle]
pub extern "C" fn tf_model_image_size(model: *const tf_model, size: *mut u32) -> tf_status {
    guard("tf_model_image_size", || {
        let model = MODELS.get(model, "model")?;
        let side = model.manifest().geometry.image_size as u32;
        // SAFETY: the caller passes NULL or a writable pointer.
        unsafe { write_out(size, side, "size") }
    })
}

fn generate_options(options: *const tf_generate_options) -> CallResult<tf_generate_options> {
    // SAFETY: the caller passes NULL or an initialised `tf_generate_options`.
    unsafe { read_options(options, "tf_generate_options") }
}

/// Runs `request` with `options` and the callbacks and cancel token of `c`;
/// `Err(TF_ERR_CANCELLED)` when a callback or the token stopped it.
fn run(
    model: &Model,
    request: Request,
    c: &tf_generate_options,
    options: &GenerateOptions,
) -> CallResult<transfusion_sdk::Output> {
    let cancel = c.cancel_flag(&CANCELS)?;
    let cancelled = || cancel.as_ref().is_some_and(|f| f.load(Ordering::SeqCst));
    let user = c.user_data;
    let out = model.generate(request, options, |event| {
        if cancelled() {
            return Control::Cancel;
        }
        let stop = match event {
            Event::Step {
                index,
                total,
                preview,
            } => {
                let step = (index + 1) as u32;
                let by_progress = c
                    .on_progress
                    .is_some_and(|f| f(user, step, total as u32) != 0);
                let by_preview = match (c.on_preview, preview) {
                    (Some(f), Some(p)) => {
                        f(user, step, p.data().as_ptr(), p.width(), p.height()) != 0
                    }
                    _ => false,
                };
                by_progress || by_preview
            }
            Event::UnknownWords { words } => {
                if let Some(f) = c.on_warning {
                    let text = format!(
                        "the model does not know these prompt words: {}",
                        words.join(", ")
                    );
                    let text = CString::new(text.replace('\0', " ")).unwrap_or_default();
                    f(user, text.as_ptr());
                }
                false
            }
            _ => false,
        };
        if stop {
            Control::Cancel
        } else {
            Control::Continue
        }
    })?;
    if out.stop == StopReason::Cancelled {
        return Err(Failure::new(
            tf_status::TF_ERR_CANCELLED,
            "cancelled (by a callback or the cancel token)",
        ));
    }
    Ok(out)
}

/// Draws `prompt` (UTF-8) into a new image in `*out` (free it with `tf_image_free`).
/// `options` NULL: the defaults. On failure `*out` is NULL.
#[no_mangle]
pub extern "C" fn tf_generate_image(
    model: *const tf_model,
    prompt: *const c_char,
    options: *const tf_generate_options,
    out: *mut *mut tf_image,
) -> tf_status {
    clear(out);
    guard("tf_generate_image", || {
        let model = MODELS.get(model, "model")?;
        // SAFETY: the caller passes NULL or a NUL-terminated string.
        let prompt = unsafe { str_arg(prompt, "prompt") }?;
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        let c = generate_options(options)?;
        let options = GenerateOptions {
            // The image only: no text after it.
            max_tokens: Some(0),
            ..c.to_sdk()?
        };
        let output = run(&model, Request::Image { prompt }, &c, &options)?;
        let image = output
            .images()
            .first()
            .map(|i| (*i).clone())
            .ok_or_else(|| {
                Failure::new(
                    tf_status::TF_ERR_INTERNAL,
                    format!("generation stopped ({:?}) without an image", output.stop),
                )
            })?;
        give_image(image, out)
    })
}

/// Describes `image` in words: a new NUL-terminated UTF-8 string in `*out` (free it with
/// `tf_string_free`). `options` NULL: the defaults. On failure `*out` is NULL.
#[no_mangle]
pub extern "C" fn tf_caption(
    model: *const tf_model,
    image: *const tf_image,
    options: *const tf_generate_options,
    out: *mut *mut c_char,
) -> tf_status {
    clear(out);
    guard("tf_caption", || {
        let model = MODELS.get(model, "model")?;
        let image = IMAGES.get(image, "image")?;
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        let c = generate_options(options)?;
        let options = GenerateOptions {
            // Text only: the model may not open images of its own.
            max_images: 0,
            ..c.to_sdk()?
        };
        let output = run(&model, Request::Caption { image: &image }, &c, &options)?;
        let text = CString::new(output.text().replace('\0', " "))
            .map_err(|e| Failure::new(tf_status::TF_ERR_INTERNAL, format!("caption text: {e}")))?;
        let ptr = text.into_raw();
        strings()
            .get_or_insert_with(HashSet::new)
            .insert(ptr as usize);
        // SAFETY: checked non-NULL; the caller passes a writable pointer.
        unsafe { write_out(out, ptr, "out") }
    })
}

/// Frees a string the library returned (NULL: nothing). Anything else — a string freed
/// already, or not from this library — is refused with `TF_ERR_INVALID_HANDLE`.
#[no_mangle]
pub extern "C" fn tf_string_free(text: *mut c_char) -> tf_status {
    guard("tf_string_free", || {
        if text.is_null() {
            return Ok(());
        }
        let known = strings()
            .as_mut()
            .is_some_and(|live| live.remove(&(text as usize)));
        if !known {
            return Err(Failure::new(
                tf_status::TF_ERR_INVALID_HANDLE,
                format!(
                    "`text` ({:#x}) is not a live string of this library (freed already, or not one)",
                    text as usize
                ),
            ));
        }
        // SAFETY: made by `CString::into_raw` in `tf_caption` and not freed since (it was in
        // the live set, and is removed from it now).
        drop(unsafe { CString::from_raw(text) });
        Ok(())
    })
}
