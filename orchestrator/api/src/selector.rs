//! Label selectors (apimachinery `pkg/labels`, `metav1.LabelSelector`).
//!
//! Two spellings select the same thing:
//!
//! * the string of `?labelSelector=` and `kubectl -l`: comma-separated requirements, each
//!   `key=value`, `key==value`, `key!=value`, `key in (a,b)`, `key notin (a)`, `key` (exists),
//!   `!key` (does not exist), and the numeric `key>1` / `key<1`;
//! * the JSON object in Deployments, ReplicaSets, NetworkPolicies…: `{"matchLabels": {..},
//!   "matchExpressions": [{"key", "operator": "In|NotIn|Exists|DoesNotExist", "values"}]}`.
//!
//! Both become a [`LabelSelector`], a list of [`Requirement`]s that must all hold. An empty list
//! selects everything. A selector can also select nothing: that is what a *null* `spec.selector`
//! means where Kubernetes converts it with `LabelSelectorAsSelector` (a policy/v1
//! PodDisruptionBudget without selector, for example) — see [`LabelSelector::from_json`].

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;
use thiserror::Error;

use crate::names::{NameError, validate_label_value, validate_qualified_name};

/// Why a label selector was refused. `Display` follows the API server's wording.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SelectorError {
    /// The string does not follow the grammar: `found ',', expected: identifier after ','`.
    #[error("unable to parse requirement: {0}")]
    Syntax(String),
    /// A key that is not a qualified name.
    #[error("key: Invalid value: {key:?}: {source}")]
    InvalidKey {
        key: String,
        #[source]
        source: NameError,
    },
    /// A value that is not a label value.
    #[error("values[{index}]: Invalid value: {value:?}: {source}")]
    InvalidValue {
        index: usize,
        value: String,
        #[source]
        source: NameError,
    },
    /// `in` / `notin` with no value.
    #[error("values: Invalid value: []: for 'in', 'notin' operators, values set can't be empty")]
    EmptyValueSet,
    /// `=`, `==`, `!=` with other than one value.
    #[error("values: Invalid value: {0:?}: exact-match compatibility requires one single value")]
    NotSingleValue(Vec<String>),
    /// `exists` / `!` with values.
    #[error("values: Invalid value: {0:?}: values set must be empty for exists and does not exist")]
    ValuesForExists(Vec<String>),
    /// `>` / `<` with other than one integer.
    #[error("values: Invalid value: {0:?}: for 'Gt', 'Lt' operators, the value must be an integer")]
    NotAnInteger(Vec<String>),
    /// A `matchExpressions` operator other than In, NotIn, Exists, DoesNotExist.
    #[error("{0:?} is not a valid label selector operator")]
    UnknownOperator(String),
    /// The JSON form has the wrong shape (`matchLabels` not an object of strings, …).
    #[error("invalid label selector: {0}")]
    Malformed(String),
}

/// How a requirement compares a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    /// `key=value`: the label exists and equals the value.
    Equals,
    /// `key==value`: the same as `=`.
    DoubleEquals,
    /// `key!=value`: the label is absent or differs.
    NotEquals,
    /// `key in (a,b)`: the label exists and is one of the values.
    In,
    /// `key notin (a,b)`: the label is absent or none of the values.
    NotIn,
    /// `key`: the label exists, whatever its value.
    Exists,
    /// `!key`: the label does not exist.
    DoesNotExist,
    /// `key>n`: the label is an integer greater than n.
    GreaterThan,
    /// `key<n`: the label is an integer less than n.
    LessThan,
}

/// One condition on one label.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    key: String,
    operator: Operator,
    /// Sorted, without duplicates.
    values: Vec<String>,
}

