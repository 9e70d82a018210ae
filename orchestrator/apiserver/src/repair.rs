//! The Service address repair loop, after upstream's ipallocator and portallocator repair
//! controllers: it compares what the Services hold (cluster IPs of both families, node ports
//! and health-check node ports) with the allocation keys of [`crate::alloc`], which only a
//! direct store edit (or a bug) can make disagree, since the API writes them in the Service's
//! own transaction.
//!
//! Per round, over one snapshot (Services and keys read at the same revision):
//! - a Service whose address has no key gets one (`ClusterIPNotAllocated`, `PortNotAllocated`);
//!   a key owned by one that no longer holds the address is given to the Service that does;
//! - two Services with one address: `ClusterIPAlreadyAllocated` (`PortAlreadyAllocated`) on the
//!   later one (by creation time, then namespace/name), nothing changed;
//! - an address outside the configured range(s): `ClusterIPOutOfRange` (`PortOutOfRange`), kept;
//!   a cluster IP that does not parse, or of a family the cluster no longer has:
//!   `ClusterIPNotValid`, kept;
//! - a key no Service holds is released only when seen so in [`LEAK_ROUNDS`] rounds in a row
//!   (upstream's rule: a create in flight is never freed).
//!
//! - IPAddress objects ([`crate::ipaddress`]): a Service's address without one gets it
//!   (`IPAddressNotAllocated`); one the allocator manages (its label) whose parent Service does
//!   not hold its address is deleted once older than the orphan grace (`IPAddressOrphaned`);
//!   one of another owner (a user's) for an address a Service holds:
//!   `ClusterIPAlreadyAllocated`, kept.
//!
//! Every fix is one store transaction, conditional on the revisions the round read (the
//! Service's and the key's), so a key that a concurrent create or update just wrote is never
//! freed or overwritten. That makes the loop safe on every API server of a cluster at once (as
//! upstream runs it in each kube-apiserver): a fix two servers both try commits once, and the
//! Events of repeated findings share one Event object, whose count goes up.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use trellis_api::ResourceInfo;
use trellis_store::{Compare, CompareOp, KeyRange, Op, RangeRequest, Store, Txn};

use crate::alloc::{self, IP_PREFIX, PORT_PREFIX};
use crate::dualstack::{self, Family, ServiceCidrs};
use crate::handlers::Api;
use crate::meta;
use crate::metrics::Metrics;
use crate::status::ApiError;
use crate::storage::ListAt;

/// Rounds in a row a key must be seen without a Service before it is released (upstream's
/// `numRepairsBeforeLeakCleanup`).
pub const LEAK_ROUNDS: u32 = 3;

/// How old an IPAddress the allocator manages must be before a round deletes it as orphaned:
/// the allocator writes it in the Service's own transaction, so only a direct store edit or a
/// user's object makes one, but a client that writes one and then its Service gets the time.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(60);

/// Upstream's default interval of both repair controllers.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(180);

/// What a finding is about, named as upstream's Event reasons (and the `kind` label of
/// `apiserver_service_repairs_total`); `ClusterIPLeaked`/`PortLeaked`: a key released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    ClusterIPNotAllocated,
    ClusterIPAlreadyAllocated,
    ClusterIPOutOfRange,
    ClusterIPNotValid,
    ClusterIPLeaked,
    PortNotAllocated,
    PortAlreadyAllocated,
    PortOutOfRange,
    PortLeaked,
    IPAddressNotAllocated,
    IPAddressOrphaned,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ClusterIPNotAllocated => "ClusterIPNotAllocated",
            Reason::ClusterIPAlreadyAllocated => "ClusterIPAlreadyAllocated",
            Reason::ClusterIPOutOfRange => "ClusterIPOutOfRange",
            Reason::ClusterIPNotValid => "ClusterIPNotValid",
            Reason::ClusterIPLeaked => "ClusterIPLeaked",
            Reason::PortNotAllocated => "PortNotAllocated",
            Reason::PortAlreadyAllocated => "PortAlreadyAllocated",
            Reason::PortOutOfRange => "PortOutOfRange",
            Reason::PortLeaked => "PortLeaked",
            Reason::IPAddressNotAllocated => "IPAddressNotAllocated",
            Reason::IPAddressOrphaned => "IPAddressOrphaned",
        }
    }

    fn is_ip(self) -> bool {
        matches!(
            self,
            Reason::ClusterIPNotAllocated
                | Reason::ClusterIPAlreadyAllocated
                | Reason::ClusterIPOutOfRange
                | Reason::ClusterIPNotValid
                | Reason::ClusterIPLeaked
                | Reason::IPAddressNotAllocated
                | Reason::IPAddressOrphaned
        )
    }

    /// The reporting component, as upstream's controllers name themselves.
    fn component(self) -> &'static str {
        if self.is_ip() {
            "ipallocator-repair-controller"
        } else {
            "portallocator-repair-controller"
        }
    }

    fn action(self) -> &'static str {
        if self.is_ip() {
            "ClusterIPAllocation"
        } else {
            "PortAllocation"
        }
    }
}

/// A Service as a round sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// creationTimestamp (RFC 3339, so it sorts as text): the later of two holders is warned.
    pub created: String,
    /// The mod revision of its key: a fix for it commits only if it is unchanged.
    pub revision: i64,
    /// `clusterIPs` (or `clusterIP`) as stored, without `None`.
    pub cluster_ips: Vec<String>,
    /// Its ports' node ports and its health-check node port, as stored, without 0.
    pub node_ports: Vec<i64>,
}

impl Held {
    /// Reads what matters of a stored Service (`resourceVersion` filled in).
    pub fn of(obj: &Value) -> Held {
        let mut node_ports: Vec<i64> = meta::at(obj, &["spec", "ports"])
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
            .chain(meta::at(obj, &["spec", "healthCheckNodePort"]).and_then(Value::as_i64))
            .filter(|n| *n != 0)
            .collect();
        node_ports.sort_unstable();
        node_ports.dedup();
        Held {
            namespace: meta::namespace(obj).unwrap_or_default().to_string(),
            name: meta::name(obj).unwrap_or_default().to_string(),
            uid: meta::uid(obj).unwrap_or_default().to_string(),
            created: meta::meta_str(obj, "creationTimestamp")
                .unwrap_or_default()
                .to_string(),
            revision: meta::resource_version(obj)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0),
            cluster_ips: dualstack::cluster_ips(obj)
                .into_iter()
                .filter(|s| s != "None" && !s.is_empty())
                .collect(),
            node_ports,
        }
    }

    /// `namespace/name`: what allocation keys hold as their owner.
    pub fn owner(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// An allocation key as read: the store key, its value (the owner, `namespace/name`) and its
/// mod revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub key: String,
    pub owner: String,
    pub revision: i64,
}

