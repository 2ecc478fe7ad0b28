//! JSON patch (`application/json-patch+json`, RFC 6902) on JSON values: add, remove, replace,
//! move, copy and test, with JSON pointers (RFC 6901); all operations or none.

use super::patch::PatchError;
use serde_json::Value;

/// Applies the operations of `patch` in order; all or nothing.
pub fn json_patch(original: &Value, patch: &Value) -> Result<Value, PatchError> {
    let Value::Array(operations) = patch else {
        return Err(PatchError::Malformed(
            "a JSON patch is a list of operations".into(),
        ));
    };
    let mut doc = original.clone();
    for (n, operation) in operations.iter().enumerate() {
        apply_operation(&mut doc, operation).map_err(|e| match e {
            PatchError::Malformed(m) => PatchError::Malformed(format!("operation {n}: {m}")),
            PatchError::DoesNotApply(m) => PatchError::DoesNotApply(format!("operation {n}: {m}")),
        })?;
    }
    Ok(doc)
}

fn member<'a>(operation: &'a Value, name: &str) -> Result<&'a Value, PatchError> {
    operation
        .get(name)
        .ok_or_else(|| PatchError::Malformed(format!("missing {name:?} in {operation}")))
}

fn pointer_member(operation: &Value, name: &str) -> Result<Vec<String>, PatchError> {
    let text = member(operation, name)?
        .as_str()
        .ok_or_else(|| PatchError::Malformed(format!("{name:?} is not a string")))?;
    parse_pointer(text)
}

/// The reference tokens of a JSON pointer (RFC 6901).
fn parse_pointer(text: &str) -> Result<Vec<String>, PatchError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = text.strip_prefix('/') else {
        return Err(PatchError::Malformed(format!(
            "JSON pointer {text:?} does not start with /"
        )));
    };
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn apply_operation(doc: &mut Value, operation: &Value) -> Result<(), PatchError> {
    let op = member(operation, "op")?
        .as_str()
        .ok_or_else(|| PatchError::Malformed("\"op\" is not a string".into()))?;
    let path = pointer_member(operation, "path")?;
    match op {
        "add" => add(doc, &path, member(operation, "value")?.clone()),
        "remove" => remove(doc, &path).map(|_| ()),
        "replace" => {
            let target = get_mut(doc, &path)?;
            *target = member(operation, "value")?.clone();
            Ok(())
        }
        "move" => {
            let from = pointer_member(operation, "from")?;
            if path.len() > from.len() && path[..from.len()] == from[..] {
                return Err(PatchError::DoesNotApply(
                    "cannot move a value into one of its children".into(),
                ));
            }
            let value = remove(doc, &from)?;
            add(doc, &path, value)
        }
        "copy" => {
            let from = pointer_member(operation, "from")?;
            let value = get_mut(doc, &from)?.clone();
            add(doc, &path, value)
        }
        "test" => {
            let expected = member(operation, "value")?;
            let actual = get_mut(doc, &path)?;
            if actual == expected {
                Ok(())
            } else {
                Err(PatchError::DoesNotApply(format!(
                    "test failed: {} is {actual}, not {expected}",
                    display_pointer(&path)
                )))
            }
        }
        other => Err(PatchError::Malformed(format!("unknown op {other:?}"))),
    }
}

fn display_pointer(path: &[String]) -> String {
    path.iter()
        .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
        .collect()
}

fn missing(path: &[String]) -> PatchError {
    PatchError::DoesNotApply(format!("{} does not exist", display_pointer(path)))
}

fn array_index(token: &str, len: usize, path: &[String]) -> Result<usize, PatchError> {
    let valid =
        token == "0" || (!token.starts_with('0') && token.bytes().all(|b| b.is_ascii_digit()));
    match token.parse::<usize>() {
        Ok(i) if valid && i < len => Ok(i),
        _ => Err(missing(path)),
    }
}

fn get_mut<'a>(doc: &'a mut Value, path: &[String]) -> Result<&'a mut Value, PatchError> {
    let mut here = doc;
    for (depth, token) in path.iter().enumerate() {
        here = match here {
            Value::Object(map) => map.get_mut(token),
            Value::Array(list) => {
                let i = array_index(token, list.len(), &path[..=depth])?;
                list.get_mut(i)
            }
            _ => None,
        }
        .ok_or_else(|| missing(&path[..=depth]))?;
    }
    Ok(here)
}

