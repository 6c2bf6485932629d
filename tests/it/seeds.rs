//! Every field the seed documents declare has a home in baton's model.
//!
//! The five seeds (`docs/seeds/`, unchanged copies) are each read by a small extractor for their
//! own format. `docs/seed-map.md` maps every `Entity.field` they declare to homes written as
//! `Type.field` (a `pub` field, or a `pub fn` for a derived value, of a `pub struct` in
//! `models/src`), `Type::Variant` (an enum word) and `table.column` (in `migrations/*/up.sql`).
//! These tests check the map against both sides, so a seed field without a row, a row without a
//! seed field and a home that does not exist each fail with a message naming them.
//!
//! Only plain text is parsed, on purpose: the checks hold the documents and the sources to the
//! layouts rustfmt and the seeds use, and need nothing but std.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// Substra SDK models: `- name: type` lines under `## Model` headings.
const SUBSTRA_SDK: &str = "000_9d2e230125221741.txt";
/// qunicorn Deployments and Jobs: reStructuredText list-tables.
const QUNICORN: &str = "001_dfa27538ab6b76ac.txt";
/// Job Orchestra data model: `* field: description` bullets under `## Entity` headings.
const ORCHESTRA: &str = "002_a737c2542a418a6c.txt";
/// lucihub-common: `- item` bullets under **Cold storage** and **Hot storage**.
const LUCIHUB: &str = "003_a7f48a46470f4c28.txt";
/// Substra orchestrator Function doc: prose naming options, kinds and statuses.
const SUBSTRA_FUNCTION: &str = "004_fca6a7d1066edee6.txt";

/// An extractor: the `(entity, field)` pairs a seed declares, in document order.
type Extractor = fn(&str) -> Vec<(String, String)>;

/// Each seed with its extractor.
const SEEDS: &[(&str, Extractor)] = &[
    (SUBSTRA_SDK, substra_sdk_fields),
    (QUNICORN, qunicorn_fields),
    (ORCHESTRA, orchestra_fields),
    (LUCIHUB, lucihub_fields),
    (SUBSTRA_FUNCTION, substra_function_fields),
];

/// The map checked here, relative to the workspace root.
const SEED_MAP: &str = "docs/seed-map.md";

/// One field a seed declares: `Entity.field` in one document.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SeedField {
    document: String,
    entity: String,
    field: String,
}

impl fmt::Display for SeedField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "docs/seeds/{}: `{}.{}`",
            self.document, self.entity, self.field
        )
    }
}

/// One row of a table of the seed map.
#[derive(Debug)]
struct MapRow {
    /// The row's line number in the map, from 1.
    line: usize,
    seed_field: SeedField,
    /// The code spans of the "baton home" cell.
    homes: Vec<String>,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn read_seed(document: &str) -> String {
    read(&workspace_root().join("docs/seeds").join(document))
}

/// The text between backticks: `a` and `b` in "`a`, `b`".
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// `name` without a trailing explanation in parentheses: `run (by UUID)` is `run`.
fn without_explanation(name: &str) -> String {
    name.split_once(" (")
        .map_or(name, |(name, _)| name)
        .trim()
        .to_owned()
}

/// A status-like word: upper-case letters and underscores, at least three of them.
fn is_upper_word(word: &str) -> bool {
    word.len() >= 3 && word.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
}

/// Seed 000: the `- name: type` lines of the text block under each `## Model` of `# Models`.
fn substra_sdk_fields(text: &str) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let mut in_models = false;
    let mut entity: Option<&str> = None;
    let mut in_block = false;
    for line in text.lines() {
        if let Some(title) = line.strip_prefix("# ") {
            in_models = title.trim() == "Models";
            entity = None;
        } else if let Some(title) = line.strip_prefix("## ") {
            entity = in_models.then_some(title.trim());
        } else if line.starts_with("```") {
            in_block = !in_block;
        } else if in_block
            && let Some(entity) = entity
            && let Some((name, _type)) = line.strip_prefix("- ").and_then(|l| l.split_once(':'))
        {
            fields.push((entity.to_owned(), name.trim().to_owned()));
        }
    }
    fields
}

