//! What wakes the inference thread: prompts typed on standard input, button presses, and
//! SIGTERM/SIGINT. Each source runs on its own small thread and sends an [`Input`] down one
//! channel, so the inference thread waits in a single place (`recv`) for whichever comes first
//! and a stop signal interrupts a wait for a prompt or a button press at once.

use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Sender;
use std::sync::Arc;

/// A message to the inference thread.
#[derive(Debug)]
pub enum Input {
    /// A prompt from standard input.
    Prompt(String),
    /// The button was pressed.
    Press,
    /// Standard input is at its end.
    End,
    /// A source failed (e.g. reading the GPIO line); the message names the device.
    Failed(String),
    /// A signal asked the kiosk to stop (its name, for the log and the last frame).
    Stop(&'static str),
}

/// Reads prompts from standard input, one per line (blank lines skipped), on a thread named
/// `stdin`; sends [`Input::End`] at end of input.
pub fn spawn_stdin(tx: Sender<Input>) -> Result<(), String> {
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            use std::io::BufRead;
            for line in std::io::stdin().lock().lines() {
                let message = match line {
                    Ok(line) if line.trim().is_empty() => continue,
                    Ok(line) => Input::Prompt(line.trim().to_owned()),
                    Err(e) => Input::Failed(format!("reading standard input: {e}")),
                };
                let failed = matches!(message, Input::Failed(_));
                if tx.send(message).is_err() || failed {
                    return;
                }
            }
            let _ = tx.send(Input::End);
        })
        .map(drop)
        .map_err(|e| format!("starting the stdin thread: {e}"))
}

/// SIGTERM (systemd's stop) and SIGINT (Ctrl-C): the first sets `stop` (which the generation
/// callback turns into `Control::Cancel`) and sends [`Input::Stop`] to wake a waiting loop; a
/// second one while stopping exits at once with status 1 (an impatient operator or a hung
/// device).
#[cfg(unix)]
pub fn install_signals(stop: &Arc<AtomicBool>, tx: Sender<Input>) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use signal_hook::flag;

    let err = |e: std::io::Error| format!("installing the SIGTERM/SIGINT handlers: {e}");
    for signal in [SIGTERM, SIGINT] {
        // Registration order matters: the conditional exit sees the flag as the previous
        // signal left it, then the flag is set.
        flag::register_conditional_shutdown(signal, 1, Arc::clone(stop)).map_err(err)?;
        flag::register(signal, Arc::clone(stop)).map_err(err)?;
    }
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(err)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let name = if signal == SIGTERM {
                    "SIGTERM"
                } else {
                    "SIGINT"
                };
                log::info!("{name} received: stopping after the current step");
                if tx.send(Input::Stop(name)).is_err() {
                    return;
                }
            }
        })
        .map(drop)
        .map_err(|e| format!("starting the signal thread: {e}"))
}

/// Without Unix signals the kiosk stops only at `--max-prompts` or the end of input.
#[cfg(not(unix))]
pub fn install_signals(_stop: &Arc<AtomicBool>, _tx: Sender<Input>) -> Result<(), String> {
    log::warn!("no SIGTERM/SIGINT handling on this platform");
    Ok(())
}

/// Requests edge events on the button's line (now, so a wrong chip, line or permission fails
/// at start with the device named) and forwards debounced presses from a thread named
/// `button`.
#[cfg(target_os = "linux")]
pub fn spawn_button(spec: &crate::config::ButtonSpec, tx: Sender<Input>) -> Result<(), String> {
    use gpio_cdev::{Chip, EventRequestFlags, LineRequestFlags};

    use crate::config::Edge;

    let chip_name = spec.chip.display().to_string();
    let mut chip = Chip::new(&spec.chip).map_err(|e| {
        format!(
            "opening GPIO chip {chip_name}: {e} (does it exist? `ls /dev/gpiochip*`; is this \
             user in the gpio group?)"
        )
    })?;
    let line = chip.get_line(spec.line).map_err(|e| {
        format!(
            "{chip_name}: line {}: {e} (`gpioinfo` lists the lines)",
            spec.line
        )
    })?;
    let edge = match spec.edge {
        Edge::Falling => EventRequestFlags::FALLING_EDGE,
        Edge::Rising => EventRequestFlags::RISING_EDGE,
    };
    let events = line
        .events(LineRequestFlags::INPUT, edge, "transfusion-kiosk")
        .map_err(|e| {
            format!(
                "{chip_name}: requesting edge events on line {}: {e} (is the line used by \
                 another program, or muxed to SPI/I2C by jetson-io?)",
                spec.line
            )
        })?;
    let debounce_ns = u64::try_from(spec.debounce.as_nanos()).unwrap_or(u64::MAX);
    let line_no = spec.line;
    log::info!(
        "button on {chip_name} line {line_no} ({:?} edge)",
        spec.edge
    );
    std::thread::Builder::new()
        .name("button".into())
        .spawn(move || {
            let mut last: Option<u64> = None;
            for event in events {
                let message = match event {
                    Ok(event) => {
                        let t = event.timestamp();
                        if last.is_some_and(|l| t.saturating_sub(l) < debounce_ns) {
                            continue;
                        }
                        last = Some(t);
                        Input::Press
                    }
                    Err(e) => Input::Failed(format!(
                        "{chip_name}: reading events of line {line_no}: {e}"
                    )),
                };
                let failed = matches!(message, Input::Failed(_));
                if tx.send(message).is_err() || failed {
                    return;
                }
            }
        })
        .map(drop)
        .map_err(|e| format!("starting the button thread: {e}"))
}

/// GPIO character devices are Linux-only.
#[cfg(not(target_os = "linux"))]
pub fn spawn_button(spec: &crate::config::ButtonSpec, _tx: Sender<Input>) -> Result<(), String> {
    Err(format!(
        "button on {}: GPIO buttons need Linux (gpio-cdev)",
        spec.chip.display()
    ))
}
