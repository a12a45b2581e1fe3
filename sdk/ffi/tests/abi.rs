//! The C ABI called as a C app calls it, bad input included: every misuse the library can
//! detect is an error code and a message, never a crash.

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use transfusion::status::tf_status::{self, *};
use transfusion::*;

/// The tiny fixture converted once per test binary.
fn bundle() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle");
        let ckpt = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/tests/fixtures/tiny");
        let options = transfusion_tools::convert::ConvertOptions::all_precisions(false);
        transfusion_tools::convert::convert(&ckpt, &bundle, &options).unwrap();
        (dir, bundle)
    });
    path
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn last_error() -> String {
    // SAFETY: never NULL, NUL-terminated.
    unsafe { CStr::from_ptr(tf_last_error()) }
        .to_str()
        .unwrap()
        .to_string()
}

fn assert_fails(status: tf_status, expected: tf_status, words: &[&str]) {
    assert_eq!(status, expected, "{}", last_error());
    let message = last_error();
    for w in words {
        assert!(message.contains(w), "`{w}` not in: {message}");
    }
}

fn load() -> *mut tf_model {
    let mut model = null_mut();
    let dir = c(bundle().to_str().unwrap());
    let status = tf_model_load(dir.as_ptr(), null(), &mut model);
    assert_eq!(status, TF_OK, "{}", last_error());
    assert!(!model.is_null());
    model
}

#[test]
fn generate_save_reload_and_caption() {
    let model = load();
    let mut size = 0;
    assert_eq!(tf_model_image_size(model, &mut size), TF_OK);
    let mut image = null_mut();
    let prompt = c("a red circle");
    assert_eq!(
        tf_generate_image(model, prompt.as_ptr(), null(), &mut image),
        TF_OK
    );
    let (mut w, mut h) = (0, 0);
    assert_eq!(tf_image_size(image, &mut w, &mut h), TF_OK);
    assert_eq!((w, h), (size, size));
    let mut pixels = vec![0u8; (w * h * 3) as usize];
    assert_eq!(
        tf_image_copy_rgb(image, pixels.as_mut_ptr(), pixels.len()),
        TF_OK
    );

    let dir = tempfile::tempdir().unwrap();
    let png = c(dir.path().join("out.png").to_str().unwrap());
    assert_eq!(tf_image_save_png(image, png.as_ptr()), TF_OK);
    let mut reloaded = null_mut();
    assert_eq!(tf_image_load_png(png.as_ptr(), &mut reloaded), TF_OK);
    let mut again = vec![0u8; pixels.len()];
    assert_eq!(
        tf_image_copy_rgb(reloaded, again.as_mut_ptr(), again.len()),
        TF_OK
    );
    assert_eq!(pixels, again);

    let mut text: *mut c_char = null_mut();
    assert_eq!(tf_caption(model, image, null(), &mut text), TF_OK);
    assert!(!text.is_null());
    // SAFETY: a NUL-terminated string from the library.
    let caption = unsafe { CStr::from_ptr(text) }
        .to_str()
        .unwrap()
        .to_string();
    let sdk = transfusion_sdk::Model::load(bundle(), &Default::default()).unwrap();
    let rgb = transfusion_sdk::RgbImage::new(w, h, pixels).unwrap();
    assert_eq!(caption, sdk.caption(&rgb, &Default::default()).unwrap());
    assert_eq!(tf_string_free(text), TF_OK);
    assert_fails(
        tf_string_free(text),
        TF_ERR_INVALID_HANDLE,
        &["not a live string"],
    );

    for i in [image, reloaded] {
        assert_eq!(tf_image_free(i), TF_OK);
    }
    assert_eq!(tf_model_free(model), TF_OK);
}

