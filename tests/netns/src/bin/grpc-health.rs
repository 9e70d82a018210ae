//! grpc-health: a `grpc.health.v1` server (tonic-health's) for the kubelet's gRPC probe
//! tests, run as a pod's container. Its status follows a file: `SERVING` (or no file) serves,
//! anything else (`NOT_SERVING`) does not; the file is read every 100 ms.
//!
//!     grpc-health --listen 0.0.0.0:9000 --status-file /tmp/health --service app

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tonic_health::ServingStatus;

#[derive(Parser)]
#[command(about = "A grpc.health.v1 server whose status follows a file")]
struct Args {
    /// Where it listens.
    #[arg(long, default_value = "0.0.0.0:9000")]
    listen: SocketAddr,
    /// The file whose content is the status (SERVING, or anything else for NOT_SERVING);
    /// without the file it serves.
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// A named service reported with the same status as the server ("").
    #[arg(long)]
    service: Vec<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (reporter, svc) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("listening on {}", args.listen);
    let status_file = args.status_file.clone();
    let names = args.service.clone();
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let serving = status_file
                .as_ref()
                .is_none_or(|f| std::fs::read_to_string(f).map_or(true, |s| s.trim() == "SERVING"));
            let st = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            if last != Some(serving) {
                println!("status {}", if serving { "SERVING" } else { "NOT_SERVING" });
                reporter.set_service_status("", st).await;
                for n in &names {
                    reporter.set_service_status(n, st).await;
                }
                last = Some(serving);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
        .context("serving")?;
    Ok(())
}
