//! The preflight as text: `transfusion doctor` and `kiosk --check` print this.

use std::fmt::Write as _;

use super::Preflight;

fn mark(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "--"
    }
}

pub(crate) fn to_text(p: &Preflight) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "preflight of {}", p.sysroot.display());
    let cpu = &p.cpu;
    let _ = writeln!(s, "CPU: {} ({}, {} CPUs)", cpu.model, cpu.arch, cpu.cpus);
    for f in &cpu.features {
        let _ = writeln!(s, "  [{}] {:<12} {}", mark(f.present), f.name, f.used_for);
    }

    let c = &p.cuda;
    let problems = c.problems();
    let verdict = if problems.is_empty() {
        "ready".to_string()
    } else {
        let n = problems.len();
        format!(
            "not usable ({n} problem{} below)",
            if n == 1 { "" } else { "s" }
        )
    };
    let _ = writeln!(s, "CUDA: {verdict}");
    let build = c.build.map_or_else(
        || "none (CPU-only binary)".to_string(),
        |b| format!("{} (CUDA {b} API)", b.feature()),
    );
    let _ = writeln!(s, "  build: {build}");
    let driver = match (&c.driver.version, c.driver.cuda) {
        (Some(v), Some(cuda)) => format!("{v}: CUDA {cuda}"),
        (Some(v), None) => format!("{v}: CUDA version unknown"),
        (None, _) => "not found".to_string(),
    };
    let source = c
        .driver
        .source
        .as_deref()
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    let _ = writeln!(s, "  driver: {driver}{source}");
    match &c.gpu {
        Some(g) => {
            let sm =
                g.sm.map_or_else(|| "sm unknown".to_string(), |sm| format!("sm_{sm}"));
            let flash = match g.flash_attention() {
                Some(true) => "flash attention: yes",
                Some(false) => "flash attention: no (needs sm_80)",
                None => "flash attention: unknown",
            };
            let _ = writeln!(s, "  GPU: {} ({sm}, {flash}; from {})", g.name, g.source);
        }
        None => {
            let _ = writeln!(s, "  GPU: none found");
        }
    }
    for n in &c.device_nodes {
        let state = match (n.present, &n.error) {
            (false, _) => "missing".to_string(),
            (true, None) => "opens".to_string(),
            (true, Some(e)) => format!("present, open failed: {e}"),
        };
        let _ = writeln!(
            s,
            "  [{}] {:<24} {state}",
            mark(n.present && n.error.is_none()),
            n.path.display()
        );
    }
    let _ = writeln!(s, "  libraries (cudarc opens them by name at run time):");
    for lib in &c.libraries {
        // The fix is in the problem list; here only where things are.
        let detail = match (&lib.file, &lib.elsewhere, &lib.unloadable) {
            (Some(f), _, _) => f.display().to_string(),
            (None, Some(f), _) => format!("off the loader's path: {}", f.display()),
            (None, None, Some(f)) => format!("only {} (a name cudarc does not open)", f.display()),
            (None, None, None) => format!("missing ({})", lib.package),
        };
        let _ = writeln!(
            s,
            "    [{}] {:<9} {detail}",
            mark(lib.file.is_some()),
            lib.name
        );
    }
    match (&c.toolkit.root, &c.toolkit.source) {
        (Some(root), Some(source)) => {
            let _ = writeln!(
                s,
                "  NVRTC headers under {}/include (from {source}):",
                root.display()
            );
        }
        _ => {
            let _ = writeln!(
                s,
                "  NVRTC headers: no toolkit directory (CUDA_HOME, CUDA_PATH, /usr/local/cuda, \
                 nvcc on PATH)"
            );
        }
    }
    for h in &c.toolkit.headers {
        let detail = h.found.as_ref().map_or_else(
            || format!("missing: {}", h.package),
            |_| "found".to_string(),
        );
        let _ = writeln!(
            s,
            "    [{}] {:<17} {detail}",
            mark(h.found.is_some()),
            h.name
        );
    }
    if let Some(dir) = &c.kernel_cache {
        let state = match c.kernel_cache_writable {
            Some(true) => " (writable)",
            Some(false) => " (NOT writable)",
            None => "",
        };
        let _ = writeln!(s, "  kernel cache: {}{state}", dir.display());
    }
    let _ = writeln!(s, "  packages: {}", c.packages.join(" "));
    for (i, problem) in problems.iter().enumerate() {
        let _ = writeln!(s, "  problem {}: {problem}", i + 1);
    }
    for warning in c.warnings() {
        let _ = writeln!(s, "  warning: {warning}");
    }

    if let Some(j) = &p.jetson {
        let _ = writeln!(
            s,
            "Jetson: {}",
            j.model.as_deref().unwrap_or("model unknown")
        );
        let cuda = j.cuda.map(|c| format!(", CUDA {c}")).unwrap_or_default();
        let _ = writeln!(
            s,
            "  L4T {} = JetPack {}{cuda}; SoC {}",
            j.l4t.as_deref().unwrap_or("?"),
            j.jetpack.as_deref().unwrap_or("?"),
            j.soc.as_deref().unwrap_or("?")
        );
        match &j.power_mode {
            Some(m) => {
                let _ = writeln!(
                    s,
                    "  power mode: {} ({}) from {}",
                    m.id,
                    m.name.as_deref().unwrap_or("unnamed"),
                    m.source
                );
            }
            None => {
                let _ = writeln!(s, "  power mode: unknown (no nvpmodel, status or conf)");
            }
        }
        if !j.power_modes.is_empty() {
            let modes: Vec<String> = j
                .power_modes
                .iter()
                .map(|m| format!("{} {}", m.id, m.name))
                .collect();
            let _ = writeln!(s, "  modes: {}", modes.join(", "));
        }
        let pinned = match j.jetson_clocks.pinned {
            Some(true) => "pinned (jetson_clocks)",
            Some(false) => "scaling (jetson_clocks not active)",
            None => "unknown",
        };
        let _ = writeln!(s, "  clocks: {pinned}; {}", j.jetson_clocks.basis);
    }

    let t = &p.telemetry;
    let _ = writeln!(s, "sensors: {}", t.describe());
    if !t.thermal.is_empty() {
        let zones: Vec<String> = t
            .thermal
            .iter()
            .map(|z| format!("{} {:.1} °C", z.kind, z.celsius))
            .collect();
        let _ = writeln!(s, "  thermal: {}", zones.join(", "));
    }
    for r in &t.rails {
        let _ = writeln!(
            s,
            "  rail {}: {:.3} V, {:.3} A, {:.2} W",
            r.name,
            r.millivolts / 1000.0,
            r.milliamps / 1000.0,
            r.milliwatts / 1000.0
        );
    }
    s
}