#[test]
fn null_pointers_are_errors() {
    let mut model = null_mut();
    assert_fails(
        tf_model_load(null(), null(), &mut model),
        TF_ERR_NULL_ARGUMENT,
        &["tf_model_load", "`bundle_dir` is NULL"],
    );
    let dir = c(bundle().to_str().unwrap());
    assert_fails(
        tf_model_load(dir.as_ptr(), null(), null_mut()),
        TF_ERR_NULL_ARGUMENT,
        &["`out`"],
    );
    let prompt = c("a red circle");
    let mut image = null_mut();
    assert_fails(
        tf_generate_image(null(), prompt.as_ptr(), null(), &mut image),
        TF_ERR_INVALID_HANDLE,
        &["tf_model handle `model` is NULL"],
    );
    let model = load();
    assert_fails(
        tf_generate_image(model, null(), null(), &mut image),
        TF_ERR_NULL_ARGUMENT,
        &["`prompt`"],
    );
    assert_fails(
        tf_generate_image(model, prompt.as_ptr(), null(), null_mut()),
        TF_ERR_NULL_ARGUMENT,
        &["`out`"],
    );
    assert_fails(
        tf_image_new(2, 2, null(), 12, &mut image),
        TF_ERR_NULL_ARGUMENT,
        &["`rgb`"],
    );
    assert_fails(
        tf_load_options_init(null_mut()),
        TF_ERR_NULL_ARGUMENT,
        &["`options`"],
    );
    assert_fails(tf_cancel_new(null_mut()), TF_ERR_NULL_ARGUMENT, &["`out`"]);
    // Freeing NULL is a no-op, as free(NULL) is.
    assert_eq!(tf_model_free(null_mut()), TF_OK);
    assert_eq!(tf_image_free(null_mut()), TF_OK);
    assert_eq!(tf_string_free(null_mut()), TF_OK);
    assert_eq!(tf_cancel_free(null_mut()), TF_OK);
    assert_eq!(tf_model_free(model), TF_OK);
}

#[test]
fn invalid_utf8_is_an_error_naming_the_argument() {
    let bad = [0x61u8, 0xff, 0xfe, 0];
    let ptr = bad.as_ptr().cast::<c_char>();
    let mut model = null_mut();
    assert_fails(
        tf_model_load(ptr, null(), &mut model),
        TF_ERR_INVALID_UTF8,
        &["`bundle_dir` is not valid UTF-8"],
    );
    let loaded = load();
    let mut image = null_mut();
    assert_fails(
        tf_generate_image(loaded, ptr, null(), &mut image),
        TF_ERR_INVALID_UTF8,
        &["`prompt`"],
    );
    assert!(image.is_null());
    assert_eq!(tf_model_free(loaded), TF_OK);
}

#[test]
fn wrong_buffer_sizes_are_refused() {
    let data = [7u8; 12];
    let mut image = null_mut();
    assert_fails(
        tf_image_new(2, 2, data.as_ptr(), 11, &mut image),
        TF_ERR_BUFFER_SIZE,
        &["`len` is 11 bytes", "is 12"],
    );
    assert!(image.is_null());
    assert_fails(
        tf_image_new(u32::MAX, u32::MAX, data.as_ptr(), 12, &mut image),
        TF_ERR_INVALID_ARGUMENT,
        &["too large"],
    );
    assert_eq!(tf_image_new(2, 2, data.as_ptr(), 12, &mut image), TF_OK);
    let mut small = [0u8; 11];
    assert_fails(
        tf_image_copy_rgb(image, small.as_mut_ptr(), small.len()),
        TF_ERR_BUFFER_SIZE,
        &["this 2x2 image is 12"],
    );
    assert_eq!(tf_image_free(image), TF_OK);
    let mut zero = 0u32;
    assert_fails(
        tf_image_new(0, 0, data.as_ptr(), 0, &mut image),
        TF_ERR_IMAGE,
        &[],
    );
    assert!(image.is_null(), "a failed call sets the out-handle to NULL");
    assert_eq!(
        tf_image_size(image, &mut zero, null_mut()),
        TF_ERR_INVALID_HANDLE
    );
}

#[test]
fn freed_and_foreign_handles_are_detected() {
    let model = load();
    let data = [1u8; 3];
    let mut image = null_mut();
    assert_eq!(tf_image_new(1, 1, data.as_ptr(), 3, &mut image), TF_OK);
    assert_eq!(tf_image_free(image), TF_OK);
    let mut w = 0;
    assert_fails(
        tf_image_size(image, &mut w, null_mut()),
        TF_ERR_INVALID_HANDLE,
        &["not a live tf_image handle"],
    );
    assert_fails(
        tf_image_free(image),
        TF_ERR_INVALID_HANDLE,
        &["tf_image_free"],
    );
    // A model handle where an image goes, and the reverse.
    let as_image = model.cast::<tf_image>();
    assert_fails(
        tf_image_size(as_image, &mut w, null_mut()),
        TF_ERR_INVALID_HANDLE,
        &[],
    );
    let mut text = null_mut();
    assert_fails(
        tf_caption(image.cast(), as_image, null(), &mut text),
        TF_ERR_INVALID_HANDLE,
        &["tf_model"],
    );
    assert!(text.is_null());
    // A made-up pointer is never dereferenced.
    let bogus = 0xdead_beef_usize as *mut tf_model;
    assert_fails(tf_model_free(bogus), TF_ERR_INVALID_HANDLE, &["0xdeadbeef"]);
    assert_eq!(tf_model_free(model), TF_OK);
    let prompt = c("a red circle");
    assert_fails(
        tf_generate_image(model, prompt.as_ptr(), null(), &mut image),
        TF_ERR_INVALID_HANDLE,
        &["freed already"],
    );
}

