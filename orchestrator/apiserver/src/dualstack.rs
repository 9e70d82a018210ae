//! A Service's IP families, decided as upstream's API server decides them (KEP 563,
//! `initIPFamilyFields`): `ipFamilyPolicy` (SingleStack, PreferDualStack, RequireDualStack),
//! `ipFamilies` (the first is the primary family) and `clusterIPs` (one per family, the first
//! equal to `clusterIP`). The cluster's families are those of `--service-cluster-ip-range`
//! (one or two ranges, the first the primary family). This module only defaults and checks
//! the fields; [`crate::alloc`] hands out and releases the addresses.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde_json::{Value, json};

use crate::meta;
use crate::status::Cause;

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    fn of_net(net: &IpNet) -> Family {
        Family::of(net.network())
    }

    /// The API's name: `IPv4` or `IPv6`.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn parse(s: &str) -> Option<Family> {
        match s {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        }
    }

    fn other(self) -> Family {
        match self {
            Family::V4 => Family::V6,
            Family::V6 => Family::V4,
        }
    }
}

/// The service ranges: one, or two of different families (the first is the primary family,
/// which single-stack Services get).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceCidrs {
    primary: IpNet,
    secondary: Option<IpNet>,
}

/// A `--service-cluster-ip-range` that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("{0:?} is not a CIDR")]
    Parse(String),
    #[error("at most two ranges (one per family) may be given, got {0}")]
    TooMany(usize),
    #[error("the two ranges {0} and {1} must be of different families")]
    SameFamily(IpNet, IpNet),
    #[error("the range {0} is too small: it needs at least 8 addresses")]
    TooSmall(IpNet),
}

impl ServiceCidrs {
    pub fn single(net: IpNet) -> ServiceCidrs {
        ServiceCidrs {
            primary: net.trunc(),
            secondary: None,
        }
    }

    /// Two ranges, one per family.
    pub fn dual(primary: IpNet, secondary: IpNet) -> Result<ServiceCidrs, CidrError> {
        if Family::of_net(&primary) == Family::of_net(&secondary) {
            return Err(CidrError::SameFamily(primary, secondary));
        }
        Ok(ServiceCidrs {
            primary: primary.trunc(),
            secondary: Some(secondary.trunc()),
        })
    }

    pub fn primary(&self) -> IpNet {
        self.primary
    }

    pub fn secondary(&self) -> Option<IpNet> {
        self.secondary
    }

    /// The range of `family`, if the cluster has that family.
    pub fn get(&self, family: Family) -> Option<IpNet> {
        [Some(self.primary), self.secondary]
            .into_iter()
            .flatten()
            .find(|n| Family::of_net(n) == family)
    }

    pub fn primary_family(&self) -> Family {
        Family::of_net(&self.primary)
    }

    pub fn is_dual(&self) -> bool {
        self.secondary.is_some()
    }

    /// The first host address of the primary range: the `kubernetes` Service's.
    pub fn first_host(&self) -> IpAddr {
        nth(self.primary, 1)
    }
}

/// The `n`th address of `net` (wrapping inside it).
pub fn nth(net: IpNet, n: u128) -> IpAddr {
    match net {
        IpNet::V4(v4) => {
            let size = 1u128 << (32 - u32::from(v4.prefix_len()));
            let base = u32::from(v4.network());
            IpAddr::V4((base + (n % size) as u32).into())
        }
        IpNet::V6(v6) => {
            let size = 1u128.checked_shl(128 - u32::from(v6.prefix_len()));
            let base = u128::from(v6.network());
            IpAddr::V6((base + size.map_or(n, |s| n % s)).into())
        }
    }
}

impl FromStr for ServiceCidrs {
    type Err = CidrError;

