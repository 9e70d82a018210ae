//! networking.k8s.io/v1 NetworkPolicy validation: what upstream's
//! `pkg/apis/networking/validation.ValidateNetworkPolicy` refuses, with its field paths and
//! wording, so a malformed policy is a 422 at the API and never reaches policyd.

use ipnet::IpNet;
use serde_json::{Value, json};

use crate::status::Cause;

const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];
const POLICY_TYPES: [&str; 2] = ["Ingress", "Egress"];

/// Upstream defaulting (`SetDefaults_NetworkPolicyPort`): a port without protocol is TCP.
pub fn defaults(obj: &mut Value) {
    for (dir, _) in [("ingress", "from"), ("egress", "to")] {
        let Some(rules) = obj
            .get_mut("spec")
            .and_then(|s| s.get_mut(dir))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for rule in rules {
            let Some(ports) = rule.get_mut("ports").and_then(Value::as_array_mut) else {
                continue;
            };
            for port in ports {
                if let Some(p) = port.as_object_mut() {
                    let slot = p.entry("protocol").or_insert(Value::Null);
                    if slot.is_null() {
                        *slot = json!("TCP");
                    }
                }
            }
        }
    }
}

/// The causes of a NetworkPolicy's 422 (empty when it is valid).
pub fn validate(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    label_selector(
        spec.get("podSelector").unwrap_or(&Value::Null),
        "spec.podSelector",
        &mut causes,
    );
    for (dir, peers) in [("ingress", "from"), ("egress", "to")] {
        for (i, rule) in list(spec, dir).iter().enumerate() {
            let here = format!("spec.{dir}[{i}]");
            for (j, port) in list(rule, "ports").iter().enumerate() {
                network_policy_port(port, &format!("{here}.ports[{j}]"), &mut causes);
            }
            for (j, peer) in list(rule, peers).iter().enumerate() {
                network_policy_peer(peer, &format!("{here}.{peers}[{j}]"), &mut causes);
            }
        }
    }
    let types = list(spec, "policyTypes");
    if types.len() > POLICY_TYPES.len() {
        causes.push(Cause::invalid(
            "spec.policyTypes",
            types,
            "may not specify more than two policyTypes",
        ));
        return causes;
    }
    for (i, t) in types.iter().enumerate() {
        let t = t.as_str().unwrap_or_default();
        if !POLICY_TYPES.contains(&t) {
            causes.push(not_supported(
                format!("spec.policyTypes[{i}]"),
                t,
                &POLICY_TYPES,
            ));
        }
    }
    causes
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn not_supported(field: String, value: &str, supported: &[&str]) -> Cause {
    let mut sorted = supported.to_vec();
    sorted.sort_unstable();
    let listed = sorted
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    Cause {
        reason: "FieldValueNotSupported",
        field,
        message: format!("Unsupported value: {value:?}: supported values: {listed}"),
    }
}

/// `ValidateNetworkPolicyPort`.
fn network_policy_port(port: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(proto) = port.get("protocol").and_then(Value::as_str)
        && !PROTOCOLS.contains(&proto)
    {
        causes.push(not_supported(format!("{path}.protocol"), proto, &PROTOCOLS));
    }
    let end_port = port.get("endPort").and_then(Value::as_i64);
    match port.get("port") {
        Some(Value::Number(n)) => {
            let n = n.as_i64().unwrap_or(i64::MAX);
            if let Some(msg) = port_num_error(n) {
                causes.push(Cause::invalid(format!("{path}.port"), n, msg));
            }
            if let Some(end) = end_port {
                if end < n {
                    causes.push(Cause::invalid(
                        format!("{path}.endPort"),
                        n,
                        "must be greater than or equal to `port`",
                    ));
                }
                if let Some(msg) = port_num_error(end) {
                    causes.push(Cause::invalid(format!("{path}.endPort"), end, msg));
                }
            }
        }
        Some(Value::String(name)) => {
            if let Some(end) = end_port {
                causes.push(Cause::invalid(
                    format!("{path}.endPort"),
                    end,
                    "may not be specified when `port` is non-numeric",
                ));
            }
            for msg in port_name_errors(name) {
                causes.push(Cause::invalid(format!("{path}.port"), name, msg));
            }
        }
        _ => {
            if let Some(end) = end_port {
                causes.push(Cause::invalid(
                    format!("{path}.endPort"),
                    end,
                    "may not be specified when `port` is not specified",
                ));
            }
        }
    }
}

/// apimachinery `IsValidPortNum`.
fn port_num_error(n: i64) -> Option<&'static str> {
    (!(1..=65535).contains(&n)).then_some("must be between 1 and 65535, inclusive")
}

