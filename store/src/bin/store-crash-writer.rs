//! Test helper for the crash test (store/tests/sqlite.rs): increments a counter and its mirror
//! in one compare-and-swap transaction, forever, printing each value once the store has
//! acknowledged it. The test kills it with SIGKILL at random moments.

use std::io::Write;

use trellis_store::{Compare, CompareOp, Op, SqliteStore, Store, Txn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: store-crash-writer <db>")?;
    let store = SqliteStore::open(&path, Default::default())?;
    let mut out = std::io::stdout().lock();
    loop {
        let cur = store.get(b"/crash/counter").await?;
        let (n, rev) = match &cur {
            Some(kv) => (
                String::from_utf8(kv.value.clone())?.parse::<u64>()?,
                kv.mod_revision,
            ),
            None => (0, 0),
        };
        let next = (n + 1).to_string();
        let txn = Txn::new()
            .when([Compare::mod_revision(
                b"/crash/counter".to_vec(),
                CompareOp::Equal,
                rev,
            )])
            .and_then([
                Op::put(b"/crash/counter".to_vec(), next.clone()),
                Op::put(b"/crash/mirror".to_vec(), next.clone()),
            ]);
        if store.txn(txn).await?.succeeded {
            writeln!(out, "{next}")?;
            out.flush()?;
        }
    }
}