/// An IPAddress object as a round sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpObject {
    /// Its name: the address.
    pub name: String,
    /// Labelled as the cluster IP allocator's.
    pub managed: bool,
    /// The Service (`namespace`, `name`) its parentRef names, if it names one.
    pub parent: Option<(String, String)>,
    /// creationTimestamp (RFC 3339); empty when it has none.
    pub created: String,
    /// Its mod revision.
    pub revision: i64,
}

impl IpObject {
    pub fn of(obj: &Value) -> IpObject {
        IpObject {
            name: meta::name(obj).unwrap_or_default().to_string(),
            managed: crate::ipaddress::managed(obj),
            parent: crate::ipaddress::parent_service(obj),
            created: meta::meta_str(obj, "creationTimestamp")
                .unwrap_or_default()
                .to_string(),
            revision: meta::resource_version(obj)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0),
        }
    }
}

/// One round's input.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub services: Vec<Held>,
    pub allocations: Vec<Allocation>,
    /// The IPAddress objects, read at the same revision.
    pub ipaddresses: Vec<IpObject>,
}

/// The ranges addresses must lie in.
#[derive(Debug, Clone)]
pub struct Ranges {
    pub service_cidrs: ServiceCidrs,
    pub node_ports: (u16, u16),
    /// The ranges of the other ServiceCIDR objects (also those being deleted: their
    /// addresses stay valid until released).
    pub extra: Vec<ipnet::IpNet>,
}

/// What a round decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fix {
    /// Write `key` owned by `service`, if the Service is still at its revision and the key
    /// still absent (`previous` None) or at `previous` (owned by one that does not hold it).
    Claim {
        key: String,
        service: Held,
        previous: Option<i64>,
        reason: Reason,
        message: String,
    },
    /// An Event on `service`, nothing changed.
    Warn {
        service: Held,
        reason: Reason,
        message: String,
    },
    /// A key no Service holds, seen so `seen` rounds in a row (fewer than [`LEAK_ROUNDS`]):
    /// kept for now.
    Suspect { key: String, seen: u32 },
    /// Create the IPAddress of `ip` for `service`, if the Service is still at its revision and
    /// no IPAddress of `ip` exists.
    CreateIpAddress { ip: IpAddr, service: Held },
    /// Delete the IPAddress `name` if it is still at `revision` and its parent Service's key
    /// still at `parent_revision` (0: absent).
    DeleteIpAddress {
        name: String,
        revision: i64,
        parent: Option<(String, String)>,
        parent_revision: i64,
    },
    /// An orphaned IPAddress younger than the grace: kept for now.
    YoungOrphan { name: String },
    /// Delete `key` if it is still at `revision` and its owner's Service key still at
    /// `owner_revision` (0: absent).
    Release {
        key: String,
        revision: i64,
        owner_key: Option<String>,
        owner_revision: i64,
        reason: Reason,
    },
}

/// The store key of the Service `owner` (`namespace/name`) names, and its revision in the
/// snapshot (0: absent).
fn owner_ref(owner: &str, services: &[Held]) -> Option<(String, String, i64)> {
    let (ns, name) = owner.split_once('/')?;
    let rev = services
        .iter()
        .find(|s| s.namespace == ns && s.name == name)
        .map_or(0, |s| s.revision);
    Some((ns.to_string(), name.to_string(), rev))
}

/// One address a Service holds, canonical (the key's suffix), or why it cannot be allocated.
enum Checked {
    Ok(String),
    Bad(Reason, String),
}

fn check_ip(raw: &str, ranges: &Ranges) -> Checked {
    let Ok(ip) = raw.parse::<IpAddr>() else {
        return Checked::Bad(
            Reason::ClusterIPNotValid,
            format!("Cluster IP {raw} is not a valid IP; please recreate service"),
        );
    };
    let family = Family::of(ip);
    if ranges
        .extra
        .iter()
        .any(|n| n.contains(&ip) && alloc::assignable(*n, ip))
    {
        return Checked::Ok(ip.to_string());
    }
    match ranges.service_cidrs.get(family) {
        None => Checked::Bad(
            Reason::ClusterIPNotValid,
            format!(
                "Cluster IP {ip}({}) is of an IP family no longer configured on the cluster; please recreate service",
                family.name()
            ),
        ),
        Some(range) if !range.contains(&ip) || !alloc::assignable(range, ip) => Checked::Bad(
            Reason::ClusterIPOutOfRange,
            format!(
                "Cluster IP [{}]:{ip} is not within the configured Service CIDR {range}; please recreate service",
                family.name()
            ),
        ),
        Some(_) => Checked::Ok(ip.to_string()),
    }
}

fn check_port(port: i64, ranges: &Ranges) -> Checked {
    let (lo, hi) = ranges.node_ports;
    if port < i64::from(lo) || port > i64::from(hi) {
        return Checked::Bad(
            Reason::PortOutOfRange,
            format!("Port {port} is not within the port range {lo}-{hi}; please recreate service"),
        );
    }
    Checked::Ok(port.to_string())
}

/// Deletes `key` if it is still at `revision` and its owner's object (key, revision; 0:
/// absent) still is as read: a repair never undoes what changed since its snapshot. Returns
/// whether it was deleted.
async fn delete_unchanged(
    store: &dyn Store,
    key: &str,
    revision: i64,
    owner: Option<(String, i64)>,
) -> Result<bool, ApiError> {
    let mut when = vec![Compare::mod_revision(key, CompareOp::Equal, revision)];
    if let Some((owner_key, owner_revision)) = owner {
        when.push(Compare::mod_revision(
            owner_key,
            CompareOp::Equal,
            owner_revision,
        ));
    }
    let txn = Txn::new()
        .when(when)
        .and_then([Op::delete(KeyRange::Key(key.as_bytes().to_vec()))]);
    Ok(store.txn(txn).await?.succeeded)
}