    /// `CIDR` or `CIDR,CIDR` (upstream's `--service-cluster-ip-range`).
    fn from_str(s: &str) -> Result<ServiceCidrs, CidrError> {
        let nets: Vec<IpNet> = s
            .split(',')
            .map(|p| {
                p.trim()
                    .parse::<IpNet>()
                    .map_err(|_| CidrError::Parse(p.trim().to_string()))
            })
            .collect::<Result<_, _>>()?;
        for n in &nets {
            // Network, first host (kubernetes), DNS (.10) and broadcast are never handed out.
            if n.max_prefix_len() - n.prefix_len() < 3 {
                return Err(CidrError::TooSmall(*n));
            }
        }
        match nets.as_slice() {
            [one] => Ok(ServiceCidrs::single(*one)),
            [a, b] => ServiceCidrs::dual(*a, *b),
            _ => Err(CidrError::TooMany(nets.len())),
        }
    }
}

impl fmt::Display for ServiceCidrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.primary)?;
        if let Some(s) = self.secondary {
            write!(f, ",{s}")?;
        }
        Ok(())
    }
}

/// `spec.ipFamilyPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

impl Policy {
    fn parse(s: &str) -> Option<Policy> {
        match s {
            "SingleStack" => Some(Policy::SingleStack),
            "PreferDualStack" => Some(Policy::PreferDualStack),
            "RequireDualStack" => Some(Policy::RequireDualStack),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Policy::SingleStack => "SingleStack",
            Policy::PreferDualStack => "PreferDualStack",
            Policy::RequireDualStack => "RequireDualStack",
        }
    }
}

/// What a Service needs allocated after its families are decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// ExternalName: no addresses, no families.
    None,
    /// Headless (`clusterIP: None`): families, no addresses.
    Headless,
    /// One address per family, in order: the one asked for, or None (allocate one).
    Ips(Vec<(Family, Option<IpAddr>)>),
}

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    v.and_then(Value::as_array).map(|a| {
        a.iter()
            .map(|x| x.as_str().unwrap_or_default().to_string())
            .collect()
    })
}

fn spec_str(obj: &Value, field: &str) -> Option<String> {
    meta::at(obj, &["spec", field])
        .and_then(Value::as_str)
        .map(String::from)
}

fn is_external_name(obj: &Value) -> bool {
    spec_str(obj, "type").as_deref() == Some("ExternalName")
}

fn has_selector(obj: &Value) -> bool {
    meta::at(obj, &["spec", "selector"])
        .and_then(Value::as_object)
        .is_some_and(|m| !m.is_empty())
}

/// The `clusterIPs` of a stored object (falling back to `clusterIP`).
pub fn cluster_ips(obj: &Value) -> Vec<String> {
    match strings(meta::at(obj, &["spec", "clusterIPs"])) {
        Some(v) if !v.is_empty() => v,
        _ => spec_str(obj, "clusterIP")
            .filter(|s| !s.is_empty())
            .into_iter()
            .collect(),
    }
}

