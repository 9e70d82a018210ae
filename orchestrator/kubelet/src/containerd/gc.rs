//! Image garbage collection, as upstream's kubelet does it: when the image filesystem's usage
//! crosses `--image-gc-high-threshold` percent, unused images are removed, least recently used
//! first, until usage is down to `--image-gc-low-threshold` percent. An image a container of
//! containerd's namespace references (any node's: several kubelets may share a containerd), or
//! that a start or pull is using now, is never removed, nor one younger than
//! `--image-minimum-gc-age`.
//!
//! Usage is measured one of two ways:
//! - by default, the file system containerd's root is on (`--containerd-root`): its used and
//!   total bytes (what upstream's cadvisor reports for the image filesystem);
//! - with `--image-gc-fs-size <bytes>`, the bytes of containerd's content store in the
//!   kubelet's namespace against that size: an image budget, independent of what else fills
//!   the disk (and how a test crosses a threshold without filling one).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{
    DeleteImageRequest, ListContainersRequest, ListContentRequest, ListImagesRequest,
};

use super::{Conn, CtrdError, image};

/// Upstream's ImageGCPeriod.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(300);

/// When and how far images are collected.
#[derive(Debug, Clone)]
pub struct GcPolicy {
    /// Percent of the image filesystem; 100 turns garbage collection off.
    pub high: u8,
    pub low: u8,
    /// An image younger than this (since containerd recorded it) is kept.
    pub min_age: Duration,
    /// How often usage is checked.
    pub period: Duration,
    /// The image budget in bytes (`--image-gc-fs-size`); None: containerd's file system.
    pub fs_size: Option<u64>,
    /// containerd's root directory (whose file system is measured without a budget).
    pub root: PathBuf,
}

impl Default for GcPolicy {
    fn default() -> GcPolicy {
        GcPolicy {
            high: 85,
            low: 80,
            min_age: Duration::from_secs(120),
            period: DEFAULT_PERIOD,
            fs_size: None,
            root: PathBuf::from("/var/lib/containerd"),
        }
    }
}

impl GcPolicy {
    pub fn enabled(&self) -> bool {
        self.high < 100
    }

    /// Checks the thresholds (upstream's rules: each 0–100, low not above high).
    pub fn validate(&self) -> Result<(), String> {
        if self.high > 100 || self.low > 100 {
            return Err("image GC thresholds are percentages (0-100)".into());
        }
        if self.low > self.high {
            return Err(format!(
                "--image-gc-low-threshold ({}) must not be above --image-gc-high-threshold ({})",
                self.low, self.high
            ));
        }
        Ok(())
    }
}

/// Which images starts and pulls are using now, and which one a GC round is removing.
///
/// One lock decides both, so a start and a removal of the same image are ordered: either the
/// collector sees the start's hold and keeps the image, or the start sees the removal and
/// waits for it to end (then finds the image gone and pulls it again) — it never creates a
/// container from an image being deleted under it.
#[derive(Debug, Default)]
pub struct ImageHolds {
    state: Mutex<Holds>,
    removed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Holds {
    /// Normalized image name → how many starts and pulls use it.
    in_use: HashMap<String, usize>,
    /// The image a GC round is deleting now, if any.
    removing: Option<String>,
}

impl ImageHolds {
    /// Marks `key` used; true when a removal of it is under way (wait with
    /// [`ImageHolds::removal_done`] before resolving it).
    pub fn hold(&self, key: &str) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        *s.in_use.entry(key.to_string()).or_insert(0) += 1;
        s.removing.as_deref() == Some(key)
    }

