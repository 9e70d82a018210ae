//! nftables through `nft -f -`: a whole script is one kernel transaction, so a change of many
//! chains and map elements is applied atomically or not at all (the ruleset in between is never
//! seen by a packet). Tables live in a network namespace like links do. [`NftSession`] keeps
//! one `nft` running for a stream of small transactions.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::exec;
use crate::netns::Netns;

pub use crate::nft_session::{
    ANSWER_WITHIN, Delivery, GIVE_UP_AFTER, NftSession, RECYCLE_AFTER, SESSION_MAX_SCRIPT,
};

/// `nft` in one network namespace (None: the caller's).
#[derive(Debug, Clone, Default)]
pub struct Nft {
    netns: Option<PathBuf>,
}

impl Nft {
    pub fn new(netns: Option<&Netns>) -> Nft {
        Nft {
            netns: netns.map(|n| n.path().to_path_buf()),
        }
    }

    /// The namespace it works in (None: the caller's).
    pub fn netns(&self) -> Option<&Path> {
        self.netns.as_deref()
    }

    /// Applies `script` (the `nft -f` language) as one transaction.
    pub async fn apply(&self, script: &str) -> Result<()> {
        exec::run(self.netns.as_deref(), "nft", &["-f", "-"], Some(script)).await?;
        Ok(())
    }

    /// Whether the table `family name` exists.
    pub async fn has_table(&self, family: &str, name: &str) -> Result<bool> {
        let out = exec::run(self.netns.as_deref(), "nft", &["list", "tables"], None).await?;
        let want = format!("table {family} {name}");
        Ok(out.lines().any(|l| l.trim() == want))
    }

    /// Deletes the table `family name` with everything in it; a missing table is no error.
    pub async fn delete_table(&self, family: &str, name: &str) -> Result<()> {
        // Declaring it first makes the delete succeed whether or not it existed, in one step.
        self.apply(&format!(
            "table {family} {name}\ndelete table {family} {name}\n"
        ))
        .await
    }
}
