//! Services, Endpoints and EndpointSlices: addresses and ports as kubectl lists them.

use std::collections::BTreeSet;

use jiff::Timestamp;
use serde_json::{Value, json};

use super::fields::{age_at, format_labels, get, int, items, name_cell, non_empty, text};

fn strings<'a>(v: &'a Value, path: &[&str]) -> Vec<&'a str> {
    items(v, path).iter().filter_map(Value::as_str).collect()
}

pub(super) fn service_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let kind = non_empty(obj, &["spec", "type"]).unwrap_or("ClusterIP");
    // `clusterIP` is the older single field; the API server keeps it in step with `clusterIPs`.
    let cluster_ip = match items(obj, &["spec", "clusterIPs"]).first() {
        Some(ip) => ip.as_str().unwrap_or(""),
        None => non_empty(obj, &["spec", "clusterIP"]).unwrap_or("<none>"),
    };
    let external = strings(obj, &["spec", "externalIPs"]);
    let external_ip = match kind {
        "ClusterIP" | "NodePort" if external.is_empty() => "<none>".to_string(),
        "ClusterIP" | "NodePort" => external.join(","),
        "LoadBalancer" => {
            let ingress: BTreeSet<&str> = items(obj, &["status", "loadBalancer", "ingress"])
                .iter()
                .filter_map(|i| non_empty(i, &["ip"]).or_else(|| non_empty(i, &["hostname"])))
                .collect();
            let all: Vec<&str> = ingress.into_iter().chain(external).collect();
            if all.is_empty() {
                "<pending>".to_string()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => text(obj, &["spec", "externalName"]).to_string(),
        _ => "<unknown>".to_string(),
    };
    let ports: Vec<String> = items(obj, &["spec", "ports"])
        .iter()
        .map(|p| {
            let port = int(p, &["port"]).unwrap_or(0);
            let protocol = non_empty(p, &["protocol"]).unwrap_or("TCP");
            match int(p, &["nodePort"]).unwrap_or(0) {
                n if n > 0 => format!("{port}:{n}/{protocol}"),
                _ => format!("{port}/{protocol}"),
            }
        })
        .collect();
    let ports = if ports.is_empty() {
        "<none>".to_string()
    } else {
        ports.join(",")
    };
    vec![
        name_cell(obj),
        json!(kind),
        json!(cluster_ip),
        json!(external_ip),
        json!(ports),
        json!(age_at(obj, now)),
        json!(format_labels(get(obj, &["spec", "selector"]))),
    ]
}

/// `net.JoinHostPort`: IPv6 addresses in brackets.
fn host_port(ip: &str, port: i64) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// Up to three `ip:port` of an Endpoints object, then ` + N more...`.
pub(super) fn format_endpoints(obj: &Value) -> String {
    const MAX: usize = 3;
    let subsets = items(obj, &["subsets"]);
    if subsets.is_empty() {
        return "<none>".into();
    }
    let mut list: Vec<String> = Vec::new();
    let mut more = false;
    let mut count = 0usize;
    for ss in subsets {
        let addresses = items(ss, &["addresses"]);
        let ports = items(ss, &["ports"]);
        // Headless services may have no ports: addresses alone.
        let ports: Vec<Option<i64>> = if ports.is_empty() {
            vec![None]
        } else {
            ports
                .iter()
                .map(|p| Some(int(p, &["port"]).unwrap_or(0)))
                .collect()
        };
        for port in ports {
            count += addresses.len();
            for a in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                let ip = text(a, &["ip"]);
                list.push(match port {
                    Some(port) => host_port(ip, port),
                    None => ip.to_string(),
                });
            }
        }
    }
    let joined = list.join(",");
    if more {
        format!("{joined} + {} more...", count - MAX)
    } else {
        joined
    }
}

/// Up to three items, then ` + N more...`; `<unset>` for none.
fn list_with_more(all: Vec<String>) -> String {
    const MAX: usize = 3;
    if all.is_empty() {
        return "<unset>".into();
    }
    let count = all.len();
    let shown = all.into_iter().take(MAX).collect::<Vec<_>>().join(",");
    if count > MAX {
        format!("{shown} + {} more...", count - MAX)
    } else {
        shown
    }
}

