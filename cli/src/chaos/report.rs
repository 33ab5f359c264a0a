//! What one fault did to one batch, and the table the benchmark prints.

/// What one fault did to one batch.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ChaosReport {
    /// The fault's name.
    pub fault: String,
    /// Submissions the orchestrator acknowledged with a task id.
    pub acknowledged: usize,
    /// Acknowledged tasks that ended SUCCEEDED with the expected output.
    pub succeeded: usize,
    /// Acknowledged tasks that ended otherwise (or with another output).
    pub failed: usize,
    /// Acknowledged tasks still not finished at the end.
    pub stranded: usize,
    /// Acknowledged tasks no replica knows any more.
    pub lost: usize,
    /// Of the lost, those acknowledged more than a second before the fault.
    pub lost_before_fsync_window: usize,
    /// Effects files with more than one line.
    pub repeated_effects: usize,
    /// Tasks whose effects file is missing or empty (lost tasks not counted).
    pub missing_effects: usize,
    /// Tasks that took more than one attempt.
    pub retried: usize,
    /// Stalled attempts another replica took over after their lease.
    pub takeovers_stalled: usize,
    /// Attempts taken over after their replica handed the lease back.
    pub takeovers_handed_back: usize,
    /// From the first submission to the last task finishing, seconds.
    pub batch_seconds: f64,
    /// From the fault to the first retried task finishing, ms.
    pub first_retried_done_ms: Option<f64>,
    /// From the fault to the last task finishing, ms.
    pub batch_done_after_fault_ms: Option<f64>,
    /// Submissions during the outage that got UNAVAILABLE.
    pub outage_unavailable: Option<usize>,
    /// Submissions during the outage that got another error (code: message).
    pub outage_other_errors: Vec<String>,
    /// Submissions during the outage that were acknowledged.
    pub outage_acknowledged: Option<usize>,
    /// Tasks in the store that no acknowledged submission returned.
    pub half_written: Option<usize>,
    /// How long the outage lasted, ms.
    pub outage_ms: Option<f64>,
    /// The exit code of a replica stopped with SIGTERM.
    pub sigterm_exit_code: Option<i32>,
    /// From SIGTERM to the replica's exit, ms.
    pub drain_ms: Option<f64>,
    /// From the replica's exit to its handed-back attempts being taken
    /// over: median and largest, ms.
    pub takeover_median_ms: Option<f64>,
    /// See `takeover_median_ms`.
    pub takeover_max_ms: Option<f64>,
    /// Task events the held watch stream delivered.
    pub watch_events: Option<usize>,
    /// The longest stretch without an event on the held stream, seconds.
    pub watch_longest_quiet_s: Option<f64>,
    /// How long the held stream stayed open, seconds.
    pub watch_open_s: Option<f64>,
    /// The state of the stream's last state change.
    pub watch_final_state: Option<String>,
    /// How the held stream ended, when it ended with an error.
    pub watch_error: Option<String>,
    /// Connections each balancer forwarded to each replica before the
    /// kills, by service (the deployment shape).
    pub replicas_used: Vec<(String, Vec<usize>)>,
    /// Example-team tasks acknowledged (the deployment shape).
    pub examples_acknowledged: usize,
    /// Of those, the ones that ended SUCCEEDED with an output.
    pub examples_succeeded: usize,
    /// Example-team submissions refused and tasks that did not succeed.
    pub example_errors: Vec<String>,
    /// The first failure seen, if any.
    pub first_failure: Option<String>,
    /// The data directory, kept when `AMAOS_CHAOS_KEEP` is set.
    pub kept_dir: Option<String>,
}