/// The entities seed 000 lists under `# Summary` (`- [DataSample](#DataSample)`).
fn substra_sdk_summary(text: &str) -> Vec<String> {
    let mut entities = Vec::new();
    let mut in_summary = false;
    for line in text.lines() {
        if let Some(title) = line.strip_prefix("# ") {
            in_summary = title.trim() == "Summary";
        } else if in_summary
            && let Some(link) = line.strip_prefix("- [")
            && let Some((name, _)) = link.split_once(']')
        {
            entities.push(name.to_owned());
        }
    }
    entities
}

/// Seed 001: the first cell of each list-table row after its header rows; the entity is `X` of
/// the "Attributes of X Data" line before the table.
fn qunicorn_fields(text: &str) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let mut entity: Option<&str> = None;
    let mut header_rows_left = 0usize;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(name) = trimmed
            .strip_prefix("Attributes of ")
            .and_then(|rest| rest.strip_suffix(" Data"))
        {
            entity = Some(name);
        } else if let Some(count) = trimmed.strip_prefix(":header-rows:") {
            header_rows_left = count.trim().parse().expect("a number of header rows");
        } else if let Some(row) = trimmed.strip_prefix('*')
            && let Some(cell) = row.trim_start().strip_prefix('-')
            && let Some(entity) = entity
        {
            if header_rows_left > 0 {
                header_rows_left -= 1;
            } else {
                fields.push((entity.to_owned(), cell.trim().to_owned()));
            }
        }
    }
    fields
}

/// Seed 002: `* field: description` bullets under each `## Entity`, and the tab-indented
/// `* step.name: …` bullets, which keep their prefix.
fn orchestra_fields(text: &str) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let mut entity: Option<&str> = None;
    for line in text.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            entity = Some(title.trim());
        } else if line.starts_with("# ") {
            entity = None;
        } else if let Some(entity) = entity
            && let Some(bullet) = line.trim_start().strip_prefix("* ")
            && let Some((name, _description)) = bullet.split_once(':')
        {
            fields.push((entity.to_owned(), name.trim().to_owned()));
        }
    }
    fields
}

/// Seed 003: the `- item` bullets after **Cold storage** and **Hot storage**. A bullet with
/// nested bullets is an entity `<storage> <item>` whose nested bullets are its fields; a bullet
/// without is a field of `<storage>`. Parenthesised explanations are dropped from names.
fn lucihub_fields(text: &str) -> Vec<(String, String)> {
    // (storage, top-level item, nested items), in document order.
    let mut items: Vec<(String, String, Vec<String>)> = Vec::new();
    let mut storage: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if line.starts_with('#') {
            storage = None;
        } else if let Some(name) = trimmed
            .strip_prefix("**")
            .and_then(|rest| rest.strip_suffix("**"))
        {
            storage = Some(name.to_owned());
        } else if let Some(storage) = &storage
            && let Some(item) = trimmed.strip_prefix("- ")
        {
            let name = without_explanation(item);
            if line.starts_with('-') {
                items.push((storage.clone(), name, Vec::new()));
            } else if let Some((_, _, nested)) = items
                .last_mut()
                .filter(|(item_storage, _, _)| item_storage == storage)
            {
                nested.push(name);
            }
        }
    }
    let mut fields = Vec::new();
    for (storage, item, nested) in items {
        if nested.is_empty() {
            fields.push((storage, item));
        } else {
            let entity = format!("{storage} {item}");
            fields.extend(nested.into_iter().map(|field| (entity.clone(), field)));
        }
    }
    fields
}