pub(super) fn discovery_ports(obj: &Value) -> String {
    list_with_more(
        items(obj, &["ports"])
            .iter()
            .map(
                |p| match (int(p, &["port"]), get(p, &["name"]).and_then(Value::as_str)) {
                    (Some(port), _) => port.to_string(),
                    (None, Some(name)) => name.to_string(),
                    (None, None) => "*".to_string(),
                },
            )
            .collect(),
    )
}

pub(super) fn discovery_endpoints(obj: &Value) -> String {
    list_with_more(
        items(obj, &["endpoints"])
            .iter()
            .flat_map(|e| items(e, &["addresses"]))
            .map(|a| a.as_str().unwrap_or("").to_string())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn services() {
        assert_eq!(
            heads(&builtin("", "Service"))
                .iter()
                .map(|h| (h.0.as_str(), h.2))
                .collect::<Vec<_>>(),
            [
                ("Name", 0),
                ("Type", 0),
                ("Cluster-IP", 0),
                ("External-IP", 0),
                ("Port(s)", 0),
                ("Age", 0),
                ("Selector", 1)
            ]
        );
        let node_port = json!({
            "metadata": {"name": "web", "creationTimestamp": ago(86400 * 10)},
            "spec": {"type": "NodePort", "clusterIP": "10.96.44.12", "clusterIPs": ["10.96.44.12"],
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"},
                               {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 31053}],
                     "selector": {"app": "web", "tier": "frontend"}}
        });
        assert_eq!(
            row("", "Service", node_port),
            json!([
                "web",
                "NodePort",
                "10.96.44.12",
                "<none>",
                "80:30080/TCP,53:31053/UDP",
                "10d",
                "app=web,tier=frontend"
            ])
        );
        let pending = json!({
            "metadata": {"name": "ingress", "creationTimestamp": ago(40)},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.9.9", "clusterIPs": ["10.96.9.9"],
                     "ports": [{"port": 443, "nodePort": 31443}], "selector": {"app": "ingress"}},
            "status": {"loadBalancer": {}}
        });
        assert_eq!(
            row("", "Service", pending),
            json!([
                "ingress",
                "LoadBalancer",
                "10.96.9.9",
                "<pending>",
                "443:31443/TCP",
                "40s",
                "app=ingress"
            ])
        );
        let provisioned = json!({
            "metadata": {"name": "ingress"},
            "spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.9.9"], "externalIPs": ["198.51.100.7"],
                     "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}, {"hostname": "lb.example.com"},
                                                    {"ip": "203.0.113.10"}]}}
        });
        assert_eq!(
            row("", "Service", provisioned)[3],
            "203.0.113.10,lb.example.com,198.51.100.7"
        );
        let lb_only = json!({"metadata": {"name": "l"}, "spec": {"type": "LoadBalancer"},
                             "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.11"}]}}});
        assert_eq!(row("", "Service", lb_only)[3], "203.0.113.11");

        let kubernetes = json!({
            "metadata": {"name": "kubernetes"},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"],
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}
        });
        assert_eq!(
            row("", "Service", kubernetes),
            json!([
                "kubernetes",
                "ClusterIP",
                "10.96.0.1",
                "<none>",
                "443/TCP",
                "<unknown>",
                "<none>"
            ])
        );
        let headless = json!({"metadata": {"name": "db"}, "spec": {"clusterIP": "None", "selector": {"app": "db"}}});
        assert_eq!(
            row("", "Service", headless),
            json!([
                "db",
                "ClusterIP",
                "None",
                "<none>",
                "<none>",
                "<unknown>",
                "app=db"
            ])
        );
        let external_ips = json!({"metadata": {"name": "e"},
                                  "spec": {"clusterIP": "10.96.1.1", "externalIPs": ["198.51.100.1", "198.51.100.2"]}});
        assert_eq!(
            row("", "Service", external_ips)[3],
            "198.51.100.1,198.51.100.2"
        );
        let external_name = json!({"metadata": {"name": "db"},
                                   "spec": {"type": "ExternalName", "externalName": "db.example.com"}});
        assert_eq!(
            row("", "Service", external_name),
            json!([
                "db",
                "ExternalName",
                "<none>",
                "db.example.com",
                "<none>",
                "<unknown>",
                "<none>"
            ])
        );
        let odd = json!({"metadata": {"name": "o"}, "spec": {"type": "Magic"}});
        assert_eq!(row("", "Service", odd)[3], "<unknown>");
    }

    #[test]
    fn endpoints_and_endpoint_slices() {
        let ep = |subsets: Value| {
            row(
                "",
                "Endpoints",
                json!({"metadata": {"name": "web"}, "subsets": subsets}),
            )[1]
            .clone()
        };
        assert_eq!(
            ep(
                json!([{"addresses": [{"ip": "10.244.1.5"}, {"ip": "10.244.2.9"}],
                       "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}])
            ),
            "10.244.1.5:8080,10.244.2.9:8080"
        );
        assert_eq!(
            ep(
                json!([{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}, {"ip": "10.0.0.3"}],
                       "ports": [{"port": 80}, {"port": 443}]}])
            ),
            "10.0.0.1:80,10.0.0.2:80,10.0.0.3:80 + 3 more..."
        );
        assert_eq!(
            ep(json!([{"addresses": [{"ip": "fd00::5"}], "ports": [{"port": 8080}]}])),
            "[fd00::5]:8080"
        );
        assert_eq!(ep(json!([{"addresses": [{"ip": "10.0.0.1"}]}])), "10.0.0.1");
        assert_eq!(ep(json!([])), "<none>");
        assert_eq!(ep(Value::Null), "<none>");
        assert_eq!(
            ep(json!([{"notReadyAddresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}])),
            ""
        );

        assert_eq!(
            heads(&builtin("discovery.k8s.io", "EndpointSlice"))
                .iter()
                .map(|h| h.0.as_str())
                .collect::<Vec<_>>(),
            ["Name", "AddressType", "Ports", "Endpoints", "Age"]
        );
        let slice = json!({
            "metadata": {"name": "web-abc12", "creationTimestamp": ago(200),
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "metrics", "protocol": "TCP"},
                      {}, {"port": 9090}],
            "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}},
                          {"addresses": ["10.244.2.9"], "conditions": {"ready": false}}]
        });
        assert_eq!(
            row("discovery.k8s.io", "EndpointSlice", slice),
            json!([
                "web-abc12",
                "IPv4",
                "8080,metrics,* + 1 more...",
                "10.244.1.5,10.244.2.9",
                "3m20s"
            ])
        );
        let empty = json!({"metadata": {"name": "e"}, "addressType": "IPv6", "endpoints": null});
        assert_eq!(
            row("discovery.k8s.io", "EndpointSlice", empty),
            json!(["e", "IPv6", "<unset>", "<unset>", "<unknown>"])
        );
    }

    #[test]
    fn network_policies() {
        assert_eq!(
            heads(&builtin("networking.k8s.io", "NetworkPolicy")),
            owned(&[
                ("Name", "string", 0),
                ("Pod-Selector", "string", 0),
                ("Age", "string", 0)
            ])
        );
        let db = json!({
            "metadata": {"name": "db-ingress", "namespace": "prod", "creationTimestamp": ago(7 * 86400)},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}],
                                  "ports": [{"protocol": "TCP", "port": 5432}]}]}
        });
        assert_eq!(
            row("networking.k8s.io", "NetworkPolicy", db),
            json!(["db-ingress", "app=db", "7d"])
        );
        let deny_all = json!({
            "metadata": {"name": "default-deny", "creationTimestamp": ago(60)},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
        });
        assert_eq!(
            row("networking.k8s.io", "NetworkPolicy", deny_all),
            json!(["default-deny", "<none>", "60s"])
        );
        let exprs = json!({"metadata": {"name": "x"}, "spec": {"podSelector": {"matchExpressions": [
            {"key": "role", "operator": "In", "values": ["frontend", "api"]}]}}});
        assert_eq!(
            row("networking.k8s.io", "NetworkPolicy", exprs)[1],
            "role in (api,frontend)"
        );
    }
}
