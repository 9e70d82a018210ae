//! The JSONPath subset that CustomResourceDefinitions' `additionalPrinterColumns` use (as
//! kubectl's `-o jsonpath` reads it): parsed once into [`Step`]s, then evaluated against each
//! object.

use serde_json::Value;

/// One step of a JSONPath.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// `.name`, `['name']`.
    Field(String),
    /// `[2]`, `[-1]`.
    Index(i64),
    /// `[*]`, `.*`.
    All,
    /// `[?(@.type=="Ready")]`, `[?(@.ready)]`.
    Filter(Filter),
}

/// A filter `[?(@.path <cmp> literal)]`: the items of a list that pass it.
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    path: Vec<String>,
    /// The comparison; existence of the path without one.
    test: Option<(Cmp, Value)>,
}

/// A filter's comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Parses the JSONPath subset printer columns use: `.a.b`, `['a.b']`, `[0]`, `[-1]`, `[*]`,
/// `.*`, and filters `[?(@.a.b == "x")]` (`==`, `!=`, `<`, `<=`, `>`, `>=`, or existence).
/// `None` for anything else (recursive descent, slices, unions).
pub fn parse(src: &str) -> Option<Vec<Step>> {
    let mut s = src.trim();
    if let Some(inner) = s.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
        s = inner.trim();
    }
    s = s.strip_prefix('$').unwrap_or(s);
    let owned;
    if !s.is_empty() && !s.starts_with(['.', '[']) {
        owned = format!(".{s}");
        s = &owned;
    }
    let chars: Vec<char> = s.chars().collect();
    let mut steps = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '.' => {
                i += 1;
                match chars.get(i) {
                    None => break,
                    Some('.') => return None,
                    Some('*') => {
                        steps.push(Step::All);
                        i += 1;
                    }
                    Some('[') => {}
                    Some(_) => {
                        let start = i;
                        while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                            i += 1;
                        }
                        steps.push(Step::Field(chars[start..i].iter().collect()));
                    }
                }
            }
            '[' => {
                let end = closing_bracket(&chars, i)?;
                let inner: String = chars[i + 1..end].iter().collect();
                steps.push(parse_bracket(inner.trim())?);
                i = end + 1;
            }
            _ => return None,
        }
    }
    Some(steps)
}

/// The index of the `]` closing the `[` at `open`, skipping quoted strings and parentheses.
fn closing_bracket(chars: &[char], open: usize) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut depth = 0usize;
    for (j, &c) in chars.iter().enumerate().skip(open + 1) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth = depth.saturating_sub(1),
            (None, ']') if depth == 0 => return Some(j),
            _ => {}
        }
    }
    None
}

fn unquote(s: &str) -> Option<&str> {
    s.strip_prefix('\'')
        .and_then(|x| x.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|x| x.strip_suffix('"')))
}

fn parse_bracket(inner: &str) -> Option<Step> {
    if inner == "*" {
        return Some(Step::All);
    }
    if let Some(key) = unquote(inner) {
        return Some(Step::Field(key.to_string()));
    }
    if let Ok(n) = inner.parse::<i64>() {
        return Some(Step::Index(n));
    }
    let expr = inner.strip_prefix('?')?.trim();
    let expr = expr.strip_prefix('(')?.strip_suffix(')')?.trim();
    let rest = expr.strip_prefix('@')?;
    let end = rest
        .find(|c: char| c.is_whitespace() || "=!<>".contains(c))
        .unwrap_or(rest.len());
    let (path, test) = rest.split_at(end);
    let path: Vec<String> = path
        .split('.')
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect();
    let test = test.trim();
    if test.is_empty() {
        return Some(Step::Filter(Filter { path, test: None }));
    }
    let (cmp, literal) = [
        ("==", Cmp::Eq),
        ("!=", Cmp::Ne),
        ("<=", Cmp::Le),
        (">=", Cmp::Ge),
        ("<", Cmp::Lt),
        (">", Cmp::Gt),
    ]
    .into_iter()
    .find_map(|(op, cmp)| test.strip_prefix(op).map(|l| (cmp, l.trim())))?;
    let literal = match unquote(literal) {
        Some(s) => Value::String(s.to_string()),
        None => serde_json::from_str::<Value>(literal).ok()?,
    };
    Some(Step::Filter(Filter {
        path,
        test: Some((cmp, literal)),
    }))
}

