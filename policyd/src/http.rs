//! policyd's own route on the daemon listener (beside `/healthz`, `/readyz` and `/metrics`):
//! `/explain?from=NS/POD&to=NS/POD&port=N&proto=TCP`, which answers from the live model and
//! reads the deciding rules' counters from the kernel.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use trellis_daemon::{Reply, Routes};

use crate::daemon::Shared;
use crate::explain::{Query, explain};
use crate::sync::Dataplane;

/// The routes policyd adds to the daemon listener.
pub fn routes(shared: Shared) -> Routes {
    Arc::new(move |path: &str, query: &str| {
        if path != "/explain" {
            return None;
        }
        let (shared, query) = (shared.clone(), query.to_string());
        Some(
            Box::pin(async move { explain_reply(&shared, &query).await })
                as Pin<Box<dyn Future<Output = Reply> + Send>>,
        )
    })
}

fn text(status: u16, body: String) -> Reply {
    Reply {
        status,
        content_type: "text/plain",
        body,
    }
}

async fn explain_reply(shared: &Shared, query: &str) -> Reply {
    let q = match Query::parse_http(query) {
        Ok(q) => q,
        Err(e) => return text(400, e),
    };
    let read = shared.kernel.read_chains().await.unwrap_or_default();
    let answer = {
        let cluster = shared.cluster.read().unwrap_or_else(|p| p.into_inner());
        let program = shared.program.read().unwrap_or_else(|p| p.into_inner());
        explain(&cluster, &program, &read, &q)
    };
    match answer {
        Ok(e) => Reply {
            status: 200,
            content_type: "application/json",
            body: serde_json::to_string(&e).unwrap_or_default(),
        },
        Err(e) => text(404, e),
    }
}
