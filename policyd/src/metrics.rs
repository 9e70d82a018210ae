//! policyd's Prometheus metrics (names are part of the README).

use trellis_daemon::Metrics;

use crate::verify::{Pass, Repairs};
use crate::xt::Program;

pub const COMMIT_LATENCY: &str = "trellis_policyd_commit_latency_seconds";
pub const COMMITS: &str = "trellis_policyd_commits_total";
pub const CHAINS: &str = "trellis_policyd_chains";
pub const RULES: &str = "trellis_policyd_rules";
pub const IPSETS: &str = "trellis_policyd_ipsets";
pub const IPSET_MEMBERS: &str = "trellis_policyd_ipset_members";
pub const SYNC_ERRORS: &str = "trellis_policyd_sync_errors_total";
pub const REPAIRS: &str = "trellis_policyd_verifier_repairs_total";
pub const GATE: &str = "trellis_policyd_gate_requests_total";
pub const GATE_WAIT: &str = "trellis_policyd_gate_wait_seconds";
pub const FAILED_CLOSED: &str = "trellis_policyd_policies_failed_closed";
pub const LOCAL_PODS: &str = "trellis_policyd_local_pods";
pub const COMMIT_PHASE: &str = "trellis_policyd_commit_phase_seconds";
pub const RESTORE_FALLBACKS: &str = "trellis_policyd_restore_fallbacks_total";
pub const VERIFIER_PASSES: &str = "trellis_policyd_verifier_passes_total";

/// Where a commit's time went, by phase: `queued` (longest a change of it waited between its
/// watch and the daemon's loop; not part of the commit latency), `compile` (model → program or
/// change set), `diff`, `ipset`, `iptables`, `cleanup`, `publish` (the program served, gauges).
pub fn phase(m: &Metrics, phase: &str, seconds: f64) {
    m.observe(
        COMMIT_PHASE,
        "Seconds of a commit spent per phase (queued: a change's wait before the daemon took it in).",
        &[("phase", phase)],
        seconds,
    );
}

/// After a successful commit: the served program's gauges.
///
/// A scrape may land between any two of these updates, so the commit's latency, which readers
/// take as the sign that a commit happened, and the commit count are recorded last, by
/// [`commit_latency`], once the gauges and phases are in place.
pub fn committed(m: &Metrics, p: &Program, local_pods: usize) {
    m.set(CHAINS, "Chains policyd owns.", &[], p.chains.len() as f64);
    m.set(
        RULES,
        "Rules in the chains policyd owns.",
        &[],
        p.rule_count() as f64,
    );
    m.set(IPSETS, "ipsets policyd owns.", &[], p.sets.len() as f64);
    m.set(
        IPSET_MEMBERS,
        "Members of the ipsets policyd owns.",
        &[],
        p.member_count() as f64,
    );
    m.set(
        LOCAL_PODS,
        "Local pods with committed rules.",
        &[],
        local_pods as f64,
    );
}

/// The last figure of a successful commit (see [`committed`]).
pub fn commit_latency(m: &Metrics, latency: f64) {
    m.inc(COMMITS, "Commits to iptables and ipset.", &[], 1.0);
    m.observe(
        COMMIT_LATENCY,
        "Seconds from the first model change (or gate request) to its rules being committed.",
        &[],
        latency,
    );
}

pub fn sync_error(m: &Metrics, stage: &str) {
    m.inc(
        SYNC_ERRORS,
        "Failed commits or verifier passes.",
        &[("stage", stage)],
        1.0,
    );
}

pub fn repaired(m: &Metrics, r: &Repairs) {
    let help = "Things the verifier found changed and put back.";
    for (kind, n) in [
        ("chain", r.chains.len()),
        ("jump", r.jumps),
        ("set", r.sets.len()),
    ] {
        // Every kind shows up, zero until a repair.
        m.inc(REPAIRS, help, &[("kind", kind)], n as f64);
    }
}

/// Counts a verifier pass by what it read: `unchanged` (nf_tables committed nothing since the
/// last whole pass: only the sets were listed) or `checked` (everything read back).
pub fn verifier_pass(m: &Metrics, pass: &Pass) {
    let result = match pass {
        Pass::Unchanged(_) => "unchanged",
        Pass::Checked(_) => "checked",
    };
    m.inc(
        VERIFIER_PASSES,
        "Verifier passes, by whether the rules had to be read back.",
        &[("result", result)],
        1.0,
    );
}

pub fn gate(m: &Metrics, result: &str, seconds: f64) {
    m.inc(
        GATE,
        "Gate requests from the CNI plugins, by answer.",
        &[("result", result)],
        1.0,
    );
    m.observe(
        GATE_WAIT,
        "Seconds a gate request waited for its commit.",
        &[],
        seconds,
    );
}

pub fn failed_closed(m: &Metrics, n: usize) {
    m.set(
        FAILED_CLOSED,
        "Policies with a direction that fails closed (unknown or unsupported fields).",
        &[],
        n as f64,
    );
}

/// A restore the long-lived `iptables-restore` session did not deliver (it failed, died or
/// stopped answering), applied by a one-shot process instead (`n` = 0 at start, so the
/// counter shows up before the first).
pub fn restore_fallbacks(m: &Metrics, n: u64) {
    m.inc(
        RESTORE_FALLBACKS,
        "Restores applied one-shot because the iptables-restore session failed.",
        &[],
        n as f64,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scrape between the two calls must not see a commit whose gauges are not yet in place:
    /// readers take the count and the latency as the sign that a commit happened.
    #[test]
    fn a_commit_is_counted_only_after_its_gauges_are_set() {
        let m = Metrics::default();
        committed(&m, &Program::default(), 3);
        let between = m.render();
        assert!(
            between.contains("trellis_policyd_local_pods 3"),
            "{between}"
        );
        assert!(!between.contains(COMMITS), "{between}");
        assert!(!between.contains(COMMIT_LATENCY), "{between}");
        commit_latency(&m, 0.01);
        let after = m.render();
        assert!(after.contains(&format!("{COMMITS} 1")), "{after}");
        assert!(
            after.contains(&format!("{COMMIT_LATENCY}_count 1")),
            "{after}"
        );
    }
}