/// Defaults and checks `svc`'s family fields against the cluster's ranges (`old`: the stored
/// object on update), writes `ipFamilies`, `ipFamilyPolicy`, `clusterIP` and `clusterIPs`
/// as far as they are known, and says what to allocate. Errors are upstream's field errors.
pub fn resolve(
    cidrs: &ServiceCidrs,
    old: Option<&Value>,
    svc: &mut Value,
) -> Result<Plan, Vec<Cause>> {
    if is_external_name(svc) {
        if let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) {
            for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                spec.remove(f);
            }
        }
        return Ok(Plan::None);
    }
    // Becoming a ClusterIP-like Service from ExternalName is a create as far as IPs go.
    let old = old.filter(|o| !is_external_name(o));
    if svc.get("spec").is_none_or(|s| !s.is_object()) {
        svc["spec"] = json!({});
    }
    let mut causes = Vec::new();

    // An update that leaves the addresses out keeps them (upstream's patchAllocatedValues).
    let mut ip = spec_str(svc, "clusterIP").unwrap_or_default();
    let mut ips = strings(meta::at(svc, &["spec", "clusterIPs"])).unwrap_or_default();
    if let Some(old) = old
        && ip.is_empty()
        && ips.is_empty()
    {
        ips = cluster_ips(old);
        ip = ips.first().cloned().unwrap_or_default();
    }
    // clusterIP and clusterIPs[0] say the same (upstream's defaulting).
    if ip.is_empty() {
        ip = ips.first().cloned().unwrap_or_default();
    } else if ips.is_empty() {
        ips = vec![ip.clone()];
    } else if ips[0] != ip {
        causes.push(Cause::invalid(
            "spec.clusterIPs[0]",
            &ips,
            "must match `clusterIP` when it is set",
        ));
    }
    let mut families_raw = strings(meta::at(svc, &["spec", "ipFamilies"])).unwrap_or_default();
    if let Some(old) = old
        && families_raw.is_empty()
        && spec_str(svc, "ipFamilyPolicy").is_none()
    {
        families_raw = strings(meta::at(old, &["spec", "ipFamilies"])).unwrap_or_default();
    }
    let policy_raw = spec_str(svc, "ipFamilyPolicy");
    let old_policy = old
        .and_then(|o| spec_str(o, "ipFamilyPolicy"))
        .and_then(|p| Policy::parse(&p));
    let old_ips = old.map(cluster_ips).unwrap_or_default();
    let old_families = old
        .and_then(|o| strings(meta::at(o, &["spec", "ipFamilies"])))
        .unwrap_or_default();

    // A PreferDualStack Service is neither upgraded nor downgraded by a change of the
    // cluster's ranges: only an explicit change of its fields does that.
    if old_policy == Some(Policy::PreferDualStack)
        && policy_raw.as_deref() == Some("PreferDualStack")
        && ips == old_ips
        && families_raw == old_families
    {
        write_back(svc, &ip, &ips, &families_raw, Policy::PreferDualStack);
        return Ok(plan_of(&ips, &families_raw));
    }

    let headless = ip == "None";
    let policy = match policy_raw.as_deref() {
        Some(p) => match Policy::parse(p) {
            Some(p) => p,
            None => {
                causes.push(Cause {
                    reason: "FieldValueNotSupported",
                    field: "spec.ipFamilyPolicy".into(),
                    message: format!(
                        "Unsupported value: {p:?}: supported values: \"PreferDualStack\", \"RequireDualStack\", \"SingleStack\""
                    ),
                });
                return Err(causes);
            }
        },
        None => match old_policy {
            Some(p) => p,
            None if headless && !has_selector(svc) => Policy::RequireDualStack,
            None => Policy::SingleStack,
        },
    };

    // The fields' own shape (upstream's ValidateServiceClusterIPsRelatedFields).
    let mut families: Vec<Family> = Vec::new();
    for (i, f) in families_raw.iter().enumerate() {
        match Family::parse(f) {
            Some(fam) if families.contains(&fam) => causes.push(Cause {
                reason: "FieldValueDuplicate",
                field: format!("spec.ipFamilies[{i}]"),
                message: format!("Duplicate value: {f:?}"),
            }),
            Some(fam) => families.push(fam),
            None => causes.push(Cause {
                reason: "FieldValueNotSupported",
                field: format!("spec.ipFamilies[{i}]"),
                message: format!("Unsupported value: {f:?}: supported values: \"IPv4\", \"IPv6\""),
            }),
        }
    }
    if families_raw.len() > 2 {
        causes.push(Cause {
            reason: "FieldValueTooMany",
            field: "spec.ipFamilies".into(),
            message: format!(
                "Too many: {}: must have at most 2 items",
                families_raw.len()
            ),
        });
    }
    if ips.len() > 2 {
        causes.push(Cause {
            reason: "FieldValueTooMany",
            field: "spec.clusterIPs".into(),
            message: format!("Too many: {}: must have at most 2 items", ips.len()),
        });
    }
    let mut parsed: Vec<IpAddr> = Vec::new();
    for (i, s) in ips.iter().enumerate() {
        if i == 0 && s == "None" {
            continue;
        }
        if s == "None" || (headless && i > 0) {
            causes.push(Cause::invalid(
                format!("spec.clusterIPs[{i}]"),
                s,
                "must be empty when the first value is 'None'",
            ));
            continue;
        }
        match s.parse::<IpAddr>() {
            Ok(a) => {
                if parsed.iter().any(|p| Family::of(*p) == Family::of(a)) {
                    causes.push(Cause::invalid(
                        "spec.clusterIPs",
                        &ips,
                        "may specify no more than one IP for each IP family",
                    ));
                }
                if let Some(f) = families.get(i)
                    && *f != Family::of(a)
                {
                    causes.push(Cause::invalid(
                        format!("spec.ipFamilies[{i}]"),
                        f.name(),
                        format!("must match the family of clusterIPs[{i}]"),
                    ));
                }
                parsed.push(a);
            }
            Err(_) => causes.push(Cause::invalid(
                format!("spec.clusterIPs[{i}]"),
                s,
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            )),
        }
    }
    if !causes.is_empty() {
        return Err(causes);
    }

    // Update rules: the primary address and family never change; dropping the secondary
    // needs SingleStack said explicitly.
    if let Some(old) = old {
        let old_headless = spec_str(old, "clusterIP").as_deref() == Some("None");
        if policy == Policy::SingleStack {
            if ips == old_ips && ips.len() > 1 {
                ips.truncate(1);
                parsed.truncate(1);
            }
            if families_raw == old_families && families.len() > 1 {
                families.truncate(1);
            }
        } else {
            if ips.len() < old_ips.len() {
                causes.push(Cause::invalid(
                    "spec.ipFamilyPolicy",
                    policy.name(),
                    "must be 'SingleStack' to release the secondary cluster IP",
                ));
            }
            if families.len() < old_families.len() {
                causes.push(Cause::invalid(
                    "spec.ipFamilyPolicy",
                    policy.name(),
                    "must be 'SingleStack' to release the secondary IP family",
                ));
            }
        }
        if !(headless && old_headless) {
            for (i, (a, b)) in old_ips.iter().zip(ips.iter()).enumerate() {
                if a != b {
                    causes.push(Cause::invalid(
                        format!("spec.clusterIPs[{i}]"),
                        &ips,
                        "may not change once set",
                    ));
                }
            }
            if let (Some(a), Some(b)) = (old_families.first(), families.first())
                && a != b.name()
            {
                causes.push(Cause::invalid(
                    "spec.ipFamilies[0]",
                    b.name(),
                    "may not change once set",
                ));
            }
        }
    }

    if policy == Policy::SingleStack {
        if ips.len() == 2 {
            causes.push(Cause::invalid(
                "spec.ipFamilyPolicy",
                policy.name(),
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified",
            ));
        }
        if families.len() == 2 {
            causes.push(Cause::invalid(
                "spec.ipFamilyPolicy",
                policy.name(),
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified",
            ));
        }
    }
    // Families follow the addresses asked for.
    for (i, a) in parsed.iter().enumerate() {
        let fam = Family::of(*a);
        if i >= families.len() {
            if cidrs.get(fam).is_none() {
                causes.push(Cause::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    &ips,
                    format!("{} is not configured on this cluster", fam.name()),
                ));
            } else {
                families.push(fam);
            }
        }
    }
    if !causes.is_empty() {
        return Err(causes);
    }

    // Headless without a selector may have families the cluster lacks (its endpoints come
    // from elsewhere).
    if headless && !has_selector(svc) {
        if families.is_empty() {
            families.push(cidrs.primary_family());
        }
        if families.len() < 2 && policy != Policy::SingleStack {
            families.push(families[0].other());
        }
        write_back(svc, "None", &["None".into()], &names(&families), policy);
        return Ok(Plan::Headless);
    }

    if policy == Policy::RequireDualStack && !cidrs.is_dual() {
        causes.push(Cause::invalid(
            "spec.ipFamilyPolicy",
            policy.name(),
            "this cluster is not configured for dual-stack services",
        ));
    }
    for (i, f) in families.iter().enumerate() {
        if cidrs.get(*f).is_none() {
            causes.push(Cause::invalid(
                format!("spec.ipFamilies[{i}]"),
                f.name(),
                "not configured on this cluster",
            ));
        }
    }
    if !causes.is_empty() {
        return Err(causes);
    }
    if families.is_empty() {
        families.push(cidrs.primary_family());
    }
    if policy != Policy::SingleStack && families.len() == 1 && cidrs.is_dual() {
        families.push(families[0].other());
    }
    if headless {
        write_back(svc, "None", &["None".into()], &names(&families), policy);
        return Ok(Plan::Headless);
    }
    write_back(svc, &ip, &ips, &names(&families), policy);
    Ok(Plan::Ips(
        families
            .iter()
            .enumerate()
            .map(|(i, f)| (*f, parsed.get(i).copied()))
            .collect(),
    ))
}