/// Seed 004, which is prose: the bold backticked names under `### Structure` (fields of its
/// `##` section), the backticked kinds after "must be one of the following" under `#### Inputs`
/// and `#### Outputs`, the `- WORD:` bullets under `## Status`, and the upper-case words of the
/// prose under `## State`.
fn substra_function_fields(text: &str) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut section = String::new();
    let mut heading = String::new();
    for line in text.lines() {
        if line.starts_with('#') {
            let level = line.bytes().take_while(|b| *b == b'#').count();
            let title = line[level..].trim().to_owned();
            if level == 2 {
                section.clone_from(&title);
            }
            heading = title;
            continue;
        }
        match (section.as_str(), heading.as_str()) {
            (_, "Structure") => {
                if let Some(bold) = line.split("**").nth(1)
                    && let Some(name) = code_spans(bold).first()
                {
                    fields.push((section.clone(), (*name).to_owned()));
                }
            }
            (_, "Inputs" | "Outputs") => {
                if let Some((_, kinds)) = line.split_once("must be one of the following:") {
                    for kind in code_spans(kinds) {
                        fields.push((heading.clone(), kind.to_owned()));
                    }
                }
            }
            ("Status", _) => {
                if let Some((word, _)) = line.strip_prefix("- ").and_then(|l| l.split_once(':'))
                    && is_upper_word(word)
                {
                    fields.push((section.clone(), word.to_owned()));
                }
            }
            ("State", _) if !line.starts_with('!') => {
                for word in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    let field = (section.clone(), word.to_owned());
                    if is_upper_word(word) && !fields.contains(&field) {
                        fields.push(field);
                    }
                }
            }
            _ => {}
        }
    }
    fields
}

/// Every field every seed declares.
fn declared_fields() -> Vec<SeedField> {
    SEEDS
        .iter()
        .flat_map(|(document, extract)| {
            extract(&read_seed(document))
                .into_iter()
                .map(|(entity, field)| SeedField {
                    document: (*document).to_owned(),
                    entity,
                    field,
                })
        })
        .collect()
}

/// The rows of the seed map's tables. Each table belongs to the seed named by the `##` heading
/// above it (`## 000_….txt: …`); a row is `| `Entity.field` | homes | notes |`.
fn map_rows() -> Vec<MapRow> {
    let text = read(&workspace_root().join(SEED_MAP));
    let mut rows = Vec::new();
    let mut document: Option<String> = None;
    for (idx, line) in text.lines().enumerate() {
        let line_number = idx + 1;
        if let Some(title) = line.strip_prefix("## ") {
            document = title
                .split(':')
                .next()
                .filter(|name| name.ends_with(".txt"))
                .map(str::to_owned);
            continue;
        }
        let (Some(document), true) = (&document, line.starts_with('|')) else {
            continue;
        };
        let cells: Vec<&str> = line
            .trim()
            .strip_prefix('|')
            .and_then(|l| l.strip_suffix('|'))
            .unwrap_or_else(|| panic!("{SEED_MAP}:{line_number}: a row ends with `|`"))
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(
            cells.len(),
            3,
            "{SEED_MAP}:{line_number}: a row has three cells: seed field, baton home, notes"
        );
        if cells[0] == "seed field" || cells[0].chars().all(|c| c == '-') {
            continue;
        }
        let seed_field = match code_spans(cells[0]).as_slice() {
            [name] => name
                .split_once('.')
                .map(|(entity, field)| SeedField {
                    document: document.clone(),
                    entity: entity.to_owned(),
                    field: field.to_owned(),
                })
                .unwrap_or_else(|| {
                    panic!("{SEED_MAP}:{line_number}: `{name}` is not `Entity.field`")
                }),
            _ => panic!("{SEED_MAP}:{line_number}: the seed field is one `Entity.field` code span"),
        };
        rows.push(MapRow {
            line: line_number,
            seed_field,
            homes: code_spans(cells[1])
                .into_iter()
                .map(str::to_owned)
                .collect(),
        });
    }
    rows
}

/// A home named in the map.
#[derive(Debug, PartialEq, Eq)]
enum Home<'a> {
    /// `Type.field`: a field or method of a struct in `models/src`.
    Field { ty: &'a str, name: &'a str },
    /// `Type::Variant`: a variant of an enum in `models/src`.
    Variant { ty: &'a str, variant: &'a str },
    /// `table.column`: a column in the migrations.
    Column { table: &'a str, column: &'a str },
}

