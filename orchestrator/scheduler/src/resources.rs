//! Resource quantities as the scheduler counts them: CPU in millicores, memory and ephemeral
//! storage in bytes, and what a pod requests (its containers' sum, or its largest init container
//! when that is more, plus the pod overhead).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use trellis_api::ParsedQuantity;

/// A CPU request without a value counts this much for scoring (upstream `DefaultMilliCPURequest`).
pub const DEFAULT_MILLI_CPU: i64 = 100;
/// A memory request without a value counts this much for scoring (`DefaultMemoryRequest`).
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

/// Amounts of the resources the scheduler fits pods by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
}

impl Resources {
    pub fn add(&mut self, o: &Resources) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.ephemeral_storage += o.ephemeral_storage;
    }

    pub fn sub(&mut self, o: &Resources) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.ephemeral_storage -= o.ephemeral_storage;
    }

    fn max(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
    }

    fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Resources {
        let get = |k: &str| list.and_then(|l| l.get(k)).map(|q| q.0.as_str());
        Resources {
            milli_cpu: get("cpu").and_then(parse_milli).unwrap_or(0),
            memory: get("memory").and_then(parse_bytes).unwrap_or(0),
            ephemeral_storage: get("ephemeral-storage").and_then(parse_bytes).unwrap_or(0),
        }
    }
}

/// What a node offers: allocatable (capacity where allocatable is missing), and how many pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allocatable {
    pub resources: Resources,
    /// `allocatable.pods`; a node that does not say gets upstream kubelet's default, 110.
    pub pods: i64,
}

impl Allocatable {
    pub fn of(node: &k8s_openapi::api::core::v1::Node) -> Allocatable {
        let status = node.status.as_ref();
        let list = status
            .and_then(|s| s.allocatable.as_ref())
            .or_else(|| status.and_then(|s| s.capacity.as_ref()));
        Allocatable {
            resources: Resources::from_list(list),
            pods: list
                .and_then(|l| l.get("pods"))
                .and_then(|q| parse_bytes(&q.0))
                .unwrap_or(110),
        }
    }
}

/// A pod's requests: what fitting checks against allocatable, and the "non-zero" CPU and memory
/// scoring uses (a container with no request counts the defaults, so empty pods still spread).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodRequests {
    pub requested: Resources,
    pub non_zero_cpu: i64,
    pub non_zero_memory: i64,
}

impl PodRequests {
    pub fn of(pod: &Pod) -> PodRequests {
        let Some(spec) = pod.spec.as_ref() else {
            return PodRequests::default();
        };
        let requests = |c: &Container| {
            Resources::from_list(c.resources.as_ref().and_then(|r| r.requests.as_ref()))
        };
        let mut sum = Resources::default();
        let (mut nz_cpu, mut nz_mem) = (0, 0);
        for c in &spec.containers {
            let r = requests(c);
            sum.add(&r);
            let has = |k: &str| {
                c.resources
                    .as_ref()
                    .and_then(|r| r.requests.as_ref())
                    .is_some_and(|l| l.contains_key(k))
            };
            nz_cpu += if has("cpu") {
                r.milli_cpu
            } else {
                DEFAULT_MILLI_CPU
            };
            nz_mem += if has("memory") {
                r.memory
            } else {
                DEFAULT_MEMORY
            };
        }
        for c in spec.init_containers.iter().flatten() {
            let r = requests(c);
            sum.max(&r);
            nz_cpu = nz_cpu.max(r.milli_cpu);
            nz_mem = nz_mem.max(r.memory);
        }
        let overhead = Resources::from_list(spec.overhead.as_ref());
        sum.add(&overhead);
        PodRequests {
            requested: sum,
            non_zero_cpu: nz_cpu + overhead.milli_cpu,
            non_zero_memory: nz_mem + overhead.memory,
        }
    }
}

/// A quantity the scheduler counts: parsed by trellis-api, and not negative.
fn quantity(q: &str) -> Option<ParsedQuantity> {
    ParsedQuantity::parse(q).ok().filter(|p| !p.is_negative())
}

/// A CPU quantity in millicores, rounded up (`"1"` → 1000, `"250m"` → 250).
pub fn parse_milli(q: &str) -> Option<i64> {
    Some(quantity(q)?.milli().ceil() as i64)
}

/// A quantity as a whole number (bytes, or a count), rounded up (`"1Gi"`, `"110"`).
pub fn parse_bytes(q: &str) -> Option<i64> {
    Some(quantity(q)?.value().ceil() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities_parse_as_the_api_writes_them() {
        assert_eq!(parse_milli("1"), Some(1000));
        assert_eq!(parse_milli("250m"), Some(250));
        assert_eq!(parse_milli("0.5"), Some(500));
        assert_eq!(parse_milli("32"), Some(32_000));
        assert_eq!(parse_bytes("256Gi"), Some(256 << 30));
        assert_eq!(parse_bytes("128974848"), Some(128_974_848));
        assert_eq!(parse_bytes("129e6"), Some(129_000_000));
        assert_eq!(parse_bytes("1M"), Some(1_000_000));
        assert_eq!(parse_bytes("110"), Some(110));
        assert_eq!(parse_bytes("2Pi"), Some(2 << 50));
        assert_eq!(parse_bytes("1E"), Some(1_000_000_000_000_000_000));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("-1"), None);
        assert_eq!(parse_milli("-250m"), None);
    }

    #[test]
    fn a_pod_requests_its_containers_sum_or_its_largest_init_container() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {
                "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}}],
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
                    {"name": "b", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
                    {"name": "c"}
                ]
            }
        }))
        .unwrap();
        let r = PodRequests::of(&pod);
        assert_eq!(
            r.requested.milli_cpu, 2000,
            "the init container needs more CPU"
        );
        assert_eq!(
            r.requested.memory,
            2 << 30,
            "the containers together need more memory"
        );
        // Container c has no requests: it counts the defaults for scoring only.
        assert_eq!(r.non_zero_cpu, 2000);
        assert_eq!(r.non_zero_memory, (2 << 30) + DEFAULT_MEMORY);
    }
}