/// The Services of `snap`, earliest first (by name on a tie): the first holder of an address
/// keeps it.
fn by_age(snap: &Snapshot) -> Vec<&Held> {
    let mut services: Vec<&Held> = snap.services.iter().collect();
    services.sort_by(|a, b| {
        (&a.created, &a.namespace, &a.name).cmp(&(&b.created, &b.namespace, &b.name))
    });
    services
}

/// Decides one round over `snap`; `leaks` counts, per key, the rounds in a row it was seen
/// without a Service (updated here: keys held again, or gone, are forgotten).
pub fn decide(snap: &Snapshot, ranges: &Ranges, leaks: &mut HashMap<String, u32>) -> Vec<Fix> {
    let services = by_age(snap);
    let by_key: HashMap<&str, &Allocation> = snap
        .allocations
        .iter()
        .map(|a| (a.key.as_str(), a))
        .collect();
    // Every key some Service holds (even out of range: kept, as upstream keeps the address),
    // with its holders, earliest first.
    let mut holders: BTreeMap<String, Vec<&Held>> = BTreeMap::new();
    let mut fixes = Vec::new();
    for svc in services.iter().copied() {
        for raw in &svc.cluster_ips {
            match check_ip(raw, ranges) {
                Checked::Ok(ip) => holders
                    .entry(format!("{IP_PREFIX}{ip}"))
                    .or_default()
                    .push(svc),
                Checked::Bad(reason, message) => {
                    if let Ok(ip) = raw.parse::<IpAddr>() {
                        holders.entry(format!("{IP_PREFIX}{ip}")).or_default();
                    }
                    fixes.push(Fix::Warn {
                        service: svc.clone(),
                        reason,
                        message,
                    });
                }
            }
        }
        for port in &svc.node_ports {
            match check_port(*port, ranges) {
                Checked::Ok(p) => holders
                    .entry(format!("{PORT_PREFIX}{p}"))
                    .or_default()
                    .push(svc),
                Checked::Bad(reason, message) => {
                    holders.entry(format!("{PORT_PREFIX}{port}")).or_default();
                    fixes.push(Fix::Warn {
                        service: svc.clone(),
                        reason,
                        message,
                    });
                }
            }
        }
    }
    for (key, held_by) in &holders {
        let Some(first) = held_by.first() else {
            continue; // held out of range or of a lost family: the key (if any) stays
        };
        let ip = key.starts_with(IP_PREFIX);
        let address = key
            .strip_prefix(IP_PREFIX)
            .or_else(|| key.strip_prefix(PORT_PREFIX))
            .unwrap_or(key);
        let family = address
            .parse::<IpAddr>()
            .map(|a| Family::of(a).name())
            .unwrap_or("");
        match by_key.get(key.as_str()) {
            None => fixes.push(Fix::Claim {
                key: key.clone(),
                service: (*first).clone(),
                previous: None,
                reason: if ip {
                    Reason::ClusterIPNotAllocated
                } else {
                    Reason::PortNotAllocated
                },
                message: if ip {
                    format!("Cluster IP [{family}]:{address} is not allocated; repairing")
                } else {
                    format!("Port {address} is not allocated; repairing")
                },
            }),
            Some(a) if !held_by.iter().any(|s| s.owner() == a.owner) => fixes.push(Fix::Claim {
                key: key.clone(),
                service: (*first).clone(),
                previous: Some(a.revision),
                reason: if ip {
                    Reason::ClusterIPNotAllocated
                } else {
                    Reason::PortNotAllocated
                },
                message: if ip {
                    format!(
                        "Cluster IP [{family}]:{address} is allocated to {}, which does not hold it; repairing",
                        a.owner
                    )
                } else {
                    format!(
                        "Port {address} is allocated to {}, which does not hold it; repairing",
                        a.owner
                    )
                },
            }),
            Some(_) => {}
        }
        for later in held_by.iter().skip(1) {
            fixes.push(Fix::Warn {
                service: (*later).clone(),
                reason: if ip {
                    Reason::ClusterIPAlreadyAllocated
                } else {
                    Reason::PortAlreadyAllocated
                },
                message: if ip {
                    format!(
                        "Cluster IP [{family}]:{address} was assigned to multiple services; please recreate service"
                    )
                } else {
                    format!("Port {address} was assigned to multiple services; please recreate service")
                },
            });
        }
    }
    // Keys nobody holds: counted, and released on the LEAK_ROUNDS-th round in a row.
    let mut seen_now = HashMap::new();
    for a in &snap.allocations {
        if holders.contains_key(&a.key) {
            continue;
        }
        let seen = leaks.get(&a.key).copied().unwrap_or(0) + 1;
        seen_now.insert(a.key.clone(), seen);
        if seen < LEAK_ROUNDS {
            fixes.push(Fix::Suspect {
                key: a.key.clone(),
                seen,
            });
            continue;
        }
        let owner = owner_ref(&a.owner, &snap.services);
        fixes.push(Fix::Release {
            key: a.key.clone(),
            revision: a.revision,
            owner_key: owner.as_ref().map(|(ns, name, _)| format!("{ns}/{name}")),
            owner_revision: owner.map_or(0, |(_, _, r)| r),
            reason: if a.key.starts_with(IP_PREFIX) {
                Reason::ClusterIPLeaked
            } else {
                Reason::PortLeaked
            },
        });
    }
    *leaks = seen_now;
    fixes
}

