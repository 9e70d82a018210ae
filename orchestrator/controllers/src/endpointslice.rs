//! EndpointSlices (discovery.k8s.io/v1) and Endpoints for Services with a selector: one
//! endpoint per selected pod that has an address, with the ready, serving and terminating
//! conditions, its target ports resolved per pod (a named targetPort is looked up in the
//! pod's container ports, so pods with different numbers land in different slices), one set
//! of slices per address family of the Service (a dual-stack Service gets IPv4 and IPv6
//! slices from its pods' `podIPs`; the Endpoints object has the primary family). Also
//! the `kubernetes` Service in `default`, whose endpoints are the API servers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, ObjectReference, Pod,
    Service,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::{DeleteParams, PostParams};

use crate::controller::{OnDelete, Reconciler, owner_handler};
use crate::informer::{Change, Handler, Informer, Synced, handler};
use crate::manager::Watches;
use crate::owner;
use crate::pods;
use crate::workqueue::WorkQueue;
use crate::{Ctx, SyncError};

pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// Endpoints per slice (upstream's `--max-endpoints-per-slice` default).
pub const MAX_PER_SLICE: usize = 100;

/// The conditions of a pod's endpoint: ready = ready and not terminating; serving = ready
/// regardless of termination; terminating = being deleted. `publishNotReadyAddresses` makes
/// every endpoint ready and serving.
pub fn conditions(p: &Pod, publish_not_ready: bool) -> EndpointConditions {
    let terminating = p.metadata.deletion_timestamp.is_some();
    let ready = pods::is_ready(p);
    EndpointConditions {
        ready: Some(publish_not_ready || (ready && !terminating)),
        serving: Some(publish_not_ready || ready),
        terminating: Some(terminating),
    }
}

/// The port a service port reaches on `p`: a number as is, a name through the pod's
/// container ports (None when the pod has no port of that name and protocol).
pub fn target_port(svc_port: &k8s_openapi::api::core::v1::ServicePort, p: &Pod) -> Option<i32> {
    let protocol = svc_port.protocol.as_deref().unwrap_or("TCP");
    match &svc_port.target_port {
        None => Some(svc_port.port),
        Some(IntOrString::Int(0)) => Some(svc_port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => p
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|cp| {
                cp.name.as_deref() == Some(name.as_str())
                    && cp.protocol.as_deref().unwrap_or("TCP") == protocol
            })
            .map(|cp| cp.container_port),
    }
}

/// An EndpointSlice's `addressType`: the address family of its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressType {
    IPv4,
    IPv6,
}

impl AddressType {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressType::IPv4 => "IPv4",
            AddressType::IPv6 => "IPv6",
        }
    }

    fn parse(s: &str) -> Option<AddressType> {
        match s {
            "IPv4" => Some(AddressType::IPv4),
            "IPv6" => Some(AddressType::IPv6),
            _ => None,
        }
    }

    fn of(ip: std::net::IpAddr) -> AddressType {
        if ip.is_ipv4() {
            AddressType::IPv4
        } else {
            AddressType::IPv6
        }
    }
}

/// The families a Service has endpoints in, primary first: its `ipFamilies`, else the
/// family of its cluster IP, else IPv4 (objects from before dual-stack).
pub fn service_families(svc: &Service) -> Vec<AddressType> {
    let spec = svc.spec.as_ref();
    let mut out: Vec<AddressType> = spec
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|f| AddressType::parse(f))
        .collect();
    out.dedup();
    if out.is_empty() {
        out.push(
            spec.and_then(|s| s.cluster_ip.as_deref())
                .and_then(|ip| ip.parse().ok())
                .map(AddressType::of)
                .unwrap_or(AddressType::IPv4),
        );
    }
    out
}

