//! Opening a real panel: spidev for the bus, the GPIO character device for D/C, reset and
//! backlight (`linux-embedded-hal`).

use std::path::Path;

use embedded_hal::delay::DelayNs;
use embedded_hal::digital::OutputPin;
use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
use linux_embedded_hal::spidev::{SpiModeFlags, Spidev, SpidevOptions};
use linux_embedded_hal::{CdevPin, Delay, SpidevDevice};

use super::panel;
use crate::config::SpiConfig;
use crate::display::Display;
use crate::error::{Error, Result};

const SPI_MISSING_HINT: &str = "SPI is not enabled. On a Jetson run \
     `sudo /opt/nvidia/jetson-io/jetson-io.py`, enable spi1 on the 40-pin header, reboot, then \
     `sudo modprobe spidev`; on a Raspberry Pi set dtparam=spi=on. `ls /dev/spidev*` lists buses";
const GPIO_MISSING_HINT: &str =
    "`ls /dev/gpiochip*` lists GPIO chips and `gpioinfo` their lines (use chip=PATH)";
const PERMISSION_HINT: &str = "add the user to the group owning /dev/spidev* and /dev/gpiochip* \
     (Jetson: `gpio`; elsewhere add a udev rule) or run as root";

/// Opens the panel described by `config`: configures spidev (mode 0, 8-bit words, `hz`),
/// requests the D/C (and reset, backlight) lines, pulses reset, runs the controller's init
/// sequence and turns the backlight on.
pub fn open(config: &SpiConfig) -> Result<Box<dyn Display>> {
    let path = &config.spidev;
    let mut spidev =
        Spidev::open(path).map_err(|e| Error::open(path, e, SPI_MISSING_HINT, PERMISSION_HINT))?;
    let options = SpidevOptions::new()
        .bits_per_word(8)
        .max_speed_hz(config.hz)
        .mode(SpiModeFlags::SPI_MODE_0)
        .build();
    spidev.configure(&options).map_err(|e| {
        Error::io(
            path,
            format!("configuring SPI mode 0 at {} Hz", config.hz),
            e,
        )
    })?;

    std::fs::metadata(&config.gpiochip)
        .map_err(|e| Error::open(&config.gpiochip, e, GPIO_MISSING_HINT, PERMISSION_HINT))?;
    let mut chip = Chip::new(&config.gpiochip)
        .map_err(|e| Error::device(&config.gpiochip, "opening the GPIO chip", e))?;
    let dc = output_line(&mut chip, &config.gpiochip, config.dc, "D/C", 1)?;
    let mut delay = Delay;
    if let Some(line) = config.reset {
        // Hardware reset: hold low at least 10 µs, then wait for the controller to come up.
        let mut reset = output_line(&mut chip, &config.gpiochip, line, "reset", 1)?;
        let fail = |e| Error::device(&config.gpiochip, format!("driving reset line {line}"), e);
        reset.set_low().map_err(fail)?;
        delay.delay_us(20);
        reset.set_high().map_err(fail)?;
        delay.delay_ms(120);
    }
    let backlight = config
        .backlight
        .map(|line| output_line(&mut chip, &config.gpiochip, line, "backlight", 0))
        .transpose()?;

    let mut display = panel(SpidevDevice(spidev), dc, config, &mut delay)?;
    if let Some(mut pin) = backlight {
        pin.set_high()
            .map_err(|e| Error::device(&config.gpiochip, "turning the backlight on", e))?;
        display.keep(Box::new(pin));
    }
    log::info!(
        "{}: {:?} {}x{} rotation {} at {} Hz",
        path.display(),
        config.model,
        config.size.width,
        config.size.height,
        config.rotation,
        config.hz
    );
    Ok(Box::new(display))
}

/// Requests `line` of `chip` as an output starting at `initial`.
fn output_line(
    chip: &mut Chip,
    chip_path: &Path,
    line: u32,
    role: &str,
    initial: u8,
) -> Result<CdevPin> {
    let what = || {
        format!(
            "requesting line {line} ({role}); is it claimed by another driver? check `gpioinfo`"
        )
    };
    let handle = chip
        .get_line(line)
        .and_then(|l| l.request(LineRequestFlags::OUTPUT, initial, "transfusion-board"))
        .map_err(|e| Error::device(chip_path, what(), e))?;
    CdevPin::new(handle).map_err(|e| Error::device(chip_path, what(), e))
}
