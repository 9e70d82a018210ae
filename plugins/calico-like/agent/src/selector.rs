//! Calico's label selectors, as `BGPPeer`'s `nodeSelector` and `peerSelector` take them:
//! `all()`, `has(k)`, `!has(k)`, `k == 'v'`, `k != 'v'`, `k in {'a', 'b'}`, `k not in {…}`,
//! joined with `&&` and `||` (`&&` binds tighter), `!` before a term, and parentheses.
//! Values are quoted with `'` or `"`.

use std::collections::BTreeMap;
use std::fmt;

/// A parsed selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    text: String,
    expr: Expr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    All,
    Has(String),
    Eq(String, String),
    In(String, Vec<String>),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

/// Why a selector could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector {text:?}: {reason} at byte {at}")]
pub struct SelectorError {
    text: String,
    reason: &'static str,
    at: usize,
}

impl Selector {
    /// Parses `text`; an empty selector (or only blanks) matches nothing, as in Calico.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let mut p = Parser {
            text,
            pos: 0,
            depth: 0,
        };
        p.blanks();
        let expr = if p.pos == text.len() {
            Expr::Or(Vec::new())
        } else {
            let e = p.or()?;
            p.blanks();
            if p.pos != text.len() {
                return Err(p.error("unexpected text"));
            }
            e
        };
        Ok(Selector {
            text: text.to_string(),
            expr,
        })
    }

    /// Whether an object with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        eval(&self.expr, labels)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn eval(e: &Expr, labels: &BTreeMap<String, String>) -> bool {
    match e {
        Expr::All => true,
        Expr::Has(k) => labels.contains_key(k),
        Expr::Eq(k, v) => labels.get(k) == Some(v),
        Expr::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
        Expr::Not(e) => !eval(e, labels),
        Expr::And(es) => es.iter().all(|e| eval(e, labels)),
        Expr::Or(es) => es.iter().any(|e| eval(e, labels)),
    }
}

/// Nesting deeper than this is refused (a selector is user input).
const MAX_DEPTH: usize = 32;

struct Parser<'a> {
    text: &'a str,
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn error(&self, reason: &'static str) -> SelectorError {
        SelectorError {
            text: self.text.to_string(),
            reason,
            at: self.pos,
        }
    }

    fn rest(&self) -> &str {
        self.text.get(self.pos..).unwrap_or("")
    }

    fn blanks(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    /// Takes `token` (after blanks) if it comes next.
    fn eat(&mut self, token: &str) -> bool {
        self.blanks();
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: &str, reason: &'static str) -> Result<(), SelectorError> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(self.error(reason))
        }
    }

    fn or(&mut self) -> Result<Expr, SelectorError> {
        let mut terms = vec![self.and()?];
        while self.eat("||") {
            terms.push(self.and()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::Or(terms)
        })
    }

    fn and(&mut self) -> Result<Expr, SelectorError> {
        let mut terms = vec![self.unary()?];
        while self.eat("&&") {
            terms.push(self.unary()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::And(terms)
        })
    }

    fn unary(&mut self) -> Result<Expr, SelectorError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        let e = if self.eat("!") {
            Expr::Not(Box::new(self.unary()?))
        } else if self.eat("(") {
            let e = self.or()?;
            self.expect(")", "expected )")?;
            e
        } else {
            self.term()?
        };
        self.depth -= 1;
        Ok(e)
    }

    fn term(&mut self) -> Result<Expr, SelectorError> {
        if self.eat("all()") {
            return Ok(Expr::All);
        }
        self.blanks();
        if self.rest().starts_with("has(") {
            self.pos += "has(".len();
            let k = self.key()?;
            self.expect(")", "expected ) after has(key")?;
            return Ok(Expr::Has(k));
        }
        let k = self.key()?;
        if self.eat("==") {
            Ok(Expr::Eq(k, self.value()?))
        } else if self.eat("!=") {
            Ok(Expr::Not(Box::new(Expr::Eq(k, self.value()?))))
        } else if self.eat("not") {
            self.blanks();
            self.expect("in", "expected in after not")?;
            Ok(Expr::Not(Box::new(Expr::In(k, self.set()?))))
        } else if self.eat("in") {
            Ok(Expr::In(k, self.set()?))
        } else {
            Err(self.error("expected ==, !=, in or not in"))
        }
    }

    /// A label key: letters, digits, `-`, `_`, `.` and `/`.
    fn key(&mut self) -> Result<String, SelectorError> {
        self.blanks();
        let rest = self.rest();
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
            .unwrap_or(rest.len());
        if len == 0 {
            return Err(self.error("expected a label key"));
        }
        let k = rest[..len].to_string();
        self.pos += len;
        Ok(k)
    }

    fn value(&mut self) -> Result<String, SelectorError> {
        self.blanks();
        let rest = self.rest();
        let Some(quote) = rest.chars().next().filter(|c| matches!(c, '\'' | '"')) else {
            return Err(self.error("expected a quoted value"));
        };
        let Some(end) = rest[1..].find(quote) else {
            return Err(self.error("unterminated value"));
        };
        let v = rest[1..1 + end].to_string();
        self.pos += end + 2;
        Ok(v)
    }

    fn set(&mut self) -> Result<Vec<String>, SelectorError> {
        self.expect("{", "expected {")?;
        let mut values = Vec::new();
        if self.eat("}") {
            return Ok(values);
        }
        loop {
            values.push(self.value()?);
            if self.eat("}") {
                return Ok(values);
            }
            self.expect(",", "expected , or }")?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(s: &str) -> Selector {
        Selector::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn calicos_route_reflector_selectors_read_and_match() {
        let rr = labels(&[("route-reflector", "true"), ("zone", "a")]);
        let plain = labels(&[("zone", "b")]);
        for (s, on_rr, on_plain) in [
            ("all()", true, true),
            ("route-reflector == 'true'", true, false),
            ("route-reflector == \"true\"", true, false),
            ("!has(route-reflector)", false, true),
            ("has(route-reflector)", true, false),
            ("route-reflector != 'true'", false, true),
            ("zone in {'a', 'c'}", true, false),
            ("zone not in {'a'}", false, true),
            ("has(zone) && zone == 'b'", false, true),
            ("zone == 'a' || zone == 'b'", true, true),
            ("!(zone == 'a')", false, true),
            ("  all()  ", true, true),
            ("", false, false),
        ] {
            let s = sel(s);
            assert_eq!(s.matches(&rr), on_rr, "{s} on the reflector");
            assert_eq!(s.matches(&plain), on_plain, "{s} on the other node");
        }
        assert!(
            sel("kubernetes.io/hostname == 'n1'")
                .matches(&labels(&[("kubernetes.io/hostname", "n1")]))
        );
    }

    #[test]
    fn bad_selectors_are_refused_not_guessed() {
        for s in [
            "route-reflector = 'true'",
            "route-reflector == true",
            "route-reflector == 'true",
            "has(route-reflector",
            "zone in {'a' 'b'}",
            "all() &&",
            "(all()",
            "all() all()",
            &"!".repeat(100),
        ] {
            assert!(Selector::parse(s).is_err(), "{s:?} accepted");
        }
    }
}