/// Decides about the IPAddress objects of `snap` (see the module's documentation): `grace` is
/// how old an orphan must be to go, `now` the time it is measured at.
pub fn decide_ipaddresses(
    snap: &Snapshot,
    ranges: &Ranges,
    grace: Duration,
    now: jiff::Timestamp,
) -> Vec<Fix> {
    let services = by_age(snap);
    let by_name: HashMap<&str, &IpObject> = snap
        .ipaddresses
        .iter()
        .map(|o| (o.name.as_str(), o))
        .collect();
    let mut fixes = Vec::new();
    // Each address held in range, by its first holder (the others are warned by `decide`).
    let mut done = std::collections::HashSet::new();
    for svc in services {
        for raw in &svc.cluster_ips {
            let Checked::Ok(name) = check_ip(raw, ranges) else {
                continue;
            };
            let Ok(ip) = name.parse::<IpAddr>() else {
                continue;
            };
            if !done.insert(ip) {
                continue;
            }
            match by_name.get(name.as_str()) {
                None => fixes.push(Fix::CreateIpAddress {
                    ip,
                    service: svc.clone(),
                }),
                Some(o) if !o.managed => fixes.push(Fix::Warn {
                    service: svc.clone(),
                    reason: Reason::ClusterIPAlreadyAllocated,
                    message: format!(
                        "Cluster IP [{}]:{ip} has an IPAddress not managed by the allocator; please recreate service",
                        Family::of(ip).name()
                    ),
                }),
                // Managed: this Service's, or an orphan (below), then recreated.
                Some(_) => {}
            }
        }
    }
    for o in snap.ipaddresses.iter().filter(|o| o.managed) {
        let Ok(ip) = o.name.parse::<IpAddr>() else {
            continue;
        };
        let parent = o.parent.as_ref().and_then(|(ns, name)| {
            snap.services
                .iter()
                .find(|s| &s.namespace == ns && &s.name == name)
        });
        let held = parent.is_some_and(|s| {
            s.cluster_ips
                .iter()
                .any(|c| c.parse::<IpAddr>().ok() == Some(ip))
        });
        if held {
            continue;
        }
        let old_enough = meta::parse_time(&o.created).is_none_or(|at| {
            now.duration_since(at).as_millis()
                >= i128::try_from(grace.as_millis()).unwrap_or(i128::MAX)
        });
        if !old_enough {
            fixes.push(Fix::YoungOrphan {
                name: o.name.clone(),
            });
            continue;
        }
        fixes.push(Fix::DeleteIpAddress {
            name: o.name.clone(),
            revision: o.revision,
            parent: o.parent.clone(),
            parent_revision: parent.map_or(0, |s| s.revision),
        });
    }
    fixes
}

/// What one round did (for logs and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Keys written for the Service holding them.
    pub claimed: Vec<String>,
    /// Keys released as leaked.
    pub released: Vec<String>,
    /// Keys seen without a Service, kept for now, with the rounds in a row seen so.
    pub suspects: Vec<(String, u32)>,
    /// Events that only warn: (namespace/name, reason).
    pub warned: Vec<(String, Reason)>,
    /// Fixes that did not commit because what they read changed meanwhile.
    pub skipped: Vec<String>,
    /// IPAddress objects created for the Service holding their address (their names).
    pub ipaddresses_created: Vec<String>,
    /// Orphaned IPAddress objects deleted (their names).
    pub ipaddresses_deleted: Vec<String>,
    /// Orphaned IPAddress objects kept for now: younger than the grace.
    pub young_orphans: Vec<String>,
}

/// The repair loop's state: the leak counts, kept across rounds.
pub struct Repair {
    api: Arc<Api>,
    metrics: Arc<Metrics>,
    leaks: tokio::sync::Mutex<HashMap<String, u32>>,
    /// How old an orphaned IPAddress must be before a round deletes it.
    orphan_grace: Duration,
    /// One round at a time: a round run by hand beside the loop would otherwise count a leak
    /// twice in one interval.
    rounds: tokio::sync::Mutex<()>,
}

impl Repair {
    pub fn new(api: Arc<Api>, metrics: Arc<Metrics>) -> Repair {
        Repair {
            api,
            metrics,
            leaks: Default::default(),
            orphan_grace: ORPHAN_GRACE,
            rounds: Default::default(),
        }
    }

    /// With another orphan grace (tests; `Config::ipaddress_orphan_grace`).
    pub fn with_orphan_grace(mut self, grace: Duration) -> Repair {
        self.orphan_grace = grace;
        self
    }

    fn services(&self) -> Result<ResourceInfo, ApiError> {
        self.api
            .registry
            .find("", "v1", "services")
            .ok_or_else(|| ApiError::internal("services are not served"))
    }

    async fn ranges(&self) -> Result<Ranges, ApiError> {
        Ok(Ranges {
            service_cidrs: self.api.alloc.service_cidrs,
            node_ports: self.api.alloc.node_ports,
            extra: crate::servicecidr::all_ranges(&self.api.storage).await?,
        })
    }

    /// Reads the Services and the allocation keys at one revision.
    pub async fn snapshot(&self) -> Result<Snapshot, ApiError> {
        let info = self.services()?;
        let page = self
            .api
            .storage
            .list(&info, None, ListAt::Latest, 0, None, &|_: &Value| true)
            .await?;
        let mut allocations = Vec::new();
        for prefix in [IP_PREFIX, PORT_PREFIX] {
            let mut start = prefix.as_bytes().to_vec();
            let end = trellis_store::types::prefix_end(prefix.as_bytes());
            loop {
                let range = match &end {
                    Some(e) => KeyRange::Between(start.clone(), e.clone()),
                    None => KeyRange::From(start.clone()),
                };
                let resp = self
                    .api
                    .storage
                    .store()
                    .range(RangeRequest::new(range).limit(1000).at(page.revision))
                    .await?;
                for kv in &resp.kvs {
                    allocations.push(Allocation {
                        key: String::from_utf8_lossy(&kv.key).into_owned(),
                        owner: String::from_utf8_lossy(&kv.value).into_owned(),
                        revision: kv.mod_revision,
                    });
                }
                match resp.kvs.last() {
                    Some(kv) if resp.more => {
                        start = kv.key.clone();
                        start.push(0);
                    }
                    _ => break,
                }
            }
        }
        let ip_info = crate::ipaddress::info()?;
        let ipaddresses = self
            .api
            .storage
            .list(
                &ip_info,
                None,
                ListAt::Exact(page.revision),
                0,
                None,
                &|_: &Value| true,
            )
            .await?
            .items
            .iter()
            .map(IpObject::of)
            .collect();
        Ok(Snapshot {
            services: page.items.iter().map(Held::of).collect(),
            allocations,
            ipaddresses,
        })
    }

    /// Reads a snapshot and decides on it (advancing the leak counts).
    pub async fn plan(&self) -> Result<Vec<Fix>, ApiError> {
        let mut leaks = self.leaks.lock().await;
        let snap = self.snapshot().await?;
        let ranges = self.ranges().await?;
        let mut fixes = decide(&snap, &ranges, &mut leaks);
        fixes.extend(decide_ipaddresses(
            &snap,
            &ranges,
            self.orphan_grace,
            jiff::Timestamp::now(),
        ));
        Ok(fixes)
    }