impl Requirement {
    /// Builds a requirement, validating it the way apimachinery's `NewRequirement` does: the key
    /// must be a qualified name, `in`/`notin` need values, `=`/`==`/`!=` exactly one, exists and
    /// does-not-exist none, `>`/`<` one integer; values must be label values.
    pub fn new(
        key: impl Into<String>,
        operator: Operator,
        values: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Requirement, SelectorError> {
        let key = key.into();
        let values: Vec<String> = values.into_iter().map(Into::into).collect();
        validate_qualified_name(&key).map_err(|source| SelectorError::InvalidKey {
            key: key.clone(),
            source,
        })?;
        match operator {
            Operator::In | Operator::NotIn => {
                if values.is_empty() {
                    return Err(SelectorError::EmptyValueSet);
                }
            }
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals => {
                if values.len() != 1 {
                    return Err(SelectorError::NotSingleValue(values));
                }
            }
            Operator::Exists | Operator::DoesNotExist => {
                if !values.is_empty() {
                    return Err(SelectorError::ValuesForExists(values));
                }
            }
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 || values[0].parse::<i64>().is_err() {
                    return Err(SelectorError::NotAnInteger(values));
                }
            }
        }
        if !matches!(operator, Operator::GreaterThan | Operator::LessThan) {
            for (index, value) in values.iter().enumerate() {
                validate_label_value(value).map_err(|source| SelectorError::InvalidValue {
                    index,
                    value: value.clone(),
                    source,
                })?;
            }
        }
        let mut values = values;
        values.sort();
        values.dedup();
        Ok(Requirement {
            key,
            operator,
            values,
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn operator(&self) -> Operator {
        self.operator
    }

    /// The values, sorted and without duplicates.
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// Whether a set of labels satisfies this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let label = labels.get(&self.key);
        match self.operator {
            Operator::Equals | Operator::DoubleEquals | Operator::In => {
                label.is_some_and(|v| self.values.iter().any(|x| x == v))
            }
            Operator::NotEquals | Operator::NotIn => {
                label.is_none_or(|v| !self.values.iter().any(|x| x == v))
            }
            Operator::Exists => label.is_some(),
            Operator::DoesNotExist => label.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(label), Some(wanted)) = (label, self.values.first()) else {
                    return false;
                };
                match (label.parse::<i64>(), wanted.parse::<i64>()) {
                    (Ok(have), Ok(wanted)) => {
                        if self.operator == Operator::GreaterThan {
                            have > wanted
                        } else {
                            have < wanted
                        }
                    }
                    _ => false,
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    /// The canonical string form: `!key`, `key`, `key=v`, `key==v`, `key!=v`,
    /// `key in (a,b)`, `key notin (a,b)`, `key>1`, `key<1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let values = self.values.join(",");
        match self.operator {
            Operator::DoesNotExist => write!(f, "!{}", self.key),
            Operator::Exists => write!(f, "{}", self.key),
            Operator::Equals => write!(f, "{}={values}", self.key),
            Operator::DoubleEquals => write!(f, "{}=={values}", self.key),
            Operator::NotEquals => write!(f, "{}!={values}", self.key),
            Operator::In => write!(f, "{} in ({values})", self.key),
            Operator::NotIn => write!(f, "{} notin ({values})", self.key),
            Operator::GreaterThan => write!(f, "{}>{values}", self.key),
            Operator::LessThan => write!(f, "{}<{values}", self.key),
        }
    }
}

/// A label selector: requirements that must all hold (sorted by key), or "nothing".
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
    nothing: bool,
}

impl LabelSelector {
    /// The selector that matches every object (the empty string, the empty object `{}`).
    pub fn everything() -> LabelSelector {
        LabelSelector::default()
    }

    /// The selector that matches no object (apimachinery `labels.Nothing()`): what a null
    /// `metav1.LabelSelector` converts to. It has no string form; `Display` writes nothing.
    pub fn nothing() -> LabelSelector {
        LabelSelector {
            requirements: Vec::new(),
            nothing: true,
        }
    }

    /// A selector from requirements; they are sorted by key (stable, so requirements on the
    /// same key keep their order).
    pub fn from_requirements(mut requirements: Vec<Requirement>) -> LabelSelector {
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        LabelSelector {
            requirements,
            nothing: false,
        }
    }

    /// `key=value` for every label of a set (apimachinery `SelectorFromValidatedSet`).
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Result<LabelSelector, SelectorError> {
        let requirements = labels
            .iter()
            .map(|(k, v)| Requirement::new(k.clone(), Operator::Equals, [v.clone()]))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LabelSelector::from_requirements(requirements))
    }

    /// Parses the string syntax of `?labelSelector=`. Whitespace around tokens is ignored; the
    /// empty string selects everything.
    pub fn parse(selector: &str) -> Result<LabelSelector, SelectorError> {
        let tokens = lex(selector)?;
        let requirements = Parser {
            tokens,
            position: 0,
        }
        .parse()?;
        Ok(LabelSelector::from_requirements(requirements))
    }

    /// Converts the `metav1.LabelSelector` JSON shape.
    ///
    /// * `null` (or an absent field the caller passes as `Value::Null`) gives `Ok(None)`: *no
    ///   selector*. What that means is the caller's choice and differs between resources: a
    ///   policy/v1 PodDisruptionBudget without selector selects no pod
    ///   ([`LabelSelector::from_json_or_nothing`]); a NetworkPolicy peer without `podSelector`
    ///   does not restrict pods at all (only its `namespaceSelector` counts).
    /// * `{}` (no `matchLabels`, no `matchExpressions`) gives `Some(everything)`.
    /// * otherwise `matchLabels` become `=` requirements and `matchExpressions` become `in`,
    ///   `notin`, exists and does-not-exist requirements.
    pub fn from_json(selector: &Value) -> Result<Option<LabelSelector>, SelectorError> {
        let object = match selector {
            Value::Null => return Ok(None),
            Value::Object(object) => object,
            other => {
                return Err(SelectorError::Malformed(format!(
                    "a label selector must be an object, not {}",
                    json_kind(other)
                )));
            }
        };
        let mut requirements = Vec::new();
        match object.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(labels)) => {
                for (key, value) in labels {
                    let Value::String(value) = value else {
                        return Err(SelectorError::Malformed(format!(
                            "matchLabels[{key:?}] must be a string, not {}",
                            json_kind(value)
                        )));
                    };
                    requirements.push(Requirement::new(
                        key.clone(),
                        Operator::Equals,
                        [value.clone()],
                    )?);
                }
            }
            Some(other) => {
                return Err(SelectorError::Malformed(format!(
                    "matchLabels must be an object, not {}",
                    json_kind(other)
                )));
            }
        }
        match object.get("matchExpressions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(expressions)) => {
                for (i, expression) in expressions.iter().enumerate() {
                    requirements.push(expression_requirement(i, expression)?);
                }
            }
            Some(other) => {
                return Err(SelectorError::Malformed(format!(
                    "matchExpressions must be an array, not {}",
                    json_kind(other)
                )));
            }
        }
        Ok(Some(LabelSelector::from_requirements(requirements)))
    }

    /// Converts the JSON shape the way apimachinery's `LabelSelectorAsSelector` does: `null`
    /// selects nothing, `{}` everything.
    pub fn from_json_or_nothing(selector: &Value) -> Result<LabelSelector, SelectorError> {
        Ok(LabelSelector::from_json(selector)?.unwrap_or_else(LabelSelector::nothing))
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// True when the selector matches every object (no requirement).
    pub fn is_everything(&self) -> bool {
        !self.nothing && self.requirements.is_empty()
    }

    /// True for [`LabelSelector::nothing`].
    pub fn is_nothing(&self) -> bool {
        self.nothing
    }

    /// Whether a set of labels satisfies every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.nothing && self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether a `metadata.labels` value (an object of strings, or null) satisfies the selector.
    /// Non-string label values are ignored.
    pub fn matches_labels_value(&self, labels: &Value) -> bool {
        self.matches(&labels_from_value(labels))
    }

    /// Whether an object's `metadata.labels` satisfy the selector.
    pub fn matches_object(&self, object: &Value) -> bool {
        self.matches(&object_labels(object))
    }
}

