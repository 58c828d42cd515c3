//! The results table: sections of rows, printed as Markdown and written into
//! the results page between two marker comments, so that the analysis
//! written by hand around them survives a new run.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use crate::measure::{format_duration, ratio};

const BEGIN_MARKER: &str = "<!-- results:begin (written by cargo bench --bench agent) -->";
const END_MARKER: &str = "<!-- results:end -->";

/// Whether a row reached its target.
#[derive(Debug, Clone)]
pub enum Verdict {
    Met,
    /// Amount by which the target was missed.
    Missed(String),
    NoTarget,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub measurement: String,
    pub ours: String,
    pub baseline: String,
    pub ratio: Option<f64>,
    pub target: String,
    pub verdict: Verdict,
}

impl Row {
    /// Creates a row without a target, for numbers reported as they are.
    pub fn info(
        measurement: impl Into<String>,
        ours: impl Into<String>,
        baseline: impl Into<String>,
    ) -> Row {
        Row {
            measurement: measurement.into(),
            ours: ours.into(),
            baseline: baseline.into(),
            ratio: None,
            target: String::new(),
            verdict: Verdict::NoTarget,
        }
    }

    /// Creates a row comparing a latency with its baseline, optionally
    /// against a maximum ratio.
    pub fn latency(
        measurement: impl Into<String>,
        ours: Duration,
        baseline_name: &str,
        baseline: Duration,
        max_ratio: Option<f64>,
    ) -> Row {
        let measured = ratio(ours, baseline);
        let (target, verdict) = match max_ratio {
            Some(max) => (format!("≤ {max:.2}x"), ratio_verdict(measured, max)),
            None => (String::new(), Verdict::NoTarget),
        };
        Row {
            measurement: measurement.into(),
            ours: format_duration(ours),
            baseline: format!("{baseline_name} {}", format_duration(baseline)),
            ratio: Some(measured),
            target,
            verdict,
        }
    }
}

/// Compares a measured ratio with its maximum.
pub fn ratio_verdict(measured: f64, max: f64) -> Verdict {
    if measured <= max {
        Verdict::Met
    } else {
        Verdict::Missed(format!("{:.2}x over", measured - max))
    }
}

/// One benchmark: its rows, notes on how it ran, or why it did not.
#[derive(Debug, Default)]
pub struct Section {
    pub title: String,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub skipped: Option<String>,
    pub failed: Option<String>,
}

impl Section {
    pub fn new(title: impl Into<String>) -> Section {
        Section {
            title: title.into(),
            ..Section::default()
        }
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }
}

/// The machine the run happened on, and its load.
#[derive(Debug)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
    pub date: String,
    pub load_at_start: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, model)| model.trim().to_string())
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let kernel = nix::sys::utsname::uname()
            .map(|uts| uts.release().to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        Machine {
            cpu_model,
            cores,
            kernel,
            date: utc_now(),
            load_at_start: load_average(),
        }
    }
}

/// Returns the 1-, 5- and 15-minute load averages from /proc/loadavg.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

/// Renders the results as Markdown: the machine line, then one table per
/// section.
pub fn render(machine: &Machine, quick: bool, sections: &[Section]) -> String {
    let mut text = String::new();
    let run = if quick {
        "quick run (`--quick`)"
    } else {
        "full run"
    };
    let _ = writeln!(
        text,
        "Measured {} on {} ({} cores), Linux {}, {run}. Load average (1, 5, 15 min) \
         at start {}, at end {}.\n",
        machine.date,
        machine.cpu_model,
        machine.cores,
        machine.kernel,
        machine.load_at_start,
        load_average(),
    );
    for section in sections {
        render_section(&mut text, section);
    }
    text
}

fn render_section(text: &mut String, section: &Section) {
    let _ = writeln!(text, "### {}\n", section.title);
    if let Some(reason) = &section.skipped {
        let _ = writeln!(text, "Skipped: {reason}\n");
        return;
    }
    if let Some(error) = &section.failed {
        let _ = writeln!(text, "Failed: {error}\n");
    }
    if !section.rows.is_empty() {
        text.push_str("| measurement | volume-agent | baseline | ratio | target | result |\n");
        text.push_str("|---|---|---|---|---|---|\n");
        for row in &section.rows {
            let ratio = row.ratio.map(|r| format!("{r:.2}x")).unwrap_or_default();
            let result = match &row.verdict {
                Verdict::Met => "met".to_string(),
                Verdict::Missed(by) => format!("**missed** ({by})"),
                Verdict::NoTarget => String::new(),
            };
            let _ = writeln!(
                text,
                "| {} | {} | {} | {ratio} | {} | {result} |",
                row.measurement, row.ours, row.baseline, row.target
            );
        }
        text.push('\n');
    }
    for note in &section.notes {
        let _ = writeln!(text, "- {note}");
    }
    if !section.notes.is_empty() {
        text.push('\n');
    }
}

/// Writes `results` into the page at `path`: between the markers when the
/// page has them, else as a new page.
pub fn write_page(path: &Path, results: &str) -> anyhow::Result<()> {
    let block = format!("{BEGIN_MARKER}\n\n{results}{END_MARKER}\n");
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let page = match (existing.find(BEGIN_MARKER), existing.find(END_MARKER)) {
        (Some(begin), Some(end)) if begin < end => {
            let after = &existing[end + END_MARKER.len()..];
            format!(
                "{}{block}{}",
                &existing[..begin],
                after.trim_start_matches('\n')
            )
        }
        _ => format!(
            "# Benchmarks\n\n\
             Run `cargo bench --bench agent -- --write BENCHMARKS.md` as root to \
             refresh the block below.\n\n{block}"
        ),
    };
    std::fs::write(path, page).with_context(|| format!("writing {} failed", path.display()))
}

/// Returns the current UTC time as `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let days = (seconds / 86_400) as i64;
    let (year, month, day) = civil_from_days(days);
    let minute_of_day = seconds % 86_400 / 60;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        minute_of_day / 60,
        minute_of_day % 60
    )
}

/// Converts days since 1970-01-01 to a proleptic Gregorian date, with the
/// era arithmetic of Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
