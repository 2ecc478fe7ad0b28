//! Label selectors (`a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x,y)`, `a`, `!a`, joined by
//! commas) and field selectors (`path=value`, `path==value`, `path!=value`, with the real
//! server's escapes `\,` `\=` `\\`), parsed once and matched against JSON objects.

use super::resources::ResourceType;
use serde_json::Value;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelRequirement {
    Exists(String),
    Absent(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelRequirement>);

/// Splits at commas outside parentheses.
fn top_level_parts(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn set_of(text: &str, whole: &str) -> Result<Vec<String>, String> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| {
            format!("unable to parse requirement: {whole:?}: expected a set in parentheses")
        })?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    /// Parses the `labelSelector` query parameter.
    pub fn parse(text: &str) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        if text.trim().is_empty() {
            return Ok(LabelSelector(requirements));
        }
        for part in top_level_parts(text) {
            let part = part.trim();
            let bad = || format!("unable to parse requirement: {part:?}");
            let requirement = if let Some(key) = part.strip_prefix('!') {
                LabelRequirement::Absent(key.trim().to_string())
            } else if let Some((key, value)) = part.split_once("!=") {
                LabelRequirement::NotIn(key.trim().to_string(), vec![value.trim().to_string()])
            } else if let Some((key, value)) =
                part.split_once("==").or_else(|| part.split_once('='))
            {
                LabelRequirement::In(key.trim().to_string(), vec![value.trim().to_string()])
            } else if let Some((key, set)) = part.split_once(" notin ") {
                LabelRequirement::NotIn(key.trim().to_string(), set_of(set, part)?)
            } else if let Some((key, set)) = part.split_once(" in ") {
                LabelRequirement::In(key.trim().to_string(), set_of(set, part)?)
            } else if part.contains(['<', '>', '(', ' ']) {
                return Err(bad());
            } else {
                LabelRequirement::Exists(part.to_string())
            };
            let key = match &requirement {
                LabelRequirement::Exists(k)
                | LabelRequirement::Absent(k)
                | LabelRequirement::In(k, _)
                | LabelRequirement::NotIn(k, _) => k,
            };
            if !valid_key(key) {
                return Err(bad());
            }
            requirements.push(requirement);
        }
        Ok(LabelSelector(requirements))
    }

    /// Whether `object`'s `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let label = |key: &str| labels.get(key).and_then(Value::as_str);
        self.0.iter().all(|requirement| match requirement {
            LabelRequirement::Exists(key) => label(key).is_some(),
            LabelRequirement::Absent(key) => label(key).is_none(),
            LabelRequirement::In(key, values) => {
                label(key).is_some_and(|v| values.iter().any(|w| w == v))
            }
            LabelRequirement::NotIn(key, values) => {
                label(key).is_none_or(|v| !values.iter().any(|w| w == v))
            }
        })
    }
}

/// One requirement of a field selector: `path` equals (or not) `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldRequirement {
    path: String,
    value: String,
    equal: bool,
}

/// A parsed field selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<FieldRequirement>);

/// Splits at commas not escaped with a backslash, and unescapes each part's value later.
fn unescaped_parts(text: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let current = parts.last_mut().expect("one part at least");
                current.push('\\');
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            ',' => parts.push(String::new()),
            c => parts.last_mut().expect("one part at least").push(c),
        }
    }
    parts
}

/// The operator's position in `part`, skipping escaped characters: (start, length, equal).
fn find_operator(part: &str) -> Option<(usize, usize, bool)> {
    let bytes = part.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'!' if bytes.get(i + 1) == Some(&b'=') => return Some((i, 2, false)),
            b'=' if bytes.get(i + 1) == Some(&b'=') => return Some((i, 2, true)),
            b'=' => return Some((i, 1, true)),
            _ => i += 1,
        }
    }
    None
}

fn unescape(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e @ ('\\' | ',' | '=')) => out.push(e),
                other => {
                    return Err(format!(
                        "invalid escape sequence \\{}",
                        other.unwrap_or(' ')
                    ))
                }
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