    /// Carries out `fixes`, each in its own conditional transaction; Events and logs.
    pub async fn apply(&self, fixes: Vec<Fix>) -> Result<Report, ApiError> {
        let info = self.services()?;
        let store = self.api.storage.store();
        let mut report = Report::default();
        for fix in fixes {
            match fix {
                Fix::Claim {
                    key,
                    service,
                    previous,
                    reason,
                    message,
                } => {
                    let svc_key = info.storage_key(Some(&service.namespace), &service.name);
                    let held = match previous {
                        None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                        Some(r) => Compare::mod_revision(key.clone(), CompareOp::Equal, r),
                    };
                    let txn = Txn::new()
                        .when([
                            Compare::mod_revision(svc_key, CompareOp::Equal, service.revision),
                            held,
                        ])
                        .and_then([Op::put(key.clone(), service.owner().into_bytes())]);
                    if store.txn(txn).await?.succeeded {
                        tracing::warn!(service = %service.owner(), %key, reason = reason.as_str(), "{message}");
                        self.metrics.repaired(reason.as_str());
                        self.event(&service, reason, &message).await;
                        report.claimed.push(key);
                    } else {
                        tracing::info!(service = %service.owner(), %key, "repair skipped: changed since read; the next round looks again");
                        report.skipped.push(key);
                    }
                }
                Fix::Warn {
                    service,
                    reason,
                    message,
                } => {
                    tracing::warn!(service = %service.owner(), reason = reason.as_str(), "{message}");
                    self.metrics.repaired(reason.as_str());
                    self.event(&service, reason, &message).await;
                    report.warned.push((service.owner(), reason));
                }
                Fix::Suspect { key, seen } => {
                    tracing::info!(%key, seen, of = LEAK_ROUNDS, "an allocation no Service holds may have leaked: released if still so after {LEAK_ROUNDS} rounds in a row");
                    report.suspects.push((key, seen));
                }
                Fix::CreateIpAddress { ip, service } => {
                    let svc_key = info.storage_key(Some(&service.namespace), &service.name);
                    let (key, value) =
                        crate::ipaddress::claim(ip, &service.namespace, &service.name)?;
                    let txn = Txn::new()
                        .when([
                            Compare::mod_revision(svc_key, CompareOp::Equal, service.revision),
                            Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                        ])
                        .and_then([Op::put(key, value)]);
                    let reason = Reason::IPAddressNotAllocated;
                    let message = format!(
                        "Cluster IP [{}]:{ip} has no IPAddress; repairing",
                        Family::of(ip).name()
                    );
                    if store.txn(txn).await?.succeeded {
                        tracing::warn!(service = %service.owner(), %ip, reason = reason.as_str(), "{message}");
                        self.metrics.repaired(reason.as_str());
                        self.event(&service, reason, &message).await;
                        report.ipaddresses_created.push(ip.to_string());
                    } else {
                        tracing::info!(service = %service.owner(), %ip, "IPAddress repair skipped: changed since read; the next round looks again");
                        report.skipped.push(ip.to_string());
                    }
                }
                Fix::DeleteIpAddress {
                    name,
                    revision,
                    parent,
                    parent_revision,
                } => {
                    let ip_info = crate::ipaddress::info()?;
                    let key = ip_info.storage_key(None, &name);
                    let owner = parent
                        .as_ref()
                        .map(|(ns, svc)| (info.storage_key(Some(ns), svc), parent_revision));
                    if delete_unchanged(store.as_ref(), &key, revision, owner).await? {
                        let parent = parent
                            .map(|(ns, n)| format!("{ns}/{n}"))
                            .unwrap_or_default();
                        tracing::warn!(ipaddress = %name, %parent, "an IPAddress whose parent Service does not hold its address was deleted");
                        self.metrics.repaired(Reason::IPAddressOrphaned.as_str());
                        report.ipaddresses_deleted.push(name);
                    } else {
                        tracing::info!(ipaddress = %name, "orphaned IPAddress not deleted: it changed since read");
                        report.skipped.push(name);
                    }
                }
                Fix::YoungOrphan { name } => {
                    tracing::info!(ipaddress = %name, "an IPAddress whose parent Service does not hold its address: deleted once older than the grace");
                    report.young_orphans.push(name);
                }
                Fix::Release {
                    key,
                    revision,
                    owner_key,
                    owner_revision,
                    reason,
                } => {
                    let owner = owner_key
                        .as_deref()
                        .and_then(|o| o.split_once('/'))
                        .map(|(ns, name)| (info.storage_key(Some(ns), name), owner_revision));
                    if delete_unchanged(store.as_ref(), &key, revision, owner).await? {
                        tracing::warn!(%key, owner = owner_key.as_deref().unwrap_or(""), "an allocation no Service held for {LEAK_ROUNDS} rounds in a row has leaked: released");
                        self.metrics.repaired(reason.as_str());
                        report.released.push(key);
                    } else {
                        tracing::info!(%key, "leaked allocation not released: it changed since read");
                        report.skipped.push(key);
                    }
                }
            }
        }
        Ok(report)
    }

    /// One round: snapshot, decisions, fixes.
    pub async fn round(&self) -> Result<Report, ApiError> {
        let _one_at_a_time = self.rounds.lock().await;
        let fixes = self.plan().await?;
        self.apply(fixes).await
    }