/// apimachinery `IsValidPortName` (an IANA service name).
fn port_name_errors(name: &str) -> Vec<&'static str> {
    let mut errs = Vec::new();
    if name.len() > 15 {
        errs.push("must be no more than 15 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)");
    }
    if name.contains("--") {
        errs.push("must not contain consecutive hyphens");
    }
    if name.starts_with('-') || name.ends_with('-') {
        errs.push("must not begin or end with a hyphen");
    }
    errs
}

/// `ValidateNetworkPolicyPeer`: exactly a pod and/or namespace selector, or an ipBlock alone.
fn network_policy_peer(peer: &Value, path: &str, causes: &mut Vec<Cause>) {
    let present = |k: &str| peer.get(k).is_some_and(|v| !v.is_null());
    let mut peers = 0;
    for sel in ["podSelector", "namespaceSelector"] {
        if present(sel) {
            peers += 1;
            label_selector(&peer[sel], &format!("{path}.{sel}"), causes);
        }
    }
    if present("ipBlock") {
        peers += 1;
        ip_block(&peer["ipBlock"], &format!("{path}.ipBlock"), causes);
    }
    if peers == 0 {
        causes.push(Cause {
            reason: "FieldValueRequired",
            field: path.to_string(),
            message: "Required value: must specify a peer".into(),
        });
    } else if peers > 1 && present("ipBlock") {
        causes.push(Cause::forbidden(
            path,
            "may not specify both ipBlock and another peer",
        ));
    }
}

/// `ValidateIPBlock`: a CIDR, and excepts that are strict subsets of it.
fn ip_block(block: &Value, path: &str, causes: &mut Vec<Cause>) {
    let cidr = block
        .get("cidr")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if cidr.is_empty() {
        causes.push(Cause::required(format!("{path}.cidr")));
        return;
    }
    let Some(net) = parse_cidr(cidr) else {
        causes.push(bad_cidr(format!("{path}.cidr"), cidr));
        return;
    };
    for (i, except) in list(block, "except").iter().enumerate() {
        let field = format!("{path}.except[{i}]");
        let except = except.as_str().unwrap_or_default();
        let Some(ex) = parse_cidr(except) else {
            causes.push(bad_cidr(field, except));
            continue;
        };
        if !net.contains(&ex.addr()) || net.prefix_len() >= ex.prefix_len() {
            causes.push(Cause::invalid(
                field,
                except,
                "must be a strict subset of `cidr`",
            ));
        }
    }
}

/// A CIDR as the legacy fields take it: host bits may be set; the network is what counts.
fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>().ok().map(|n| n.trunc())
}

fn bad_cidr(field: String, value: &str) -> Cause {
    Cause::invalid(
        field,
        value,
        "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
    )
}