/// A pod's addresses that may become endpoints (`status.podIPs`, else `status.podIP`), if
/// the pod gets endpoints at all: not finished.
fn eligible(p: &Pod) -> Vec<std::net::IpAddr> {
    if matches!(pods::phase(p), "Succeeded" | "Failed") {
        return Vec::new();
    }
    let Some(status) = p.status.as_ref() else {
        return Vec::new();
    };
    let mut ips: Vec<std::net::IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|a| a.ip.parse().ok())
        .collect();
    if ips.is_empty()
        && let Some(ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok())
    {
        ips.push(ip);
    }
    ips
}

/// Endpoints grouped by address family and resolved ports.
pub type Groups = BTreeMap<(AddressType, Vec<PortKey>), Vec<Endpoint>>;

/// The endpoints of a service grouped by family (one per family the Service has, from the
/// pods' address of that family) and resolved ports (sorted, so the result is stable).
pub fn desired(svc: &Service, candidates: &[Arc<Pod>]) -> Groups {
    let spec = svc.spec.clone().unwrap_or_default();
    let publish = spec.publish_not_ready_addresses == Some(true);
    let families = service_families(svc);
    let mut out: Groups = BTreeMap::new();
    for p in candidates {
        for family in &families {
            let Some(ip) = eligible(p)
                .into_iter()
                .find(|ip| AddressType::of(*ip) == *family)
            else {
                continue;
            };
            desire(&mut out, *family, &spec, p, ip.to_string(), publish);
        }
    }
    for eps in out.values_mut() {
        eps.sort_by(|a, b| a.addresses.cmp(&b.addresses));
    }
    out
}