    /// Runs a round every `interval` until `stop`.
    pub async fn run(
        self: Arc<Self>,
        interval: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.changed() => return,
            }
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e.message, "the Service address repair round failed; retried next interval");
            }
        }
    }

    /// A Warning Event on `svc`. Repeats of one finding (same Service, reason and message)
    /// are one Event whose count and lastTimestamp move on, as upstream's recorder
    /// aggregates them; a failure is logged, never fatal.
    async fn event(&self, svc: &Held, reason: Reason, message: &str) {
        if let Err(e) = self.try_event(svc, reason, message).await {
            tracing::warn!(service = %svc.owner(), error = %e.message, "cannot record the repair Event");
        }
    }

    async fn try_event(&self, svc: &Held, reason: Reason, message: &str) -> Result<(), ApiError> {
        let info = self
            .api
            .registry
            .find("", "v1", "events")
            .ok_or_else(|| ApiError::internal("events are not served"))?;
        let name = format!(
            "{}.{:016x}",
            svc.name,
            fnv1a(&[&svc.uid, reason.as_str(), message])
        );
        let ns = Some(svc.namespace.as_str());
        let now = meta::now();
        for _ in 0..3 {
            if let Some(cur) = self.api.storage.get(&info, ns, &name).await? {
                let mut obj = cur.obj.clone();
                let count = obj.get("count").and_then(Value::as_i64).unwrap_or(1);
                obj["count"] = json!(count + 1);
                obj["lastTimestamp"] = json!(now);
                if self
                    .api
                    .storage
                    .update(&info, ns, &name, cur.revision, &obj)
                    .await?
                    .is_some()
                {
                    return Ok(());
                }
                continue;
            }
            let obj = json!({
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {
                    "name": name,
                    "namespace": svc.namespace,
                    "uid": uuid::Uuid::new_v4().to_string(),
                    "creationTimestamp": now,
                },
                "involvedObject": {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "namespace": svc.namespace,
                    "name": svc.name,
                    "uid": svc.uid,
                    "resourceVersion": svc.revision.to_string(),
                },
                "reason": reason.as_str(),
                "message": message,
                "type": "Warning",
                "action": reason.action(),
                "source": {"component": reason.component()},
                "reportingComponent": reason.component(),
                "reportingInstance": "",
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            });
            match self
                .api
                .storage
                .create(&info, ns, &name, &obj, Vec::new())
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.code == 409 => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// FNV-1a over the parts (a stable Event name suffix for one finding).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges() -> Ranges {
        Ranges {
            service_cidrs: "10.96.0.0/12,fd00:96::/112".parse().unwrap(),
            node_ports: (30000, 32767),
            extra: Vec::new(),
        }
    }

    fn svc(name: &str, created: &str, ips: &[&str], ports: &[i64]) -> Held {
        Held {
            namespace: "default".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            created: created.into(),
            revision: 10,
            cluster_ips: ips.iter().map(|s| s.to_string()).collect(),
            node_ports: ports.to_vec(),
        }
    }

    fn ip_key(ip: &str) -> String {
        format!("{IP_PREFIX}{ip}")
    }

    fn port_key(p: i64) -> String {
        format!("{PORT_PREFIX}{p}")
    }

    fn alloc(key: String, owner: &str) -> Allocation {
        Allocation {
            key,
            owner: owner.into(),
            revision: 7,
        }
    }

    /// The allocations `services` should have, all in order.
    fn keys_of(services: &[Held]) -> Vec<Allocation> {
        let mut out = Vec::new();
        for s in services {
            for ip in &s.cluster_ips {
                out.push(alloc(ip_key(ip), &s.owner()));
            }
            for p in &s.node_ports {
                out.push(alloc(port_key(*p), &s.owner()));
            }
        }
        out
    }

    fn run(snap: &Snapshot) -> Vec<Fix> {
        decide(snap, &ranges(), &mut HashMap::new())
    }

    fn reasons(fixes: &[Fix]) -> Vec<(String, Reason)> {
        fixes
            .iter()
            .filter_map(|f| match f {
                Fix::Claim {
                    service, reason, ..
                }
                | Fix::Warn {
                    service, reason, ..
                } => Some((service.name.clone(), *reason)),
                Fix::Release { key, reason, .. } => Some((key.clone(), *reason)),
                Fix::Suspect { .. }
                | Fix::CreateIpAddress { .. }
                | Fix::DeleteIpAddress { .. }
                | Fix::YoungOrphan { .. } => None,
            })
            .collect()
    }

    #[test]
    fn a_consistent_state_needs_nothing() {
        let services = vec![
            svc(
                "a",
                "2026-01-01T00:00:00Z",
                &["10.96.0.5", "fd00:96::5"],
                &[],
            ),
            svc("b", "2026-01-01T00:00:01Z", &["10.96.0.6"], &[30001, 30002]),
            // Headless and ExternalName Services hold nothing.
            svc("h", "2026-01-01T00:00:02Z", &[], &[]),
        ];
        let snap = Snapshot {
            ipaddresses: Vec::new(),
            allocations: keys_of(&services),
            services,
        };
        assert_eq!(run(&snap), Vec::new());
    }

    /// The table of upstream's cases, one row each: what the store holds, what the round does.
    #[test]
    fn each_upstream_case_gets_upstreams_answer() {
        struct Case {
            what: &'static str,
            services: Vec<Held>,
            allocations: Vec<Allocation>,
            want: Vec<(&'static str, Reason)>,
        }
        let a = || svc("a", "2026-01-01T00:00:00Z", &["10.96.0.5"], &[30001]);
        let b_same_ip = || svc("b", "2026-01-01T00:00:05Z", &["10.96.0.5"], &[]);
        let cases = vec![
            Case {
                what: "a cluster IP without a key",
                services: vec![a()],
                allocations: vec![alloc(port_key(30001), "default/a")],
                want: vec![("a", Reason::ClusterIPNotAllocated)],
            },
            Case {
                what: "an IPv6 cluster IP without a key",
                services: vec![svc("a", "t", &["10.96.0.5", "fd00:96::7"], &[])],
                allocations: vec![alloc(ip_key("10.96.0.5"), "default/a")],
                want: vec![("a", Reason::ClusterIPNotAllocated)],
            },
            Case {
                what: "a node port without a key",
                services: vec![a()],
                allocations: vec![alloc(ip_key("10.96.0.5"), "default/a")],
                want: vec![("a", Reason::PortNotAllocated)],
            },
            Case {
                what: "a key owned by a gone Service, the address held by another",
                services: vec![a()],
                allocations: vec![
                    alloc(ip_key("10.96.0.5"), "default/gone"),
                    alloc(port_key(30001), "default/a"),
                ],
                want: vec![("a", Reason::ClusterIPNotAllocated)],
            },
            Case {
                what: "two Services with one cluster IP: the later one is warned",
                services: vec![b_same_ip(), a()],
                allocations: keys_of(&[a()]),
                want: vec![("b", Reason::ClusterIPAlreadyAllocated)],
            },
            Case {
                what: "two Services with one node port",
                services: vec![
                    a(),
                    svc("c", "2026-01-01T00:00:09Z", &["10.96.0.9"], &[30001]),
                ],
                allocations: vec![
                    alloc(ip_key("10.96.0.5"), "default/a"),
                    alloc(ip_key("10.96.0.9"), "default/c"),
                    alloc(port_key(30001), "default/a"),
                ],
                want: vec![("c", Reason::PortAlreadyAllocated)],
            },
            Case {
                what: "a cluster IP outside the range (the range changed)",
                services: vec![svc("o", "t", &["10.200.0.5"], &[])],
                allocations: vec![alloc(ip_key("10.200.0.5"), "default/o")],
                want: vec![("o", Reason::ClusterIPOutOfRange)],
            },
            Case {
                what: "the range's network address is not assignable",
                services: vec![svc("o", "t", &["10.96.0.0"], &[])],
                allocations: Vec::new(),
                want: vec![("o", Reason::ClusterIPOutOfRange)],
            },
            Case {
                what: "a node port outside the range",
                services: vec![svc("o", "t", &["10.96.0.8"], &[40000])],
                allocations: vec![alloc(ip_key("10.96.0.8"), "default/o")],
                want: vec![("o", Reason::PortOutOfRange)],
            },
            Case {
                what: "a cluster IP that does not parse",
                services: vec![svc("n", "t", &["banana"], &[])],
                allocations: Vec::new(),
                want: vec![("n", Reason::ClusterIPNotValid)],
            },
        ];
        for c in cases {
            let snap = Snapshot {
                ipaddresses: Vec::new(),
                services: c.services,
                allocations: c.allocations,
            };
            let got = reasons(&run(&snap));
            let want: Vec<(String, Reason)> =
                c.want.iter().map(|(n, r)| (n.to_string(), *r)).collect();
            assert_eq!(got, want, "{}", c.what);
        }
    }

    #[test]
    fn a_missing_key_is_claimed_for_the_earliest_holder_only_if_absent() {
        let services = vec![svc("a", "t", &["10.96.0.5"], &[])];
        let snap = Snapshot {
            ipaddresses: Vec::new(),
            services: services.clone(),
            allocations: Vec::new(),
        };
        match run(&snap).as_slice() {
            [
                Fix::Claim {
                    key,
                    service,
                    previous,
                    ..
                },
            ] => {
                assert_eq!(key, &ip_key("10.96.0.5"));
                assert_eq!(service, &services[0]);
                assert_eq!(*previous, None, "claimed only while the key is absent");
            }
            other => panic!("{other:?}"),
        }
        // A key owned by a gone Service is rewritten only if still at the revision read.
        let snap = Snapshot {
            ipaddresses: Vec::new(),
            services,
            allocations: vec![alloc(ip_key("10.96.0.5"), "default/gone")],
        };
        assert!(matches!(
            run(&snap).as_slice(),
            [Fix::Claim {
                previous: Some(7),
                ..
            }]
        ));
    }

    #[test]
    fn a_duplicate_whose_key_the_later_one_owns_changes_nothing() {
        let services = vec![
            svc("a", "2026-01-01T00:00:00Z", &["10.96.0.5"], &[]),
            svc("b", "2026-01-01T00:00:05Z", &["10.96.0.5"], &[]),
        ];
        let snap = Snapshot {
            ipaddresses: Vec::new(),
            services,
            allocations: vec![alloc(ip_key("10.96.0.5"), "default/b")],
        };
        let fixes = run(&snap);
        assert_eq!(
            reasons(&fixes),
            vec![("b".to_string(), Reason::ClusterIPAlreadyAllocated)]
        );
    }

    #[test]
    fn the_same_creation_time_breaks_ties_by_name() {
        let services = vec![
            svc("z", "2026-01-01T00:00:00Z", &["10.96.0.5"], &[]),
            svc("a", "2026-01-01T00:00:00Z", &["10.96.0.5"], &[]),
        ];
        let snap = Snapshot {
            ipaddresses: Vec::new(),
            allocations: keys_of(&services[1..]),
            services,
        };
        assert_eq!(
            reasons(&run(&snap)),
            vec![("z".to_string(), Reason::ClusterIPAlreadyAllocated)]
        );
    }

    #[test]
    fn a_leaked_key_is_released_on_the_third_round_in_a_row_and_not_before() {
        let services = vec![svc("a", "t", &["10.96.0.5"], &[])];
        let mut allocations = keys_of(&services);
        allocations.push(alloc(ip_key("10.96.0.77"), "default/ghost"));
        allocations.push(alloc(port_key(30099), "default/a"));
        let snap = Snapshot {
            ipaddresses: Vec::new(),
            services,
            allocations,
        };
        let mut leaks = HashMap::new();
        for round in 1..LEAK_ROUNDS {
            let fixes = decide(&snap, &ranges(), &mut leaks);
            assert_eq!(
                fixes,
                vec![
                    Fix::Suspect {
                        key: ip_key("10.96.0.77"),
                        seen: round
                    },
                    Fix::Suspect {
                        key: port_key(30099),
                        seen: round
                    },
                ],
                "round {round}: kept"
            );
        }
        let fixes = decide(&snap, &ranges(), &mut leaks);
        assert_eq!(
            fixes,
            vec![
                Fix::Release {
                    key: ip_key("10.96.0.77"),
                    revision: 7,
                    owner_key: Some("default/ghost".into()),
                    owner_revision: 0,
                    reason: Reason::ClusterIPLeaked,
                },
                Fix::Release {
                    key: port_key(30099),
                    revision: 7,
                    owner_key: Some("default/a".into()),
                    owner_revision: 10,
                    reason: Reason::PortLeaked,
                },
            ]
        );
    }

    #[test]
    fn a_key_held_again_between_rounds_starts_counting_afresh() {
        let stray = alloc(ip_key("10.96.0.77"), "default/b");
        let without = Snapshot {
            ipaddresses: Vec::new(),
            services: Vec::new(),
            allocations: vec![stray.clone()],
        };
        let with = Snapshot {
            ipaddresses: Vec::new(),
            services: vec![svc("b", "t", &["10.96.0.77"], &[])],
            allocations: vec![stray],
        };
        let mut leaks = HashMap::new();
        decide(&without, &ranges(), &mut leaks);
        decide(&without, &ranges(), &mut leaks);
        // A create in flight lands: the key is held, and forgotten as a suspect.
        assert_eq!(decide(&with, &ranges(), &mut leaks), Vec::new());
        assert!(leaks.is_empty());
        let fixes = decide(&without, &ranges(), &mut leaks);
        assert!(
            matches!(fixes.as_slice(), [Fix::Suspect { seen: 1, .. }]),
            "{fixes:?}"
        );
    }

    #[test]
    fn an_out_of_range_or_lost_family_address_keeps_its_key() {
        let single = Ranges {
            service_cidrs: "10.96.0.0/12".parse().unwrap(),
            node_ports: (30000, 32767),
            extra: Vec::new(),
        };
        let services = vec![
            svc("d", "t", &["10.96.0.5", "fd00:96::5"], &[]),
            svc("o", "t", &["10.200.0.5"], &[40000]),
        ];
        let snap = Snapshot {
            ipaddresses: Vec::new(),
            allocations: keys_of(&services),
            services,
        };
        let mut leaks = HashMap::new();
        for _ in 0..=LEAK_ROUNDS {
            let fixes = decide(&snap, &single, &mut leaks);
            assert_eq!(
                reasons(&fixes),
                vec![
                    ("d".to_string(), Reason::ClusterIPNotValid),
                    ("o".to_string(), Reason::ClusterIPOutOfRange),
                    ("o".to_string(), Reason::PortOutOfRange),
                ]
            );
        }
        assert!(leaks.is_empty(), "never counted as leaked");
    }

    #[test]
    fn held_reads_a_stored_service() {
        let obj = json!({
            "metadata": {"name": "s", "namespace": "ns", "uid": "u", "resourceVersion": "42",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.5",
                     "clusterIPs": ["10.96.0.5", "fd00:96::5"], "healthCheckNodePort": 30005,
                     "ports": [{"port": 80, "nodePort": 30001, "protocol": "TCP"},
                               {"port": 80, "nodePort": 30001, "protocol": "UDP"}]}
        });
        let h = Held::of(&obj);
        assert_eq!(h.owner(), "ns/s");
        assert_eq!(h.revision, 42);
        assert_eq!(h.cluster_ips, ["10.96.0.5", "fd00:96::5"]);
        assert_eq!(h.node_ports, [30001, 30005]);
        let headless = json!({"metadata": {"name": "h", "namespace": "ns"},
                              "spec": {"clusterIP": "None", "clusterIPs": ["None"]}});
        assert!(Held::of(&headless).cluster_ips.is_empty());
    }

    fn ipobj(name: &str, managed: bool, parent: Option<&str>, created: &str) -> IpObject {
        IpObject {
            name: name.into(),
            managed,
            parent: parent.map(|p| ("default".to_string(), p.to_string())),
            created: created.into(),
            revision: 9,
        }
    }

    #[test]
    fn ipaddresses_missing_are_made_orphans_go_after_the_grace_and_users_are_kept() {
        let now: jiff::Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let grace = Duration::from_secs(60);
        let services = vec![
            svc(
                "a",
                "2026-01-01T00:00:00Z",
                &["10.96.0.5", "fd00:96::5"],
                &[],
            ),
            svc("b", "2026-01-01T00:00:01Z", &["10.96.0.6"], &[]),
            svc("c", "2026-01-01T00:00:02Z", &["10.96.0.7"], &[]),
        ];
        let snap = Snapshot {
            allocations: keys_of(&services),
            services,
            ipaddresses: vec![
                // a's IPv4 address has its object; its IPv6 one has none.
                ipobj("10.96.0.5", true, Some("a"), "2026-01-01T00:00:00Z"),
                // b's address is kept by a user's object.
                ipobj("10.96.0.6", false, Some("someone"), "2026-01-01T00:00:00Z"),
                // c's is someone else's, managed: an orphan (then made again for c).
                ipobj("10.96.0.7", true, Some("gone"), "2026-01-01T00:00:00Z"),
                // Orphans: old, young, and one naming a Service that holds another address.
                ipobj("10.96.0.8", true, Some("gone"), "2026-01-01T00:00:00Z"),
                ipobj("10.96.0.9", true, Some("gone"), "2026-01-01T00:09:30Z"),
                ipobj("10.96.0.10", true, Some("a"), "2026-01-01T00:00:00Z"),
                // A user's object for a free address stays.
                ipobj("10.96.0.11", false, None, "2026-01-01T00:00:00Z"),
            ],
        };
        let fixes = decide_ipaddresses(&snap, &ranges(), grace, now);
        let created: Vec<(String, String)> = fixes
            .iter()
            .filter_map(|f| match f {
                Fix::CreateIpAddress { ip, service } => {
                    Some((ip.to_string(), service.name.clone()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(created, vec![("fd00:96::5".to_string(), "a".to_string())]);
        let deleted: Vec<&str> = fixes
            .iter()
            .filter_map(|f| match f {
                Fix::DeleteIpAddress { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(deleted, vec!["10.96.0.7", "10.96.0.8", "10.96.0.10"]);
        assert!(
            fixes
                .iter()
                .any(|f| matches!(f, Fix::YoungOrphan { name } if name == "10.96.0.9"))
        );
        assert!(fixes.iter().any(|f| matches!(f,
            Fix::Warn { service, reason: Reason::ClusterIPAlreadyAllocated, .. } if service.name == "b")));
        // A delete is conditional on the parent's revision (0: it is gone).
        assert!(fixes.iter().any(|f| matches!(f,
            Fix::DeleteIpAddress { name, parent_revision: 10, .. } if name == "10.96.0.10")));
        assert!(fixes.iter().any(|f| matches!(f,
            Fix::DeleteIpAddress { name, parent_revision: 0, .. } if name == "10.96.0.8")));
        // Negative control: with every object in place and none stray, nothing to do.
        let services = snap.services.clone();
        let clean = Snapshot {
            allocations: keys_of(&services),
            ipaddresses: services
                .iter()
                .flat_map(|s| {
                    s.cluster_ips
                        .iter()
                        .map(|ip| ipobj(ip, true, Some(s.name.as_str()), "2026-01-01T00:00:00Z"))
                })
                .collect(),
            services,
        };
        assert_eq!(
            decide_ipaddresses(&clean, &ranges(), grace, now),
            Vec::new()
        );
    }
}
