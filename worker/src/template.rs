//! Placeholders in step commands (SPEC.md §6): `{parameters.name}`, `{task.key}`,
//! `{inputs.identifier}` and `{outputs.identifier}` are replaced inside single argv elements,
//! never by splitting or joining them, so a value can never become a second argument or a shell
//! construct. Other braces stay as they are (a JSON argument is fine).

use std::collections::BTreeMap;

use models::JsonObject;

/// The values placeholders take for one attempt.
#[derive(Clone, Debug, Default)]
pub struct Bindings {
    /// `{task.key}`.
    pub task_key: String,
    /// `{parameters.<name>}`: strings as they are, other JSON values as JSON text.
    pub parameters: JsonObject,
    /// `{inputs.<identifier>}`: the input's path in the workspace.
    pub inputs: BTreeMap<String, String>,
    /// `{outputs.<identifier>}`: where the output is to be written.
    pub outputs: BTreeMap<String, String>,
}

/// The namespaces a placeholder may name.
const NAMESPACES: [&str; 4] = ["parameters.", "task.", "inputs.", "outputs."];

/// `argv` with every placeholder replaced, or the first placeholder that names nothing.
pub fn substitute(argv: &[String], bindings: &Bindings) -> Result<Vec<String>, String> {
    argv.iter()
        .enumerate()
        .map(|(position, element)| {
            substitute_one(element, bindings)
                .map_err(|problem| format!("argument {position} ({element:?}): {problem}"))
        })
        .collect()
}

fn substitute_one(element: &str, bindings: &Bindings) -> Result<String, String> {
    let mut out = String::with_capacity(element.len());
    let mut rest = element;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}');
        let name = close.map(|close| &after[..close]);
        match name.filter(|name| NAMESPACES.iter().any(|ns| name.starts_with(ns))) {
            Some(name) => {
                out.push_str(&lookup(name, bindings)?);
                rest = &after[name.len() + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn lookup(name: &str, bindings: &Bindings) -> Result<String, String> {
    let missing = || format!("`{{{name}}}` names nothing");
    if let Some(key) = name.strip_prefix("parameters.") {
        return match bindings.parameters.get(key) {
            Some(serde_json::Value::String(text)) => Ok(text.clone()),
            Some(value) => Ok(value.to_string()),
            None => Err(format!("parameter `{key}` is not set")),
        };
    }
    if name == "task.key" {
        return Ok(bindings.task_key.clone());
    }
    if let Some(identifier) = name.strip_prefix("inputs.") {
        return bindings
            .inputs
            .get(identifier)
            .cloned()
            .ok_or_else(|| format!("input `{identifier}` is not given"));
    }
    if let Some(identifier) = name.strip_prefix("outputs.") {
        return bindings
            .outputs
            .get(identifier)
            .cloned()
            .ok_or_else(|| format!("output `{identifier}` is not declared"));
    }
    Err(missing())
}

#[cfg(test)]
mod tests;