fn add(doc: &mut Value, path: &[String], value: Value) -> Result<(), PatchError> {
    let Some((last, parent_path)) = path.split_last() else {
        *doc = value;
        return Ok(());
    };
    match get_mut(doc, parent_path)? {
        Value::Object(map) => {
            map.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(list) => {
            if last == "-" {
                list.push(value);
            } else {
                let i = array_index(last, list.len() + 1, path)?;
                list.insert(i, value);
            }
            Ok(())
        }
        _ => Err(PatchError::DoesNotApply(format!(
            "{} is not inside an object or a list",
            display_pointer(path)
        ))),
    }
}

fn remove(doc: &mut Value, path: &[String]) -> Result<Value, PatchError> {
    let Some((last, parent_path)) = path.split_last() else {
        return Err(PatchError::DoesNotApply(
            "cannot remove the whole document".into(),
        ));
    };
    match get_mut(doc, parent_path)? {
        Value::Object(map) => map.remove(last).ok_or_else(|| missing(path)),
        Value::Array(list) => {
            let i = array_index(last, list.len(), path)?;
            Ok(list.remove(i))
        }
        _ => Err(missing(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_patch_applies_every_operation() {
        let doc = json!({"metadata": {"labels": {"a/b": "1"}}, "list": [1, 2, 3]});
        let patch = json!([
            {"op": "test", "path": "/metadata/labels/a~1b", "value": "1"},
            {"op": "add", "path": "/metadata/labels/c", "value": "2"},
            {"op": "remove", "path": "/list/0"},
            {"op": "add", "path": "/list/-", "value": 4},
            {"op": "add", "path": "/list/1", "value": 9},
            {"op": "replace", "path": "/metadata/labels/a~1b", "value": "x"},
            {"op": "copy", "from": "/list", "path": "/copied"},
            {"op": "move", "from": "/metadata/labels/c", "path": "/moved"},
        ]);
        assert_eq!(
            json_patch(&doc, &patch).unwrap(),
            json!({"metadata": {"labels": {"a/b": "x"}}, "list": [2, 9, 3, 4], "copied": [2, 9, 3, 4], "moved": "2"})
        );
    }

    #[test]
    fn json_patch_is_all_or_nothing_and_says_why() {
        let doc = json!({"a": 1});
        let err = json_patch(
            &doc,
            &json!([{"op": "add", "path": "/b", "value": 2}, {"op": "test", "path": "/a", "value": 2}]),
        )
        .unwrap_err();
        assert!(
            matches!(&err, PatchError::DoesNotApply(m) if m.contains("operation 1") && m.contains("test failed")),
            "{err:?}"
        );
        for bad in [
            json!([{"op": "remove", "path": "/nope"}]),
            json!([{"op": "replace", "path": "/a/b", "value": 1}]),
            json!([{"op": "add", "path": "/x/y", "value": 1}]),
            json!([{"op": "move", "from": "/a", "path": "/a/b"}]),
        ] {
            assert!(
                matches!(json_patch(&doc, &bad), Err(PatchError::DoesNotApply(_))),
                "{bad}"
            );
        }
        for malformed in [
            json!({"op": "add"}),
            json!([{"op": "frobnicate", "path": "/a"}]),
            json!([{"op": "add", "path": "a", "value": 1}]),
            json!([{"op": "add", "path": "/a"}]),
        ] {
            assert!(
                matches!(json_patch(&doc, &malformed), Err(PatchError::Malformed(_))),
                "{malformed}"
            );
        }
    }

    #[test]
    fn json_patch_array_indexes_are_strict() {
        let doc = json!({"l": [0, 1]});
        assert!(json_patch(&doc, &json!([{"op": "remove", "path": "/l/01"}])).is_err());
        assert!(json_patch(&doc, &json!([{"op": "add", "path": "/l/3", "value": 9}])).is_err());
        assert_eq!(
            json_patch(&doc, &json!([{"op": "add", "path": "/l/2", "value": 9}])).unwrap(),
            json!({"l": [0, 1, 9]})
        );
    }
}