fn is_type_name(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_uppercase())
        && text.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn is_snake_name(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_lowercase())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn parse_home(text: &str) -> Option<Home<'_>> {
    if let Some((ty, variant)) = text.split_once("::") {
        return (is_type_name(ty) && is_type_name(variant))
            .then_some(Home::Variant { ty, variant });
    }
    let (left, right) = text.split_once('.')?;
    if !is_snake_name(right) {
        None
    } else if is_type_name(left) {
        Some(Home::Field {
            ty: left,
            name: right,
        })
    } else if is_snake_name(left) {
        Some(Home::Column {
            table: left,
            column: right,
        })
    } else {
        None
    }
}

/// The Rust sources of `models/src`, as text.
struct ModelSources(Vec<String>);

impl ModelSources {
    fn load() -> ModelSources {
        fn collect(dir: &Path, texts: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).expect("readable source directory") {
                let path = entry.expect("directory entry").path();
                if path.is_dir() {
                    collect(&path, texts);
                } else if path.extension().is_some_and(|ext| ext == "rs") {
                    texts.push(read(&path));
                }
            }
        }
        let mut texts = Vec::new();
        collect(&workspace_root().join("models/src"), &mut texts);
        assert!(!texts.is_empty(), "models/src has Rust sources");
        ModelSources(texts)
    }

    /// The bodies of the items whose first line (trimmed) `opens` and ends with `{`, up to the
    /// `}` at the item's own indentation (rustfmt's layout).
    fn bodies(&self, opens: impl Fn(&str) -> bool) -> Vec<Vec<&str>> {
        let mut bodies = Vec::new();
        for text in &self.0 {
            let lines: Vec<&str> = text.lines().collect();
            for (idx, line) in lines.iter().enumerate() {
                let trimmed = line.trim_start();
                if !opens(trimmed) || !trimmed.ends_with('{') {
                    continue;
                }
                let close = format!("{}}}", &line[..line.len() - trimmed.len()]);
                let body = lines[idx + 1..]
                    .iter()
                    .take_while(|body_line| **body_line != close)
                    .map(|body_line| body_line.trim_start())
                    .collect();
                bodies.push(body);
            }
        }
        bodies
    }

    /// Whether `pub struct ty` has a `pub name:` field, or `impl ty` a `pub fn name(`.
    fn has_field_or_method(&self, ty: &str, name: &str) -> bool {
        let declares = |keyword: &str, trimmed: &str| {
            trimmed
                .strip_prefix(keyword)
                .and_then(|rest| rest.strip_prefix(ty))
                .is_some_and(|rest| rest.starts_with([' ', '{', '<']))
        };
        let field = format!("pub {name}:");
        let has_field = self
            .bodies(|trimmed| declares("pub struct ", trimmed))
            .iter()
            .flatten()
            .any(|line| line.starts_with(&field));
        let methods = [format!("pub fn {name}("), format!("pub const fn {name}(")];
        let has_method = self
            .bodies(|trimmed| declares("impl ", trimmed))
            .iter()
            .flatten()
            .any(|line| methods.iter().any(|method| line.starts_with(method)));
        has_field || has_method
    }

    /// Whether `pub enum ty` (plain or inside `word_enum!`) has the variant `variant`.
    fn has_variant(&self, ty: &str, variant: &str) -> bool {
        self.bodies(|trimmed| {
            trimmed
                .strip_prefix("pub enum ")
                .and_then(|rest| rest.strip_prefix(ty))
                .is_some_and(|rest| rest.starts_with([' ', '{', '<', '(']))
        })
        .iter()
        .flatten()
        .any(|line| {
            line.strip_prefix(variant)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', ',', '{', '(', '=']))
        })
    }

    /// `Ok` when a `Type.field` or `Type::Variant` home exists, else why not.
    fn check(&self, home: &Home<'_>) -> Result<(), String> {
        match *home {
            Home::Field { ty, name } if !self.has_field_or_method(ty, name) => Err(format!(
                "models/src has no `pub struct {ty}` with a `pub {name}:` field, nor a \
                 `pub fn {name}(` in an `impl {ty}`"
            )),
            Home::Variant { ty, variant } if !self.has_variant(ty, variant) => Err(format!(
                "models/src has no `pub enum {ty}` with a variant `{variant}`"
            )),
            _ => Ok(()),
        }
    }
}

/// Every `(table, column)` the migrations create, from `CREATE TABLE` blocks of each `up.sql`.
fn schema_columns() -> BTreeSet<(String, String)> {
    let mut columns = BTreeSet::new();
    let migrations = workspace_root().join("migrations");
    for entry in std::fs::read_dir(&migrations).expect("readable migrations directory") {
        let up = entry.expect("directory entry").path().join("up.sql");
        if !up.is_file() {
            continue;
        }
        let mut table: Option<String> = None;
        for line in read(&up).lines() {
            let trimmed = line.trim();
            if let Some(rest) = trimmed.strip_prefix("CREATE TABLE ") {
                table = rest.split_whitespace().next().map(str::to_owned);
            } else if trimmed.starts_with(");") {
                table = None;
            } else if let Some(table) = &table
                && let Some(column) = trimmed.split_whitespace().next()
                && is_snake_name(column)
            {
                columns.insert((table.clone(), column.to_owned()));
            }
        }
    }
    assert!(!columns.is_empty(), "migrations/*/up.sql create tables");
    columns
}

/// One line per problem, for an assertion message.
fn listed(problems: &[String]) -> String {
    problems.join("\n")
}

#[test]
fn every_seed_field_has_a_home_in_the_map() {
    let mapped: BTreeSet<SeedField> = map_rows().into_iter().map(|row| row.seed_field).collect();
    let missing: Vec<String> = declared_fields()
        .into_iter()
        .filter(|field| !mapped.contains(field))
        .map(|field| format!("{field} has no row in {SEED_MAP}"))
        .collect();
    assert!(
        missing.is_empty(),
        "seed fields without a home:\n{}",
        listed(&missing)
    );
}

#[test]
fn every_row_of_the_map_names_a_field_its_seed_declares() {
    let declared: BTreeSet<SeedField> = declared_fields().into_iter().collect();
    let mut seen = BTreeSet::new();
    let mut problems = Vec::new();
    for row in map_rows() {
        if !declared.contains(&row.seed_field) {
            problems.push(format!(
                "{SEED_MAP}:{}: {} is not a field that seed declares",
                row.line, row.seed_field
            ));
        }
        if !seen.insert(row.seed_field.clone()) {
            problems.push(format!(
                "{SEED_MAP}:{}: {} has a second row",
                row.line, row.seed_field
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "rows of the seed map that match no seed field:\n{}",
        listed(&problems)
    );
}

#[test]
fn every_home_in_the_map_exists_in_models() {
    let sources = ModelSources::load();
    let mut problems = Vec::new();
    for row in map_rows() {
        let at = format!("{SEED_MAP}:{}: {}", row.line, row.seed_field);
        let homes: Vec<(&str, Option<Home<'_>>)> = row
            .homes
            .iter()
            .map(|home| (home.as_str(), parse_home(home)))
            .collect();
        if !homes
            .iter()
            .any(|(_, home)| matches!(home, Some(Home::Field { .. })))
        {
            problems.push(format!("{at} names no `Type.field` home"));
        }
        for (text, home) in homes {
            match home {
                None => problems.push(format!(
                    "{at}: home `{text}` is neither `Type.field`, `Type::Variant` nor \
                     `table.column`"
                )),
                Some(home) => {
                    if let Err(why) = sources.check(&home) {
                        problems.push(format!("{at} maps to `{text}`, but {why}"));
                    }
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "seed fields whose home is missing:\n{}",
        listed(&problems)
    );
}

#[test]
fn every_table_column_in_the_map_exists_in_the_migrations() {
    let columns = schema_columns();
    let mut problems = Vec::new();
    for row in map_rows() {
        for text in &row.homes {
            if let Some(Home::Column { table, column }) = parse_home(text)
                && !columns.contains(&(table.to_owned(), column.to_owned()))
            {
                problems.push(format!(
                    "{SEED_MAP}:{}: {} maps to `{text}`, but no migration creates table \
                     `{table}` with a column `{column}`",
                    row.line, row.seed_field
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "seed fields whose column is missing:\n{}",
        listed(&problems)
    );
}

#[test]
fn extractors_find_every_entity_of_each_seed() {
    let sdk = read_seed(SUBSTRA_SDK);
    let expected: [(&str, Vec<String>); 5] = [
        (SUBSTRA_SDK, substra_sdk_summary(&sdk)),
        (QUNICORN, words(&["Deployment", "Job"])),
        (
            ORCHESTRA,
            words(&[
                "Project",
                "Job",
                "Run",
                "Schedule",
                "User",
                "User Authentication",
                "Worker",
            ]),
        ),
        (
            LUCIHUB,
            words(&[
                "Cold storage run",
                "Cold storage device",
                "Hot storage run",
                "Hot storage",
            ]),
        ),
        (
            SUBSTRA_FUNCTION,
            words(&[
                "Function inputs/outputs",
                "Inputs",
                "Outputs",
                "Status",
                "State",
            ]),
        ),
    ];
    assert_eq!(
        expected[0].1.len(),
        11,
        "seed 000's summary lists 11 models"
    );
    for ((document, extract), (expected_document, entities)) in SEEDS.iter().zip(&expected) {
        assert_eq!(document, expected_document);
        let mut found: Vec<String> = Vec::new();
        for (entity, _) in extract(&read_seed(document)) {
            if !found.contains(&entity) {
                found.push(entity);
            }
        }
        assert_eq!(&found, entities, "the entities of docs/seeds/{document}");
    }
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|word| (*word).to_owned()).collect()
}

#[test]
fn extractors_keep_nested_and_explained_fields() {
    let orchestra = orchestra_fields(&read_seed(ORCHESTRA));
    for (entity, field) in [("Job", "step.command"), ("Run", "step.index")] {
        assert!(
            orchestra.contains(&(entity.to_owned(), field.to_owned())),
            "seed 002 declares `{entity}.{field}`"
        );
    }
    let lucihub = lucihub_fields(&read_seed(LUCIHUB));
    for (entity, field) in [
        ("Cold storage run", "number of channels"),
        ("Hot storage run", "measurements"),
        ("Hot storage", "list of active devices"),
    ] {
        assert!(
            lucihub.contains(&(entity.to_owned(), field.to_owned())),
            "seed 003 declares `{entity}.{field}`"
        );
    }
    let function = substra_function_fields(&read_seed(SUBSTRA_FUNCTION));
    let statuses: Vec<&str> = function
        .iter()
        .filter(|(entity, _)| entity == "Status")
        .map(|(_, field)| field.as_str())
        .collect();
    assert_eq!(
        statuses,
        ["WAITING", "BUILDING", "READY", "FAILED", "CANCELED"]
    );
}

#[test]
fn a_home_missing_from_models_is_reported() {
    let sources = ModelSources::load();
    for present in [
        "Task.cancel_requested",
        "Function.summary",
        "ComputePlan.duration",
        "PlanCounters.task_count",
        "TaskStatus::Todo",
        "InputRef::ParentOutput",
    ] {
        let home = parse_home(present).expect("a well-formed home");
        assert_eq!(sources.check(&home), Ok(()), "`{present}` exists");
    }
    for absent in [
        "Task.should_cancel",
        "Task.key_",
        "Taskk.key",
        "ComputePlan.estimated",
        "TaskStatus::Pending",
    ] {
        let home = parse_home(absent).expect("a well-formed home");
        assert!(sources.check(&home).is_err(), "`{absent}` does not exist");
    }
    assert_eq!(parse_home("store::execution::list_channels"), None);
    assert_eq!(
        parse_home("tasks.worker_id"),
        Some(Home::Column {
            table: "tasks",
            column: "worker_id"
        })
    );
}
