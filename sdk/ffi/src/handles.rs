//! Opaque handles: what a C caller holds is a number, never a Rust pointer.
//!
//! Each `tf_model*`, `tf_image*` and `tf_cancel*` is an id from one process-wide counter (never
//! reused, never 0) cast to a pointer; the object lives in a registry of its kind behind an
//! `Arc`. Every call looks the id up, so a NULL, freed, double-freed or wrong-kind handle is an
//! error (`TF_ERR_INVALID_HANDLE`) instead of undefined behaviour, and freeing a model while
//! another thread generates with it only drops the registry's reference: the generation keeps
//! its own and finishes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::status::{tf_status, CallResult, Failure};

/// Ids of every handle of every kind: a model handle passed as an image is never found.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The live objects of one kind, by handle id.
pub(crate) struct Registry<T> {
    kind: &'static str,
    live: Mutex<Option<HashMap<u64, Arc<T>>>>,
}

impl<T> Registry<T> {
    pub(crate) const fn new(kind: &'static str) -> Self {
        Registry {
            kind,
            live: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<HashMap<u64, Arc<T>>>> {
        // A panic while holding the lock leaves the map consistent (insert/remove/get only).
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers `value`; the handle to give the caller.
    pub(crate) fn insert<H>(&self, value: T) -> *mut H {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .get_or_insert_with(HashMap::new)
            .insert(id, Arc::new(value));
        id as usize as *mut H
    }

    fn invalid(&self, handle: usize, what: &str) -> Failure {
        let message = if handle == 0 {
            format!("the {} handle `{what}` is NULL", self.kind)
        } else {
            format!(
                "`{what}` ({handle:#x}) is not a live {} handle (freed already, or not one)",
                self.kind
            )
        };
        Failure::new(tf_status::TF_ERR_INVALID_HANDLE, message)
    }

    /// The object behind `handle`; `what` names the argument in errors.
    pub(crate) fn get<H>(&self, handle: *const H, what: &str) -> CallResult<Arc<T>> {
        let id = handle as usize;
        self.lock()
            .as_ref()
            .and_then(|live| live.get(&(id as u64)))
            .cloned()
            .ok_or_else(|| self.invalid(id, what))
    }

    /// Unregisters `handle` (NULL: nothing to do). The object is dropped once no call still
    /// uses it.
    pub(crate) fn remove<H>(&self, handle: *mut H, what: &str) -> CallResult {
        let id = handle as usize;
        if id == 0 {
            return Ok(());
        }
        let removed = self
            .lock()
            .as_mut()
            .and_then(|live| live.remove(&(id as u64)));
        match removed {
            Some(_) => Ok(()),
            None => Err(self.invalid(id, what)),
        }
    }

    /// How many objects of this kind are live (for leak checks in tests).
    pub(crate) fn len(&self) -> usize {
        self.lock().as_ref().map_or(0, HashMap::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Thing;

    #[test]
    fn freed_unknown_and_foreign_handles_are_refused() {
        let things: Registry<u32> = Registry::new("thing");
        let others: Registry<u32> = Registry::new("other");
        let a: *mut Thing = things.insert(7);
        assert_eq!(*things.get(a, "a").unwrap(), 7);
        let b: *mut Thing = others.insert(8);
        let err = things.get(b, "b").unwrap_err();
        assert_eq!(err.status, tf_status::TF_ERR_INVALID_HANDLE);
        assert!(
            err.message.contains("not a live thing handle"),
            "{}",
            err.message
        );
        things.remove(a, "a").unwrap();
        assert!(things.get(a, "a").is_err());
        assert!(things.remove(a, "a").is_err(), "double free is detected");
        assert!(things.remove(std::ptr::null_mut::<Thing>(), "a").is_ok());
        let err = things.get(std::ptr::null::<Thing>(), "a").unwrap_err();
        assert!(err.message.contains("is NULL"), "{}", err.message);
        assert_eq!(things.len(), 0);
    }
}
