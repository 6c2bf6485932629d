use super::*;

fn bindings() -> Bindings {
    let mut parameters = JsonObject::new();
    parameters.insert("lr".into(), serde_json::json!(0.1));
    parameters.insert("name".into(), serde_json::json!("a b; rm -rf /"));
    parameters.insert("flag".into(), serde_json::json!("-rf"));
    parameters.insert("cmd".into(), serde_json::json!("$(touch /tmp/pwned)"));
    Bindings {
        task_key: "t-1".into(),
        parameters,
        inputs: [("model".to_owned(), "/ws/inputs/model".to_owned())].into(),
        outputs: [("out".to_owned(), "/ws/outputs/out".to_owned())].into(),
    }
}

fn argv(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn placeholders_are_replaced_inside_single_elements() {
    let out = substitute(
        &argv(&[
            "train",
            "--lr={parameters.lr}",
            "{inputs.model}",
            "{outputs.out}",
            "{task.key}",
            "{parameters.name}",
            "{parameters.flag}",
            "{parameters.cmd}",
        ]),
        &bindings(),
    )
    .unwrap();
    assert_eq!(
        out,
        argv(&[
            "train",
            "--lr=0.1",
            "/ws/inputs/model",
            "/ws/outputs/out",
            "t-1",
            "a b; rm -rf /",
            "-rf",
            "$(touch /tmp/pwned)",
        ])
    );
}

#[test]
fn other_braces_stay_literal() {
    let out = substitute(
        &argv(&[r#"{"a": 1}"#, "{", "}{", "{unknown.x}", "{parameters.lr"]),
        &bindings(),
    )
    .unwrap();
    assert_eq!(
        out,
        argv(&[r#"{"a": 1}"#, "{", "}{", "{unknown.x}", "{parameters.lr"])
    );
}

#[test]
fn a_placeholder_that_names_nothing_is_an_error() {
    for (element, expected) in [
        ("{parameters.missing}", "parameter `missing` is not set"),
        ("{inputs.data}", "input `data` is not given"),
        ("{outputs.x}", "output `x` is not declared"),
        ("{task.other}", "`{task.other}` names nothing"),
    ] {
        let error = substitute(&argv(&["ok", element]), &bindings()).unwrap_err();
        assert!(
            error.starts_with("argument 1") && error.contains(expected),
            "{error}"
        );
    }
}

#[test]
fn a_substituted_value_is_not_substituted_again() {
    let mut b = bindings();
    b.parameters
        .insert("sneaky".into(), serde_json::json!("{task.key}"));
    let out = substitute(&argv(&["{parameters.sneaky}"]), &b).unwrap();
    assert_eq!(out, argv(&["{task.key}"]));
}
