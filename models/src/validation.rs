//! Pure validation of what producers submit (SPEC.md §4, §5): every problem is collected, each
//! with the path of the field it concerns, so one answer lists them all.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

use crate::submission::NewFunction;
use crate::{File, InputKind, Metadata, OutputKind, Step};

pub mod plan;

/// The longest name, tag, identifier or metadata entry, in characters (names) or bytes
/// (metadata), as Substra's validation sets it.
pub const MAX_NAME_LEN: usize = 100;

/// The deepest nesting accepted in caller JSON (parameters, data, input), so that a hostile
/// document cannot exhaust the stack of whoever walks it later.
pub const MAX_JSON_DEPTH: usize = 32;

/// The most attempts a retry policy may allow.
pub const MAX_ATTEMPTS: u32 = 100;

/// One segment of a [`FieldPath`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathSegment {
    /// A struct field.
    Field(&'static str),
    /// A position in a list.
    Index(usize),
    /// A key in a map.
    Key(String),
}

/// Where in a submission a problem is, displayed as `tasks[2].inputs[0].identifier`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<PathSegment>);

impl FieldPath {
    /// The path of the whole submission.
    pub fn root() -> FieldPath {
        FieldPath::default()
    }

    /// This path followed by field `name`.
    pub fn field(&self, name: &'static str) -> FieldPath {
        self.with(PathSegment::Field(name))
    }

    /// This path followed by list position `index`.
    pub fn index(&self, index: usize) -> FieldPath {
        self.with(PathSegment::Index(index))
    }

    /// This path followed by map key `key`.
    pub fn key(&self, key: &str) -> FieldPath {
        self.with(PathSegment::Key(key.to_owned()))
    }

    fn with(&self, segment: PathSegment) -> FieldPath {
        let mut segments = self.0.clone();
        segments.push(segment);
        FieldPath(segments)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(root)");
        }
        for (idx, segment) in self.0.iter().enumerate() {
            match segment {
                PathSegment::Field(name) if idx == 0 => f.write_str(name)?,
                PathSegment::Field(name) => write!(f, ".{name}")?,
                PathSegment::Index(index) => write!(f, "[{index}]")?,
                PathSegment::Key(key) => write!(f, "[{key:?}]")?,
            }
        }
        Ok(())
    }
}