impl Filter {
    fn matches(&self, item: &Value) -> bool {
        let steps: Vec<&str> = self.path.iter().map(String::as_str).collect();
        let Some(v) = crate::meta::at(item, &steps).filter(|v| !v.is_null()) else {
            return false;
        };
        let Some((cmp, literal)) = &self.test else {
            return true;
        };
        let order = match (v, literal) {
            (Value::Number(a), Value::Number(b)) => a
                .as_f64()
                .zip(b.as_f64())
                .and_then(|(a, b)| a.partial_cmp(&b)),
            (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
            (a, b) if a == b => Some(std::cmp::Ordering::Equal),
            _ => None,
        };
        use std::cmp::Ordering::*;
        match (cmp, order) {
            (Cmp::Ne, None) => true,
            (_, None) => false,
            (Cmp::Eq, Some(o)) => o == Equal,
            (Cmp::Ne, Some(o)) => o != Equal,
            (Cmp::Lt, Some(o)) => o == Less,
            (Cmp::Le, Some(o)) => o != Greater,
            (Cmp::Gt, Some(o)) => o == Greater,
            (Cmp::Ge, Some(o)) => o != Less,
        }
    }
}

/// Every value the path reaches, in document order.
pub fn eval<'a>(root: &'a Value, steps: &[Step]) -> Vec<&'a Value> {
    let mut current = vec![root];
    for step in steps {
        let mut next = Vec::new();
        for v in current {
            match (step, v) {
                (Step::Field(k), Value::Object(m)) => next.extend(m.get(k)),
                (Step::Index(n), Value::Array(a)) => {
                    let index = if *n < 0 {
                        i64::try_from(a.len()).ok().and_then(|l| l.checked_add(*n))
                    } else {
                        Some(*n)
                    };
                    if let Some(x) = index
                        .and_then(|i| usize::try_from(i).ok())
                        .and_then(|i| a.get(i))
                    {
                        next.push(x);
                    }
                }
                (Step::All, Value::Array(a)) => next.extend(a),
                (Step::All, Value::Object(m)) => next.extend(m.values()),
                (Step::Filter(f), Value::Array(a)) => {
                    next.extend(a.iter().filter(|x| f.matches(x)))
                }
                _ => {}
            }
        }
        current = next;
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_paths() {
        let doc = json!({
            "metadata": {"labels": {"app.kubernetes.io/name": "web"}},
            "spec": {"replicas": 3, "items": [{"n": 1, "ok": true}, {"n": 5}, {"n": 9, "ok": false}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        });
        let first = |path: &str| {
            parse(path).and_then(|steps| eval(&doc, &steps).into_iter().next().cloned())
        };
        assert_eq!(first(".spec.replicas"), Some(json!(3)));
        assert_eq!(first("{.spec.replicas}"), Some(json!(3)));
        assert_eq!(first("$.spec.replicas"), Some(json!(3)));
        assert_eq!(first("spec.replicas"), Some(json!(3)));
        assert_eq!(
            first(".metadata.labels['app.kubernetes.io/name']"),
            Some(json!("web"))
        );
        assert_eq!(
            first(r#".metadata.labels["app.kubernetes.io/name"]"#),
            Some(json!("web"))
        );
        assert_eq!(first(".spec.items[1].n"), Some(json!(5)));
        assert_eq!(first(".spec.items[-1].n"), Some(json!(9)));
        assert_eq!(first(".spec.items[7].n"), None);
        assert_eq!(first(".spec.items[-7].n"), None);
        assert_eq!(first(".spec.items[*].n"), Some(json!(1)));
        assert_eq!(first(".spec.items[?(@.n > 4)].n"), Some(json!(5)));
        assert_eq!(first(".spec.items[?(@.n >= 9)].n"), Some(json!(9)));
        assert_eq!(first(".spec.items[?(@.n<2)].n"), Some(json!(1)));
        assert_eq!(first(".spec.items[?(@.n != 1)].n"), Some(json!(5)));
        assert_eq!(first(".spec.items[?(@.ok)].n"), Some(json!(1)));
        assert_eq!(first(".spec.items[?(@.ok == false)].n"), Some(json!(9)));
        assert_eq!(
            first(r#".status.conditions[?(@.type=='Ready')].status"#),
            Some(json!("True"))
        );
        assert_eq!(
            first(".status.*"),
            doc["status"]["conditions"].clone().into()
        );
        assert_eq!(first(".spec.replicas.deeper"), None);
        assert_eq!(first("..n"), None);
        assert_eq!(first(".spec.items[1:2]"), None);
        assert_eq!(first(".spec.items[?(@.n == bare)]"), None);
        assert_eq!(first(".spec.items[0"), None);
        assert_eq!(first(""), Some(doc.clone()));
    }
}