    /// Ends one use of `key`.
    pub fn release(&self, key: &str) {
        if let Ok(mut s) = self.state.lock()
            && let Some(n) = s.in_use.get_mut(key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.in_use.remove(key);
            }
        }
    }

    /// The images in use now.
    pub fn in_use(&self) -> HashSet<String> {
        self.state
            .lock()
            .map(|s| s.in_use.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Claims `key` for removal: false (keep it) when a start or pull uses it now.
    pub fn begin_removal(&self, key: &str) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        if s.in_use.contains_key(key) {
            return false;
        }
        s.removing = Some(key.to_string());
        true
    }

    /// The removal claimed by [`ImageHolds::begin_removal`] has ended (either way).
    pub fn end_removal(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.removing = None;
        }
        self.removed.notify_waiters();
    }

    /// Waits until no removal of `key` is under way, `limit` at most; false if it still is.
    pub async fn removal_done(&self, key: &str, limit: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.removed.notified();
                tokio::pin!(notified);
                // Registered before the check, so an end in between is not missed.
                notified.as_mut().enable();
                let busy = self
                    .state
                    .lock()
                    .map(|s| s.removing.as_deref() == Some(key))
                    .unwrap_or(false);
                if !busy {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

/// An image as the collector sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    pub size: u64,
    /// When it was last used by a start (or, never used since the kubelet started, when
    /// containerd last updated it).
    pub last_used: SystemTime,
    pub created: SystemTime,
}

/// Which images to remove to free `to_free` bytes: not in use, old enough, least recently used
/// first (by name on a tie, so the choice is stable).
pub fn choose(
    mut candidates: Vec<Candidate>,
    in_use: &HashSet<String>,
    to_free: u64,
    min_age: Duration,
    now: SystemTime,
) -> Vec<Candidate> {
    candidates.retain(|c| {
        !in_use.contains(&c.name)
            && now
                .duration_since(c.created)
                .is_ok_and(|age| age >= min_age)
    });
    candidates.sort_by(|a, b| a.last_used.cmp(&b.last_used).then(a.name.cmp(&b.name)));
    let mut freed = 0u64;
    let mut out = Vec::new();
    for c in candidates {
        if freed >= to_free {
            break;
        }
        freed += c.size;
        out.push(c);
    }
    out
}

/// How many bytes must go for usage to reach the low threshold, if usage is at or over the
/// high one.
pub fn to_free(usage: u64, capacity: u64, high: u8, low: u8) -> Option<u64> {
    if capacity == 0 || high >= 100 {
        return None;
    }
    let pct = usage as u128 * 100 / capacity as u128;
    if pct < u128::from(high) {
        return None;
    }
    let target = capacity as u128 * u128::from(low) / 100;
    Some((usage as u128).saturating_sub(target) as u64)
}

/// (usage, capacity) of the image filesystem.
pub async fn measure(conn: &Conn, p: &GcPolicy) -> Result<(u64, u64), CtrdError> {
    match p.fs_size {
        Some(size) => {
            let mut stream = ContentClient::new(conn.channel.clone())
                .list(conn.request(ListContentRequest { filters: vec![] }))
                .await
                .map_err(|s| CtrdError::rpc("list content", s))?
                .into_inner();
            let mut used = 0u64;
            while let Some(r) = stream
                .message()
                .await
                .map_err(|s| CtrdError::rpc("list content", s))?
            {
                used += r.info.iter().map(|i| i.size.max(0) as u64).sum::<u64>();
            }
            Ok((used, size))
        }
        None => {
            let s = nix::sys::statvfs::statvfs(&p.root).map_err(|e| CtrdError::Io {
                what: format!("statvfs {}", p.root.display()),
                source: e.into(),
            })?;
            // u64 here, u32 on some 32-bit targets.
            #[allow(clippy::useless_conversion)]
            let (frsize, blocks, bfree) = (
                u64::from(s.fragment_size()),
                u64::from(s.blocks()),
                u64::from(s.blocks_free()),
            );
            let total = blocks.saturating_mul(frsize);
            let free = bfree.saturating_mul(frsize);
            Ok((total.saturating_sub(free), total))
        }
    }
}

/// The images containerd's containers in this namespace reference.
pub async fn images_in_use(conn: &Conn) -> Result<HashSet<String>, CtrdError> {
    let list = ContainersClient::new(conn.channel.clone())
        .list(conn.request(ListContainersRequest { filters: vec![] }))
        .await
        .map_err(|s| CtrdError::rpc("list containers", s))?
        .into_inner();
    Ok(list.containers.into_iter().map(|c| c.image).collect())
}

fn time_of(t: Option<&prost_types::Timestamp>) -> SystemTime {
    t.and_then(|t| {
        let secs = u64::try_from(t.seconds).ok()?;
        Some(SystemTime::UNIX_EPOCH + Duration::new(secs, t.nanos.max(0) as u32))
    })
    .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Every image of the namespace with its size (its blobs for this platform) and times.
pub async fn candidates(
    conn: &Conn,
    last_used: &HashMap<String, SystemTime>,
) -> Result<Vec<Candidate>, CtrdError> {
    let list = ImagesClient::new(conn.channel.clone())
        .list(conn.request(ListImagesRequest { filters: vec![] }))
        .await
        .map_err(|s| CtrdError::rpc("list images", s))?
        .into_inner();
    let mut out = Vec::new();
    for i in list.images {
        let Some(t) = &i.target else { continue };
        let size = image::size_of(conn, &t.media_type, &t.digest, t.size)
            .await
            .unwrap_or(t.size.max(0) as u64);
        let created = time_of(i.created_at.as_ref());
        let updated = time_of(i.updated_at.as_ref()).max(created);
        out.push(Candidate {
            last_used: last_used.get(&i.name).copied().unwrap_or(updated),
            name: i.name,
            size,
            created,
        });
    }
    Ok(out)
}

/// Removes an image (containerd collects what only it referenced, synchronously).
pub async fn remove(conn: &Conn, name: &str) -> Result<(), CtrdError> {
    match ImagesClient::new(conn.channel.clone())
        .delete(conn.request(DeleteImageRequest {
            name: name.to_string(),
            sync: true,
            target: None,
        }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
        Err(s) => Err(CtrdError::rpc(format!("delete image {name}"), s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, size: u64, used: u64, created: u64) -> Candidate {
        Candidate {
            name: name.into(),
            size,
            last_used: SystemTime::UNIX_EPOCH + Duration::from_secs(used),
            created: SystemTime::UNIX_EPOCH + Duration::from_secs(created),
        }
    }

    #[test]
    fn thresholds_decide_how_much_goes() {
        assert_eq!(to_free(84, 100, 85, 80), None);
        assert_eq!(to_free(85, 100, 85, 80), Some(5));
        assert_eq!(to_free(95, 100, 85, 80), Some(15));
        assert_eq!(to_free(95, 100, 100, 80), None, "100 turns GC off");
        assert_eq!(to_free(5, 0, 85, 80), None);
        assert_eq!(to_free(10, 100, 1, 0), Some(10));
    }

    #[test]
    fn the_least_recently_used_unused_old_enough_go_first() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let all = vec![
            c("new", 10, 10, 990),
            c("used", 10, 5, 0),
            c("older", 10, 100, 0),
            c("oldest", 10, 50, 0),
        ];
        let in_use = HashSet::from(["used".to_string()]);
        let names = |v: Vec<Candidate>| v.into_iter().map(|c| c.name).collect::<Vec<_>>();
        let got = choose(all.clone(), &in_use, 5, Duration::from_secs(60), now);
        assert_eq!(names(got), ["oldest"]);
        let got = choose(all.clone(), &in_use, 15, Duration::from_secs(60), now);
        assert_eq!(names(got), ["oldest", "older"]);
        let got = choose(all.clone(), &in_use, 1000, Duration::ZERO, now);
        assert_eq!(names(got), ["new", "oldest", "older"]);
        assert!(choose(all, &in_use, 0, Duration::ZERO, now).is_empty());
    }

    #[test]
    fn a_held_image_is_never_claimed_for_removal() {
        let h = ImageHolds::default();
        assert!(!h.hold("a"), "no removal under way");
        assert!(!h.begin_removal("a"), "held by a start");
        h.release("a");
        assert!(h.begin_removal("a"), "free again");
        h.end_removal();
        assert!(h.in_use().is_empty());
    }

    #[test]
    fn a_start_during_a_removal_learns_of_it() {
        let h = ImageHolds::default();
        assert!(h.begin_removal("a"));
        assert!(h.hold("a"), "the start must wait for the removal");
        assert!(!h.hold("b"), "another image is not affected");
        h.end_removal();
        assert!(!h.hold("a"));
    }

    #[tokio::test]
    async fn removal_done_waits_for_the_end_of_the_removal() {
        let h = std::sync::Arc::new(ImageHolds::default());
        assert!(
            h.removal_done("a", Duration::from_millis(1)).await,
            "nothing to wait for"
        );
        assert!(h.begin_removal("a"));
        assert!(
            !h.removal_done("a", Duration::from_millis(20)).await,
            "still under way: the wait times out"
        );
        let waiter = {
            let h = h.clone();
            tokio::spawn(async move { h.removal_done("a", Duration::from_secs(10)).await })
        };
        tokio::task::yield_now().await;
        h.end_removal();
        assert!(waiter.await.unwrap_or(false), "woken by end_removal");
    }

    #[test]
    fn thresholds_are_checked() {
        let mut p = GcPolicy::default();
        assert!(p.validate().is_ok() && p.enabled());
        p.low = 90;
        assert!(p.validate().is_err());
        p.high = 100;
        assert!(p.validate().is_ok() && !p.enabled());
    }
}