impl ChaosReport {
    /// What is wrong with the outcome; empty when every acknowledged task
    /// succeeded with its effect once and the fault's own checks hold.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.acknowledged == 0 {
            out.push("no task was acknowledged".into());
        }
        if self.succeeded != self.acknowledged {
            out.push(format!(
                "{} of {} acknowledged tasks succeeded ({} failed, {} stranded, {} lost); first failure: {}",
                self.succeeded,
                self.acknowledged,
                self.failed,
                self.stranded,
                self.lost,
                self.first_failure.as_deref().unwrap_or("-")
            ));
        }
        if self.repeated_effects > 0 || self.missing_effects > 0 {
            out.push(format!(
                "{} effects repeated, {} missing",
                self.repeated_effects, self.missing_effects
            ));
        }
        if !self.outage_other_errors.is_empty() {
            out.push(format!(
                "submissions during the outage failed otherwise than UNAVAILABLE: {:?}",
                self.outage_other_errors
            ));
        }
        if self.outage_acknowledged.is_some_and(|n| n > 0) {
            out.push("a submission was acknowledged while Redis was down".into());
        }
        if self.half_written.is_some_and(|n| n > 0) {
            out.push(format!(
                "{} tasks in the store were never acknowledged",
                self.half_written.unwrap_or(0)
            ));
        }
        if let Some(code) = self.sigterm_exit_code
            && code != 0
        {
            out.push(format!("the replica stopped with SIGTERM exited {code}"));
        }
        if let Some(error) = &self.watch_error {
            out.push(format!("the held watch stream broke: {error}"));
        }
        if !self.example_errors.is_empty() || self.examples_succeeded != self.examples_acknowledged
        {
            out.push(format!(
                "{} of {} example-team tasks succeeded: {:?}",
                self.examples_succeeded, self.examples_acknowledged, self.example_errors
            ));
        }
        for (service, forwarded) in &self.replicas_used {
            if forwarded.contains(&0) {
                out.push(format!(
                    "a {service} replica had no connection before the kills ({forwarded:?}): the run proved nothing for it"
                ));
            }
        }
        if let Some(state) = &self.watch_final_state
            && state != "SUCCEEDED"
        {
            out.push(format!("the held watch stream's last state was {state}"));
        }
        out
    }

    /// One row of the text table.
    fn row(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{:.1}", v / 1000.0));
        format!(
            "{:<20} {:>5} {:>5} {:>6} {:>8} {:>4} {:>8} {:>7} {:>7} {:>8} {:>9} {:>8}  {}\n",
            self.fault,
            self.acknowledged,
            self.succeeded,
            self.failed,
            self.stranded,
            self.lost,
            self.repeated_effects,
            self.missing_effects,
            self.retried,
            ms(self.first_retried_done_ms),
            ms(self.batch_done_after_fault_ms),
            format!("{:.1}", self.batch_seconds),
            self.notes()
        )
    }

    fn notes(&self) -> String {
        let mut notes = Vec::new();
        if let Some(n) = self.outage_unavailable {
            notes.push(format!(
                "{n} submissions during the {:.1} s outage got UNAVAILABLE, {} other, {} half-written, {} lost ({} acknowledged >1 s before the crash)",
                self.outage_ms.unwrap_or(0.0) / 1000.0,
                self.outage_other_errors.len(),
                self.half_written.unwrap_or(0),
                self.lost,
                self.lost_before_fsync_window
            ));
        }
        if let Some(code) = self.sigterm_exit_code {
            notes.push(format!(
                "exit {code} after {:.1} s; {} handed back, taken over in {} ms median, {} ms max after exit",
                self.drain_ms.unwrap_or(0.0) / 1000.0,
                self.takeovers_handed_back,
                self.takeover_median_ms.map_or("-".into(), |v| format!("{v:.0}")),
                self.takeover_max_ms.map_or("-".into(), |v| format!("{v:.0}")),
            ));
        }
        if let Some(events) = self.watch_events {
            notes.push(format!(
                "stream open {:.1} s, {events} events, longest silence {:.1} s, last state {}",
                self.watch_open_s.unwrap_or(0.0),
                self.watch_longest_quiet_s.unwrap_or(0.0),
                self.watch_final_state.as_deref().unwrap_or("-")
            ));
        }
        if self.takeovers_stalled > 0 && self.sigterm_exit_code.is_none() {
            notes.push(format!(
                "{} stalled attempts taken over",
                self.takeovers_stalled
            ));
        }
        if let Some(error) = &self.watch_error {
            notes.push(format!("watch error: {error}"));
        }
        if !self.replicas_used.is_empty() {
            let used: Vec<String> = self
                .replicas_used
                .iter()
                .map(|(s, f)| format!("{s} {f:?}"))
                .collect();
            notes.push(format!(
                "{}/{} example tasks ok; connections per replica before the kills: {}",
                self.examples_succeeded,
                self.examples_acknowledged,
                used.join(", ")
            ));
        }
        if let Some(failure) = &self.first_failure {
            notes.push(format!("first failure: {failure}"));
        }
        notes.join("; ")
    }
}

/// The reports as a table.
pub fn table(reports: &[ChaosReport]) -> String {
    let mut out = format!(
        "{:<20} {:>5} {:>5} {:>6} {:>8} {:>4} {:>8} {:>7} {:>7} {:>8} {:>9} {:>8}  {}\n",
        "fault",
        "acked",
        "ok",
        "failed",
        "stranded",
        "lost",
        "repeated",
        "missing",
        "retried",
        "retry-ok",
        "all-done",
        "batch",
        "notes"
    );
    for report in reports {
        out.push_str(&report.row());
    }
    out.push_str(
        "retry-ok: s from the fault to the first retried task finishing; all-done: s from the fault to the last task finishing; batch: s from the first submission to the last task finishing\n",
    );
    out
}
