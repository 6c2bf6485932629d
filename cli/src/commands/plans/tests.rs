use std::path::Path;

use super::parse_plan;

const TASK: &str = "00000000-0000-4000-8000-000000000002";
const FUNCTION: &str = "00000000-0000-4000-8000-000000000003";

#[test]
fn a_yaml_plan_is_read_with_its_tasks() {
    let text = format!(
        "key: 00000000-0000-4000-8000-000000000001\n\
         name: try\n\
         tag: cli\n\
         tasks:\n\
         \x20 - key: {TASK}\n\
         \x20   function_key: {FUNCTION}\n\
         \x20   worker: org-a\n\
         \x20   parameters: {{round: 2}}\n\
         \x20   metadata: {{round_idx: \"2\"}}\n"
    );
    let plan = parse_plan(&text, Path::new("plan.yaml")).unwrap();
    assert_eq!(plan.name, "try");
    assert_eq!(plan.tasks.len(), 1);
    assert_eq!(plan.tasks[0].key.to_string(), TASK);
    assert_eq!(plan.tasks[0].parameters["round"], 2);
}

#[test]
fn a_mistake_names_the_file_and_the_path_inside_it() {
    let yaml = format!(
        "key: 00000000-0000-4000-8000-000000000001\nname: try\ntasks:\n  - key: {TASK}\n    function_key: not-a-uuid\n"
    );
    let message = parse_plan(&yaml, Path::new("dir/plan.yml"))
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with("dir/plan.yml is not a valid plan: at tasks[0].function_key: "),
        "{message}"
    );

    let json = r#"{"key": "00000000-0000-4000-8000-000000000001", "name": "try", "colour": 1}"#;
    let message = parse_plan(json, Path::new("plan.json"))
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with("plan.json is not a valid plan: "),
        "{message}"
    );
    assert!(message.contains("unknown field `colour`"), "{message}");

    let message = parse_plan("{\"name\": \"x\"} trailing", Path::new("plan.json"))
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with("plan.json is not a valid plan"),
        "{message}"
    );
}

#[test]
fn yaml_is_chosen_by_the_extension() {
    assert!(super::is_yaml(Path::new("a.yaml")));
    assert!(super::is_yaml(Path::new("a.YML")));
    assert!(!super::is_yaml(Path::new("a.json")));
    assert!(!super::is_yaml(Path::new("plan")));
}
