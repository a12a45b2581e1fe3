//! The SPI panel path against a hand-written embedded-hal 1.0 mock bus and D/C pin.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use embedded_graphics::pixelcolor::raw::ToBytes;
use embedded_hal::spi::{ErrorType, Operation};

use super::*;
use crate::frame::{ImageKind, Status};

/// Everything that reached the wire: each SPI write with the D/C level it was sent at.
#[derive(Default)]
struct Wire {
    dc_high: bool,
    writes: Vec<(bool, Vec<u8>)>,
}

impl Wire {
    /// The writes decoded into (command, data) pairs as a panel sees them.
    fn commands(&self) -> Vec<(u8, Vec<u8>)> {
        let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
        for (data, bytes) in &self.writes {
            if *data {
                out.last_mut()
                    .expect("data before any command")
                    .1
                    .extend(bytes);
            } else {
                for &b in bytes {
                    out.push((b, Vec::new()));
                }
            }
        }
        out
    }
}

struct MockSpi(Arc<Mutex<Wire>>, usize);
struct MockDc(Arc<Mutex<Wire>>);

impl ErrorType for MockSpi {
    type Error = Infallible;
}

impl SpiDevice for MockSpi {
    fn transaction(&mut self, ops: &mut [Operation<'_, u8>]) -> Result<(), Infallible> {
        let mut wire = self.0.lock().unwrap();
        for op in ops {
            if let Operation::Write(bytes) = op {
                assert!(bytes.len() <= self.1, "write of {} > chunk", bytes.len());
                let dc = wire.dc_high;
                wire.writes.push((dc, bytes.to_vec()));
            }
        }
        Ok(())
    }
}

impl embedded_hal::digital::ErrorType for MockDc {
    type Error = Infallible;
}

impl OutputPin for MockDc {
    fn set_low(&mut self) -> Result<(), Infallible> {
        self.0.lock().unwrap().dc_high = false;
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Infallible> {
        self.0.lock().unwrap().dc_high = true;
        Ok(())
    }
}

struct NoDelay;

impl DelayNs for NoDelay {
    fn delay_ns(&mut self, _: u32) {}
}

fn setup(
    config: &SpiConfig,
) -> (
    Arc<Mutex<Wire>>,
    PanelDisplay<impl DrawTarget<Color = Rgb565, Error: Debug> + Send>,
) {
    let wire = Arc::new(Mutex::new(Wire::default()));
    let spi = MockSpi(Arc::clone(&wire), SPI_CHUNK);
    let dc = MockDc(Arc::clone(&wire));
    let display = panel(spi, dc, config, &mut NoDelay).unwrap();
    (wire, display)
}

fn frame() -> Frame {
    let data: Vec<u8> = (0..16 * 16)
        .flat_map(|i| [(i % 16 * 16) as u8, (i / 16 * 16) as u8, 128])
        .collect();
    let image = transfusion_image::RgbImage::new(16, 16, data).unwrap();
    Frame::new(
        "a red fox",
        Status::Generating {
            step: 2,
            total: 4,
            elapsed_ms: 300,
        },
    )
    .with_image(image, ImageKind::Preview)
}

/// The canvas the panel should show for `frame`, as big-endian RGB565 bytes (the wire format).
fn expected_bytes(size: Size, frame: &Frame, rows: core::ops::Range<u32>) -> Vec<u8> {
    let mut canvas = Canvas::new(size, Rgb565::BLACK).unwrap();
    canvas.render_frame(frame);
    rows.flat_map(|y| canvas.row(y).to_vec())
        .flat_map(|c| c.to_be_bytes())
        .collect()
}

#[test]
fn st7789_init_sequence_then_full_frame() {
    let config = SpiConfig::new("/dev/spidev0.0", 25, PanelModel::St7789);
    let (wire, mut display) = setup(&config);
    let init = wire.lock().unwrap().commands();
    let codes: Vec<u8> = init.iter().map(|(c, _)| *c).collect();
    // SWRESET (no reset pin), SLPOUT, MADCTL, INVON, COLMOD, NORON, DISPON.
    assert_eq!(codes, [0x01, 0x11, 0x36, 0x21, 0x3A, 0x13, 0x29]);
    assert_eq!(init[4].1, [0x55], "COLMOD: 16 bits per pixel");
    assert_eq!(display.size(), Size::new(240, 240));

    wire.lock().unwrap().writes.clear();
    let frame = frame();
    display.show(&frame).unwrap();
    let sent = wire.lock().unwrap().commands();
    let codes: Vec<u8> = sent.iter().map(|(c, _)| *c).collect();
    assert_eq!(codes, [0x2A, 0x2B, 0x2C], "CASET, RASET, RAMWR");
    assert_eq!(sent[0].1, [0, 0, 0, 239]);
    assert_eq!(sent[1].1, [0, 0, 0, 239]);
    assert_eq!(sent[2].1.len(), 240 * 240 * 2);
    assert_eq!(
        sent[2].1,
        expected_bytes(Size::new(240, 240), &frame, 0..240)
    );
}

#[test]
fn only_changed_rows_are_resent() {
    let config = SpiConfig::new("/dev/spidev0.0", 25, PanelModel::St7789);
    let (wire, mut display) = setup(&config);
    let mut frame = frame();
    display.show(&frame).unwrap();

    // Same frame: nothing goes over the wire.
    wire.lock().unwrap().writes.clear();
    display.show(&frame).unwrap();
    assert!(wire.lock().unwrap().writes.is_empty());

    // Next step: only the progress bar's rows change.
    frame.status = Status::Generating {
        step: 3,
        total: 4,
        elapsed_ms: 450,
    };
    display.show(&frame).unwrap();
    let sent = wire.lock().unwrap().commands();
    assert_eq!(sent.len(), 3);
    let (first, last) = (
        u16::from_be_bytes([sent[1].1[0], sent[1].1[1]]),
        u16::from_be_bytes([sent[1].1[2], sent[1].1[3]]),
    );
    let bar = crate::layout::Layout::new(Rectangle::new(Point::zero(), Size::new(240, 240))).bar;
    assert_eq!(first as i32, bar.top_left.y);
    assert_eq!(last as i32, bar.top_left.y + bar.size.height as i32 - 1);
    let rows = u32::from(first)..u32::from(last) + 1;
    assert_eq!(sent[2].1, expected_bytes(Size::new(240, 240), &frame, rows));
}

#[test]
fn ili9341_rotated_uses_landscape_size_and_bgr() {
    let mut config = SpiConfig::new("/dev/spidev0.0", 25, PanelModel::Ili9341);
    config.rotation = 90;
    let (wire, mut display) = setup(&config);
    assert_eq!(display.size(), Size::new(320, 240));
    let init = wire.lock().unwrap().commands();
    let madctl = init.iter().find(|(c, _)| *c == 0x36).unwrap().1[0];
    assert_ne!(madctl & 0x08, 0, "BGR bit set");
    assert_ne!(madctl & 0x20, 0, "row/column exchange for 90°");
    assert!(
        !init.iter().any(|(c, _)| *c == 0x21),
        "no inversion by default on ILI9341"
    );
    wire.lock().unwrap().writes.clear();
    display.show(&frame()).unwrap();
    let sent = wire.lock().unwrap().commands();
    assert_eq!(sent[0].1, [0, 0, 0x01, 0x3F], "columns 0..=319");
    assert_eq!(sent[2].1.len(), 320 * 240 * 2);
}

#[test]
fn chunked_interface_splits_writes() {
    let wire = Arc::new(Mutex::new(Wire::default()));
    let mut di = ChunkedSpi::new(
        MockSpi(Arc::clone(&wire), 64),
        MockDc(Arc::clone(&wire)),
        64,
    );
    di.send_command(0x2C, &[]).unwrap();
    di.send_pixels((0..100u8).map(|i| [i, i])).unwrap();
    di.send_repeated_pixel([7, 8, 9], 50).unwrap();
    let w = wire.lock().unwrap();
    assert_eq!(w.writes[0], (false, vec![0x2C]));
    let sizes: Vec<usize> = w.writes[1..].iter().map(|(_, b)| b.len()).collect();
    // 200 bytes of pixels in 64-byte writes; 150 bytes of a 3-byte pixel in 63-byte writes.
    assert_eq!(sizes, [64, 64, 64, 8, 63, 63, 24]);
    assert!(w.writes[1..].iter().all(|(dc, _)| *dc));
    let data = w.commands()[0].1.clone();
    assert_eq!(&data[..4], &[0, 0, 1, 1]);
    assert_eq!(&data[200..206], &[7, 8, 9, 7, 8, 9]);
}