#[test]
fn options_are_checked_and_uninitialised_structs_refused() {
    let dir = c(bundle().to_str().unwrap());
    let mut model = null_mut();
    let mut load_options = tf_load_options {
        struct_size: 0,
        precision: 0,
        device: 0,
        threads: 1,
        memory_cap: 0,
    };
    assert_fails(
        tf_model_load(dir.as_ptr(), &load_options, &mut model),
        TF_ERR_INVALID_ARGUMENT,
        &["struct_size", "tf_load_options_init"],
    );
    assert_eq!(tf_load_options_init(&mut load_options), TF_OK);
    load_options.precision = 42;
    assert_fails(
        tf_model_load(dir.as_ptr(), &load_options, &mut model),
        TF_ERR_INVALID_ARGUMENT,
        &["`precision`", "42"],
    );
    tf_load_options_init(&mut load_options);
    load_options.threads = 0;
    assert_fails(
        tf_model_load(dir.as_ptr(), &load_options, &mut model),
        TF_ERR_INVALID_ARGUMENT,
        &["threads"],
    );
    let missing = c("/nonexistent/bundle");
    assert_fails(
        tf_model_load(missing.as_ptr(), null(), &mut model),
        TF_ERR_IO,
        &["/nonexistent/bundle"],
    );
    assert!(model.is_null());

    let model = load();
    // SAFETY: all-zero is a valid tf_generate_options (NULL callbacks and pointers): what a
    // C app that forgot tf_generate_options_init passes after a memset.
    let mut options: tf_generate_options = unsafe { std::mem::zeroed() };
    let prompt = c("a red circle");
    let mut image = null_mut();
    assert_fails(
        tf_generate_image(model, prompt.as_ptr(), &options, &mut image),
        TF_ERR_INVALID_ARGUMENT,
        &["tf_generate_options_init"],
    );
    tf_generate_options_init(&mut options);
    options.steps = 5000;
    assert_fails(
        tf_generate_image(model, prompt.as_ptr(), &options, &mut image),
        TF_ERR_INVALID_ARGUMENT,
        &["steps"],
    );
    tf_generate_options_init(&mut options);
    options.unknown_words = TF_UNKNOWN_WORDS_ERROR;
    let odd = c("a red zeppelin");
    assert_fails(
        tf_generate_image(model, odd.as_ptr(), &options, &mut image),
        TF_ERR_UNKNOWN_WORDS,
        &["zeppelin"],
    );
    assert_eq!(tf_model_free(model), TF_OK);
}

static STEPS: AtomicU32 = AtomicU32::new(0);
/// Callbacks record what they saw wrong here (an assert in an `extern "C"` callback would
/// abort the test binary instead of failing the test).
static BAD_CALLBACKS: AtomicU32 = AtomicU32::new(0);

extern "C" fn count_steps(_: *mut c_void, step: u32, total: u32) -> i32 {
    if !(step >= 1 && step <= total) {
        BAD_CALLBACKS.fetch_add(1, Ordering::SeqCst);
    }
    STEPS.fetch_add(1, Ordering::SeqCst);
    0
}

extern "C" fn stop_at_once(user: *mut c_void, _: u32, _: u32) -> i32 {
    // SAFETY: the test passes a pointer to an AtomicU32.
    unsafe { &*(user as *const AtomicU32) }.fetch_add(1, Ordering::SeqCst);
    1
}

extern "C" fn check_preview(_: *mut c_void, _: u32, rgb: *const u8, w: u32, h: u32) -> i32 {
    if rgb.is_null() || w == 0 || h == 0 {
        BAD_CALLBACKS.fetch_add(1, Ordering::SeqCst);
    }
    0
}

