use super::*;

fn set(pairs: &[(&str, &str)]) -> RequirementSet {
    RequirementSet(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn props(pairs: &[(&str, &str)]) -> Properties {
    set(pairs).0
}

#[test]
fn empty_requirements_match_every_worker() {
    assert!(RequirementSet::any().is_satisfied_by(&props(&[])));
    assert!(RequirementSet::any().is_satisfied_by(&props(&[("device", "lucidac")])));
}

#[test]
fn equal_value_matches() {
    let required = set(&[("device", "lucidac")]);
    assert!(required.is_satisfied_by(&props(&[("device", "lucidac"), ("os", "linux")])));
}

#[test]
fn missing_key_is_no_match() {
    let required = set(&[("device", "lucidac")]);
    assert!(!required.is_satisfied_by(&props(&[("os", "linux")])));
}

#[test]
fn different_value_is_no_match() {
    let required = set(&[("device", "lucidac"), ("os", "linux")]);
    assert!(!required.is_satisfied_by(&props(&[("device", "lucidac"), ("os", "windows")])));
}

#[test]
fn task_requirements_override_function_requirements() {
    let function = set(&[("device", "lucidac"), ("os", "linux")]);
    let task = set(&[("os", "macos"), ("gpu", "1")]);
    assert_eq!(
        function.merged_with(&task),
        set(&[("device", "lucidac"), ("gpu", "1"), ("os", "macos")])
    );
}

#[test]
fn routing_keys_are_canonical_and_escaped() {
    assert_eq!(RequirementSet::any().routing_key(), "any");
    assert_eq!(
        set(&[("device", "lucidac")]).routing_key(),
        "device=lucidac"
    );
    assert_eq!(
        set(&[("os", "linux"), ("device", "lucidac")]).routing_key(),
        "device=lucidac,os=linux"
    );
    // A value holding the separators cannot collide with two pairs.
    assert_eq!(set(&[("a", "1,b=2")]).routing_key(), "a=1%2Cb%3D2");
    assert_ne!(
        set(&[("a", "1,b=2")]).routing_key(),
        set(&[("a", "1"), ("b", "2")]).routing_key()
    );
}

#[test]
fn long_routing_keys_get_a_stable_hash_suffix() {
    let long = set(&[("label", &"x".repeat(400))]);
    let key = long.routing_key();
    assert_eq!(key.len(), MAX_ROUTING_KEY_BYTES);
    assert_eq!(key, long.routing_key());
    let other = set(&[("label", &format!("{}y", "x".repeat(399)))]);
    assert_ne!(key, other.routing_key());
}
