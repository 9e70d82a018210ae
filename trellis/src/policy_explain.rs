//! `trellis policy explain NS/POD NS/POD:PORT/PROTO`: asks a policyd why a connection is
//! allowed or denied (the tier, policy and rule of each side, with live counters).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::header::{CONNECTION, HOST};
use hyper_util::rt::TokioIo;
use trellis_policyd::explain::{Explanation, Query, render};

#[derive(clap::Args)]
pub struct Args {
    /// The client pod, NS/POD.
    from: String,
    /// The server pod, port and protocol: NS/POD:PORT/PROTO (PROTO is TCP, UDP or SCTP).
    to: String,
    /// The policyd to ask (its --listen; counters are those of its node's pods).
    #[arg(long, default_value = "127.0.0.1:9914")]
    policyd: SocketAddr,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
}

const LIMIT: Duration = Duration::from_secs(10);

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let stream = tokio::time::timeout(LIMIT, tokio::net::TcpStream::connect(addr))
        .await
        .with_context(|| format!("no answer from policyd at {addr}"))?
        .with_context(|| format!("cannot reach policyd at {addr} (its --listen)"))?;
    let exchange = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(connection);
        let request = Request::get(path)
            .header(HOST, "policyd")
            .header(CONNECTION, "close")
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        driver.abort();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(LIMIT, exchange)
        .await
        .context("policyd did not answer in time")?
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let q = Query::parse_cli(&args.from, &args.to).map_err(anyhow::Error::msg)?;
    let (status, body) = get(args.policyd, &q.to_http()).await?;
    if status != 200 {
        bail!("policyd: {}", body.trim());
    }
    let e: Explanation = serde_json::from_str(&body).context("policyd's answer")?;
    if args.json {
        println!("{body}");
    } else {
        print!("{}", render(&e));
    }
    Ok(())
}