/// Adds pod `p`'s endpoint at `ip` to its group.
fn desire(
    out: &mut Groups,
    family: AddressType,
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    p: &Pod,
    ip: String,
    publish: bool,
) {
    let ports: Vec<PortKey> = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|sp| {
            target_port(sp, p).map(|port| PortKey {
                name: sp.name.clone().unwrap_or_default(),
                protocol: sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                port,
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect();
    let ep = Endpoint {
        addresses: vec![ip],
        conditions: Some(conditions(p, publish)),
        node_name: pods::node_name(p).map(String::from),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: p.metadata.namespace.clone(),
            name: p.metadata.name.clone(),
            uid: p.metadata.uid.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    out.entry((family, ports)).or_default().push(ep);
}

/// The groups of the Service's primary family: what the Endpoints object lists (upstream's
/// Endpoints controller, too, uses one family).
pub fn primary(svc: &Service, groups: &Groups) -> BTreeMap<Vec<PortKey>, Vec<Endpoint>> {
    let first = service_families(svc)[0];
    groups
        .iter()
        .filter(|((f, _), _)| *f == first)
        .map(|((_, ports), eps)| (ports.clone(), eps.clone()))
        .collect()
}

/// One resolved service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortKey {
    pub name: String,
    pub protocol: String,
    pub port: i32,
    pub app_protocol: Option<String>,
}

impl PortKey {
    fn slice_port(&self) -> EndpointPort {
        EndpointPort {
            name: Some(self.name.clone()),
            protocol: Some(self.protocol.clone()),
            port: Some(self.port),
            app_protocol: self.app_protocol.clone(),
        }
    }
}

/// What of an endpoint this controller decides, for comparing with what is stored (the
/// API server may fill in fields we leave out; comparing those would update forever).
type Comparable = (
    Vec<String>,
    Option<bool>,
    Option<bool>,
    Option<bool>,
    Option<String>,
    Option<String>,
);

fn comparable(eps: &[Endpoint]) -> Vec<Comparable> {
    eps.iter()
        .map(|e| {
            let c = e.conditions.clone().unwrap_or_default();
            (
                e.addresses.clone(),
                c.ready,
                c.serving,
                c.terminating,
                e.node_name.clone(),
                e.target_ref.as_ref().and_then(|r| r.uid.clone()),
            )
        })
        .collect()
}

/// What a slice is for: its family and ports.
type SliceKey = (AddressType, Vec<PortKey>);

fn slice_key(s: &EndpointSlice) -> Option<SliceKey> {
    Some((AddressType::parse(&s.address_type)?, slice_ports_key(s)))
}

fn slice_ports_key(s: &EndpointSlice) -> Vec<PortKey> {
    let mut v: Vec<PortKey> = s
        .ports
        .iter()
        .flatten()
        .map(|p| PortKey {
            name: p.name.clone().unwrap_or_default(),
            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            port: p.port.unwrap_or(0),
            app_protocol: p.app_protocol.clone(),
        })
        .collect();
    v.sort();
    v
}

/// The Endpoints object for the same endpoints: ready ones as addresses, not-ready ones as
/// notReadyAddresses, terminating ones left out (unless published anyway).
pub fn endpoints_subsets(
    groups: &BTreeMap<Vec<PortKey>, Vec<Endpoint>>,
    publish: bool,
) -> Vec<EndpointSubset> {
    let mut subsets = Vec::new();
    for (ports, eps) in groups {
        let mut ready = Vec::new();
        let mut not_ready = Vec::new();
        for e in eps {
            let c = e.conditions.clone().unwrap_or_default();
            if c.terminating == Some(true) && !publish {
                continue;
            }
            let a = EndpointAddress {
                ip: e.addresses[0].clone(),
                node_name: e.node_name.clone(),
                target_ref: e.target_ref.clone(),
                ..Default::default()
            };
            if c.ready == Some(true) {
                ready.push(a);
            } else {
                not_ready.push(a);
            }
        }
        if ready.is_empty() && not_ready.is_empty() {
            continue;
        }
        subsets.push(EndpointSubset {
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
            ports: Some(
                ports
                    .iter()
                    .map(|p| CorePort {
                        name: Some(p.name.clone()),
                        port: p.port,
                        protocol: Some(p.protocol.clone()),
                        app_protocol: p.app_protocol.clone(),
                    })
                    .collect(),
            ),
        });
    }
    subsets
}

/// The EndpointSlice and Endpoints controllers (one queue of Services; each half can be
/// switched off).
#[derive(Clone)]
pub struct Controller {
    pub services: Informer<Service>,
    pub pods: Informer<Pod>,
    pub slices: Informer<EndpointSlice>,
    pub queue: WorkQueue,
    ctx: Ctx,
    pub slices_on: bool,
    pub endpoints_on: bool,
    /// The services each pod was last selected by, so a pod that stops matching still
    /// updates the service it left.
    selected_by: Arc<Mutex<HashMap<String, BTreeSet<String>>>>,
}

impl Controller {
    pub fn new(
        ctx: Ctx,
        services: Informer<Service>,
        pods: Informer<Pod>,
        slices: Informer<EndpointSlice>,
    ) -> Controller {
        Controller {
            services,
            pods,
            slices,
            queue: WorkQueue::new(),
            ctx,
            slices_on: true,
            endpoints_on: true,
            selected_by: Arc::default(),
        }
    }

    fn slice_handler(&self) -> Handler<EndpointSlice> {
        let c = self.clone();
        handler(move |ch: Change<'_, EndpointSlice>| {
            let (Change::Applied(s) | Change::Deleted(s)) = ch else {
                return;
            };
            let l = owner::labels(&s.metadata);
            if l.get(MANAGED_BY).map(String::as_str) == Some(CONTROLLER_NAME)
                && let (Some(ns), Some(svc)) = (&s.metadata.namespace, l.get(SERVICE_NAME))
            {
                c.queue.add(format!("{ns}/{svc}"));
            }
        })
    }

    fn pod_handler(&self) -> Handler<Pod> {
        let c = self.clone();
        handler(move |ch: Change<'_, Pod>| {
            let (p, deleted) = match ch {
                Change::Applied(p) => (p, false),
                Change::Deleted(p) => (p, true),
                Change::Synced => return,
            };
            let pk = owner::key(&p.metadata);
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            let labels = owner::labels(&p.metadata);
            let mut now = BTreeSet::new();
            for s in c.services.state() {
                if s.metadata.namespace.as_deref() != Some(&ns) {
                    continue;
                }
                let Some(sel) = s.spec.as_ref().and_then(|x| x.selector.as_ref()) else {
                    continue;
                };
                if !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                    now.insert(owner::key(&s.metadata));
                }
            }
            let mut map = c.selected_by.lock().unwrap_or_else(|e| e.into_inner());
            let before = if deleted {
                map.remove(&pk)
            } else {
                map.insert(pk, now.clone())
            };
            drop(map);
            for k in now.iter().chain(before.iter().flatten()) {
                c.queue.add(k.clone());
            }
        })
    }

    fn selected(&self, svc: &Service) -> Vec<Arc<Pod>> {
        let Some(sel) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
            return Vec::new();
        };
        let ns = svc.metadata.namespace.as_deref();
        self.pods
            .state()
            .into_iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == ns && {
                    let l = owner::labels(&p.metadata);
                    sel.iter().all(|(k, v)| l.get(k) == Some(v))
                }
            })
            .collect()
    }
}

