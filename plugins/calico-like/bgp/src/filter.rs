//! Prefix filters: what a peer may give us (import) and what we give it (export).
//!
//! A filter is an ordered list of rules; the first rule that matches a prefix decides, and a
//! prefix no rule matches falls to the caller's default (import: accept; export: accept our
//! own prefixes only, see [`crate::rib::PeerInfo`]). A rule matches a prefix that lies inside
//! its `prefix` with a length between `min_len` and `max_len`, as BIRD's `net ~ [ p{min,max} ]`
//! and prefix lists' `ge`/`le` do.

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;

/// What a rule does with a prefix it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Take it (import) or send it (export).
    Accept,
    /// Drop it.
    Reject,
}

/// One rule. Build it with [`PrefixRule::new`] (or parse `accept 10.0.0.0/8 ge 24 le 32`),
/// which keeps the lengths within the family and `min_len <= max_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixRule {
    verdict: Verdict,
    prefix: IpNet,
    min_len: u8,
    max_len: u8,
}

/// Why a rule is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// Not `accept|reject PREFIX [ge N] [le N]`.
    #[error("{0:?}: expected `accept|reject PREFIX [ge N] [le N]`")]
    Syntax(String),
    /// The prefix does not parse.
    #[error("{0:?} is not a prefix")]
    Prefix(String),
    /// A length outside `prefix length ..= family maximum`, or ge above le.
    #[error("lengths {min}..={max} do not fit {prefix} (its length up to {family_max})")]
    Lengths {
        /// The prefix.
        prefix: IpNet,
        /// The lower bound asked for.
        min: u8,
        /// The upper bound asked for.
        max: u8,
        /// 32 or 128.
        family_max: u8,
    },
}

impl PrefixRule {
    /// A rule for prefixes inside `prefix` with lengths `min_len..=max_len` (`None`: the
    /// prefix's own length and, for `max_len`, `min_len` when given alone as in `ge`-less
    /// prefix lists — that is, exactly `prefix` when both are `None`).
    pub fn new(
        verdict: Verdict,
        prefix: IpNet,
        min_len: Option<u8>,
        max_len: Option<u8>,
    ) -> Result<Self, RuleError> {
        let prefix = prefix.trunc();
        let family_max = prefix.max_prefix_len();
        let min = min_len.unwrap_or(prefix.prefix_len());
        // `ge N` alone means "N or longer"; nothing at all means exactly the prefix.
        let max = match (min_len, max_len) {
            (_, Some(max)) => max,
            (Some(_), None) => family_max,
            (None, None) => prefix.prefix_len(),
        };
        if min < prefix.prefix_len() || max > family_max || min > max {
            return Err(RuleError::Lengths {
                prefix,
                min,
                max,
                family_max,
            });
        }
        Ok(Self {
            verdict,
            prefix,
            min_len: min,
            max_len: max,
        })
    }

    /// What the rule does.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// Whether `candidate` lies inside the rule's prefix with a length in range.
    pub fn matches(&self, candidate: &IpNet) -> bool {
        let len = candidate.prefix_len();
        (self.min_len..=self.max_len).contains(&len)
            && self.prefix.contains(&candidate.network())
            && len >= self.prefix.prefix_len()
            && candidate.addr().is_ipv4() == self.prefix.addr().is_ipv4()
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Accept => "accept",
            Self::Reject => "reject",
        })
    }
}

impl fmt::Display for PrefixRule {
    /// `accept 10.0.0.0/8 ge 24 le 32`, or `reject 0.0.0.0/0` for an exact match.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.verdict, self.prefix)?;
        if (self.min_len, self.max_len) != (self.prefix.prefix_len(), self.prefix.prefix_len()) {
            write!(f, " ge {} le {}", self.min_len, self.max_len)?;
        }
        Ok(())
    }
}

impl FromStr for PrefixRule {
    type Err = RuleError;

    /// `accept|reject PREFIX [ge N] [le N]`.
    fn from_str(s: &str) -> Result<Self, RuleError> {
        let syntax = || RuleError::Syntax(s.to_string());
        let words: Vec<&str> = s.split_whitespace().collect();
        let (verdict, prefix, rest) = match words.as_slice() {
            [v, p, rest @ ..] => (*v, *p, rest),
            _ => return Err(syntax()),
        };
        let verdict = match verdict.to_ascii_lowercase().as_str() {
            "accept" => Verdict::Accept,
            "reject" => Verdict::Reject,
            _ => return Err(syntax()),
        };
        let prefix: IpNet = prefix
            .parse()
            .map_err(|_| RuleError::Prefix(prefix.to_string()))?;
        let (mut ge, mut le) = (None, None);
        let mut rest = rest.iter();
        while let Some(word) = rest.next() {
            let value: u8 = rest
                .next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(syntax)?;
            match *word {
                "ge" if ge.is_none() => ge = Some(value),
                "le" if le.is_none() => le = Some(value),
                _ => return Err(syntax()),
            }
        }
        PrefixRule::new(verdict, prefix, ge, le)
    }
}