#[test]
fn callbacks_see_every_step_and_can_cancel() {
    let model = load();
    let mut options = std::mem::MaybeUninit::<tf_generate_options>::uninit();
    assert_eq!(tf_generate_options_init(options.as_mut_ptr()), TF_OK);
    // SAFETY: initialised by tf_generate_options_init.
    let mut options = unsafe { options.assume_init() };
    options.on_progress = Some(count_steps);
    options.on_preview = Some(check_preview);
    let prompt = c("a red circle");
    let mut image = null_mut();
    STEPS.store(0, Ordering::SeqCst);
    assert_eq!(
        tf_generate_image(model, prompt.as_ptr(), &options, &mut image),
        TF_OK
    );
    assert!(STEPS.load(Ordering::SeqCst) >= 1);
    assert_eq!(BAD_CALLBACKS.load(Ordering::SeqCst), 0);
    tf_image_free(image);

    let calls = AtomicU32::new(0);
    options.on_progress = Some(stop_at_once);
    options.user_data = &calls as *const AtomicU32 as *mut c_void;
    assert_fails(
        tf_generate_image(model, prompt.as_ptr(), &options, &mut image),
        TF_ERR_CANCELLED,
        &["cancelled"],
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(image.is_null(), "a cancelled call leaves nothing to free");
    tf_model_free(model);
}

#[test]
fn a_cancel_token_stops_generations_from_another_thread() {
    let model = load() as usize;
    let mut token = null_mut();
    assert_eq!(tf_cancel_new(&mut token), TF_OK);
    let token = token as usize;
    // Triggered before the call: the generation stops at its first event.
    assert_eq!(tf_cancel_request(token as *const tf_cancel), TF_OK);
    let run = move || {
        let mut options = std::mem::MaybeUninit::<tf_generate_options>::uninit();
        tf_generate_options_init(options.as_mut_ptr());
        // SAFETY: initialised by tf_generate_options_init.
        let mut options = unsafe { options.assume_init() };
        options.cancel = token as *const tf_cancel;
        let prompt = c("a red circle");
        let mut image = null_mut();
        let status = tf_generate_image(
            model as *const tf_model,
            prompt.as_ptr(),
            &options,
            &mut image,
        );
        tf_image_free(image);
        status
    };
    assert_eq!(std::thread::spawn(run).join().unwrap(), TF_ERR_CANCELLED);
    assert_eq!(tf_cancel_reset(token as *const tf_cancel), TF_OK);
    assert_eq!(std::thread::spawn(run).join().unwrap(), TF_OK);
    // Requested from another thread while generations run on two more: each either finished
    // before it or stops; none crashes, and the token is freed while they may still run.
    let workers: Vec<_> = (0..2).map(|_| std::thread::spawn(run)).collect();
    let canceller = std::thread::spawn(move || {
        let requested = tf_cancel_request(token as *const tf_cancel);
        (requested, tf_cancel_free(token as *mut tf_cancel))
    });
    assert_eq!(canceller.join().unwrap(), (TF_OK, TF_OK));
    for w in workers {
        let status = w.join().unwrap();
        // A worker that had not read the token yet finds it freed: an invalid handle.
        assert!(
            matches!(status, TF_OK | TF_ERR_CANCELLED | TF_ERR_INVALID_HANDLE),
            "{status:?}"
        );
    }
    assert_eq!(tf_model_free(model as *mut tf_model), TF_OK);
}

static LOGGED: AtomicU32 = AtomicU32::new(0);

extern "C" fn count_log(_: *mut c_void, level: i32, message: *const c_char) {
    if (TF_LOG_ERROR..=TF_LOG_DEBUG).contains(&level) && !message.is_null() {
        LOGGED.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn the_log_reaches_the_apps_callback_once_asked_for() {
    assert_fails(
        tf_set_log(9, None, null_mut()),
        TF_ERR_INVALID_ARGUMENT,
        &["TF_LOG_*"],
    );
    assert_eq!(tf_set_log(TF_LOG_INFO, Some(count_log), null_mut()), TF_OK);
    let model = load(); // logs each graph it loads, at info
    assert!(LOGGED.load(Ordering::SeqCst) > 0);
    assert_eq!(tf_set_log(TF_LOG_OFF, None, null_mut()), TF_OK);
    let before = LOGGED.load(Ordering::SeqCst);
    tf_model_free(load());
    // A load logs a line per graph (7) at info; tests on other threads may slip one record
    // past the switch, not seven.
    assert!(LOGGED.load(Ordering::SeqCst) < before + 7);
    tf_model_free(model);
}

#[test]
fn status_names_and_version_are_static_strings() {
    // SAFETY: static NUL-terminated strings.
    let name = |s: i32| {
        unsafe { CStr::from_ptr(tf_status_name(s)) }
            .to_str()
            .unwrap()
    };
    assert_eq!(name(0), "ok");
    assert_eq!(name(TF_ERR_INVALID_HANDLE as i32), "invalid handle");
    assert_eq!(name(-7), "unknown status");
    let version = unsafe { CStr::from_ptr(tf_version()) }.to_str().unwrap();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
}
