//! `cargo bench --bench agent -- [--quick] [--write PATH | --only SECTION]`
//!
//! Measures each hot path of volume-agent next to the floor that the kernel
//! or the tools set, in the same run, and prints the ratios as a Markdown
//! table. `--quick` runs a few iterations of everything, enough to catch
//! breakage in CI; `--write PATH` also writes the table into the results
//! page at PATH; `--only SECTION` runs one section, for profiling. Parts
//! that need loop devices skip with a reason when the bench does not run as
//! root. `VOLUME_AGENT_BENCH_BINARY=PATH` runs another agent binary, such
//! as a build with symbols.

mod agent_process;
mod alloc;
mod attach;
mod fixture;
mod footprint;
mod measure;
mod report;
mod requests;
mod resize;
mod rpc;
mod stats_volume;
mod steps;
mod uevent_storm;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;

use anyhow::bail;

use crate::fixture::is_root;
use crate::report::{Machine, Section};

#[global_allocator]
static ALLOCATOR: alloc::CountingAllocator = alloc::CountingAllocator;

struct Options {
    quick: bool,
    write: Option<PathBuf>,
    /// Key of the one section to run, for profiling it.
    only: Option<String>,
}

/// Keys accepted by `--only`, in the order the sections run.
const SECTION_KEYS: &[&str] = &[
    "stats",
    "attach",
    "concurrent",
    "storm",
    "resize",
    "footprint",
];

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        quick: false,
        write: None,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--write" => match args.next() {
                Some(path) => options.write = Some(PathBuf::from(path)),
                None => bail!("--write needs a path, e.g. --write BENCHMARKS.md"),
            },
            "--only" => match args.next() {
                Some(key) if SECTION_KEYS.contains(&key.as_str()) => options.only = Some(key),
                _ => bail!("--only needs one of {}", SECTION_KEYS.join(", ")),
            },
            // cargo passes --bench to every bench target.
            "--bench" => {}
            other => {
                bail!("unknown option {other:?}; expected --quick, --write PATH or --only SECTION")
            }
        }
    }
    if options.only.is_some() && options.write.is_some() {
        bail!("--write records every section, so it cannot be combined with --only");
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("bench: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the client runtime failed");
    let machine = Machine::detect();
    let quick = options.quick;
    let root_reason = (!is_root()).then_some("needs root for loop devices and mounts");

    let (rpc_plan, attach_plan) = if quick {
        (&rpc::QUICK, &attach::QUICK)
    } else {
        (&rpc::FULL, &attach::FULL)
    };
    let storm_plan = if quick {
        &uevent_storm::QUICK
    } else {
        &uevent_storm::FULL
    };
    let resize_rounds = if quick { 2 } else { 20 };
    let rss_requests = if quick { 2_000 } else { 100_000 };
    let long_idle = (!quick).then_some(footprint::BLOCKING_POOL_IDLE);

    let mut runner = Runner {
        runtime: &runtime,
        only: options.only.as_deref(),
        sections: Vec::new(),
    };
    runner.run(
        "stats",
        "GetVolumeStats vs Health Check vs statfs(2)",
        None,
        |s| Box::pin(rpc::run(s, rpc_plan)),
    );
    runner.run(
        "attach",
        "Attach of a present loop device",
        root_reason,
        |s| Box::pin(attach::run_single(s, attach_plan)),
    );
    runner.run(
        "concurrent",
        "64 loop devices attached concurrently",
        root_reason,
        |s| Box::pin(attach::run_concurrent(s, attach_plan)),
    );
    runner.run(
        "storm",
        "Uevent storm through the device registry",
        None,
        |s| Box::pin(uevent_storm::run(s, storm_plan)),
    );
    runner.run(
        "resize",
        "ResizeVolume vs xfs_growfs on the host",
        root_reason,
        |s| Box::pin(resize::run(s, resize_rounds)),
    );
    runner.run("footprint", "Footprint", None, |s| {
        Box::pin(async move {
            footprint::run_rss(s, rss_requests, long_idle).await?;
            footprint::run_binary_size(s)
        })
    });
    let sections = runner.sections;

    let results = report::render(&machine, quick, &sections);
    println!("{results}");
    if let Some(path) = &options.write {
        if let Err(error) = report::write_page(path, &results) {
            eprintln!("bench: {error:#}");
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    if sections.iter().any(|section| section.failed.is_some()) {
        eprintln!("bench: at least one section failed; see the table above");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The body of a section: fills the section in and fails with an error.
type SectionFuture<'s> = Pin<Box<dyn Future<Output = anyhow::Result<()>> + 's>>;

/// Runs the selected sections and collects their results.
struct Runner<'r> {
    runtime: &'r tokio::runtime::Runtime,
    only: Option<&'r str>,
    sections: Vec<Section>,
}

impl Runner<'_> {
    /// Runs one section unless `--only` names another, turning an error or
    /// a panic into a failed section so that the others still run.
    /// Fixtures clean up while the panic unwinds.
    fn run<F>(&mut self, key: &str, title: &str, skip_reason: Option<&str>, body: F)
    where
        F: for<'s> FnOnce(&'s mut Section) -> SectionFuture<'s>,
    {
        if self.only.is_some_and(|only| only != key) {
            return;
        }
        let mut section = Section::new(title);
        if let Some(reason) = skip_reason {
            println!("skipping {title}: {reason}");
            section.skipped = Some(reason.to_string());
            self.sections.push(section);
            return;
        }
        eprintln!("running {title}");
        let runtime = self.runtime;
        let outcome =
            std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(body(&mut section))));
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(format!("{error:#}")),
            Err(panic) => Some(panic_message(panic.as_ref())),
        };
        if let Some(error) = failure {
            eprintln!("{title} failed: {error}");
            section.failed = Some(error);
        }
        self.sections.push(section);
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("panicked: {text}")
}
