//! Masquerade and forwarding, in chains of our own: pod traffic leaving the cluster is SNATed to
//! the node's address; pod-to-pod traffic never is; the FORWARD chain accepts the cluster.

use ipnet::Ipv4Net;
use trellis_net::iptables::{Iptables, Table};

pub const NAT_CHAIN: &str = "TRELLIS-POSTRTG";
pub const FWD_CHAIN: &str = "TRELLIS-FWD";

/// The nat chain: RETURN for anything between pods (and for what kube-proxy marked for its own
/// masquerade), MASQUERADE for pods talking to the outside and for nodes talking to pods. The
/// node's own pods are those of every block it holds (`blocks`, the first one first).
pub fn nat(cluster: Ipv4Net, blocks: &[Ipv4Net]) -> Table {
    let mut rules: Vec<String> = vec![
        "-m comment --comment \"kube-proxy masquerades what it marked\" -m mark --mark 0x4000/0x4000 -j RETURN".into(),
    ];
    for block in blocks {
        rules.extend([
            format!(
                "-s {block} -d {cluster} -m comment --comment \"pod to pod: no NAT\" -j RETURN"
            ),
            format!(
                "-s {cluster} -d {block} -m comment --comment \"pod to pod: no NAT\" -j RETURN"
            ),
            format!(
                "! -s {cluster} -d {block} -m comment --comment \"to local pods: no NAT\" -j RETURN"
            ),
        ]);
    }
    rules.extend([
        format!("-s {cluster} ! -d 224.0.0.0/4 -m comment --comment \"pods leaving the cluster\" -j MASQUERADE --random-fully"),
        format!("! -s {cluster} -d {cluster} -m comment --comment \"nodes to remote pods\" -j MASQUERADE --random-fully"),
    ]);
    Table::new("nat").chain(NAT_CHAIN, rules)
}

/// The filter chain: forward whatever comes from or goes to the cluster.
pub fn forward(cluster: Ipv4Net) -> Table {
    Table::new("filter").chain(
        FWD_CHAIN,
        vec![
            format!("-s {cluster} -j ACCEPT"),
            format!("-d {cluster} -j ACCEPT"),
        ],
    )
}

/// Installs both chains and the jumps to them (idempotent).
pub async fn apply(
    ipt: &Iptables,
    cluster: Ipv4Net,
    blocks: &[Ipv4Net],
) -> trellis_net::Result<()> {
    ipt.restore(&nat(cluster, blocks)).await?;
    ipt.restore(&forward(cluster)).await?;
    ipt.ensure_rule(
        "nat",
        "POSTROUTING",
        &[
            "-m",
            "comment",
            "--comment",
            "trellis overlay masquerade",
            "-j",
            NAT_CHAIN,
        ],
    )
    .await?;
    ipt.ensure_rule(
        "filter",
        "FORWARD",
        &[
            "-m",
            "comment",
            "--comment",
            "trellis overlay forwarding",
            "-j",
            FWD_CHAIN,
        ],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_to_pod_returns_before_any_masquerade() {
        let t = nat(
            "10.244.0.0/16".parse().unwrap(),
            &[
                "10.244.3.0/24".parse().unwrap(),
                "10.244.9.0/24".parse().unwrap(),
            ],
        )
        .render();
        let first_masq = t.find("MASQUERADE").unwrap();
        for block in ["10.244.3.0/24", "10.244.9.0/24"] {
            let pod_to_pod = t.find(&format!("-s {block} -d 10.244.0.0/16")).unwrap();
            assert!(pod_to_pod < first_masq, "{block}: {t}");
        }
        assert!(t.starts_with("*nat\n:TRELLIS-POSTRTG - [0:0]\n"), "{t}");
    }
}
