//! Progress on stderr: bars, drawn only when stderr is a terminal, and a
//! line for each service stopped or started, unless quiet.

use std::io::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use backstop_core::progress::{Phase, Progress, ServiceAction, ServiceEvent};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Draws a spinner while scanning and a bar with throughput and ETA while
/// reading or writing.
pub struct Bars {
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    /// Bars if stderr is a terminal and the user did not ask for quiet.
    pub fn new(enabled: bool) -> Option<Bars> {
        let enabled = enabled && console::Term::stderr().is_term();
        enabled.then(|| Bars {
            bar: Mutex::new(None),
        })
    }

    /// Prints `line` on stderr above the bar, if one is drawn.
    fn say(&self, line: &str) {
        match self.bar.lock().expect("progress lock").as_ref() {
            Some(bar) => bar.suspend(|| say(line)),
            None => say(line),
        }
    }

    fn replace(&self, bar: Option<ProgressBar>) {
        let mut slot = self.bar.lock().expect("progress lock");
        if let Some(old) = slot.take() {
            old.finish_and_clear();
        }
        *slot = bar;
    }
}

/// How far to move a bar at `position` of `total` for `bytes` more: never
/// past its total (a file that grew while it was read, an estimate that
/// was low), so a bar never shows more than 100 %.
fn within_total(position: u64, total: Option<u64>, bytes: u64) -> u64 {
    match total {
        Some(total) => bytes.min(total.saturating_sub(position)),
        None => bytes,
    }
}

impl Progress for Bars {
    fn scanned(&self, entries: u64, bytes: u64) {
        let mut slot = self.bar.lock().expect("progress lock");
        let bar = slot.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} scanning: {msg}").expect("template"),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        bar.set_message(format!(
            "{entries} entries, {}",
            indicatif::HumanBytes(bytes)
        ));
    }

    fn start(&self, phase: Phase, total: u64) {
        let verb = match phase {
            Phase::Backup => "backing up",
            Phase::Verify => "verifying",
            Phase::Unpack => "unpacking",
            Phase::Fetch => "fetching",
            _ => "working",
        };
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{verb} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}}, {{eta}} left"
            ))
            .expect("template")
            .progress_chars("=> "),
        );
        self.replace(Some(bar));
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = self.bar.lock().expect("progress lock").as_ref() {
            bar.inc(within_total(bar.position(), bar.length(), bytes));
        }
    }

    fn finish(&self) {
        self.replace(None);
    }
}

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// What a command reports while it runs: [`Bars`] on a terminal, and
/// (unless quiet, terminal or not) what it does to services, since a stop
/// may take as long as the service's timeout.
pub struct Reporter {
    bars: Option<Bars>,
    services: bool,
}

impl Reporter {
    pub fn new(quiet: bool) -> Reporter {
        Reporter {
            bars: Bars::new(!quiet),
            services: !quiet,
        }
    }
}

/// `stopping container nginx (up to 30s)…`
fn service_line(event: &ServiceEvent) -> String {
    let verb = match event.action {
        ServiceAction::Stopping => "stopping",
        ServiceAction::Starting => "starting",
        _ => "controlling",
    };
    match event.timeout {
        Some(t) => format!(
            "{verb} {} (up to {})…",
            event.service,
            backstop_core::time::human_duration(t)
        ),
        None => format!("{verb} {}…", event.service),
    }
}

impl Progress for Reporter {
    fn scanned(&self, entries: u64, bytes: u64) {
        if let Some(b) = &self.bars {
            b.scanned(entries, bytes);
        }
    }

    fn start(&self, phase: Phase, total: u64) {
        if let Some(b) = &self.bars {
            b.start(phase, total);
        }
    }

    fn advance(&self, bytes: u64) {
        if let Some(b) = &self.bars {
            b.advance(bytes);
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bars {
            b.finish();
        }
    }

    fn service(&self, event: &ServiceEvent) {
        if !self.services {
            return;
        }
        let line = service_line(event);
        match &self.bars {
            Some(b) => b.say(&line),
            None => say(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_line_says_what_and_how_long() {
        let event = |action, timeout| ServiceEvent {
            action,
            service: "container nginx".into(),
            timeout,
        };
        assert_eq!(
            service_line(&event(
                ServiceAction::Stopping,
                Some(Duration::from_secs(30))
            )),
            "stopping container nginx (up to 30s)…"
        );
        assert_eq!(
            service_line(&event(ServiceAction::Starting, None)),
            "starting container nginx…"
        );
    }

    #[test]
    fn a_bar_never_passes_its_total() {
        assert_eq!(within_total(90, Some(100), 30), 10);
        assert_eq!(within_total(100, Some(100), 5), 0);
        assert_eq!(within_total(10, Some(100), 30), 30);
        assert_eq!(within_total(10, None, 30), 30);
    }
}