impl Reconciler for Controller {
    fn name(&self) -> &'static str {
        "endpointslice"
    }

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    fn caches(&self) -> Vec<Synced> {
        // Only from complete caches (a missing slice would be created again).
        vec![
            self.services.synced(),
            self.pods.synced(),
            self.slices.synced(),
        ]
    }

    fn handlers(&self, watches: &mut Watches) {
        watches.on(owner_handler(&self.queue, &self.services, OnDelete::Sync));
        watches.on(self.slice_handler());
        watches.on(self.pod_handler());
    }

    async fn sync(&self, key: &str) -> Result<Option<Duration>, SyncError> {
        let (Some(ns), name) = owner::split_key(key) else {
            return Ok(None);
        };
        let svc = self.services.get(key);
        let with_selector = svc.as_ref().filter(|s| {
            s.spec
                .as_ref()
                .and_then(|x| x.selector.as_ref())
                .is_some_and(|sel| !sel.is_empty())
        });
        let existing: Vec<Arc<EndpointSlice>> = self
            .slices
            .state()
            .into_iter()
            .filter(|s| {
                let l = owner::labels(&s.metadata);
                s.metadata.namespace.as_deref() == Some(ns)
                    && l.get(SERVICE_NAME).map(String::as_str) == Some(name)
                    && l.get(MANAGED_BY).map(String::as_str) == Some(CONTROLLER_NAME)
            })
            .collect();
        let slice_api: Api<EndpointSlice> = Api::namespaced(self.ctx.client.clone(), ns);
        let ep_api: Api<Endpoints> = Api::namespaced(self.ctx.client.clone(), ns);
        let Some(svc) = with_selector else {
            // Gone, or no selector (someone else manages its endpoints): remove ours.
            for s in existing {
                if let Some(n) = &s.metadata.name {
                    match slice_api.delete(n, &DeleteParams::default()).await {
                        Ok(_) => {}
                        Err(e) if owner::is_not_found(&e) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if svc.is_none() && self.endpoints_on {
                match ep_api.get_opt(name).await? {
                    Some(e)
                        if owner::labels(&e.metadata)
                            .contains_key("endpointslice.kubernetes.io/skip-mirror") =>
                    {
                        match ep_api.delete(name, &DeleteParams::default()).await {
                            Ok(_) => {}
                            Err(e) if owner::is_not_found(&e) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                    _ => {}
                }
            }
            return Ok(None);
        };
        let groups = desired(svc, &self.selected(svc));
        if self.slices_on {
            self.sync_slices(svc, &groups, existing, &slice_api).await?;
        }
        if self.endpoints_on {
            let publish = svc
                .spec
                .as_ref()
                .and_then(|s| s.publish_not_ready_addresses)
                == Some(true);
            self.sync_endpoints(
                svc,
                endpoints_subsets(&primary(svc, &groups), publish),
                &ep_api,
            )
            .await?;
        }
        Ok(None)
    }
}

impl Controller {
    async fn sync_slices(
        &self,
        svc: &Service,
        groups: &Groups,
        existing: Vec<Arc<EndpointSlice>>,
        api: &Api<EndpointSlice>,
    ) -> Result<(), SyncError> {
        let name = svc.metadata.name.clone().unwrap_or_default();
        // Existing slices by (family, ports); one of a type we do not write (FQDN) is
        // someone else's mistake under our label: removed with the leftovers.
        let mut by_ports: BTreeMap<Option<SliceKey>, Vec<Arc<EndpointSlice>>> = BTreeMap::new();
        for s in existing {
            by_ports.entry(slice_key(&s)).or_default().push(s);
        }
        for v in by_ports.values_mut() {
            v.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        }
        // A family with no endpoints keeps one empty slice (upstream's placeholder), so a
        // Service of both families has at least one slice of each.
        let mut wanted: Vec<(AddressType, Vec<PortKey>, Vec<Endpoint>)> = Vec::new();
        for family in service_families(svc) {
            let before = wanted.len();
            for ((f, ports), eps) in groups {
                if *f != family {
                    continue;
                }
                for chunk in eps.chunks(MAX_PER_SLICE) {
                    wanted.push((family, ports.clone(), chunk.to_vec()));
                }
            }
            if wanted.len() == before {
                wanted.push((family, Vec::new(), Vec::new()));
            }
        }
        let mut labels = svc.metadata.labels.clone().unwrap_or_default();
        labels.insert(SERVICE_NAME.into(), name.clone());
        labels.insert(MANAGED_BY.into(), CONTROLLER_NAME.into());
        for (family, ports, eps) in wanted {
            let mut sorted_ports = ports.clone();
            sorted_ports.sort();
            let reuse = by_ports
                .get_mut(&Some((family, sorted_ports)))
                .and_then(|v| (!v.is_empty()).then(|| v.remove(0)));
            let slice_ports: Vec<EndpointPort> = ports.iter().map(PortKey::slice_port).collect();
            match reuse {
                Some(cur) => {
                    let same = comparable(&cur.endpoints) == comparable(&eps)
                        && cur.metadata.labels.as_ref() == Some(&labels)
                        && cur.ports.clone().unwrap_or_default() == slice_ports;
                    if !same {
                        let mut next = (*cur).clone();
                        next.endpoints = eps;
                        next.ports = Some(slice_ports);
                        next.metadata.labels = Some(labels.clone());
                        let n = cur.metadata.name.clone().unwrap_or_default();
                        api.replace(&n, &PostParams::default(), &next).await?;
                    }
                }
                None => {
                    let s = EndpointSlice {
                        metadata: ObjectMeta {
                            generate_name: Some(format!("{name}-")),
                            namespace: svc.metadata.namespace.clone(),
                            labels: Some(labels.clone()),
                            owner_references: Some(vec![owner::controller_ref(svc)]),
                            ..Default::default()
                        },
                        address_type: family.as_str().into(),
                        endpoints: eps,
                        ports: Some(slice_ports),
                    };
                    api.create(&PostParams::default(), &s).await?;
                }
            }
        }
        for s in by_ports.into_values().flatten() {
            if let Some(n) = &s.metadata.name {
                match api.delete(n, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(e) if owner::is_not_found(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    async fn sync_endpoints(
        &self,
        svc: &Service,
        subsets: Vec<EndpointSubset>,
        api: &Api<Endpoints>,
    ) -> Result<(), SyncError> {
        let name = svc.metadata.name.clone().unwrap_or_default();
        let mut labels = svc.metadata.labels.clone().unwrap_or_default();
        labels.insert(
            "endpointslice.kubernetes.io/skip-mirror".into(),
            "true".into(),
        );
        let cur = api.get_opt(&name).await?;
        let subsets = (!subsets.is_empty()).then_some(subsets);
        match cur {
            Some(cur) => {
                if cur.subsets.clone().filter(|s| !s.is_empty()) == subsets
                    && cur.metadata.labels.as_ref() == Some(&labels)
                {
                    return Ok(());
                }
                let mut next = cur.clone();
                next.subsets = subsets;
                next.metadata.labels = Some(labels);
                api.replace(&name, &PostParams::default(), &next).await?;
            }
            None => {
                let e = Endpoints {
                    metadata: ObjectMeta {
                        name: Some(name),
                        namespace: svc.metadata.namespace.clone(),
                        labels: Some(labels),
                        ..Default::default()
                    },
                    subsets,
                };
                api.create(&PostParams::default(), &e).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ip: Option<&str>, ready: bool, deleting: bool) -> Arc<Pod> {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "ns", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running",
                       "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        });
        if let Some(ip) = ip {
            v["status"]["podIP"] = json!(ip);
        }
        if deleting {
            v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn svc(target: serde_json::Value, publish: bool) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"selector": {"app": "web"}, "publishNotReadyAddresses": publish,
                     "ports": [{"name": "web", "port": 80, "targetPort": target}]},
        }))
        .unwrap()
    }

    fn cond(c: &EndpointConditions) -> (bool, bool, bool) {
        (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())
    }

    #[test]
    fn conditions_say_ready_serving_and_terminating_as_the_spec_defines_them() {
        // (ready, serving, terminating)
        assert_eq!(
            cond(&conditions(&pod("a", None, true, false), false)),
            (true, true, false)
        );
        assert_eq!(
            cond(&conditions(&pod("a", None, false, false), false)),
            (false, false, false)
        );
        // A terminating pod still passing readiness serves but is not ready.
        assert_eq!(
            cond(&conditions(&pod("a", None, true, true), false)),
            (false, true, true)
        );
        assert_eq!(
            cond(&conditions(&pod("a", None, false, true), false)),
            (false, false, true)
        );
        // publishNotReadyAddresses: ready and serving regardless.
        assert_eq!(
            cond(&conditions(&pod("a", None, false, false), true)),
            (true, true, false)
        );
    }

    #[test]
    fn a_named_target_port_is_resolved_per_pod_and_pods_without_it_get_no_such_port() {
        let s = svc(json!("http"), false);
        let mut other = (*pod("b", Some("10.0.0.2"), true, false)).clone();
        other.spec.as_mut().unwrap().containers[0].ports = None;
        let groups = desired(
            &s,
            &[pod("a", Some("10.0.0.1"), true, false), Arc::new(other)],
        );
        assert_eq!(groups.len(), 2, "{groups:?}");
        let with: Vec<_> = groups.iter().filter(|((_, k), _)| !k.is_empty()).collect();
        assert_eq!(with.len(), 1);
        assert_eq!(with[0].0.1[0].port, 8080);
        assert_eq!(with[0].1[0].addresses, ["10.0.0.1"]);
    }

    #[test]
    fn pods_without_an_address_get_no_endpoint_and_a_numeric_target_port_is_used_as_is() {
        let s = svc(json!(9000), false);
        let groups = desired(
            &s,
            &[
                pod("a", None, true, false),
                pod("b", Some("10.0.0.2"), true, false),
            ],
        );
        let ((_, ports), eps) = groups.iter().next().unwrap();
        assert_eq!(ports[0].port, 9000);
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].node_name.as_deref(), Some("n1"));
        assert_eq!(
            eps[0].target_ref.as_ref().unwrap().name.as_deref(),
            Some("b")
        );
    }

    #[test]
    fn endpoints_list_ready_addresses_and_not_ready_ones_apart_and_leave_out_terminating() {
        let s = svc(json!(80), false);
        let groups = desired(
            &s,
            &[
                pod("a", Some("10.0.0.1"), true, false),
                pod("b", Some("10.0.0.2"), false, false),
                pod("c", Some("10.0.0.3"), true, true),
            ],
        );
        let subsets = endpoints_subsets(&primary(&s, &groups), false);
        assert_eq!(subsets.len(), 1);
        let ips = |v: &Option<Vec<EndpointAddress>>| {
            v.iter().flatten().map(|a| a.ip.clone()).collect::<Vec<_>>()
        };
        assert_eq!(ips(&subsets[0].addresses), ["10.0.0.1"]);
        assert_eq!(ips(&subsets[0].not_ready_addresses), ["10.0.0.2"]);
    }

    fn dual_pod(name: &str, v4: &str, v6: &str) -> Arc<Pod> {
        let mut p = (*pod(name, Some(v4), true, false)).clone();
        p.status.as_mut().unwrap().pod_ips = Some(vec![
            k8s_openapi::api::core::v1::PodIP { ip: v4.into() },
            k8s_openapi::api::core::v1::PodIP { ip: v6.into() },
        ]);
        Arc::new(p)
    }

    fn with_families(families: &[&str]) -> Service {
        let mut s = svc(json!(8080), false);
        s.spec.as_mut().unwrap().ip_families =
            Some(families.iter().map(|f| f.to_string()).collect());
        s
    }

    fn addresses(groups: &Groups, family: AddressType) -> Vec<String> {
        groups
            .iter()
            .filter(|((f, _), _)| *f == family)
            .flat_map(|(_, eps)| eps.iter().flat_map(|e| e.addresses.clone()))
            .collect()
    }

    #[test]
    fn a_dual_stack_service_gets_endpoints_of_each_family_from_the_pods_ips() {
        let pods = [
            dual_pod("a", "10.0.0.1", "fd00::1"),
            dual_pod("b", "10.0.0.2", "fd00::2"),
            // Only IPv4: no IPv6 endpoint.
            pod("c", Some("10.0.0.3"), true, false),
        ];
        let groups = desired(&with_families(&["IPv4", "IPv6"]), &pods);
        assert_eq!(
            addresses(&groups, AddressType::IPv4),
            ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        );
        assert_eq!(
            addresses(&groups, AddressType::IPv6),
            ["fd00::1", "fd00::2"]
        );
        // The Endpoints object lists the primary family only.
        let s6 = with_families(&["IPv6", "IPv4"]);
        let subsets = endpoints_subsets(&primary(&s6, &desired(&s6, &pods)), false);
        let ips: Vec<String> = subsets
            .iter()
            .flat_map(|s| s.addresses.iter().flatten().map(|a| a.ip.clone()))
            .collect();
        assert_eq!(ips, ["fd00::1", "fd00::2"]);
    }

    #[test]
    fn a_single_stack_service_gets_endpoints_of_its_family_only() {
        let pods = [dual_pod("a", "10.0.0.1", "fd00::1")];
        let v4 = desired(&with_families(&["IPv4"]), &pods);
        assert_eq!(addresses(&v4, AddressType::IPv4), ["10.0.0.1"]);
        assert!(addresses(&v4, AddressType::IPv6).is_empty());
        let v6 = desired(&with_families(&["IPv6"]), &pods);
        assert_eq!(addresses(&v6, AddressType::IPv6), ["fd00::1"]);
        assert!(addresses(&v6, AddressType::IPv4).is_empty());
        // No ipFamilies (an object from before dual-stack): the cluster IP's family.
        let mut legacy = svc(json!(8080), false);
        legacy.spec.as_mut().unwrap().cluster_ip = Some("fd00:96::5".into());
        assert_eq!(service_families(&legacy), [AddressType::IPv6]);
        assert_eq!(
            service_families(&svc(json!(8080), false)),
            [AddressType::IPv4]
        );
    }
}