/// An ordered list of rules: the first match decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixFilter {
    rules: Vec<PrefixRule>,
}

impl PrefixFilter {
    /// A filter of these rules, in order.
    pub fn new(rules: Vec<PrefixRule>) -> Self {
        Self { rules }
    }

    /// The rules.
    pub fn rules(&self) -> &[PrefixRule] {
        &self.rules
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The verdict of the first rule matching `prefix`, if any does.
    pub fn decide(&self, prefix: &IpNet) -> Option<Verdict> {
        self.rules
            .iter()
            .find(|r| r.matches(prefix))
            .map(PrefixRule::verdict)
    }
}

/// Whether `prefix` is a default route (`0.0.0.0/0` or `::/0`).
pub fn is_default_route(prefix: &IpNet) -> bool {
    prefix.prefix_len() == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("prefix")
    }

    fn rule(s: &str) -> PrefixRule {
        s.parse().expect("rule")
    }

    #[test]
    fn a_bare_prefix_matches_itself_only() {
        let r = rule("reject 0.0.0.0/0");
        assert!(r.matches(&net("0.0.0.0/0")));
        assert!(!r.matches(&net("10.0.0.0/8")));
        assert!(!r.matches(&net("::/0")), "families never mix");
        assert_eq!(r.to_string(), "reject 0.0.0.0/0");
    }

    #[test]
    fn ge_and_le_bound_the_length_inside_the_prefix() {
        let r = rule("accept 10.244.0.0/16 ge 24 le 26");
        assert!(r.matches(&net("10.244.3.0/24")));
        assert!(r.matches(&net("10.244.3.64/26")));
        assert!(!r.matches(&net("10.244.0.0/16")), "too short");
        assert!(!r.matches(&net("10.244.3.1/32")), "too long");
        assert!(!r.matches(&net("10.245.3.0/24")), "outside");
        assert_eq!(r.to_string(), "accept 10.244.0.0/16 ge 24 le 26");
        // ge alone: that length or longer; le alone: from the prefix's own length.
        assert!(rule("accept 10.0.0.0/8 ge 30").matches(&net("10.1.2.3/32")));
        assert!(rule("accept 10.0.0.0/8 le 16").matches(&net("10.0.0.0/8")));
        assert!(!rule("accept 10.0.0.0/8 le 16").matches(&net("10.1.2.0/24")));
        assert!(rule("accept fd00::/8 ge 64").matches(&net("fd00:1::/80")));
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        for bad in [
            "",
            "accept",
            "allow 10.0.0.0/8",
            "accept 10.0.0.0/8 ge",
            "accept 10.0.0.0/8 ge x",
            "accept 10.0.0.0/8 ge 9 ge 10",
            "accept 10.0.0.0/8 eq 9",
        ] {
            assert!(
                matches!(bad.parse::<PrefixRule>(), Err(RuleError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "accept 10.0.0.0/33".parse::<PrefixRule>(),
            Err(RuleError::Prefix(_))
        ));
        for bad in [
            "accept 10.0.0.0/8 ge 4",
            "accept 10.0.0.0/8 le 33",
            "accept 10.0.0.0/8 ge 24 le 16",
        ] {
            assert!(
                matches!(bad.parse::<PrefixRule>(), Err(RuleError::Lengths { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let f = PrefixFilter::new(vec![
            rule("reject 10.244.9.0/24"),
            rule("accept 10.244.0.0/16 ge 16 le 32"),
        ]);
        assert_eq!(f.decide(&net("10.244.9.0/24")), Some(Verdict::Reject));
        assert_eq!(f.decide(&net("10.244.8.0/24")), Some(Verdict::Accept));
        assert_eq!(f.decide(&net("192.168.0.0/24")), None);
        assert!(is_default_route(&net("0.0.0.0/0")) && is_default_route(&net("::/0")));
        assert!(!is_default_route(&net("0.0.0.0/1")));
    }
}
