//! Throughput measurements for the data-path benchmarks: iperf3 between two namespaces, and
//! the small helpers the bench commands share.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use trellis_net::Netns;

use crate::{Error, Result, Testbed};

/// Gbit/s received by an iperf3 server at `to` in `server` from a client in `client`, over
/// one TCP stream for `secs` seconds. Both ends run under the testbed's time limits.
pub async fn iperf(
    tb: &Testbed,
    server: &Netns,
    to: Ipv4Addr,
    client: &Netns,
    secs: u32,
) -> Result<f64> {
    let limit = Duration::from_secs(u64::from(secs) + 30);
    let pid = tb.spawn(server, &["iperf3", "-s", "-B", &to.to_string()], limit)?;
    // Bounded wait for the server to listen.
    let addr = SocketAddr::from((to, 5201));
    for _ in 0..50 {
        if client.run(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())? {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = tb
        .exec(
            client,
            &[
                "iperf3",
                "-c",
                &to.to_string(),
                "-t",
                &secs.to_string(),
                "-J",
            ],
            limit,
        )
        .await;
    tb.kill(pid);
    let out = out?;
    if !out.success() {
        return Err(Error::Other(format!(
            "iperf3 to {to}: {}{}",
            out.stdout, out.stderr
        )));
    }
    let report: serde_json::Value = serde_json::from_str(&out.stdout)
        .map_err(|e| Error::Other(format!("iperf3's report: {e}")))?;
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| Error::Other("iperf3 reported no received rate".into()))
}

/// The median (the upper one for an even count); 0 for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// `--name N` from the command line, else `default`.
pub fn arg(name: &str, default: u32) -> u32 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_middle_round() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![]), 0.0);
    }
}
