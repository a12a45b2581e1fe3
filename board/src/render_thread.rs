//! A render thread fed by a newest-frame-wins slot, so a slow display never slows inference.
//!
//! The producer (the sampler's step callback) calls [`RenderThread::submit`], which replaces
//! any frame still waiting and returns at once: it never waits for the display. The render
//! thread blocks on a condition variable until a frame (or shutdown) arrives, draws the newest
//! one, flushes it, and goes back to waiting. A panel that needs 200 ms per frame simply shows
//! every few steps; the final frame is never lost because it is always the newest.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::display::Display;
use crate::error::{Error, Result};
use crate::frame::Frame;

/// A one-element queue where a new value replaces the waiting one.
///
/// `push` holds the lock only to swap a value in (the replaced value is dropped after the
/// lock is released), so the producer never waits on the consumer's work.
pub struct LatestSlot<T> {
    state: Mutex<SlotState<T>>,
    ready: Condvar,
    pushed: AtomicU64,
    replaced: AtomicU64,
}

struct SlotState<T> {
    value: Option<T>,
    closed: bool,
}

impl<T> Default for LatestSlot<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> LatestSlot<T> {
    /// An empty, open slot.
    pub fn new() -> Self {
        LatestSlot {
            state: Mutex::new(SlotState {
                value: None,
                closed: false,
            }),
            ready: Condvar::new(),
            pushed: AtomicU64::new(0),
            replaced: AtomicU64::new(0),
        }
    }

    /// The lock, recovered if a holder panicked (the state is a plain `Option` and a flag,
    /// always consistent).
    fn lock(&self) -> MutexGuard<'_, SlotState<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts `value` in the slot, replacing a waiting one. Returns `false` (and drops `value`)
    /// once the slot is closed.
    pub fn push(&self, value: T) -> bool {
        let stale = {
            let mut state = self.lock();
            if state.closed {
                return false;
            }
            state.value.replace(value)
        };
        self.pushed.fetch_add(1, Ordering::Relaxed);
        self.ready.notify_one();
        if stale.is_some() {
            self.replaced.fetch_add(1, Ordering::Relaxed);
        }
        // `stale` (possibly a large image) is dropped here, outside the lock.
        drop(stale);
        true
    }

    /// Waits for a value and takes it. After [`close`](LatestSlot::close), returns the value
    /// still waiting (if any) and then `None`.
    pub fn pop_wait(&self) -> Option<T> {
        let mut state = self.lock();
        loop {
            if let Some(value) = state.value.take() {
                return Some(value);
            }
            if state.closed {
                return None;
            }
            state = self
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Takes the waiting value without blocking.
    pub fn try_pop(&self) -> Option<T> {
        self.lock().value.take()
    }

    /// Refuses further pushes and wakes the consumer.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Values pushed so far.
    pub fn pushed(&self) -> u64 {
        self.pushed.load(Ordering::Relaxed)
    }

    /// Values replaced before the consumer took them (dropped as stale).
    pub fn replaced(&self) -> u64 {
        self.replaced.load(Ordering::Relaxed)
    }
}

/// Counters of a finished render thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenderStats {
    /// Frames submitted.
    pub submitted: u64,
    /// Frames drawn and flushed successfully.
    pub shown: u64,
    /// Frames replaced by a newer one before they were drawn.
    pub dropped: u64,
    /// Frames whose draw or flush failed (logged; the thread keeps going).
    pub failed: u64,
}

/// Handle to a thread that owns a [`Display`] and shows the newest submitted [`Frame`].
pub struct RenderThread {
    slot: Arc<LatestSlot<Frame>>,
    thread: Option<JoinHandle<(u64, u64)>>,
    description: String,
}

impl RenderThread {
    /// Moves `display` to a new thread named `render` and returns the handle.
    pub fn spawn<D: Display + 'static>(mut display: D) -> Result<Self> {
        let slot = Arc::new(LatestSlot::new());
        let description = display.describe();
        let consumer = Arc::clone(&slot);
        let name = description.clone();
        let thread = std::thread::Builder::new()
            .name("render".into())
            .spawn(move || {
                let (mut shown, mut failed) = (0u64, 0u64);
                while let Some(frame) = consumer.pop_wait() {
                    let start = Instant::now();
                    match display.show(&frame) {
                        Ok(()) => {
                            shown += 1;
                            log::trace!("{name}: frame shown in {:?}", start.elapsed());
                        }
                        Err(e) => {
                            failed += 1;
                            log::warn!("{name}: {e}");
                        }
                    }
                }
                log::debug!("{name}: render thread done ({shown} shown, {failed} failed)");
                // `display` is dropped here, on this thread: the backend releases the device.
                (shown, failed)
            })
            .map_err(|e| Error::io("render thread", "spawning", e))?;
        log::info!("render thread started for {description}");
        Ok(RenderThread {
            slot,
            thread: Some(thread),
            description,
        })
    }

    /// Queues `frame` for display, replacing any frame not yet drawn. Never blocks on the
    /// display. Returns `false` if the thread has been shut down.
    pub fn submit(&self, frame: Frame) -> bool {
        self.slot.push(frame)
    }

    /// The display's description (e.g. for a start-up log line).
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// Stops the thread: the frame being drawn is finished, the newest waiting frame (e.g. a
    /// final image submitted just before) is drawn too, then the display is dropped (which
    /// releases the device). Returns the counters, or an error if the thread panicked.
    pub fn shutdown(mut self) -> Result<RenderStats> {
        self.stop()
    }

    fn stop(&mut self) -> Result<RenderStats> {
        self.slot.close();
        let Some(thread) = self.thread.take() else {
            return Ok(RenderStats::default());
        };
        let (shown, failed) = thread.join().map_err(|_| Error::RenderThreadPanicked)?;
        Ok(RenderStats {
            submitted: self.slot.pushed(),
            shown,
            dropped: self.slot.replaced(),
            failed,
        })
    }
}

impl Drop for RenderThread {
    /// Shuts down like [`RenderThread::shutdown`] if that was not called.
    fn drop(&mut self) {
        if self.thread.is_some() {
            if let Err(e) = self.stop() {
                log::error!("{}: {e}", self.description);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn newest_value_wins_and_close_drains() {
        let slot = LatestSlot::new();
        assert!(slot.push(1));
        assert!(slot.push(2));
        assert!(slot.push(3));
        assert_eq!(slot.replaced(), 2);
        assert_eq!(slot.pop_wait(), Some(3));
        assert_eq!(slot.try_pop(), None);
        slot.push(4);
        slot.close();
        assert!(!slot.push(5));
        assert_eq!(slot.pop_wait(), Some(4));
        assert_eq!(slot.pop_wait(), None);
        assert_eq!(slot.pushed(), 4);
    }

    #[test]
    fn consumer_wakes_on_push_and_on_close() {
        let slot = Arc::new(LatestSlot::new());
        let s = Arc::clone(&slot);
        let consumer = std::thread::spawn(move || {
            let mut got = Vec::new();
            while let Some(v) = s.pop_wait() {
                got.push(v);
            }
            got
        });
        std::thread::sleep(Duration::from_millis(20));
        slot.push(7);
        std::thread::sleep(Duration::from_millis(20));
        slot.close();
        assert_eq!(consumer.join().unwrap(), [7]);
    }
}
