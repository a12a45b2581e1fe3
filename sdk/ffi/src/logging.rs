//! The SDK's log (`log` crate records: warnings such as a GPU fallback's reason, load steps,
//! timings) delivered to a C app: to its callback, or to stderr. Off until `tf_set_log` is
//! called, so a library never writes to an app's terminal uninvited.

use std::ffi::{c_char, c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use crate::status::{guard, tf_status, Failure};

/// `tf_set_log` level: nothing.
pub const TF_LOG_OFF: i32 = 0;
/// `tf_set_log` level: errors only.
pub const TF_LOG_ERROR: i32 = 1;
/// `tf_set_log` level: errors and warnings.
pub const TF_LOG_WARN: i32 = 2;
/// `tf_set_log` level: also progress of loading and generation.
pub const TF_LOG_INFO: i32 = 3;
/// `tf_set_log` level: also diagnostics (every failed call, graph details).
pub const TF_LOG_DEBUG: i32 = 4;

/// Receives one log record: `level` (`TF_LOG_ERROR` … `TF_LOG_DEBUG`) and the message
/// (NUL-terminated UTF-8, valid only during the call). May be called from any thread that
/// runs a library call.
pub type tf_log_fn =
    Option<extern "C" fn(user_data: *mut c_void, level: i32, message: *const c_char)>;

struct Sink {
    callback: tf_log_fn,
    /// The app's `user_data`, passed back untouched (kept as an address: the library never
    /// dereferences it).
    user_data: usize,
}

static SINK: RwLock<Option<Sink>> = RwLock::new(None);
/// Whether this library's logger is the process's `log` logger.
static INSTALLED: AtomicBool = AtomicBool::new(false);

struct Logger;

static LOGGER: Logger = Logger;

fn level_code(level: log::Level) -> i32 {
    match level {
        log::Level::Error => TF_LOG_ERROR,
        log::Level::Warn => TF_LOG_WARN,
        log::Level::Info => TF_LOG_INFO,
        log::Level::Debug | log::Level::Trace => TF_LOG_DEBUG,
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let Ok(sink) = SINK.read() else { return };
        let Some(sink) = sink.as_ref() else { return };
        let text = format!("{}: {}", record.target(), record.args());
        match sink.callback {
            Some(callback) => {
                let text = CString::new(text.replace('\0', " ")).unwrap_or_default();
                callback(
                    sink.user_data as *mut c_void,
                    level_code(record.level()),
                    text.as_ptr(),
                );
            }
            None => eprintln!("[transfusion {}] {text}", record.level()),
        }
    }

    fn flush(&self) {}
}

/// Sends the library's log records up to `level` (`TF_LOG_*`) to `callback` with `user_data`,
/// or to stderr when `callback` is NULL; `TF_LOG_OFF` stops them. Until it is called nothing is
/// logged. The library installs its logger for the whole process on the first call: it fails
/// with `TF_ERR_INVALID_ARGUMENT` when the process already has another `log` logger (a Rust
/// host app that set its own).
#[no_mangle]
pub extern "C" fn tf_set_log(level: i32, callback: tf_log_fn, user_data: *mut c_void) -> tf_status {
    guard("tf_set_log", || {
        let filter = match level {
            TF_LOG_OFF => log::LevelFilter::Off,
            TF_LOG_ERROR => log::LevelFilter::Error,
            TF_LOG_WARN => log::LevelFilter::Warn,
            TF_LOG_INFO => log::LevelFilter::Info,
            TF_LOG_DEBUG => log::LevelFilter::Debug,
            other => {
                return Err(Failure::new(
                    tf_status::TF_ERR_INVALID_ARGUMENT,
                    format!("`level` {other}: expected a TF_LOG_* constant (0 to 4)"),
                ))
            }
        };
        // Installed once per process; later calls only change the sink and the level.
        if !INSTALLED.load(Ordering::SeqCst) {
            if log::set_logger(&LOGGER).is_err() {
                return Err(Failure::new(
                    tf_status::TF_ERR_INVALID_ARGUMENT,
                    "this process already has another `log` logger (a Rust host app's): its \
                     records go there",
                ));
            }
            INSTALLED.store(true, Ordering::SeqCst);
        }
        if let Ok(mut sink) = SINK.write() {
            *sink = Some(Sink {
                callback,
                user_data: user_data as usize,
            });
        }
        log::set_max_level(filter);
        Ok(())
    })
}
