//! The ADD gate on the plugin's side: with a `policy` section in the configuration, ADD returns
//! only once policyd has committed the new pod's rules, so the pod's first packet already meets
//! its policy. Without the section (policy switched off on the node) nothing waits.
//!
//! ```json
//! "policy": {"socket": "/run/trellis/policyd.sock", "timeoutMs": 5000}
//! ```
//!
//! Any failure — policyd down, no answer in time, a refusal, a broken exchange — undoes this
//! ADD exactly as DEL would (the host end of the veth, then the addresses) and answers "try
//! again later" (11): the runtime retries the sandbox, by which time policyd may be back.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use trellis_cni::Error;
use trellis_cni::skel::Attachment;
use trellis_net::Handle;
use trellis_policy_gate::{AddRequest, DEFAULT_SOCKET, DEFAULT_TIMEOUT};

use crate::host::net_err;
use crate::ipam::Lease;
use crate::veth;

/// The longest wait a configuration may ask for: a runtime's own ADD timeout is minutes.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);

/// Where to ask policyd, and how long to wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyGate {
    pub socket: PathBuf,
    pub timeout: Duration,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawPolicy {
    #[serde(default)]
    socket: Option<PathBuf>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

impl Default for PolicyGate {
    fn default() -> Self {
        PolicyGate {
            socket: PathBuf::from(DEFAULT_SOCKET),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl PolicyGate {
    /// The configuration's section, checked: a zero or over-long timeout is code 7.
    pub(crate) fn from_raw(raw: RawPolicy) -> Result<PolicyGate, Error> {
        let timeout = match raw.timeout_ms {
            None => DEFAULT_TIMEOUT,
            Some(ms) if ms == 0 || Duration::from_millis(ms) > MAX_TIMEOUT => {
                return Err(Error::invalid_config(
                    "invalid policy.timeoutMs",
                    format!("{ms} is outside 1..{}", MAX_TIMEOUT.as_millis()),
                ));
            }
            Some(ms) => Duration::from_millis(ms),
        };
        Ok(PolicyGate {
            socket: raw.socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            timeout,
        })
    }

    /// The `policy` section an agent writes into its conflist.
    pub fn to_json(&self) -> Value {
        json!({
            "socket": self.socket,
            "timeoutMs": u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
        })
    }
}

/// The request for this attachment: namespace and pod from CNI_ARGS (empty when absent).
pub fn request(req: &Attachment, addresses: &[IpAddr], host_interface: &str) -> AddRequest {
    let (namespace, pod) = req.args.pod().unwrap_or(("", ""));
    AddRequest {
        namespace: namespace.to_string(),
        pod: pod.to_string(),
        container_id: req.container_id.as_str().to_string(),
        addresses: addresses.to_vec(),
        host_interface: host_interface.to_string(),
    }
}

/// The end of ADD, once the veth, addresses and routes are in place: with a gate, waits for
/// policyd's confirmation; then keeps the lease. On any gate failure undoes the attachment as
/// DEL would (`plugin`'s host end `host_interface`, then the addresses) and answers code 11.
pub async fn admit(
    plugin: &str,
    req: &Attachment,
    gate: Option<&PolicyGate>,
    addresses: &[IpAddr],
    host_interface: &str,
    lease: Lease<'_>,
) -> Result<(), Error> {
    let Some(gate) = gate else {
        lease.keep();
        return Ok(());
    };
    let ask = request(req, addresses, host_interface);
    // Blocking is fine here: the plugin's runtime has nothing else to do while it waits.
    let Err(e) = trellis_policy_gate::wait_committed(&gate.socket, &ask, gate.timeout) else {
        lease.keep();
        return Ok(());
    };
    let mut undone = String::from("the address was released and the veth deleted");
    let removed = match Handle::current() {
        Ok(host) => {
            veth::remove_host_end(&host, plugin, host_interface, &veth::owner(plugin, req)).await
        }
        Err(e) => Err(net_err(e)),
    };
    if let Err(r) = removed {
        undone = format!("the address was released; deleting the veth failed: {r}");
    }
    lease.release().await;
    Err(Error::try_again_later(
        e.to_string(),
        format!("policy gate {}: {undone}", gate.socket.display()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(v: Value) -> RawPolicy {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_section_has_defaults_and_a_bounded_timeout() {
        assert_eq!(
            PolicyGate::from_raw(raw(json!({}))).unwrap(),
            PolicyGate::default()
        );
        let g =
            PolicyGate::from_raw(raw(json!({"socket": "/run/p.sock", "timeoutMs": 250}))).unwrap();
        assert_eq!(
            g,
            PolicyGate {
                socket: "/run/p.sock".into(),
                timeout: Duration::from_millis(250)
            }
        );
        assert_eq!(
            g.to_json(),
            json!({"socket": "/run/p.sock", "timeoutMs": 250})
        );
        for bad in [0, 300_001] {
            let e = PolicyGate::from_raw(raw(json!({"timeoutMs": bad}))).unwrap_err();
            assert_eq!(e.code, trellis_cni::Code::INVALID_NETWORK_CONFIG, "{bad}");
        }
    }
}
