//! The render thread: newest frame wins, the producer never waits for a slow display.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use embedded_graphics::prelude::Size;
use transfusion_board::{Display, Error, Frame, ImageKind, RenderThread, Result, Status};
use transfusion_image::RgbImage;

/// A display that takes `delay` per frame (like a slow SPI panel) and records what it showed.
struct SlowDisplay {
    delay: Duration,
    drawn: Arc<Mutex<Vec<String>>>,
    dropped: Arc<AtomicBool>,
    fail_on: Option<&'static str>,
    pending: Option<String>,
    began: Arc<AtomicUsize>,
}

impl Display for SlowDisplay {
    fn size(&self) -> Size {
        Size::new(240, 240)
    }
    fn draw(&mut self, frame: &Frame) -> Result<()> {
        self.began.fetch_add(1, Ordering::SeqCst);
        if self.fail_on == Some(frame.prompt.as_str()) {
            return Err(Error::Device {
                device: "/dev/slow".into(),
                what: "draw".into(),
                message: "injected".into(),
            });
        }
        self.pending = Some(frame.prompt.as_str().to_owned());
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        std::thread::sleep(self.delay);
        if let Some(p) = self.pending.take() {
            self.drawn.lock().unwrap().push(p);
        }
        Ok(())
    }
    fn describe(&self) -> String {
        "slow".into()
    }
}

impl Drop for SlowDisplay {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

fn slow(delay_ms: u64) -> (SlowDisplay, Arc<Mutex<Vec<String>>>, Arc<AtomicBool>) {
    let drawn = Arc::new(Mutex::new(Vec::new()));
    let dropped = Arc::new(AtomicBool::new(false));
    let display = SlowDisplay {
        delay: Duration::from_millis(delay_ms),
        drawn: Arc::clone(&drawn),
        dropped: Arc::clone(&dropped),
        fail_on: None,
        pending: None,
        began: Arc::new(AtomicUsize::new(0)),
    };
    (display, drawn, dropped)
}

#[test]
fn ten_thousand_frames_never_block_and_the_last_one_is_shown() {
    // 250 ms per frame: if submit ever waited for the display, latency would show it.
    let (display, drawn, dropped) = slow(250);
    let screen = RenderThread::spawn(display).unwrap();
    let preview = RgbImage::filled(16, 16, [10, 20, 30]).unwrap();

    let started = Instant::now();
    let mut worst = Duration::ZERO;
    for i in 0..10_000u32 {
        let frame = Frame::new(
            &format!("frame {i}"),
            Status::Generating {
                step: i,
                total: 10_000,
                elapsed_ms: u64::from(i),
            },
        )
        .with_image(preview.clone(), ImageKind::Preview);
        let t = Instant::now();
        assert!(screen.submit(frame));
        worst = worst.max(t.elapsed());
    }
    let total = started.elapsed();
    // Far below one display frame (250 ms): the producer never waited on the display.
    assert!(
        worst < Duration::from_millis(100),
        "worst submit took {worst:?}"
    );
    assert!(total < Duration::from_secs(5), "10k submits took {total:?}");

    let stats = screen.shutdown().unwrap();
    eprintln!("10k submits: total {total:?}, worst {worst:?}; {stats:?}");
    assert!(
        dropped.load(Ordering::SeqCst),
        "display released on shutdown"
    );
    let drawn = drawn.lock().unwrap();
    assert_eq!(drawn.last().map(String::as_str), Some("frame 9999"));
    assert_eq!(stats.submitted, 10_000);
    assert_eq!(stats.shown + stats.dropped, 10_000, "{stats:?}");
    assert!(
        stats.shown <= 1 + (total.as_millis() / 250) as u64 + 1,
        "{stats:?}"
    );
    assert_eq!(stats.shown as usize, drawn.len());
    // Frames are shown in submission order (never an older one after a newer one).
    let numbers: Vec<u32> = drawn
        .iter()
        .map(|s| s["frame ".len()..].parse().unwrap())
        .collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
}

#[test]
fn shutdown_shows_the_final_frame_submitted_just_before() {
    let (display, drawn, _) = slow(100);
    let began = Arc::clone(&display.began);
    let screen = RenderThread::spawn(display).unwrap();
    screen.submit(Frame::new("step 1", Status::Loading));
    // Wait until the thread is busy with step 1.
    let deadline = Instant::now() + Duration::from_secs(10);
    while began.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    screen.submit(Frame::new("step 2", Status::Loading));
    screen.submit(Frame::new("final", Status::Done { total_ms: 1 }));
    let stats = screen.shutdown().unwrap();
    assert_eq!(*drawn.lock().unwrap(), ["step 1", "final"]);
    assert_eq!((stats.shown, stats.dropped), (2, 1));
}

#[test]
fn errors_are_counted_and_the_thread_keeps_going() {
    let (mut display, drawn, dropped) = slow(0);
    display.fail_on = Some("bad");
    let screen = RenderThread::spawn(display).unwrap();
    screen.submit(Frame::new("bad", Status::Loading));
    std::thread::sleep(Duration::from_millis(50));
    screen.submit(Frame::new("good", Status::Loading));
    std::thread::sleep(Duration::from_millis(50));
    drop(screen); // Drop shuts down like shutdown().
    assert!(dropped.load(Ordering::SeqCst));
    assert_eq!(*drawn.lock().unwrap(), ["good"]);
}

#[test]
fn idle_shutdown_reports_nothing_shown() {
    let (display, _, _) = slow(0);
    let screen = RenderThread::spawn(display).unwrap();
    let stats = screen.shutdown().unwrap();
    assert_eq!(stats, Default::default());
}
