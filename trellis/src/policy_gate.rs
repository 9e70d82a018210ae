//! The agents' `--policy-socket` / `--policy-timeout-ms`: the ADD gate they write into the
//! conflist, so the node's plugin waits for policyd before a new pod may send.

use std::path::PathBuf;
use std::time::Duration;

use trellis_plugin::policy::{MAX_TIMEOUT, PolicyGate};

#[derive(clap::Args, Debug, Clone)]
pub struct PolicyGateArgs {
    /// policyd's ADD-gate socket (e.g. /run/trellis/policyd.sock): the plugin's ADD waits until
    /// policyd has committed the new pod's rules. Absent: policy is off on this node and ADD
    /// does not wait.
    #[arg(long)]
    policy_socket: Option<PathBuf>,
    /// How long ADD waits for policyd (with --policy-socket); past it ADD is undone and fails
    /// with "try again later" (CNI code 11).
    #[arg(long, default_value_t = 5000)]
    policy_timeout_ms: u64,
}

impl PolicyGateArgs {
    pub fn gate(&self) -> anyhow::Result<Option<PolicyGate>> {
        let Some(socket) = &self.policy_socket else {
            return Ok(None);
        };
        let timeout = Duration::from_millis(self.policy_timeout_ms);
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            anyhow::bail!(
                "--policy-timeout-ms must be 1..{}, not {}",
                MAX_TIMEOUT.as_millis(),
                self.policy_timeout_ms
            );
        }
        Ok(Some(PolicyGate {
            socket: socket.clone(),
            timeout,
        }))
    }
}