impl Serialize for FieldPath {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// What is wrong with one field.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ValidationErrorKind {
    /// A required text is empty.
    #[error("must not be empty")]
    Empty,
    /// A text is longer than allowed.
    #[error("is {len} characters long, at most {max} allowed")]
    TooLong {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A metadata key or value is longer than 100 bytes.
    #[error("is {len} bytes long, at most {max} allowed")]
    TooManyBytes {
        /// Its length in bytes.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A metadata key contains `__`, which baton reserves.
    #[error("metadata keys must not contain \"__\"")]
    ReservedMetadataKey,
    /// An identifier appears twice where it must be unique.
    #[error("duplicate identifier {0:?}")]
    Duplicate(String),
    /// A DATA_MANAGER input is optional.
    #[error("a DATA_MANAGER input cannot be optional")]
    OptionalDataManager,
    /// A DATA_MANAGER input is multiple.
    #[error("a DATA_MANAGER input cannot be multiple")]
    MultipleDataManager,
    /// More than one DATA_MANAGER input.
    #[error("at most one DATA_MANAGER input is allowed")]
    SecondDataManager,
    /// A DATA_MANAGER input without a DATA_SAMPLE input.
    #[error("a DATA_MANAGER input needs a DATA_SAMPLE input")]
    DataManagerWithoutSamples,
    /// A DATA_SAMPLE input without a DATA_MANAGER input.
    #[error("a DATA_SAMPLE input needs a DATA_MANAGER input")]
    SamplesWithoutDataManager,
    /// A PERFORMANCE output is multiple.
    #[error("a PERFORMANCE output cannot be multiple")]
    MultiplePerformance,
    /// A step's command is an empty argv.
    #[error("a command needs at least the program to run")]
    EmptyCommand,
    /// A parameter key has characters placeholders cannot name.
    #[error("{0:?} is not a valid parameter key: use letters, digits, '_', '-' and '.'")]
    InvalidParameterKey(String),
    /// The parameter schema is not a valid JSON Schema.
    #[error("is not a valid JSON Schema: {0}")]
    InvalidSchema(String),
    /// A value does not satisfy its JSON Schema.
    #[error("does not match the parameter schema: {0}")]
    SchemaMismatch(String),
    /// A file's checksum is not a SHA-256.
    #[error("checksum must be 64 hex digits (a SHA-256)")]
    InvalidChecksum,
    /// A path leaves its root or is absolute.
    #[error("{0:?} must be a relative path that stays inside its root")]
    EscapingPath(String),
    /// A number is out of its range.
    #[error("must be between {min} and {max}")]
    OutOfRange {
        /// The smallest accepted value.
        min: u64,
        /// The largest accepted value.
        max: u64,
    },
    /// Backoff bounds in the wrong order.
    #[error("backoff_initial_ms must not exceed backoff_max_ms")]
    BackoffOrder,
    /// JSON nested deeper than [`MAX_JSON_DEPTH`].
    #[error("is nested deeper than {max} levels")]
    TooDeep {
        /// The bound.
        max: usize,
    },
    /// Any other rule of a plan submission, worded by the check that found it.
    #[error("{0}")]
    Rule(String),
}

/// One problem in a submission, and where it is.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{path}: {kind}")]
pub struct ValidationError {
    /// Where.
    pub path: FieldPath,
    /// What.
    pub kind: ValidationErrorKind,
}

impl ValidationError {
    /// A problem of kind `kind` at `path`.
    pub fn new(path: FieldPath, kind: ValidationErrorKind) -> ValidationError {
        ValidationError { path, kind }
    }
}

/// Collects problems while a check walks a submission.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<ValidationError>);

impl Problems {
    /// Records a problem.
    pub fn push(&mut self, path: FieldPath, kind: ValidationErrorKind) {
        self.0.push(ValidationError::new(path, kind));
    }

    /// `Ok(value)` if nothing was recorded, else every problem.
    pub fn into_result<T>(self, value: T) -> Result<T, Vec<ValidationError>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }
}

/// Checks a required name: 1–100 characters.
pub fn check_name(problems: &mut Problems, path: FieldPath, name: &str) {
    if name.is_empty() {
        problems.push(path, ValidationErrorKind::Empty);
    } else {
        check_max_chars(problems, path, name);
    }
}

/// Checks an optional text (tag, display name): at most 100 characters.
pub fn check_max_chars(problems: &mut Problems, path: FieldPath, text: &str) {
    let len = text.chars().count();
    if len > MAX_NAME_LEN {
        problems.push(
            path,
            ValidationErrorKind::TooLong {
                len,
                max: MAX_NAME_LEN,
            },
        );
    }
}

/// Checks metadata: keys and values at most 100 bytes, keys non-empty and without `__`.
pub fn validate_metadata(problems: &mut Problems, path: &FieldPath, metadata: &Metadata) {
    for (key, value) in metadata {
        let entry = path.key(key);
        if key.is_empty() {
            problems.push(entry.clone(), ValidationErrorKind::Empty);
        }
        if key.contains("__") {
            problems.push(entry.clone(), ValidationErrorKind::ReservedMetadataKey);
        }
        for text in [key, value] {
            if text.len() > MAX_NAME_LEN {
                problems.push(
                    entry.clone(),
                    ValidationErrorKind::TooManyBytes {
                        len: text.len(),
                        max: MAX_NAME_LEN,
                    },
                );
            }
        }
    }
}

/// Checks that `value` is nested at most [`MAX_JSON_DEPTH`] levels deep.
pub fn check_json_depth(problems: &mut Problems, path: FieldPath, value: &serde_json::Value) {
    fn depth_exceeds(value: &serde_json::Value, remaining: usize) -> bool {
        let children: Box<dyn Iterator<Item = &serde_json::Value>> = match value {
            serde_json::Value::Array(items) => Box::new(items.iter()),
            serde_json::Value::Object(map) => Box::new(map.values()),
            _ => return false,
        };
        if remaining == 0 {
            return true;
        }
        children
            .into_iter()
            .any(|child| depth_exceeds(child, remaining - 1))
    }
    if depth_exceeds(value, MAX_JSON_DEPTH) {
        problems.push(
            path,
            ValidationErrorKind::TooDeep {
                max: MAX_JSON_DEPTH,
            },
        );
    }
}

/// Whether `key` can be named by a `{parameters.key}` placeholder.
pub fn is_parameter_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Compiles `schema` as a JSON Schema, or says why it is not one.
pub fn compile_schema(schema: &serde_json::Value) -> Result<jsonschema::Validator, String> {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .map_err(|error| error.to_string())
}

/// Checks one function input or output identifier: 1–100 characters, unique in `seen`.
fn check_identifier(
    problems: &mut Problems,
    path: FieldPath,
    identifier: &str,
    seen: &mut BTreeSet<String>,
) {
    check_name(problems, path.clone(), identifier);
    if !seen.insert(identifier.to_owned()) {
        problems.push(path, ValidationErrorKind::Duplicate(identifier.to_owned()));
    }
}

fn check_file(problems: &mut Problems, path: FieldPath, file: &File) {
    if !file.has_valid_checksum() {
        problems.push(path.field("checksum"), ValidationErrorKind::InvalidChecksum);
    }
    if file.storage_address.is_empty() {
        problems.push(path.field("storage_address"), ValidationErrorKind::Empty);
    }
}

fn check_steps(problems: &mut Problems, path: FieldPath, steps: &[Step]) {
    for (idx, step) in steps.iter().enumerate() {
        let step_path = path.index(idx);
        check_name(problems, step_path.field("name"), &step.name);
        match step.command.first() {
            None => problems.push(
                step_path.field("command"),
                ValidationErrorKind::EmptyCommand,
            ),
            Some(program) if program.is_empty() => problems.push(
                step_path.field("command").index(0),
                ValidationErrorKind::Empty,
            ),
            Some(_) => {}
        }
    }
}

/// Whether `path` is relative and never climbs above its root.
pub fn is_confined_path(path: &str) -> bool {
    !path.starts_with('/')
        && !path.contains('\\')
        && !path.contains('\0')
        && path.split('/').all(|part| part != "..")
}

/// Validates a dataset to register: name 1–100 characters, metadata, files, type.
pub fn validate_dataset(
    dataset: &crate::submission::NewDataset,
) -> Result<(), Vec<ValidationError>> {
    let root = FieldPath::root();
    let mut problems = Problems::default();
    check_name(&mut problems, root.field("name"), &dataset.name);
    if dataset.data_type.is_empty() {
        problems.push(root.field("type"), ValidationErrorKind::Empty);
    }
    check_file(&mut problems, root.field("opener"), &dataset.opener);
    check_file(
        &mut problems,
        root.field("description"),
        &dataset.description,
    );
    validate_metadata(&mut problems, &root.field("metadata"), &dataset.metadata);
    problems.into_result(())
}

/// Validates a function to register (SPEC.md §4); returns every problem found.
pub fn validate_function(function: &NewFunction) -> Result<(), Vec<ValidationError>> {
    let root = FieldPath::root();
    let mut problems = Problems::default();
    check_name(&mut problems, root.field("name"), &function.name);
    if let Some(display_name) = &function.display_name {
        check_max_chars(&mut problems, root.field("display_name"), display_name);
    }
    validate_metadata(&mut problems, &root.field("metadata"), &function.metadata);
    if let Some(file) = &function.description {
        check_file(&mut problems, root.field("description"), file);
    }
    if let Some(file) = &function.archive {
        check_file(&mut problems, root.field("archive"), file);
    }

    let mut seen = BTreeSet::new();
    let mut data_managers = 0;
    let mut has_samples = false;
    for (idx, input) in function.inputs.iter().enumerate() {
        let path = root.field("inputs").index(idx);
        check_identifier(
            &mut problems,
            path.field("identifier"),
            &input.identifier,
            &mut seen,
        );
        match input.kind {
            InputKind::DataManager => {
                if input.optional {
                    problems.push(
                        path.field("optional"),
                        ValidationErrorKind::OptionalDataManager,
                    );
                }
                if input.multiple {
                    problems.push(
                        path.field("multiple"),
                        ValidationErrorKind::MultipleDataManager,
                    );
                }
                data_managers += 1;
                if data_managers > 1 {
                    problems.push(path.field("kind"), ValidationErrorKind::SecondDataManager);
                }
            }
            InputKind::DataSample => has_samples = true,
            InputKind::Model => {}
        }
    }
    if data_managers > 0 && !has_samples {
        problems.push(
            root.field("inputs"),
            ValidationErrorKind::DataManagerWithoutSamples,
        );
    }
    if has_samples && data_managers == 0 {
        problems.push(
            root.field("inputs"),
            ValidationErrorKind::SamplesWithoutDataManager,
        );
    }

    let mut seen = BTreeSet::new();
    for (idx, output) in function.outputs.iter().enumerate() {
        let path = root.field("outputs").index(idx);
        check_identifier(
            &mut problems,
            path.field("identifier"),
            &output.identifier,
            &mut seen,
        );
        if output.kind == OutputKind::Performance && output.multiple {
            problems.push(
                path.field("multiple"),
                ValidationErrorKind::MultiplePerformance,
            );
        }
    }

    check_steps(&mut problems, root.field("steps"), &function.steps);
    check_steps(
        &mut problems,
        root.field("build_steps"),
        &function.build_steps,
    );

    let schema = match &function.parameter_schema {
        Some(schema) => match compile_schema(schema) {
            Ok(validator) => Some(validator),
            Err(reason) => {
                problems.push(
                    root.field("parameter_schema"),
                    ValidationErrorKind::InvalidSchema(reason),
                );
                None
            }
        },
        None => None,
    };
    let mut seen = BTreeSet::new();
    for (idx, parameter) in function.parameters.iter().enumerate() {
        let path = root.field("parameters").index(idx);
        if !is_parameter_key(&parameter.key) {
            problems.push(
                path.field("key"),
                ValidationErrorKind::InvalidParameterKey(parameter.key.clone()),
            );
        } else if !seen.insert(parameter.key.clone()) {
            problems.push(
                path.field("key"),
                ValidationErrorKind::Duplicate(parameter.key.clone()),
            );
        }
        if let (Some(default), Some(validator)) = (&parameter.default, &schema) {
            // The schema describes the whole parameters object; check the default in place.
            let mut object = serde_json::Map::new();
            object.insert(parameter.key.clone(), default.clone());
            for error in validator.iter_errors(&serde_json::Value::Object(object)) {
                let at_this_key = error
                    .instance_path()
                    .as_str()
                    .starts_with(&format!("/{}", parameter.key));
                if at_this_key {
                    problems.push(
                        path.field("default"),
                        ValidationErrorKind::SchemaMismatch(error.to_string()),
                    );
                }
            }
        }
    }

    if let Some(workspace) = &function.workspace
        && !is_confined_path(workspace)
    {
        problems.push(
            root.field("workspace"),
            ValidationErrorKind::EscapingPath(workspace.clone()),
        );
    }
    for key in function.requirements.0.keys() {
        if key.is_empty() {
            problems.push(
                root.field("requirements").key(key),
                ValidationErrorKind::Empty,
            );
        }
    }
    let retry = &function.retry;
    if !(1..=MAX_ATTEMPTS).contains(&retry.max_attempts) {
        problems.push(
            root.field("retry").field("max_attempts"),
            ValidationErrorKind::OutOfRange {
                min: 1,
                max: u64::from(MAX_ATTEMPTS),
            },
        );
    }
    if retry.backoff_initial_ms > retry.backoff_max_ms {
        problems.push(root.field("retry"), ValidationErrorKind::BackoffOrder);
    }
    if function.timeout_secs == Some(0) {
        problems.push(
            root.field("timeout_secs"),
            ValidationErrorKind::OutOfRange {
                min: 1,
                max: u64::MAX,
            },
        );
    }
    check_json_depth(&mut problems, root.field("data"), &function.data);
    problems.into_result(())
}

#[cfg(test)]
mod tests;