impl fmt::Display for LabelSelector {
    /// The canonical string: requirements sorted by key, values sorted, joined by `,`. It parses
    /// back to an equal selector.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, requirement) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{requirement}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for LabelSelector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LabelSelector::parse(s)
    }
}

/// The labels of an object (`metadata.labels`), skipping non-string values.
pub fn object_labels(object: &Value) -> BTreeMap<String, String> {
    labels_from_value(object.pointer("/metadata/labels").unwrap_or(&Value::Null))
}

/// A labels object as a map, skipping non-string values.
pub fn labels_from_value(labels: &Value) -> BTreeMap<String, String> {
    match labels {
        Value::Object(map) => map
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn expression_requirement(index: usize, expression: &Value) -> Result<Requirement, SelectorError> {
    let Value::Object(expression) = expression else {
        return Err(SelectorError::Malformed(format!(
            "matchExpressions[{index}] must be an object, not {}",
            json_kind(expression)
        )));
    };
    let key = match expression.get("key") {
        Some(Value::String(key)) => key.clone(),
        None | Some(Value::Null) => String::new(),
        Some(other) => {
            return Err(SelectorError::Malformed(format!(
                "matchExpressions[{index}].key must be a string, not {}",
                json_kind(other)
            )));
        }
    };
    let operator = match expression.get("operator") {
        Some(Value::String(op)) => match op.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => return Err(SelectorError::UnknownOperator(other.to_string())),
        },
        None | Some(Value::Null) => return Err(SelectorError::UnknownOperator(String::new())),
        Some(other) => {
            return Err(SelectorError::Malformed(format!(
                "matchExpressions[{index}].operator must be a string, not {}",
                json_kind(other)
            )));
        }
    };
    let values = match expression.get("values") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(values)) => values
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(SelectorError::Malformed(format!(
                    "matchExpressions[{index}].values must be strings, not {}",
                    json_kind(other)
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(SelectorError::Malformed(format!(
                "matchExpressions[{index}].values must be an array, not {}",
                json_kind(other)
            )));
        }
    };
    Requirement::new(key, operator, values)
}

// ---- the string syntax: lexer and parser after apimachinery pkg/labels/selector.go ----

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Identifier(String),
    /// `in` and `notin` are keywords only where an operator is expected; elsewhere they are
    /// identifiers (a label may be called `in`).
    In,
    NotIn,
    Bang,
    Equals,
    DoubleEquals,
    NotEquals,
    GreaterThan,
    LessThan,
    OpenPar,
    ClosedPar,
    Comma,
    End,
}