/// `ValidateLabelSelector`: label keys and values, operators, and values only where the
/// operator takes them.
pub fn label_selector(sel: &Value, path: &str, causes: &mut Vec<Cause>) {
    if sel.is_null() {
        return;
    }
    if let Some(labels) = sel.get("matchLabels").and_then(Value::as_object) {
        let field = format!("{path}.matchLabels");
        for (k, v) in labels {
            if let Err(e) = trellis_api::names::validate_qualified_name(k) {
                causes.push(Cause::invalid(&field, k, e.to_string()));
            }
            let v = v.as_str().unwrap_or_default();
            if let Err(e) = trellis_api::names::validate_label_value(v) {
                causes.push(Cause::invalid(&field, v, e.to_string()));
            }
        }
    }
    for (i, expr) in list(sel, "matchExpressions").iter().enumerate() {
        let here = format!("{path}.matchExpressions[{i}]");
        let values = list(expr, "values");
        let op = expr
            .get("operator")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match op {
            "In" | "NotIn" if values.is_empty() => causes.push(Cause {
                reason: "FieldValueRequired",
                field: format!("{here}.values"),
                message: "Required value: must be specified when `operator` is 'In' or 'NotIn'"
                    .into(),
            }),
            "Exists" | "DoesNotExist" if !values.is_empty() => causes.push(Cause::forbidden(
                format!("{here}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => causes.push(Cause::invalid(
                format!("{here}.operator"),
                other,
                "not a valid selector operator",
            )),
        }
        let key = expr.get("key").and_then(Value::as_str).unwrap_or_default();
        if let Err(e) = trellis_api::names::validate_qualified_name(key) {
            causes.push(Cause::invalid(format!("{here}.key"), key, e.to_string()));
        }
        for (j, v) in values.iter().enumerate() {
            let v = v.as_str().unwrap_or_default();
            if let Err(e) = trellis_api::names::validate_label_value(v) {
                causes.push(Cause::invalid(
                    format!("{here}.values[{j}]"),
                    v,
                    e.to_string(),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid policy with every kind of peer and port, changed by `f`.
    fn policy(f: impl FnOnce(&mut Value)) -> Value {
        let mut p = json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "x"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "web"}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{
                    "from": [
                        {"podSelector": {"matchExpressions": [{"key": "role", "operator": "In", "values": ["a", "b"]}]},
                         "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}},
                        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}
                    ],
                    "ports": [{"protocol": "TCP", "port": 80, "endPort": 90}, {"protocol": "UDP", "port": "dns"}, {"protocol": "SCTP"}]
                }],
                "egress": [{"to": [{"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Exists"}]}}]}]
            }
        });
        f(&mut p);
        p
    }

    fn refused(p: &Value) -> Vec<(String, String)> {
        validate(p)
            .into_iter()
            .map(|c| (c.field, format!("{}: {}", c.reason, c.message)))
            .collect()
    }

    #[test]
    fn a_valid_policy_passes() {
        assert_eq!(refused(&policy(|_| {})), []);
        assert_eq!(refused(&json!({"spec": {"podSelector": {}}})), []);
        // Host bits in a CIDR are tolerated, as upstream's legacy CIDR fields do.
        let p =
            policy(|p| p["spec"]["ingress"][0]["from"][1]["ipBlock"]["cidr"] = json!("10.0.0.1/8"));
        assert_eq!(refused(&p), []);
    }

    /// Each row: what is broken, the field path upstream names, and words of its message.
    #[test]
    fn what_upstream_refuses_is_refused_at_its_field() {
        type Edit = fn(&mut Value);
        let cases: Vec<(&str, Edit, &str, &str)> = vec![
            (
                "bad cidr",
                |p| p["spec"]["ingress"][0]["from"][1]["ipBlock"]["cidr"] = json!("10.0.0.0/33"),
                "spec.ingress[0].from[1].ipBlock.cidr",
                "must be a valid CIDR value",
            ),
            (
                "cidr not an address",
                |p| p["spec"]["ingress"][0]["from"][1]["ipBlock"]["cidr"] = json!("banana"),
                "spec.ingress[0].from[1].ipBlock.cidr",
                "must be a valid CIDR value",
            ),
            (
                "empty cidr",
                |p| p["spec"]["ingress"][0]["from"][1]["ipBlock"] = json!({"cidr": ""}),
                "spec.ingress[0].from[1].ipBlock.cidr",
                "Required value",
            ),
            (
                "bad except",
                |p| {
                    p["spec"]["ingress"][0]["from"][1]["ipBlock"]["except"] = json!(["10.1.0.0/99"])
                },
                "spec.ingress[0].from[1].ipBlock.except[0]",
                "must be a valid CIDR value",
            ),
            (
                "except outside cidr",
                |p| {
                    p["spec"]["ingress"][0]["from"][1]["ipBlock"]["except"] = json!(["11.0.0.0/16"])
                },
                "spec.ingress[0].from[1].ipBlock.except[0]",
                "must be a strict subset of `cidr`",
            ),
            (
                "except equal to cidr",
                |p| p["spec"]["ingress"][0]["from"][1]["ipBlock"]["except"] = json!(["10.0.0.0/8"]),
                "spec.ingress[0].from[1].ipBlock.except[0]",
                "must be a strict subset of `cidr`",
            ),
            (
                "ipBlock with a selector",
                |p| p["spec"]["ingress"][0]["from"][1]["podSelector"] = json!({}),
                "spec.ingress[0].from[1]",
                "may not specify both ipBlock and another peer",
            ),
            (
                "empty peer",
                |p| p["spec"]["egress"][0]["to"][0] = json!({}),
                "spec.egress[0].to[0]",
                "must specify a peer",
            ),
            (
                "bad label key",
                |p| p["spec"]["podSelector"]["matchLabels"] = json!({"bad key": "x"}),
                "spec.podSelector.matchLabels",
                "name part must consist of alphanumeric characters",
            ),
            (
                "bad label value",
                |p| p["spec"]["podSelector"]["matchLabels"] = json!({"app": "no spaces"}),
                "spec.podSelector.matchLabels",
                "a valid label must be an empty string",
            ),
            (
                "bad operator",
                |p| {
                    p["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]["operator"] =
                        json!("Equals")
                },
                "spec.ingress[0].from[0].podSelector.matchExpressions[0].operator",
                "not a valid selector operator",
            ),
            (
                "In without values",
                |p| {
                    p["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]["values"] =
                        json!([])
                },
                "spec.ingress[0].from[0].podSelector.matchExpressions[0].values",
                "must be specified when `operator` is 'In' or 'NotIn'",
            ),
            (
                "values with Exists",
                |p| {
                    p["spec"]["egress"][0]["to"][0]["namespaceSelector"]["matchExpressions"][0]["values"] =
                        json!(["a"])
                },
                "spec.egress[0].to[0].namespaceSelector.matchExpressions[0].values",
                "may not be specified when `operator` is 'Exists'",
            ),
            (
                "bad expression key",
                |p| {
                    p["spec"]["egress"][0]["to"][0]["namespaceSelector"]["matchExpressions"][0]["key"] =
                        json!("-team")
                },
                "spec.egress[0].to[0].namespaceSelector.matchExpressions[0].key",
                "must start and end with an alphanumeric",
            ),
            (
                "bad expression value",
                |p| {
                    p["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]["values"] =
                        json!(["a b"])
                },
                "spec.ingress[0].from[0].podSelector.matchExpressions[0].values[0]",
                "a valid label",
            ),
            (
                "unknown protocol",
                |p| p["spec"]["ingress"][0]["ports"][0]["protocol"] = json!("ICMP"),
                "spec.ingress[0].ports[0].protocol",
                "Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
            ),
            (
                "lower-case protocol",
                |p| p["spec"]["ingress"][0]["ports"][0]["protocol"] = json!("tcp"),
                "spec.ingress[0].ports[0].protocol",
                "Unsupported value",
            ),
            (
                "port 0",
                |p| p["spec"]["ingress"][0]["ports"][1]["port"] = json!(0),
                "spec.ingress[0].ports[1].port",
                "must be between 1 and 65535, inclusive",
            ),
            (
                "port 65536",
                |p| p["spec"]["ingress"][0]["ports"][1]["port"] = json!(65536),
                "spec.ingress[0].ports[1].port",
                "must be between 1 and 65535, inclusive",
            ),
            (
                "port name with capitals",
                |p| p["spec"]["ingress"][0]["ports"][1]["port"] = json!("Dns"),
                "spec.ingress[0].ports[1].port",
                "must contain only alpha-numeric characters",
            ),
            (
                "port name too long",
                |p| p["spec"]["ingress"][0]["ports"][1]["port"] = json!("a-very-long-port-name"),
                "spec.ingress[0].ports[1].port",
                "must be no more than 15 characters",
            ),
            (
                "port name of digits",
                |p| p["spec"]["ingress"][0]["ports"][1]["port"] = json!("8080"),
                "spec.ingress[0].ports[1].port",
                "must contain at least one letter",
            ),
            (
                "endPort below port",
                |p| p["spec"]["ingress"][0]["ports"][0]["endPort"] = json!(79),
                "spec.ingress[0].ports[0].endPort",
                "must be greater than or equal to `port`",
            ),
            (
                "endPort out of range",
                |p| p["spec"]["ingress"][0]["ports"][0]["endPort"] = json!(70000),
                "spec.ingress[0].ports[0].endPort",
                "must be between 1 and 65535, inclusive",
            ),
            (
                "endPort with a named port",
                |p| p["spec"]["ingress"][0]["ports"][1]["endPort"] = json!(100),
                "spec.ingress[0].ports[1].endPort",
                "may not be specified when `port` is non-numeric",
            ),
            (
                "endPort without port",
                |p| p["spec"]["ingress"][0]["ports"][2]["endPort"] = json!(100),
                "spec.ingress[0].ports[2].endPort",
                "may not be specified when `port` is not specified",
            ),
            (
                "unknown policy type",
                |p| p["spec"]["policyTypes"] = json!(["Ingress", "Sideways"]),
                "spec.policyTypes[1]",
                "Unsupported value: \"Sideways\": supported values: \"Egress\", \"Ingress\"",
            ),
            (
                "three policy types",
                |p| p["spec"]["policyTypes"] = json!(["Ingress", "Egress", "Ingress"]),
                "spec.policyTypes",
                "may not specify more than two policyTypes",
            ),
        ];
        for (what, edit, field, words) in cases {
            let got = refused(&policy(edit));
            assert!(
                got.iter().any(|(f, m)| f == field && m.contains(words)),
                "{what}: expected {field}: …{words}…, got {got:?}"
            );
            assert_eq!(got.len(), 1, "{what}: one cause, got {got:?}");
        }
    }

    #[test]
    fn ports_without_protocol_default_to_tcp() {
        let mut p = policy(|p| {
            p["spec"]["ingress"][0]["ports"] = json!([{"port": 80}]);
            p["spec"]["egress"][0]["ports"] = json!([{"port": 53, "protocol": "UDP"}]);
        });
        defaults(&mut p);
        assert_eq!(p["spec"]["ingress"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(p["spec"]["egress"][0]["ports"][0]["protocol"], "UDP");
    }
}