fn names(families: &[Family]) -> Vec<String> {
    families.iter().map(|f| f.name().to_string()).collect()
}

fn plan_of(ips: &[String], families: &[String]) -> Plan {
    if ips.first().map(String::as_str) == Some("None") {
        return Plan::Headless;
    }
    Plan::Ips(
        families
            .iter()
            .enumerate()
            .filter_map(|(i, f)| Some((Family::parse(f)?, ips.get(i).and_then(|s| s.parse().ok()))))
            .collect(),
    )
}

fn write_back(svc: &mut Value, ip: &str, ips: &[String], families: &[String], policy: Policy) {
    let spec = &mut svc["spec"];
    if ip.is_empty() {
        if let Some(m) = spec.as_object_mut() {
            m.remove("clusterIP");
            m.remove("clusterIPs");
        }
    } else {
        spec["clusterIP"] = json!(ip);
        spec["clusterIPs"] = json!(ips);
    }
    spec["ipFamilies"] = json!(families);
    spec["ipFamilyPolicy"] = json!(policy.name());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4() -> ServiceCidrs {
        "10.96.0.0/12".parse().unwrap()
    }
    fn v6() -> ServiceCidrs {
        "fd00:96::/112".parse().unwrap()
    }
    fn v4v6() -> ServiceCidrs {
        "10.96.0.0/12,fd00:96::/112".parse().unwrap()
    }
    fn v6v4() -> ServiceCidrs {
        "fd00:96::/112,10.96.0.0/12".parse().unwrap()
    }

    fn svc(spec: Value) -> Value {
        let mut spec = spec;
        if spec.get("ports").is_none() {
            spec["ports"] = json!([{"port": 80}]);
        }
        json!({"metadata": {"name": "s", "namespace": "ns"}, "spec": spec})
    }

    fn fams(v: &Value) -> Vec<String> {
        strings(meta::at(v, &["spec", "ipFamilies"])).unwrap_or_default()
    }

    fn policy(v: &Value) -> String {
        spec_str(v, "ipFamilyPolicy").unwrap_or_default()
    }

    fn ok(cidrs: &ServiceCidrs, old: Option<&Value>, spec: Value) -> (Value, Plan) {
        let mut s = svc(spec);
        let plan = resolve(cidrs, old, &mut s).unwrap_or_else(|e| panic!("{e:?}"));
        (s, plan)
    }

    fn err(cidrs: &ServiceCidrs, old: Option<&Value>, spec: Value) -> Vec<Cause> {
        let mut s = svc(spec);
        resolve(cidrs, old, &mut s).expect_err("refused")
    }

    fn has(causes: &[Cause], field: &str, text: &str) -> bool {
        causes
            .iter()
            .any(|c| c.field == field && c.message.contains(text))
    }

    #[test]
    fn ranges_parse_one_or_two_of_different_families_and_the_first_is_primary() {
        let d = v6v4();
        assert_eq!(d.primary_family(), Family::V6);
        assert_eq!(d.get(Family::V4), Some("10.96.0.0/12".parse().unwrap()));
        assert_eq!(d.to_string(), "fd00:96::/112,10.96.0.0/12");
        assert!(!v4().is_dual());
        assert!(matches!(
            "10.96.0.0/12,10.97.0.0/16".parse::<ServiceCidrs>(),
            Err(CidrError::SameFamily(..))
        ));
        assert!(matches!(
            "10.96.0.0/12,fd00::/112,fd01::/112".parse::<ServiceCidrs>(),
            Err(CidrError::TooMany(3))
        ));
        assert!(matches!(
            "10.96.0.0/30".parse::<ServiceCidrs>(),
            Err(CidrError::TooSmall(_))
        ));
        assert!("nonsense".parse::<ServiceCidrs>().is_err());
        assert_eq!(v6().first_host(), "fd00:96::1".parse::<IpAddr>().unwrap());
        assert_eq!(v4().first_host(), "10.96.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn no_policy_means_single_stack_of_the_primary_family() {
        let (s, plan) = ok(&v4v6(), None, json!({}));
        assert_eq!(fams(&s), ["IPv4"]);
        assert_eq!(policy(&s), "SingleStack");
        assert_eq!(plan, Plan::Ips(vec![(Family::V4, None)]));
        let (s, _) = ok(&v6v4(), None, json!({}));
        assert_eq!(fams(&s), ["IPv6"]);
    }

    #[test]
    fn prefer_dual_stack_gets_both_families_on_a_dual_cluster_and_one_on_a_single() {
        let (s, plan) = ok(&v4v6(), None, json!({"ipFamilyPolicy": "PreferDualStack"}));
        assert_eq!(fams(&s), ["IPv4", "IPv6"]);
        assert_eq!(
            plan,
            Plan::Ips(vec![(Family::V4, None), (Family::V6, None)])
        );
        let (s, _) = ok(&v6v4(), None, json!({"ipFamilyPolicy": "PreferDualStack"}));
        assert_eq!(fams(&s), ["IPv6", "IPv4"]);
        // Asking for IPv6 first on a v4-primary cluster makes IPv6 primary.
        let (s, _) = ok(
            &v4v6(),
            None,
            json!({"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv6"]}),
        );
        assert_eq!(fams(&s), ["IPv6", "IPv4"]);
        let (s, plan) = ok(&v4(), None, json!({"ipFamilyPolicy": "PreferDualStack"}));
        assert_eq!(fams(&s), ["IPv4"]);
        assert_eq!(plan, Plan::Ips(vec![(Family::V4, None)]));
    }

    #[test]
    fn require_dual_stack_on_a_single_stack_cluster_is_refused_with_upstreams_message() {
        let e = err(&v4(), None, json!({"ipFamilyPolicy": "RequireDualStack"}));
        assert!(has(
            &e,
            "spec.ipFamilyPolicy",
            "Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services"
        ));
        let (s, _) = ok(&v4v6(), None, json!({"ipFamilyPolicy": "RequireDualStack"}));
        assert_eq!(fams(&s), ["IPv4", "IPv6"]);
    }

    #[test]
    fn a_family_the_cluster_lacks_is_refused() {
        let e = err(&v4(), None, json!({"ipFamilies": ["IPv6"]}));
        assert!(has(
            &e,
            "spec.ipFamilies[0]",
            "not configured on this cluster"
        ));
        let e = err(&v4(), None, json!({"clusterIP": "fd00:96::5"}));
        assert!(has(
            &e,
            "spec.clusterIPs[0]",
            "IPv6 is not configured on this cluster"
        ));
    }

    #[test]
    fn families_follow_the_cluster_ips_asked_for() {
        let (s, plan) = ok(
            &v4v6(),
            None,
            json!({"clusterIPs": ["fd00:96::20", "10.96.0.20"], "ipFamilyPolicy": "RequireDualStack"}),
        );
        assert_eq!(fams(&s), ["IPv6", "IPv4"]);
        assert_eq!(spec_str(&s, "clusterIP").as_deref(), Some("fd00:96::20"));
        assert_eq!(
            plan,
            Plan::Ips(vec![
                (Family::V6, Some("fd00:96::20".parse().unwrap())),
                (Family::V4, Some("10.96.0.20".parse().unwrap()))
            ])
        );
    }

    #[test]
    fn malformed_family_fields_are_refused_as_upstream_refuses_them() {
        let c = v4v6();
        let e = err(
            &c,
            None,
            json!({"clusterIPs": ["10.96.0.20", "fd00:96::20"], "ipFamilyPolicy": "SingleStack"}),
        );
        assert!(has(
            &e,
            "spec.ipFamilyPolicy",
            "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified"
        ));
        let e = err(
            &c,
            None,
            json!({"ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "SingleStack"}),
        );
        assert!(has(&e, "spec.ipFamilyPolicy", "when multiple IP families"));
        let e = err(&c, None, json!({"ipFamilies": ["IPv4", "IPv4"]}));
        assert!(e.iter().any(|c| c.reason == "FieldValueDuplicate"));
        let e = err(&c, None, json!({"ipFamilies": ["IPv5"]}));
        assert!(e.iter().any(|c| c.reason == "FieldValueNotSupported"));
        let e = err(&c, None, json!({"ipFamilyPolicy": "Sometimes"}));
        assert!(has(&e, "spec.ipFamilyPolicy", "Unsupported value"));
        let e = err(
            &c,
            None,
            json!({"clusterIPs": ["10.96.0.20", "10.96.0.21"], "ipFamilyPolicy": "PreferDualStack"}),
        );
        assert!(has(
            &e,
            "spec.clusterIPs",
            "no more than one IP for each IP family"
        ));
        let e = err(
            &c,
            None,
            json!({"clusterIPs": ["10.96.0.20"], "ipFamilies": ["IPv6"]}),
        );
        assert!(has(
            &e,
            "spec.ipFamilies[0]",
            "must match the family of clusterIPs[0]"
        ));
        let e = err(
            &c,
            None,
            json!({"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.21"]}),
        );
        assert!(has(&e, "spec.clusterIPs[0]", "must match `clusterIP`"));
        let e = err(&c, None, json!({"clusterIP": "banana"}));
        assert!(has(&e, "spec.clusterIPs[0]", "must be a valid IP address"));
    }

    #[test]
    fn headless_services_get_families_and_selectorless_ones_default_to_both() {
        // Headless with a selector: as any Service, no addresses.
        let (s, plan) = ok(
            &v4v6(),
            None,
            json!({"clusterIP": "None", "selector": {"app": "a"}}),
        );
        assert_eq!(plan, Plan::Headless);
        assert_eq!(fams(&s), ["IPv4"]);
        assert_eq!(policy(&s), "SingleStack");
        assert_eq!(
            meta::at(&s, &["spec", "clusterIPs"]),
            Some(&json!(["None"]))
        );
        let (s, _) = ok(
            &v4v6(),
            None,
            json!({"clusterIP": "None", "selector": {"app": "a"}, "ipFamilyPolicy": "PreferDualStack"}),
        );
        assert_eq!(fams(&s), ["IPv4", "IPv6"]);
        // Selectorless headless: RequireDualStack and both families, even single-stack.
        let (s, plan) = ok(&v4(), None, json!({"clusterIP": "None"}));
        assert_eq!(plan, Plan::Headless);
        assert_eq!(policy(&s), "RequireDualStack");
        assert_eq!(fams(&s), ["IPv4", "IPv6"]);
        // With a selector, RequireDualStack on a single-stack cluster is refused.
        let e = err(
            &v4(),
            None,
            json!({"clusterIP": "None", "selector": {"app": "a"}, "ipFamilyPolicy": "RequireDualStack"}),
        );
        assert!(has(
            &e,
            "spec.ipFamilyPolicy",
            "not configured for dual-stack"
        ));
    }

    #[test]
    fn external_name_services_have_no_families() {
        let (s, plan) = ok(
            &v4v6(),
            None,
            json!({"type": "ExternalName", "externalName": "x.example", "ipFamilyPolicy": "PreferDualStack"}),
        );
        assert_eq!(plan, Plan::None);
        assert!(meta::at(&s, &["spec", "ipFamilyPolicy"]).is_none());
        assert!(meta::at(&s, &["spec", "ipFamilies"]).is_none());
    }

    fn stored(spec: Value) -> Value {
        svc(spec)
    }

    #[test]
    fn an_update_may_add_the_secondary_family_but_never_change_the_primary() {
        let c = v4v6();
        let old = stored(
            json!({"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                                "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack"}),
        );
        // Upgrade: PreferDualStack adds IPv6, to be allocated.
        let (s, plan) = ok(
            &c,
            Some(&old),
            json!({"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                   "ipFamilies": ["IPv4"], "ipFamilyPolicy": "PreferDualStack"}),
        );
        assert_eq!(fams(&s), ["IPv4", "IPv6"]);
        assert_eq!(
            plan,
            Plan::Ips(vec![
                (Family::V4, Some("10.96.0.20".parse().unwrap())),
                (Family::V6, None)
            ])
        );
        // An update that leaves the fields out keeps them.
        let (s, plan) = ok(&c, Some(&old), json!({}));
        assert_eq!(fams(&s), ["IPv4"]);
        assert_eq!(spec_str(&s, "clusterIP").as_deref(), Some("10.96.0.20"));
        assert_eq!(
            plan,
            Plan::Ips(vec![(Family::V4, Some("10.96.0.20".parse().unwrap()))])
        );
        // The primary family cannot change.
        let e = err(
            &c,
            Some(&old),
            json!({"clusterIPs": ["fd00:96::20"], "ipFamilies": ["IPv6"]}),
        );
        assert!(has(&e, "spec.clusterIPs[0]", "may not change once set"));
    }

    #[test]
    fn dropping_the_secondary_family_needs_single_stack_said_explicitly() {
        let c = v4v6();
        let old = stored(
            json!({"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00:96::20"],
                                "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack"}),
        );
        let e = err(
            &c,
            Some(&old),
            json!({"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ipFamilies": ["IPv4"],
                   "ipFamilyPolicy": "RequireDualStack"}),
        );
        assert!(has(
            &e,
            "spec.ipFamilyPolicy",
            "must be 'SingleStack' to release the secondary cluster IP"
        ));
        // SingleStack with the fields unchanged: trimmed to the primary.
        let (s, plan) = ok(
            &c,
            Some(&old),
            json!({"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00:96::20"],
                   "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "SingleStack"}),
        );
        assert_eq!(fams(&s), ["IPv4"]);
        assert_eq!(
            meta::at(&s, &["spec", "clusterIPs"]),
            Some(&json!(["10.96.0.20"]))
        );
        assert_eq!(
            plan,
            Plan::Ips(vec![(Family::V4, Some("10.96.0.20".parse().unwrap()))])
        );
    }

    #[test]
    fn a_prefer_dual_stack_service_is_not_upgraded_by_a_cluster_becoming_dual_stack() {
        // Created single-stack while the cluster had only IPv4; now the cluster has both.
        let old = stored(
            json!({"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                                "ipFamilies": ["IPv4"], "ipFamilyPolicy": "PreferDualStack"}),
        );
        let (s, plan) = ok(
            &v4v6(),
            Some(&old),
            json!({"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                   "ipFamilies": ["IPv4"], "ipFamilyPolicy": "PreferDualStack"}),
        );
        assert_eq!(fams(&s), ["IPv4"]);
        assert_eq!(
            plan,
            Plan::Ips(vec![(Family::V4, Some("10.96.0.20".parse().unwrap()))])
        );
    }
}