impl Token {
    /// The token's text, for error messages.
    fn literal(&self) -> &str {
        match self {
            Token::Identifier(s) => s,
            Token::In => "in",
            Token::NotIn => "notin",
            Token::Bang => "!",
            Token::Equals => "=",
            Token::DoubleEquals => "==",
            Token::NotEquals => "!=",
            Token::GreaterThan => ">",
            Token::LessThan => "<",
            Token::OpenPar => "(",
            Token::ClosedPar => ")",
            Token::Comma => ",",
            Token::End => "",
        }
    }

    /// In a value position the keywords are plain identifiers.
    fn as_value(&self) -> Option<&str> {
        match self {
            Token::Identifier(s) => Some(s),
            Token::In => Some("in"),
            Token::NotIn => Some("notin"),
            _ => None,
        }
    }
}

fn is_special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

fn special_token(s: &str) -> Option<Token> {
    Some(match s {
        "!" => Token::Bang,
        "=" => Token::Equals,
        "==" => Token::DoubleEquals,
        "!=" => Token::NotEquals,
        ">" => Token::GreaterThan,
        "<" => Token::LessThan,
        "(" => Token::OpenPar,
        ")" => Token::ClosedPar,
        "," => Token::Comma,
        _ => return None,
    })
}

fn lex(input: &str) -> Result<Vec<Token>, SelectorError> {
    let chars: Vec<char> = input.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if is_special(c) {
            // `!=` and `==` are two-symbol tokens; every other symbol stands alone.
            let pair = chars
                .get(i + 1)
                .and_then(|&next| special_token(&format!("{c}{next}")));
            if let Some(token) = pair {
                tokens.push(token);
                i += 2;
            } else if let Some(token) = special_token(&c.to_string()) {
                tokens.push(token);
                i += 1;
            } else {
                return Err(SelectorError::Syntax(format!(
                    "error expected: keyword found '{c}'"
                )));
            }
        } else {
            let start = i;
            while i < chars.len() && !chars[i].is_whitespace() && !is_special(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            tokens.push(match word.as_str() {
                "in" => Token::In,
                "notin" => Token::NotIn,
                _ => Token::Identifier(word),
            });
        }
    }
    tokens.push(Token::End);
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    position: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        self.tokens.get(self.position).unwrap_or(&Token::End)
    }

    fn next(&mut self) -> Token {
        let token = self.peek().clone();
        if self.position < self.tokens.len() {
            self.position += 1;
        }
        token
    }

    fn parse(mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut requirements = Vec::new();
        loop {
            match self.peek() {
                Token::End => return Ok(requirements),
                token if token.as_value().is_some() || *token == Token::Bang => {
                    requirements.push(self.requirement()?);
                    match self.next() {
                        Token::End => return Ok(requirements),
                        Token::Comma => {
                            let after = self.peek();
                            if after.as_value().is_none() && *after != Token::Bang {
                                return Err(SelectorError::Syntax(format!(
                                    "found '{}', expected: identifier after ','",
                                    after.literal()
                                )));
                            }
                        }
                        other => {
                            return Err(SelectorError::Syntax(format!(
                                "found '{}', expected: ',' or 'end of string'",
                                other.literal()
                            )));
                        }
                    }
                }
                other => {
                    return Err(SelectorError::Syntax(format!(
                        "found '{}', expected: !, identifier, or 'end of string'",
                        other.literal()
                    )));
                }
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        let mut token = self.next();
        let negated = token == Token::Bang;
        if negated {
            token = self.next();
        }
        let Some(key) = token.as_value().map(str::to_string) else {
            return Err(SelectorError::Syntax(format!(
                "found '{}', expected: identifier",
                token.literal()
            )));
        };
        if matches!(self.peek(), Token::End | Token::Comma) {
            let operator = if negated {
                Operator::DoesNotExist
            } else {
                Operator::Exists
            };
            return Requirement::new(key, operator, Vec::<String>::new());
        }
        if negated {
            // `!key` takes no operator.
            let token = self.next();
            return Err(SelectorError::Syntax(format!(
                "found '{}', expected: ',' or 'end of string'",
                token.literal()
            )));
        }
        let operator = match self.next() {
            Token::Equals => Operator::Equals,
            Token::DoubleEquals => Operator::DoubleEquals,
            Token::NotEquals => Operator::NotEquals,
            Token::In => Operator::In,
            Token::NotIn => Operator::NotIn,
            Token::GreaterThan => Operator::GreaterThan,
            Token::LessThan => Operator::LessThan,
            other => {
                return Err(SelectorError::Syntax(format!(
                    "found '{}', expected: {}",
                    other.literal(),
                    "'=', '!=', '==', 'in', notin'"
                )));
            }
        };
        let values = match operator {
            Operator::In | Operator::NotIn => self.value_set()?,
            _ => self.exact_value()?,
        };
        Requirement::new(key, operator, values)
    }

    /// The value after `=`, `==`, `!=`, `>`, `<`: an identifier, or nothing (`a=` means the
    /// empty value).
    fn exact_value(&mut self) -> Result<Vec<String>, SelectorError> {
        if matches!(self.peek(), Token::End | Token::Comma) {
            return Ok(vec![String::new()]);
        }
        let token = self.next();
        match token.as_value() {
            Some(value) => Ok(vec![value.to_string()]),
            None => Err(SelectorError::Syntax(format!(
                "found '{}', expected: identifier",
                token.literal()
            ))),
        }
    }

    /// `( a, b )`. As in apimachinery, empty entries are empty values: `()` and `(a,)` contain
    /// the empty string.
    fn value_set(&mut self) -> Result<Vec<String>, SelectorError> {
        let token = self.next();
        if token != Token::OpenPar {
            return Err(SelectorError::Syntax(format!(
                "found '{}' expected: '('",
                token.literal()
            )));
        }
        let mut values = Vec::new();
        let mut expect_value = true;
        loop {
            let token = self.next();
            match token {
                Token::ClosedPar => {
                    if expect_value {
                        values.push(String::new());
                    }
                    return Ok(values);
                }
                Token::Comma => {
                    if expect_value {
                        values.push(String::new());
                    }
                    expect_value = true;
                }
                ref t if t.as_value().is_some() && expect_value => {
                    values.push(t.as_value().unwrap_or_default().to_string());
                    expect_value = false;
                }
                other if expect_value => {
                    return Err(SelectorError::Syntax(format!(
                        "found '{}', expected: ',', or identifier",
                        other.literal()
                    )));
                }
                other => {
                    return Err(SelectorError::Syntax(format!(
                        "found '{}', expected: ',' or ')'",
                        other.literal()
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap()
    }

    #[test]
    fn the_empty_selector_matches_everything() {
        for s in ["", "   "] {
            let selector = sel(s);
            assert!(selector.is_everything());
            assert!(selector.matches(&labels(&[])));
            assert!(selector.matches(&labels(&[("app", "web")])));
            assert_eq!(selector.to_string(), "");
        }
    }

    #[test]
    fn equality_requires_the_label_with_that_value() {
        for s in ["app=web", "app==web", " app = web "] {
            let selector = sel(s);
            assert!(
                selector.matches(&labels(&[("app", "web"), ("tier", "front")])),
                "{s}"
            );
            assert!(!selector.matches(&labels(&[("app", "db")])), "{s}");
            assert!(!selector.matches(&labels(&[])), "{s}");
        }
    }

    #[test]
    fn inequality_also_matches_objects_without_the_label() {
        let selector = sel("app!=web");
        assert!(selector.matches(&labels(&[])));
        assert!(selector.matches(&labels(&[("app", "db")])));
        assert!(!selector.matches(&labels(&[("app", "web")])));
    }

    #[test]
    fn an_empty_value_after_equals_is_the_empty_label_value() {
        assert_eq!(sel("app==").to_string(), "app==");
        let selector = sel("app=");
        assert!(selector.matches(&labels(&[("app", "")])));
        assert!(!selector.matches(&labels(&[])));
        assert!(!selector.matches(&labels(&[("app", "x")])));
    }

    #[test]
    fn set_based_requirements() {
        let selector = sel("env in (prod, staging)");
        assert!(selector.matches(&labels(&[("env", "prod")])));
        assert!(selector.matches(&labels(&[("env", "staging")])));
        assert!(!selector.matches(&labels(&[("env", "dev")])));
        assert!(!selector.matches(&labels(&[])));

        let selector = sel("env notin (dev)");
        assert!(selector.matches(&labels(&[("env", "prod")])));
        assert!(
            selector.matches(&labels(&[])),
            "notin matches objects without the label"
        );
        assert!(!selector.matches(&labels(&[("env", "dev")])));
    }

    #[test]
    fn existence_requirements() {
        let selector = sel("app");
        assert!(selector.matches(&labels(&[("app", "")])));
        assert!(!selector.matches(&labels(&[("tier", "x")])));
        let selector = sel("!app");
        assert!(selector.matches(&labels(&[("tier", "x")])));
        assert!(!selector.matches(&labels(&[("app", "web")])));
        let selector = sel("! app");
        assert_eq!(
            selector.requirements()[0].operator(),
            Operator::DoesNotExist
        );
    }

    #[test]
    fn numeric_comparisons() {
        let selector = sel("gen>3");
        assert!(selector.matches(&labels(&[("gen", "4")])));
        assert!(!selector.matches(&labels(&[("gen", "3")])));
        assert!(!selector.matches(&labels(&[("gen", "four")])));
        assert!(!selector.matches(&labels(&[])));
        assert!(sel("gen<3").matches(&labels(&[("gen", "-1")])));
        assert_eq!(
            LabelSelector::parse("gen>x"),
            Err(SelectorError::NotAnInteger(vec!["x".into()]))
        );
    }

    #[test]
    fn all_requirements_must_hold() {
        let selector = sel("app=web,tier in (front,back),!canary,env!=dev");
        assert!(selector.matches(&labels(&[("app", "web"), ("tier", "front")])));
        assert!(!selector.matches(&labels(&[("app", "web"), ("tier", "db")])));
        assert!(!selector.matches(&labels(&[
            ("app", "web"),
            ("tier", "front"),
            ("canary", "1")
        ])));
        assert!(!selector.matches(&labels(&[("app", "web"), ("tier", "back"), ("env", "dev")])));
    }

    #[test]
    fn display_is_canonical_sorted_by_key_with_sorted_values() {
        let selector = sel("tier in (web, api,api), app==x , !canary,b!=c,a,n notin (z,y)");
        assert_eq!(
            selector.to_string(),
            "a,app==x,b!=c,!canary,n notin (y,z),tier in (api,web)"
        );
        assert_eq!(
            LabelSelector::parse(&selector.to_string()).unwrap(),
            selector
        );
        assert_eq!(sel("app=web").to_string(), "app=web");
    }

    #[test]
    fn in_and_notin_can_be_label_names_and_values() {
        let selector = sel("in=notin,notin in (in)");
        assert!(selector.matches(&labels(&[("in", "notin"), ("notin", "in")])));
        assert_eq!(selector.to_string(), "in=notin,notin in (in)");
    }

    #[test]
    fn empty_entries_in_a_value_set_are_empty_values() {
        assert_eq!(sel("a in ()").requirements()[0].values(), [""]);
        assert_eq!(sel("a in (x,)").requirements()[0].values(), ["", "x"]);
        assert_eq!(sel("a in (,x)").requirements()[0].values(), ["", "x"]);
        assert!(sel("a in ()").matches(&labels(&[("a", "")])));
    }

    #[test]
    fn qualified_keys_with_prefixes() {
        let selector = sel("app.kubernetes.io/name=web,example.com/tier");
        assert!(selector.matches(&labels(&[
            ("app.kubernetes.io/name", "web"),
            ("example.com/tier", "x")
        ])));
    }

    #[test]
    fn syntax_errors() {
        for s in [
            "a=b,",
            ",a=b",
            "a=b,,c=d",
            "a in b",
            "a in (b",
            "a in (b c)",
            "!a=b",
            "a b",
            "=b",
            "a=(b)",
            "(a)",
            "a!",
            "a=b c",
            "a in (b))",
        ] {
            let err = LabelSelector::parse(s);
            assert!(err.is_err(), "{s:?} parsed as {:?}", err);
        }
        assert_eq!(
            LabelSelector::parse("a=b,").unwrap_err().to_string(),
            "unable to parse requirement: found '', expected: identifier after ','"
        );
        assert_eq!(
            LabelSelector::parse("a in (b").unwrap_err().to_string(),
            "unable to parse requirement: found '', expected: ',' or ')'"
        );
    }

    #[test]
    fn invalid_keys_and_values_are_refused() {
        assert!(matches!(
            LabelSelector::parse("-a=b"),
            Err(SelectorError::InvalidKey { .. })
        ));
        assert!(matches!(
            LabelSelector::parse("a/b/c=d"),
            Err(SelectorError::InvalidKey { .. })
        ));
        assert!(matches!(
            LabelSelector::parse(&format!("{}=b", "k".repeat(64))),
            Err(SelectorError::InvalidKey { .. })
        ));
        let err = LabelSelector::parse("a=-b").unwrap_err();
        assert!(matches!(err, SelectorError::InvalidValue { index: 0, .. }));
        assert!(
            err.to_string()
                .starts_with("values[0]: Invalid value: \"-b\": a valid label")
        );
        assert!(matches!(
            LabelSelector::parse(&format!("a={}", "v".repeat(64))),
            Err(SelectorError::InvalidValue { .. })
        ));
        assert!(matches!(
            LabelSelector::parse("a in (ok, not/ok)"),
            Err(SelectorError::InvalidValue { index: 1, .. })
        ));
    }

    #[test]
    fn metav1_selector_match_labels_and_expressions() {
        let selector = LabelSelector::from_json(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["front", "back"]},
                {"key": "env", "operator": "NotIn", "values": ["dev"]},
                {"key": "team", "operator": "Exists"},
                {"key": "canary", "operator": "DoesNotExist", "values": []}
            ]
        }))
        .unwrap()
        .unwrap();
        assert_eq!(
            selector.to_string(),
            "app=web,!canary,env notin (dev),team,tier in (back,front)"
        );
        assert!(selector.matches(&labels(&[("app", "web"), ("tier", "front"), ("team", "a")])));
        assert!(!selector.matches(&labels(&[("app", "web"), ("tier", "front")])));
    }

    #[test]
    fn metav1_empty_selector_matches_everything_and_null_is_no_selector() {
        let everything = LabelSelector::from_json(&json!({})).unwrap().unwrap();
        assert!(everything.is_everything());
        assert!(everything.matches(&labels(&[("any", "thing")])));
        let empty_lists = json!({"matchLabels": {}, "matchExpressions": []});
        assert!(
            LabelSelector::from_json(&empty_lists)
                .unwrap()
                .unwrap()
                .is_everything()
        );

        assert_eq!(LabelSelector::from_json(&Value::Null), Ok(None));
        let nothing = LabelSelector::from_json_or_nothing(&Value::Null).unwrap();
        assert!(nothing.is_nothing());
        assert!(!nothing.is_everything());
        assert!(!nothing.matches(&labels(&[])));
        assert!(!nothing.matches(&labels(&[("app", "web")])));
        assert!(
            LabelSelector::from_json_or_nothing(&json!({}))
                .unwrap()
                .is_everything()
        );
    }

    #[test]
    fn metav1_selector_errors() {
        let bad_op = json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]});
        assert_eq!(
            LabelSelector::from_json(&bad_op),
            Err(SelectorError::UnknownOperator("Gt".into()))
        );
        assert_eq!(
            LabelSelector::from_json(&bad_op).unwrap_err().to_string(),
            "\"Gt\" is not a valid label selector operator"
        );
        let in_without_values = json!({"matchExpressions": [{"key": "a", "operator": "In"}]});
        assert_eq!(
            LabelSelector::from_json(&in_without_values),
            Err(SelectorError::EmptyValueSet)
        );
        let exists_with_values =
            json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]});
        assert!(matches!(
            LabelSelector::from_json(&exists_with_values),
            Err(SelectorError::ValuesForExists(_))
        ));
        for malformed in [
            json!("app=web"),
            json!({"matchLabels": ["app"]}),
            json!({"matchLabels": {"app": 1}}),
            json!({"matchExpressions": {}}),
            json!({"matchExpressions": ["x"]}),
            json!({"matchExpressions": [{"key": "a", "operator": "In", "values": [1]}]}),
        ] {
            assert!(
                matches!(
                    LabelSelector::from_json(&malformed),
                    Err(SelectorError::Malformed(_))
                ),
                "{malformed}"
            );
        }
        let bad_key = json!({"matchLabels": {"a b": "c"}});
        assert!(matches!(
            LabelSelector::from_json(&bad_key),
            Err(SelectorError::InvalidKey { .. })
        ));
    }

    #[test]
    fn matching_objects_reads_metadata_labels() {
        let pod = json!({"metadata": {"name": "p", "labels": {"app": "web", "n": 1}}});
        assert!(sel("app=web").matches_object(&pod));
        assert!(
            !sel("n").matches_object(&pod),
            "non-string label values are ignored"
        );
        assert!(sel("!app").matches_object(&json!({"metadata": {"name": "p"}})));
        assert!(sel("app=web").matches_labels_value(&json!({"app": "web"})));
        assert!(!sel("app=web").matches_labels_value(&Value::Null));
    }

    #[test]
    fn selectors_from_label_sets() {
        let selector = LabelSelector::from_labels(&labels(&[("b", "2"), ("a", "1")])).unwrap();
        assert_eq!(selector.to_string(), "a=1,b=2");
        assert!(
            LabelSelector::from_labels(&labels(&[]))
                .unwrap()
                .is_everything()
        );
        assert!("a=1".parse::<LabelSelector>().is_ok());
    }
}
