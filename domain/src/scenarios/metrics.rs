//! The chatbot's metrics (DESIGN §7), labelled by scenario title: runs
//! started, continued (a choice), refused (by reason), finished (by how
//! they ended), fallbacks sent and handoffs.

/// Runs started, by `scenario`.
pub const RUNS_STARTED: &str = "wapipe_scenario_runs_started_total";
/// Choices that continued a run (button or list replies), by `scenario`.
pub const RUNS_CONTINUED: &str = "wapipe_scenario_runs_continued_total";
/// Messages the bot did not answer, by `reason` (blocked, assigned,
/// handoff, too_old, not_allowed, repeat_limit, group) and `scenario` (empty when
/// the refusal came before any scenario was chosen).
pub const RUNS_REFUSED: &str = "wapipe_scenario_runs_refused_total";
/// Runs that ended, by `scenario` and `status` (finished, exited,
/// abandoned, replaced, handoff).
pub const RUNS_FINISHED: &str = "wapipe_scenario_runs_finished_total";
/// Fallback answers sent, by `scenario`.
pub const FALLBACKS: &str = "wapipe_scenario_fallbacks_total";
/// Chats handed to a human, by `scenario`.
pub const HANDOFFS: &str = "wapipe_scenario_handoffs_total";

pub(crate) fn started(scenario: &str) {
    metrics::counter!(RUNS_STARTED, "scenario" => scenario.to_owned()).increment(1);
}

pub(crate) fn continued(scenario: &str) {
    metrics::counter!(RUNS_CONTINUED, "scenario" => scenario.to_owned()).increment(1);
}

pub(crate) fn refused(reason: &'static str, scenario: &str) {
    metrics::counter!(RUNS_REFUSED, "reason" => reason, "scenario" => scenario.to_owned())
        .increment(1);
}

pub(crate) fn finished(scenario: &str, status: &'static str) {
    metrics::counter!(RUNS_FINISHED, "scenario" => scenario.to_owned(), "status" => status)
        .increment(1);
}

pub(crate) fn fallback(scenario: &str) {
    metrics::counter!(FALLBACKS, "scenario" => scenario.to_owned()).increment(1);
}

pub(crate) fn handoff(scenario: &str) {
    metrics::counter!(HANDOFFS, "scenario" => scenario.to_owned()).increment(1);
}

/// Makes every series exist from the start (at 0, without labels), so
/// dashboards and alert rules find them before the first scenario runs.
pub fn register() {
    for name in [
        RUNS_STARTED,
        RUNS_CONTINUED,
        RUNS_REFUSED,
        RUNS_FINISHED,
        FALLBACKS,
        HANDOFFS,
    ] {
        metrics::counter!(name).increment(0);
    }
}
