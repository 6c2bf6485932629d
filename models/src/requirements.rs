//! Worker properties and the requirement sets tasks are routed by.
//!
//! A task's requirements (its function's plus its own) are satisfied by a worker whose
//! properties contain every required key with an equal value (SPEC.md §8). Each distinct
//! requirement set is one queue, named by its canonical [`RequirementSet::routing_key`].

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A worker's properties: string keys to string values (`device=lucidac`, `os=linux`, …).
pub type Properties = BTreeMap<String, String>;

/// The properties a worker must have to run a task. Empty means any worker will do.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct RequirementSet(pub BTreeMap<String, String>);

/// The longest routing key RabbitMQ accepts is 255 bytes; queue names add `baton.tasks.`, so
/// keys are kept to this length and longer ones are shortened with a stable hash suffix.
pub const MAX_ROUTING_KEY_BYTES: usize = 200;

impl RequirementSet {
    /// The set requiring nothing.
    pub fn any() -> RequirementSet {
        RequirementSet::default()
    }

    /// Whether no property is required.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a worker with `properties` satisfies every requirement: each required key is
    /// present with an equal value. A missing key is no match.
    pub fn is_satisfied_by(&self, properties: &Properties) -> bool {
        self.0
            .iter()
            .all(|(key, value)| properties.get(key) == Some(value))
    }

    /// This set together with `other` (a task's requirements on top of its function's); on a
    /// key both name, `other` wins.
    pub fn merged_with(&self, other: &RequirementSet) -> RequirementSet {
        let mut merged = self.0.clone();
        merged.extend(other.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        RequirementSet(merged)
    }

    /// The canonical routing key of this set: `any` when empty, else `key=value` pairs sorted by
    /// key and joined by `,`, with `%`, `,`, `=` and non-printable bytes percent-escaped so that
    /// two different sets never share a key. A key longer than [`MAX_ROUTING_KEY_BYTES`] is cut
    /// and given a stable 16-hex-digit hash suffix of the full key.
    pub fn routing_key(&self) -> String {
        if self.0.is_empty() {
            return "any".to_owned();
        }
        let mut key = String::new();
        for (idx, (name, value)) in self.0.iter().enumerate() {
            if idx > 0 {
                key.push(',');
            }
            escape_into(&mut key, name);
            key.push('=');
            escape_into(&mut key, value);
        }
        if key.len() <= MAX_ROUTING_KEY_BYTES {
            return key;
        }
        let hash = fnv1a_64(key.as_bytes());
        let mut cut = MAX_ROUTING_KEY_BYTES - 17;
        while !key.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}~{hash:016x}", &key[..cut])
    }
}

fn escape_into(out: &mut String, text: &str) {
    for ch in text.chars() {
        match ch {
            '%' | ',' | '=' | '~' => out.push_str(&format!("%{:02X}", ch as u32)),
            ch if ch.is_control() => {
                let mut buf = [0u8; 4];
                for byte in ch.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{byte:02X}"));
                }
            }
            ch => out.push(ch),
        }
    }
}

/// FNV-1a, 64 bits: stable across versions and platforms, which std's hasher is not.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests;
