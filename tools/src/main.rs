//! `transfusion`: host-side CLI — init, convert, inspect, verify, bench, doctor, dataset, eval.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use transfusion_sdk::manifest::Precision;
use transfusion_tools::bench::{bench, BenchOptions};
use transfusion_tools::convert::{convert, ConvertOptions};
use transfusion_tools::error::{Error, Result};
use transfusion_tools::onnx::Int8Parts;
use transfusion_tools::{init, inspect, verify};

#[derive(Parser)]
#[command(
    name = "transfusion",
    version,
    about = "Transfusion edge runtime: host-side tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a random-initialised checkpoint of a preset (tiny, shapes64, paper-160m).
    Init {
        #[arg(long)]
        preset: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Convert a checkpoint into an ONNX bundle.
    Convert {
        checkpoint: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// Comma-separated precisions: fp32, fp16, int8.
        #[arg(long, default_value = "fp32,fp16,int8", value_delimiter = ',')]
        precision: Vec<Precision>,
        /// Parts quantized in the INT8 files: any of patch,unet,vae,backbone.
        #[arg(long, default_value = "patch,unet,vae,backbone")]
        int8: Int8Parts,
    },
    /// Summarise a checkpoint or a bundle: parameters, bytes, graphs, ops, FLOPs.
    Inspect {
        path: PathBuf,
        #[arg(long)]
        json: bool,
        /// Load every graph into tract and list the kernels its optimised plan runs.
        #[arg(long)]
        kernels: bool,
    },
    /// Run every graph in tract on reference inputs and compare with the PyTorch outputs; or,
    /// with `--device cuda` and no `--reference`, run every graph on the GPU and on the CPU on
    /// the same seeded inputs and compare the two.
    Verify {
        bundle: PathBuf,
        /// `reference.safetensors` written by `python -m transfusion_ref.reference`.
        #[arg(long, required_unless_present = "device")]
        reference: Option<PathBuf>,
        /// Compare this device's outputs with the CPU's instead (cuda; needs a `cuda-*` build).
        #[arg(long, conflicts_with_all = ["reference", "dump_outputs"])]
        device: Option<transfusion_sdk::Device>,
        /// Only these precisions (default: all in the bundle).
        #[arg(long, value_delimiter = ',')]
        precision: Option<Vec<Precision>>,
        /// Also write tract's outputs here (safetensors, `{precision}/{case}/{tensor}`).
        #[arg(long)]
        dump_outputs: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Measure image latency (p50/p90, per part), text speed, load time and peak memory of a
    /// bundle, with and without the prefix cache, optionally against onnxruntime.
    Bench {
        bundle: PathBuf,
        /// One JSON document on stdout instead of tables.
        #[arg(long)]
        json: bool,
        /// Comma-separated precisions: fp32, fp16, int8.
        #[arg(long, default_value = "fp32,int8", value_delimiter = ',')]
        precision: Vec<Precision>,
        /// Comma-separated thread counts for matrix products.
        #[arg(long, default_value = "1", value_delimiter = ',')]
        threads: Vec<usize>,
        /// Comma-separated diffusion step counts.
        #[arg(long, default_value = "1,2,4,8", value_delimiter = ',')]
        steps: Vec<usize>,
        /// Measured runs per figure (after the warm-up).
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Unmeasured runs before each figure.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Words in the prompt before the image (and in the prefill measurement).
        #[arg(long, default_value_t = 32)]
        prompt_tokens: usize,
        /// Greedy tokens in the decode measurement.
        #[arg(long, default_value_t = 32)]
        decode_tokens: usize,
        /// Also run the same graphs under onnxruntime (tools/bench/ort_bench.py; Python from
        /// TRANSFUSION_PYTHON, .venv/bin/python or python3).
        #[arg(long)]
        ort: bool,
        /// Where tract runs the graphs: cpu, cuda or auto (the `cuda-*` SDK features).
        #[arg(long, default_value = "cpu")]
        device: transfusion_sdk::Device,
        /// Instead of the end-to-end figures: time every node of every graph at the sizes the
        /// SDK runs (first precision and thread count; --runs, --warmup, --prompt-tokens apply).
        #[arg(long)]
        profile: bool,
        /// With --profile: keep the files' symbolic batch instead of planning at batch 1.
        #[arg(long, requires = "profile")]
        symbolic_batch: bool,
        /// Sustained mode instead of the figures: generate images back to back for this many
        /// seconds (first precision, thread count and step count) and report throughput,
        /// clocks, temperatures and power per interval, showing thermal throttling.
        #[arg(long, value_name = "SECONDS", conflicts_with_all = ["profile", "ort"])]
        duration: Option<f64>,
        /// With --duration: seconds per reported interval.
        #[arg(
            long,
            value_name = "SECONDS",
            default_value_t = 10.0,
            requires = "duration"
        )]
        interval: f64,
    },
    /// Check this machine for the runtime: the CPU features tract uses, every library, header
    /// and device node CUDA needs (naming the package for each missing one), the GPU, and on
    /// a Jetson the power mode, clocks, temperatures and power rails.
    Doctor {
        /// One JSON document on stdout instead of the report.
        #[arg(long)]
        json: bool,
        /// Read the files under this root instead of `/` (an L4T rootfs, a copy of a board's
        /// files), with the kiosk's CUDA unit environment (CUDA_HOME=/usr/local/cuda,
        /// LD_LIBRARY_PATH=/usr/local/cuda/lib64, XDG_CACHE_HOME=/var/cache/transfusion) and
        /// no commands run.
        #[arg(long, default_value = "/")]
        sysroot: PathBuf,
        /// Exit with status 1 unless CUDA is usable.
        #[arg(long)]
        require_cuda: bool,
    },
    /// Generate a synthetic training dataset: `shapes` (format in docs/dataset.md).
    Dataset {
        /// Which dataset: `shapes`.
        name: String,
        #[arg(long, default_value_t = 20000)]
        count: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(short, long)]
        output: PathBuf,
        /// train (no held-out colour–shape pair), heldout (at least one), or all.
        #[arg(long, default_value = "train")]
        split: transfusion_tools::shapes::Split,
        /// Also write preview.png and preview.txt of the first K samples.
        #[arg(long, default_value_t = 0)]
        preview: usize,
    },
    /// Score a bundle on the shapes domain: GenEval-style image categories and captioning.
    Eval {
        /// The bundle (optional with --write-prompts alone; none with --score-images).
        bundle: Option<PathBuf>,
        /// Prompts file (JSON lines); default: the --prompt-set.
        #[arg(long)]
        prompts: Option<PathBuf>,
        /// Built-in prompts: heldout (the held-out colour–shape pairs) or seen (train-split
        /// pairs, same grammar, categories and counts).
        #[arg(long, conflicts_with = "prompts")]
        prompt_set: Option<transfusion_tools::eval::score::PromptSet>,
        /// Diagnostic, instead of generating: pass N train-split scenes through the bundle's
        /// VAE and score the originals and the round trips with the checker.
        #[arg(long, value_name = "N",
              conflicts_with_all = ["prompts", "prompt_set", "write_prompts", "score_images"])]
        vae_roundtrip: Option<usize>,
        /// Score the PNGs listed in DIR/index.jsonl (docs/dataset.md) instead of a bundle's.
        #[arg(long, value_name = "DIR",
              conflicts_with_all = ["prompts", "prompt_set", "write_prompts", "bundle"])]
        score_images: Option<PathBuf>,
        /// With --score-images: what a dataset scene's image must show, `full` (every object's
        /// shape, colour and size, the named position and relation) or `caption` (sizes only
        /// where the caption names them: for images drawn from the caption alone).
        #[arg(
            long,
            value_name = "T",
            default_value = "full",
            requires = "score_images"
        )]
        scene_truth: transfusion_tools::eval::images::SceneTruth,
        /// Write the prompt list (JSON lines) here.
        #[arg(long)]
        write_prompts: Option<PathBuf>,
        /// Seeds per prompt.
        #[arg(long, default_value_t = 4)]
        seeds: usize,
        /// Diffusion steps (default: the bundle's recommendation, 4 for the presets).
        #[arg(long)]
        steps: Option<usize>,
        /// ddim, dpmpp_2m, euler or lcm (default: the bundle's recommendation).
        #[arg(long)]
        sampler: Option<transfusion_sdk::config::SamplerKind>,
        /// Classifier-free guidance scale (default: the bundle's; 1 = no unconditional pass).
        #[arg(long)]
        guidance: Option<f32>,
        /// auto, fp32, fp16 or int8.
        #[arg(long, default_value = "auto")]
        precision: transfusion_sdk::PrecisionChoice,
        /// Held-out dataset images to caption, and as many train-split ones (0: skip).
        #[arg(long, default_value_t = 32)]
        captions: usize,
        /// Threads for matrix products.
        #[arg(long)]
        threads: Option<usize>,
        /// Save every generated image here as {prompt:03}_{seed}.png.
        #[arg(long)]
        save_images: Option<PathBuf>,
        /// One JSON document on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn run(cli: Cli) -> Result<bool> {
    match cli.command {
        Command::Init {
            preset,
            seed,
            output,
        } => {
            init::run(&preset, seed, &output)?;
            eprintln!(
                "wrote {preset} checkpoint (seed {seed}) to {}",
                output.display()
            );
        }
        Command::Convert {
            checkpoint,
            output,
            precision,
            int8,
        } => {
            let options = ConvertOptions {
                precisions: precision,
                int8,
                progress: true,
            };
            let manifest = convert(&checkpoint, &output, &options)?;
            let precisions: Vec<&str> = manifest.precisions.iter().map(|p| p.name()).collect();
            eprintln!(
                "wrote bundle {} ({}; int8 parts: {})",
                output.display(),
                precisions.join(", "),
                int8.describe()
            );
        }
        Command::Inspect {
            path,
            json,
            kernels,
        } => {
            let report = inspect::inspect(&path, kernels)?;
            print_report(json, &report, || report.to_text())?;
        }
        Command::Verify {
            bundle,
            reference,
            device,
            precision,
            dump_outputs,
            json,
        } => {
            let mut dump = dump_outputs.as_ref().map(|_| HashMap::new());
            let results = match (&reference, device) {
                (_, Some(device)) => {
                    transfusion_tools::devices::compare(&bundle, device, precision.as_deref())?
                }
                (Some(reference), None) => {
                    verify::verify(&bundle, reference, precision.as_deref(), dump.as_mut())?
                }
                (None, None) => {
                    return Err(Error::Invalid(
                        "verify needs --reference FILE or --device cuda".into(),
                    ))
                }
            };
            if let (Some(path), Some(dump)) = (&dump_outputs, &dump) {
                verify::write_dump(path, dump)?;
            }
            let all_pass = results.iter().all(|r| r.pass);
            if json {
                print_json(&results)?;
            } else {
                println!(
                    "{:<6} {:<18} {:<18} {:>11} {:>11} {:>9}  result",
                    "prec", "case", "tensor", "max abs", "rel", "tol"
                );
                for r in &results {
                    println!(
                        "{:<6} {:<18} {:<18} {:>11.3e} {:>11.3e} {:>9.0e}  {}",
                        r.precision.name(),
                        r.case,
                        r.tensor,
                        r.max_abs,
                        r.rel,
                        r.tolerance,
                        if r.pass { "ok" } else { "FAIL" }
                    );
                }
                let failed = results.iter().filter(|r| !r.pass).count();
                println!(
                    "{} outputs compared, {failed} beyond tolerance",
                    results.len()
                );
            }
            return Ok(all_pass);
        }
        Command::Bench {
            bundle,
            json,
            precision,
            threads,
            steps,
            runs,
            warmup,
            prompt_tokens,
            decode_tokens,
            ort,
            device,
            profile,
            symbolic_batch,
            duration,
            interval,
        } => {
            if let Some(seconds) = duration {
                use transfusion_tools::bench::sustained::{sustained, SustainedOptions};
                let options = SustainedOptions {
                    precision: precision.first().copied().unwrap_or(Precision::Fp32),
                    threads: threads.first().copied().unwrap_or(1),
                    steps: steps.first().copied().unwrap_or(4),
                    prompt_tokens,
                    device,
                    duration: seconds,
                    interval,
                    progress: !json,
                };
                let report = sustained(&bundle, &options)?;
                print_report(json, &report, || report.to_text())?;
                return Ok(true);
            }
            if profile {
                use transfusion_tools::bench::profile::{profile, to_text, ProfileOptions};
                if ort || device != transfusion_sdk::Device::Cpu {
                    return Err(Error::Invalid(
                        "bench --profile times tract's CPU plan: it takes neither --ort nor --device"
                            .into(),
                    ));
                }
                let options = ProfileOptions {
                    precision: precision.first().copied().unwrap_or(Precision::Fp32),
                    threads: threads.first().copied().unwrap_or(1),
                    runs,
                    warmup,
                    prompt_tokens,
                    batch_1: !symbolic_batch,
                    ..ProfileOptions::default()
                };
                let report = profile(&bundle, &options)?;
                print_report(json, &report, || to_text(&report))?;
                return Ok(true);
            }
            let options = BenchOptions {
                precisions: precision,
                threads,
                steps,
                runs,
                warmup,
                prompt_tokens,
                decode_tokens,
                ort,
                progress: true,
                device,
            };
            let report = bench(&bundle, &options)?;
            print_report(json, &report, || report.to_text())?;
        }
        Command::Doctor {
            json,
            sysroot,
            require_cuda,
        } => {
            use transfusion_sdk::platform::{preflight, HostEnv};
            let env = if sysroot == std::path::Path::new("/") {
                HostEnv::from_process()
            } else {
                HostEnv {
                    cuda_home: Some("/usr/local/cuda".into()),
                    ld_library_path: vec!["/usr/local/cuda/lib64".into()],
                    cache_home: Some("/var/cache/transfusion".into()),
                    ..HostEnv::default()
                }
            };
            if !sysroot.is_dir() {
                return Err(Error::Invalid(format!(
                    "doctor --sysroot {}: not a directory",
                    sysroot.display()
                )));
            }
            let report = preflight(&sysroot, &env);
            let ready = report.cuda_ready();
            let document = serde_json::json!({
                "preflight": &report,
                "cuda_ready": ready,
                "cuda_problems": report.cuda_problems(),
                "cuda_warnings": report.cuda.warnings(),
            });
            print_report(json, &document, || report.to_text())?;
            return Ok(ready || !require_cuda);
        }
        Command::Dataset {
            name,
            count,
            seed,
            output,
            split,
            preview,
        } => {
            if name != "shapes" {
                return Err(Error::Invalid(format!(
                    "unknown dataset `{name}`, expected: shapes"
                )));
            }
            let options = transfusion_tools::shapes::DatasetOptions {
                count,
                seed,
                split,
                preview,
            };
            let summary = transfusion_tools::shapes::write_dataset(&output, &options)?;
            eprintln!(
                "wrote {} samples ({} with a held-out pair, {} bytes) to {}",
                summary.count,
                summary.held_out,
                summary.bytes,
                output.display()
            );
        }
        Command::Eval {
            bundle,
            prompts,
            prompt_set,
            vae_roundtrip,
            score_images,
            scene_truth,
            write_prompts,
            seeds,
            steps,
            sampler,
            guidance,
            precision,
            captions,
            threads,
            save_images,
            json,
        } => {
            use transfusion_tools::eval::{evaluate, images, score, vae, EvalOptions};
            if let Some(dir) = &score_images {
                let report = images::score_images(dir, scene_truth, !json)?;
                print_report(json, &report.to_json(), || report.to_text())?;
                return Ok(true);
            }
            if let Some(count) = vae_roundtrip {
                let Some(bundle) = bundle else {
                    return Err(Error::Invalid(
                        "--vae-roundtrip needs a BUNDLE directory".into(),
                    ));
                };
                let options = vae::VaeOptions {
                    count,
                    precision,
                    threads,
                    save_images,
                    progress: !json,
                };
                let report = vae::vae_roundtrip(&bundle, &options)?;
                print_report(json, &report.to_json(), || report.to_text())?;
                return Ok(true);
            }
            let (prompts_list, prompt_set) = match &prompts {
                Some(path) => (score::read_prompts(path)?, None),
                None => {
                    let set = prompt_set.unwrap_or_default();
                    (set.prompts(), Some(set))
                }
            };
            if let Some(path) = &write_prompts {
                score::write_prompts(path, &prompts_list)?;
                eprintln!("wrote {} prompts to {}", prompts_list.len(), path.display());
            }
            let Some(bundle) = bundle else {
                if write_prompts.is_some() {
                    return Ok(true);
                }
                return Err(Error::Invalid("eval needs a BUNDLE directory".into()));
            };
            let options = EvalOptions {
                prompts: prompts_list,
                prompt_set,
                prompts_file: prompts,
                seeds,
                steps,
                sampler,
                guidance,
                precision,
                captions,
                threads,
                save_images,
                progress: !json,
            };
            let report = evaluate(&bundle, &options)?;
            print_report(json, &report.to_json(), || report.to_text())?;
        }
    }
    Ok(true)
}

/// Prints `value` as pretty JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Invalid(e.to_string()))?;
    println!("{text}");
    Ok(())
}

/// Prints a report as JSON (`--json`) or as the human-readable text.
fn print_report(
    json: bool,
    value: &impl serde::Serialize,
    text: impl FnOnce() -> String,
) -> Result<()> {
    if json {
        print_json(value)
    } else {
        print!("{}", text());
        Ok(())
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