impl FieldSelector {
    /// Parses the `fieldSelector` query parameter, refusing fields `resource` does not index
    /// (as the real server does: 400 `field label not supported`).
    pub fn parse(text: &str, resource: &ResourceType) -> Result<FieldSelector, String> {
        let mut requirements = Vec::new();
        if text.trim().is_empty() {
            return Ok(FieldSelector(requirements));
        }
        for part in unescaped_parts(text) {
            let (at, len, equal) = find_operator(&part)
                .ok_or_else(|| format!("invalid selector: '{text}'; can't understand '{part}'"))?;
            let path = part[..at].trim().to_string();
            let value = unescape(&part[at + len..])?;
            if !resource.supports_field(&path) {
                return Err(format!("field label not supported: {path}"));
            }
            requirements.push(FieldRequirement { path, value, equal });
        }
        Ok(FieldSelector(requirements))
    }

    /// Whether `object` satisfies every requirement (a missing field is the empty string).
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|requirement| {
            let actual = field_value(object, &requirement.path);
            (actual == requirement.value) == requirement.equal
        })
    }
}

/// A field as the field selector compares it: strings as they are, booleans and numbers as
/// text, missing as "".
fn field_value(object: &Value, path: &str) -> String {
    let mut here = object;
    for key in path.split('.') {
        match here.get(key) {
            Some(next) => here = next,
            None => return String::new(),
        }
    }
    match here {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_apiserver::resources::{ENDPOINT_SLICES, NODES, PODS};
    use serde_json::json;

    fn labelled(labels: Value) -> Value {
        json!({"metadata": {"name": "x", "labels": labels}})
    }

    #[test]
    fn label_selectors_of_every_form() {
        let object = labelled(json!({"kubernetes.io/service-name": "web", "tier": "front"}));
        for (selector, expected) in [
            ("", true),
            ("kubernetes.io/service-name=web", true),
            ("kubernetes.io/service-name==web", true),
            ("kubernetes.io/service-name=db", false),
            ("kubernetes.io/service-name!=db", true),
            ("missing!=db", true),
            ("tier in (front,back)", true),
            ("tier in (back)", false),
            ("tier notin (back)", true),
            ("tier notin (front, back)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("tier=front,kubernetes.io/service-name in (web,db)", true),
            ("tier=front,missing", false),
        ] {
            let parsed = LabelSelector::parse(selector).unwrap();
            assert_eq!(parsed.matches(&object), expected, "{selector}");
        }
        assert!(!LabelSelector::parse("a=b")
            .unwrap()
            .matches(&json!({"metadata": {}})));
    }

    #[test]
    fn bad_label_selectors_are_refused() {
        for bad in ["a in b", "a>1", "=b", "a in (x", "a b"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn field_selectors_match_pods_by_node() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "node-a", "hostNetwork": true}});
        for (selector, expected) in [
            ("spec.nodeName=node-a", true),
            ("spec.nodeName==node-a", true),
            ("spec.nodeName=node-b", false),
            ("spec.nodeName!=node-b", true),
            ("spec.nodeName=node-a,metadata.namespace=ns", true),
            ("spec.nodeName=node-a,metadata.name!=p", false),
            ("spec.hostNetwork=true", true),
            ("status.podIP=", true),
        ] {
            let parsed = FieldSelector::parse(selector, &PODS).unwrap();
            assert_eq!(parsed.matches(&pod), expected, "{selector}");
        }
    }

    #[test]
    fn field_selectors_refuse_unindexed_fields_and_unescape_values() {
        let err = FieldSelector::parse("spec.nodeName=a", &NODES).unwrap_err();
        assert_eq!(err, "field label not supported: spec.nodeName");
        assert!(FieldSelector::parse("metadata.namespace=a", &NODES).is_err());
        assert!(FieldSelector::parse("addressType=IPv4", &ENDPOINT_SLICES).is_ok());
        let odd = json!({"metadata": {"name": "a,b=c"}});
        assert!(FieldSelector::parse(r"metadata.name=a\,b\=c", &NODES)
            .unwrap()
            .matches(&odd));
        assert!(FieldSelector::parse("metadata.name", &NODES).is_err());
    }
}
