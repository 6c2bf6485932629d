//! Data-driven checks of the core: each test is a script that reads like the design, and its
//! rendered effects and final state are an `expect-test` snapshot (`UPDATE_EXPECT=1` rewrites
//! them; read every change).
//!
//! A script is `setup | step | step ...`.
//!
//! Setup (and `add`) statements, separated by `;`:
//! - `a -> b, c -> d`: edges from every task of a group to every task of the next;
//!   a lone `a` declares a task;
//! - `fn g building: b, c`: tasks b and c run function g, which is BUILDING (function `f`, READY,
//!   runs every other task);
//! - `retry 3: a` (or `retry 3 fixed: a`, without jitter): a's policy allows 3 attempts, backoff
//!   1 s doubling up to 60 s;
//! - `ext x: a` / `ext x done: a`: a has a parent x outside the plan, not done / DONE;
//! - `given x TODO` (in `add` only): the status the shell gives x, instead of the one
//!   `models::task::initial_status` computes from the current state.
//!
//! Steps: `claim a w1 [60s]` (lease 30 s by default), `done a`, `fail a [retry]`, `stopped a`
//! (the worker reports Canceled), `renew a [60s]` (reports take `@2` for another attempt and
//! `!token` for a wrong token), `tick`, `cancel plan [why]`, `cancel a [why]`, `abort a [why]`,
//! `fn g ready`, `add <statements>`, `readd a` (adds a copy of a), `twice x` (adds a new x
//! twice in one batch), `ext x done|failed|canceled`, `show` (the state now).
//! A word `+10s` (or `+500ms`) anywhere in a step moves the clock forward before it.
//! `quiet <step>` tallies the task changes instead of listing them.
//!
//! The output lists, per step, its effects: `a → …` a status change (with a history row), `a ~ …`
//! a change without one, then enqueues, orders, claim replies, refusals and the plan; and at the
//! end the state of every task and of the plan. Times are offsets from the start; the jitter is
//! 0.5. After every step the helper checks the invariants the effects must keep (counters,
//! transitions allowed, refusals change nothing, a terminated plan has no work left to run).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use expect_test::{Expect, expect};
use models::task::initial_status;
use models::wire::Grant;
use models::{
    Attempt, ComputePlan, FunctionKey, FunctionStatus, OrganizationId, PlanCounters, PlanKey,
    PlanStatus, RetryPolicy, TaskErrorType, TaskKey, TaskStatus, Timestamp, WaitingReason,
    WorkerId,
};
use uuid::Uuid;

use super::{ClaimDecision, Effect, Event, Outcome, PlanState, TaskNode, apply};

const JITTER: f64 = 0.5;

fn base() -> Timestamp {
    Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap()
}

fn plan_key() -> PlanKey {
    PlanKey(Uuid::from_u128(0x3000))
}

/// Runs `script` and compares what it rendered with `expect`.
fn check(script: &str, expect: Expect) {
    let mut segments = script.split('|');
    let setup = segments.next().unwrap_or_default();
    let mut world = World::new(setup);
    let mut last = "";
    for step in segments {
        last = step.trim();
        world.step(last);
    }
    if last != "show" {
        world.show("end");
    }
    expect.assert_eq(&world.finish());
}

/// Tasks, functions and changes declared by setup or `add` statements.
#[derive(Default)]
struct Decl {
    /// New tasks, in order of first appearance.
    order: Vec<String>,
    parents: HashMap<String, Vec<String>>,
    function: HashMap<String, String>,
    function_status: Vec<(String, FunctionStatus)>,
    retry: HashMap<String, (u32, bool)>,
    external_done: Vec<String>,
    given: HashMap<String, (TaskStatus, Option<WaitingReason>)>,
}

fn parse_function_status(word: &str) -> FunctionStatus {
    FunctionStatus::from_word(&word.to_ascii_uppercase()).expect("a function status")
}

fn parse_given(word: &str) -> (TaskStatus, Option<WaitingReason>) {
    match word {
        "WAITING(BUILD)" => (TaskStatus::Waiting, Some(WaitingReason::Build)),
        "WAITING" | "WAITING(PARENTS)" => (TaskStatus::Waiting, Some(WaitingReason::Parents)),
        other => (TaskStatus::from_word(other).expect("a task status"), None),
    }
}

fn names(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .inspect(|name| {
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "not a task name: {name:?}"
            );
        })
        .map(str::to_owned)
        .collect()
}

fn parse_decl(text: &str, existing: &dyn Fn(&str) -> bool) -> Decl {
    let mut decl = Decl::default();
    let declare = |decl: &mut Decl, name: &str| {
        if !existing(name) && !decl.order.iter().any(|known| known == name) {
            decl.order.push(name.to_owned());
        }
    };
    for statement in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (head, list) = statement.split_once(':').unwrap_or((statement, ""));
        let words: Vec<&str> = head.split_whitespace().collect();
        match words.first().copied() {
            Some("fn") => {
                let function = words[1].to_owned();
                if let Some(status) = words.get(2) {
                    decl.function_status
                        .push((function.clone(), parse_function_status(status)));
                }
                for name in names(list) {
                    declare(&mut decl, &name);
                    decl.function.insert(name, function.clone());
                }
            }
            Some("retry") => {
                let attempts: u32 = words[1].parse().expect("a number of attempts");
                let jitter = words.get(2) != Some(&"fixed");
                for name in names(list) {
                    declare(&mut decl, &name);
                    decl.retry.insert(name, (attempts, jitter));
                }
            }
            Some("ext") => {
                let parent = words[1].to_owned();
                if words.get(2) == Some(&"done") {
                    decl.external_done.push(parent.clone());
                }
                for name in names(list) {
                    declare(&mut decl, &name);
                    decl.parents.entry(name).or_default().push(parent.clone());
                }
            }
            Some("given") => {
                decl.given
                    .insert(words[1].to_owned(), parse_given(words[2]));
            }
            _ => {
                let groups: Vec<Vec<String>> = statement.split("->").map(names).collect();
                for group in &groups {
                    for name in group {
                        declare(&mut decl, name);
                    }
                }
                for pair in groups.windows(2) {
                    for child in &pair[1] {
                        let parents = decl.parents.entry(child.clone()).or_default();
                        for parent in &pair[0] {
                            if !parents.contains(parent) {
                                parents.push(parent.clone());
                            }
                        }
                    }
                }
            }
        }
    }
    decl
}

fn parse_duration(text: &str) -> TimeDelta {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |at| text.split_at(at));
    let number: i64 = number.parse().expect("a duration");
    match unit {
        "ms" => TimeDelta::milliseconds(number),
        "s" => TimeDelta::seconds(number),
        "m" => TimeDelta::minutes(number),
        "h" => TimeDelta::hours(number),
        other => panic!("unknown duration unit {other:?}"),
    }
}

struct World {
    /// Every task name, in the plan or outside it; the key of name i is `0x1000 + i`.
    names: Vec<String>,
    /// Function names and statuses; the key of function j is `0x2000 + j`.
    functions: Vec<(String, FunctionStatus)>,
    state: PlanState,
    now: Timestamp,
    out: String,
}

impl World {
    fn new(setup: &str) -> World {
        let plan = ComputePlan {
            key: plan_key(),
            project: None,
            name: "plan".to_owned(),
            tag: String::new(),
            owner: OrganizationId::from("org1"),
            creator: None,
            metadata: Default::default(),
            counters: PlanCounters::default(),
            status: PlanStatus::Empty,
            failed_task_key: None,
            creation_date: base(),
            start_date: None,
            end_date: None,
            failure_date: None,
            cancelation_date: None,
        };
        let mut world = World {
            names: Vec::new(),
            functions: vec![("f".to_owned(), FunctionStatus::Ready)],
            state: PlanState::new(plan.clone(), Vec::new(), HashSet::new()),
            now: base(),
            out: String::new(),
        };
        let decl = parse_decl(setup, &|_| false);
        let tasks = world.nodes(&decl);
        let external_done = decl
            .external_done
            .iter()
            .map(|name| world.key(name))
            .collect();
        world.state = PlanState::new(plan, tasks, external_done);
        world
    }

    fn key(&mut self, name: &str) -> TaskKey {
        let position = match self.names.iter().position(|known| known == name) {
            Some(position) => position,
            None => {
                self.names.push(name.to_owned());
                self.names.len() - 1
            }
        };
        TaskKey(Uuid::from_u128(0x1000 + position as u128))
    }

    fn function(&mut self, name: &str) -> (FunctionKey, FunctionStatus) {
        let position = match self.functions.iter().position(|(known, _)| known == name) {
            Some(position) => position,
            None => {
                self.functions
                    .push((name.to_owned(), FunctionStatus::Waiting));
                self.functions.len() - 1
            }
        };
        (
            FunctionKey(Uuid::from_u128(0x2000 + position as u128)),
            self.functions[position].1,
        )
    }

    fn token(&self, key: TaskKey, attempt: u32) -> Uuid {
        Uuid::from_u128((key.0.as_u128() << 32) | u128::from(attempt))
    }

    /// The new tasks of `decl`, with the statuses `initial_status` gives them now.
    fn nodes(&mut self, decl: &Decl) -> Vec<TaskNode> {
        for (function, status) in &decl.function_status {
            self.function(function);
            if let Some(entry) = self.functions.iter_mut().find(|(name, _)| name == function) {
                entry.1 = *status;
            }
        }
        let external_done: HashSet<String> = decl.external_done.iter().cloned().collect();
        let mut computed: HashMap<String, (TaskStatus, Option<WaitingReason>, u32)> =
            HashMap::new();
        let mut nodes: BTreeMap<usize, TaskNode> = BTreeMap::new();
        while computed.len() < decl.order.len() {
            let before = computed.len();
            for (position, name) in decl.order.iter().enumerate() {
                if computed.contains_key(name) {
                    continue;
                }
                let parents = decl.parents.get(name).cloned().unwrap_or_default();
                let mut statuses = Vec::new();
                let mut rank = 0;
                let mut ready = true;
                for parent in &parents {
                    let key = self.key(parent);
                    if let Some(task) = self.state.task(key) {
                        statuses.push(task.status);
                        rank = rank.max(task.rank + 1);
                    } else if let Some(&(status, _, parent_rank)) = computed.get(parent) {
                        statuses.push(status);
                        rank = rank.max(parent_rank + 1);
                    } else if decl.order.contains(parent) {
                        ready = false;
                    } else if external_done.contains(parent) {
                        statuses.push(TaskStatus::Done);
                        rank = rank.max(1);
                    } else {
                        statuses.push(TaskStatus::Waiting);
                        rank = rank.max(1);
                    }
                }
                if !ready && !decl.given.contains_key(name) {
                    continue;
                }
                let function = decl
                    .function
                    .get(name)
                    .map_or("f", String::as_str)
                    .to_owned();
                let (function_key, function_status) = self.function(&function);
                let initial = initial_status(function_status, statuses);
                let (status, waiting_reason) = decl
                    .given
                    .get(name)
                    .copied()
                    .unwrap_or((initial.status, initial.waiting_reason));
                computed.insert(name.clone(), (status, waiting_reason, rank));
                let (max_attempts, jitter) = decl.retry.get(name).copied().unwrap_or((1, true));
                let key = self.key(name);
                let parents = parents.iter().map(|parent| self.key(parent)).collect();
                nodes.insert(
                    position,
                    TaskNode {
                        key,
                        function_key,
                        status,
                        waiting_reason,
                        rank,
                        worker: OrganizationId::from("org1"),
                        routing_key: "any".to_owned(),
                        retry: RetryPolicy {
                            max_attempts,
                            backoff_initial_ms: 1_000,
                            backoff_max_ms: 60_000,
                            jitter,
                        },
                        attempt_count: 0,
                        lease: None,
                        worker_id: None,
                        not_before: None,
                        cancel_requested: false,
                        abort_requested: false,
                        error_type: None,
                        error_message: None,
                        start_date: None,
                        end_date: None,
                        parents,
                    },
                );
            }
            assert!(computed.len() > before, "the script's DAG has a cycle");
        }
        nodes.into_values().collect()
    }

    /// The attempt and token a report names by default, or as `@N` and `!token` say.
    fn report(&mut self, name: &str, words: &[&str]) -> (TaskKey, Attempt, Uuid) {
        let key = self.key(name);
        let current = self.state.task(key).map_or(Attempt(0), |task| {
            task.lease
                .as_ref()
                .map_or(Attempt(task.attempt_count), |lease| lease.attempt)
        });
        let attempt = words
            .iter()
            .find_map(|word| word.strip_prefix('@'))
            .map_or(current, |n| Attempt(n.parse().expect("an attempt number")));
        let token = if words.contains(&"!token") {
            Uuid::from_u128(0xdead)
        } else {
            self.token(key, attempt.get())
        };
        (key, attempt, token)
    }

    fn step(&mut self, step: &str) {
        let mut words: Vec<&str> = Vec::new();
        for word in step.split_whitespace() {
            match word.strip_prefix('+') {
                Some(duration) => self.now += parse_duration(duration),
                None => words.push(word),
            }
        }
        let quiet = words.first() == Some(&"quiet");
        if quiet {
            words.remove(0);
        }
        let _ = writeln!(self.out, "> {step}");
        let rest = |from: usize| words.get(from..).unwrap_or_default().join(" ");
        let event = match words.as_slice() {
            ["show"] => {
                self.show(&self.time(self.now));
                return;
            }
            ["claim", name, more @ ..] => {
                let key = self.key(name);
                let attempt = self.state.task(key).map_or(0, |task| task.attempt_count) + 1;
                Event::ClaimRequested {
                    task: key,
                    worker: WorkerId::from(*more.first().unwrap_or(&"w1")),
                    lease_token: self.token(key, attempt),
                    lease_duration: more
                        .get(1)
                        .map_or(TimeDelta::seconds(30), |d| parse_duration(d)),
                }
            }
            [
                verb @ ("done" | "fail" | "stopped" | "handback"),
                name,
                more @ ..,
            ] => {
                let (task, attempt, lease_token) = self.report(name, more);
                let outcome = match *verb {
                    "done" => Outcome::Done,
                    "fail" => Outcome::Failed {
                        error_type: TaskErrorType::Execution,
                        message: "boom".to_owned(),
                        retryable: more.contains(&"retry"),
                    },
                    "handback" => Outcome::Failed {
                        error_type: TaskErrorType::CanceledByWorker,
                        message: "worker shutting down".to_owned(),
                        retryable: true,
                    },
                    _ => Outcome::Canceled,
                };
                Event::Finished {
                    task,
                    attempt,
                    lease_token,
                    outcome,
                }
            }
            ["renew", name, more @ ..] => {
                let (task, attempt, lease_token) = self.report(name, more);
                let lease_duration = more
                    .iter()
                    .find(|word| word.starts_with(|c: char| c.is_ascii_digit()))
                    .map_or(TimeDelta::seconds(30), |d| parse_duration(d));
                Event::LeaseRenewed {
                    task,
                    attempt,
                    lease_token,
                    lease_duration,
                }
            }
            ["tick"] => Event::Tick,
            ["cancel", "plan", ..] => Event::CancelPlan { reason: rest(2) },
            ["cancel", name, ..] => Event::CancelTask {
                task: self.key(name),
                reason: rest(2),
            },
            ["abort", name, ..] => Event::AbortTask {
                task: self.key(name),
                reason: rest(2),
            },
            ["fn", name, status] => {
                let status = parse_function_status(status);
                let (function, _) = self.function(name);
                if let Some(entry) = self.functions.iter_mut().find(|(known, _)| known == name) {
                    entry.1 = status;
                }
                Event::FunctionChanged { function, status }
            }
            ["add", ..] => {
                let text = rest(1);
                let decl = parse_decl(&text, &|name| {
                    self.names
                        .iter()
                        .position(|known| known == name)
                        .is_some_and(|position| {
                            let key = TaskKey(Uuid::from_u128(0x1000 + position as u128));
                            self.state.task(key).is_some()
                        })
                });
                Event::TasksAdded {
                    tasks: self.nodes(&decl),
                }
            }
            ["readd", name] => {
                let key = self.key(name);
                Event::TasksAdded {
                    tasks: self.state.task(key).cloned().into_iter().collect(),
                }
            }
            ["twice", name] => {
                let decl = parse_decl(name, &|_| false);
                let tasks = self.nodes(&decl);
                Event::TasksAdded {
                    tasks: tasks.iter().chain(&tasks).cloned().collect(),
                }
            }
            ["ext", name, status] => Event::ExternalParentEnded {
                task: self.key(name),
                status: TaskStatus::from_word(&status.to_ascii_uppercase()).expect("a task status"),
            },
            other => panic!("unknown step {other:?}"),
        };
        let tasks_before: Vec<TaskNode> = self.state.tasks().cloned().collect();
        let plan_before = self.state.plan().clone();
        let effects = apply(&mut self.state, event, self.now, JITTER);
        self.verify(&tasks_before, &plan_before, &effects);
        self.render(&effects, quiet);
    }

    /// The invariants every apply keeps, whatever the script.
    fn verify(&self, tasks_before: &[TaskNode], plan_before: &ComputePlan, effects: &[Effect]) {
        let state = &self.state;
        let plan = state.plan();
        let mut recount = PlanCounters::default();
        for task in state.tasks() {
            recount.add(task.status);
            assert_eq!(
                task.lease.is_some(),
                task.status == TaskStatus::Doing,
                "lease only while DOING: {task:?}"
            );
            assert_eq!(
                task.waiting_reason.is_some(),
                task.status == TaskStatus::Waiting,
                "waiting reason only while WAITING: {task:?}"
            );
            assert_eq!(
                task.end_date.is_some(),
                task.status.is_terminal(),
                "end date once terminal: {task:?}"
            );
            if plan.is_terminated() {
                assert!(
                    task.status.is_terminal()
                        || (task.status == TaskStatus::Doing
                            && (task.cancel_requested || task.abort_requested)),
                    "a terminated plan keeps no work to run: {task:?}"
                );
            }
        }
        assert_eq!(plan.counters, recount, "counters are exact");
        assert_eq!(
            plan.status,
            plan.counters
                .status(plan.failure_date, plan.cancelation_date)
        );
        let refusals = effects
            .iter()
            .filter(|effect| {
                matches!(
                    effect,
                    Effect::Refused { .. }
                        | Effect::ReplyClaim {
                            reply: ClaimDecision::Refused { .. }
                        }
                )
            })
            .count();
        if refusals > 0 {
            assert_eq!(effects.len(), 1, "a refusal comes alone: {effects:?}");
            let tasks_after: Vec<TaskNode> = state.tasks().cloned().collect();
            assert_eq!(
                tasks_before,
                tasks_after.as_slice(),
                "a refusal changes no task"
            );
            assert_eq!(plan_before, plan, "a refusal changes no plan");
            return;
        }
        let mut statuses: HashMap<TaskKey, TaskStatus> = tasks_before
            .iter()
            .map(|task| (task.key, task.status))
            .collect();
        let mut last: HashMap<TaskKey, &TaskNode> = HashMap::new();
        let mut plan_changes = 0;
        for effect in effects {
            match effect {
                Effect::TaskChanged {
                    task,
                    status_changed,
                    ..
                } => {
                    if let Some(&from) = statuses.get(&task.key) {
                        if *status_changed {
                            assert!(
                                from.can_become(task.status),
                                "{from} → {} is not allowed",
                                task.status
                            );
                        } else {
                            assert_eq!(from, task.status, "an update keeps the status");
                        }
                    }
                    statuses.insert(task.key, task.status);
                    last.insert(task.key, task);
                }
                Effect::PlanChanged { plan: changed } => {
                    plan_changes += 1;
                    assert_eq!(changed, plan, "PlanChanged carries the plan");
                }
                Effect::ReplyClaim {
                    reply:
                        ClaimDecision::Granted(Grant {
                            task_key,
                            attempt,
                            lease_token,
                            ..
                        }),
                } => {
                    assert_eq!(*lease_token, self.token(*task_key, attempt.get()));
                }
                _ => {}
            }
        }
        for (key, task) in last {
            assert_eq!(state.task(key), Some(task), "the last change is the state");
        }
        assert!(plan_changes <= 1, "one PlanChanged at most");
        assert_eq!(
            plan_changes == 1,
            plan_before != plan,
            "PlanChanged if and only if the plan changed"
        );
    }

    fn time(&self, at: Timestamp) -> String {
        let ms = (at - base()).num_milliseconds();
        if ms % 1000 == 0 {
            format!("+{}s", ms / 1000)
        } else {
            format!("+{}s", ms as f64 / 1000.0)
        }
    }

    fn task_text(&self, task: &TaskNode) -> String {
        let mut text = task.status.to_string();
        if let Some(reason) = task.waiting_reason {
            let _ = write!(text, "({reason})");
        }
        if task.attempt_count > 0 {
            let _ = write!(text, " #{}", task.attempt_count);
        }
        if let Some(lease) = &task.lease {
            let _ = write!(text, " lease {}", self.time(lease.expires_at));
        }
        if let Some(worker) = &task.worker_id {
            let _ = write!(text, " on {worker}");
        }
        if let Some(at) = task.not_before {
            let _ = write!(text, " not-before {}", self.time(at));
        }
        if task.cancel_requested {
            text.push_str(" cancel-requested");
        }
        if task.abort_requested {
            text.push_str(" abort-requested");
        }
        if let Some(error) = task.error_type {
            let _ = write!(text, " error {error}");
        }
        if let Some(message) = &task.error_message {
            let _ = write!(text, " {message:?}");
        }
        if let Some(at) = task.start_date {
            let _ = write!(text, " start {}", self.time(at));
        }
        if let Some(at) = task.end_date {
            let _ = write!(text, " end {}", self.time(at));
        }
        text
    }

    fn plan_text(&self, plan: &ComputePlan) -> String {
        let c = plan.counters;
        let counts: Vec<String> = [
            (c.waiting_count, "waiting"),
            (c.todo_count, "todo"),
            (c.doing_count, "doing"),
            (c.done_count, "done"),
            (c.failed_count, "failed"),
            (c.canceled_count, "canceled"),
        ]
        .iter()
        .filter(|(count, _)| *count > 0)
        .map(|(count, word)| format!("{count} {word}"))
        .collect();
        let noun = if c.task_count == 1 { "task" } else { "tasks" };
        let mut text = format!("plan {} ({} {noun}", plan.status, c.task_count);
        if !counts.is_empty() {
            let _ = write!(text, ": {}", counts.join(", "));
        }
        text.push(')');
        if let Some(at) = plan.start_date {
            let _ = write!(text, " start {}", self.time(at));
        }
        if let Some(at) = plan.failure_date {
            let _ = write!(text, " failed {}", self.time(at));
        }
        if let Some(key) = plan.failed_task_key {
            let _ = write!(text, " by {key}");
        }
        if let Some(at) = plan.cancelation_date {
            let _ = write!(text, " canceled {}", self.time(at));
        }
        if let Some(at) = plan.end_date {
            let _ = write!(text, " end {}", self.time(at));
        }
        text
    }

    fn render(&mut self, effects: &[Effect], quiet: bool) {
        let mut lines = Vec::new();
        let mut tally: BTreeMap<String, usize> = BTreeMap::new();
        for effect in effects {
            let line = match effect {
                Effect::TaskChanged {
                    task,
                    reason,
                    status_changed,
                } => {
                    if quiet {
                        let arrow = if *status_changed { "→" } else { "~" };
                        *tally
                            .entry(format!("{arrow} {} ({reason})", task.status))
                            .or_default() += 1;
                        continue;
                    }
                    let arrow = if *status_changed { "→" } else { "~" };
                    format!("{} {arrow} {} ({reason})", task.key, self.task_text(task))
                }
                Effect::Enqueue {
                    task,
                    routing_key,
                    not_before,
                } => {
                    if quiet {
                        *tally.entry("enqueued".to_owned()).or_default() += 1;
                        continue;
                    }
                    let mut line = format!("enqueue {task}");
                    if routing_key != "any" {
                        let _ = write!(line, " on {routing_key}");
                    }
                    if let Some(at) = not_before {
                        let _ = write!(line, " not before {}", self.time(*at));
                    }
                    line
                }
                Effect::PlanChanged { plan } => self.plan_text(plan),
                Effect::ReplyClaim {
                    reply:
                        ClaimDecision::Granted(Grant {
                            task_key,
                            attempt,
                            lease_expires_at,
                            ..
                        }),
                } => format!(
                    "granted {task_key} attempt {attempt}, lease until {}",
                    self.time(*lease_expires_at)
                ),
                Effect::ReplyClaim {
                    reply: ClaimDecision::Refused { task_key, reason },
                } => format!("claim of {task_key} refused: {reason}"),
                Effect::SendOrder {
                    task,
                    worker,
                    order,
                } => {
                    if quiet {
                        *tally.entry(format!("order {order:?}")).or_default() += 1;
                        continue;
                    }
                    let worker = worker.as_ref().map_or("?", WorkerId::as_str);
                    format!("order {order:?} {task} to {worker}")
                }
                Effect::Refused { task, reason } => match task {
                    Some(task) => format!("refused ({task}): {reason}"),
                    None => format!("refused: {reason}"),
                },
            };
            lines.push(line);
        }
        for (what, count) in tally {
            lines.insert(0, format!("{count} × {what}"));
        }
        if lines.is_empty() {
            lines.push("(no effect)".to_owned());
        }
        for line in lines {
            let _ = writeln!(self.out, "  {line}");
        }
    }

    fn show(&mut self, label: &str) {
        let mut text = format!("== {label} ==\n");
        let tasks: Vec<&TaskNode> = self.state.tasks().collect();
        if tasks.len() <= 20 {
            for task in tasks {
                let _ = writeln!(text, "  {} {}", task.key, self.task_text(task));
            }
        } else {
            let mut by_status: BTreeMap<TaskStatus, usize> = BTreeMap::new();
            for task in tasks {
                *by_status.entry(task.status).or_default() += 1;
            }
            for (status, count) in by_status {
                let noun = if count == 1 { "task" } else { "tasks" };
                let _ = writeln!(text, "  {count} {noun} {status}");
            }
        }
        let _ = writeln!(text, "  {}", self.plan_text(self.state.plan()));
        let deadline = self
            .state
            .next_deadline()
            .map_or("none".to_owned(), |at| self.time(at));
        let _ = writeln!(
            text,
            "  active: {}, next deadline: {deadline}",
            if self.state.is_active() { "yes" } else { "no" },
        );
        self.out.push_str(&text);
    }

    /// The output, with keys replaced by names and timestamps by offsets.
    fn finish(self) -> String {
        let mut out = self.out;
        for (position, name) in self.names.iter().enumerate() {
            let key = Uuid::from_u128(0x1000 + position as u128).to_string();
            out = out.replace(&key, name);
        }
        for (position, (name, _)) in self.functions.iter().enumerate() {
            let key = Uuid::from_u128(0x2000 + position as u128).to_string();
            out = out.replace(&key, name);
        }
        out = out.replace(&plan_key().to_string(), "P");
        // RFC 3339 times in reasons, e.g. "not ready before 2030-01-01T00:00:00.500Z".
        while let Some(at) = out.find("2030-") {
            let end = out[at..].find('Z').map_or(out.len(), |z| at + z + 1);
            let offset = DateTime::parse_from_rfc3339(&out[at..end])
                .map(|time| {
                    let ms = (time.with_timezone(&Utc) - base()).num_milliseconds();
                    format!("+{}s", ms as f64 / 1000.0)
                })
                .unwrap_or_else(|_| "<time>".to_owned());
            out.replace_range(at..end, &offset);
        }
        out
    }
}

// ---- runs to DONE -------------------------------------------------------------------------------

#[test]
fn a_diamond_runs_to_done() {
    check(
        "a -> b, c -> d \
         | claim a w1 | +1s done a \
         | claim b w1 | claim c w2 | +1s done c | +1s done b \
         | claim d w2 | +1s done d",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (4 tasks: 3 waiting, 1 doing) start +0s
            > +1s done a
              a → DONE #1 on w1 start +0s end +1s (attempt 1 done)
              b → TODO (last parent task a done)
              enqueue b
              c → TODO (last parent task a done)
              enqueue c
              plan DOING (4 tasks: 1 waiting, 2 todo, 1 done) start +0s
            > claim b w1
              b → DOING #1 lease +31s on w1 start +1s (claimed by w1 (attempt 1))
              granted b attempt 1, lease until +31s
              plan DOING (4 tasks: 1 waiting, 1 todo, 1 doing, 1 done) start +0s
            > claim c w2
              c → DOING #1 lease +31s on w2 start +1s (claimed by w2 (attempt 1))
              granted c attempt 1, lease until +31s
              plan DOING (4 tasks: 1 waiting, 2 doing, 1 done) start +0s
            > +1s done c
              c → DONE #1 on w2 start +1s end +2s (attempt 1 done)
              plan DOING (4 tasks: 1 waiting, 1 doing, 2 done) start +0s
            > +1s done b
              b → DONE #1 on w1 start +1s end +3s (attempt 1 done)
              d → TODO (last parent task b done)
              enqueue d
              plan DOING (4 tasks: 1 todo, 3 done) start +0s
            > claim d w2
              d → DOING #1 lease +33s on w2 start +3s (claimed by w2 (attempt 1))
              granted d attempt 1, lease until +33s
              plan DOING (4 tasks: 1 doing, 3 done) start +0s
            > +1s done d
              d → DONE #1 on w2 start +3s end +4s (attempt 1 done)
              plan DONE (4 tasks: 4 done) start +0s end +4s
            == end ==
              a DONE #1 on w1 start +0s end +1s
              b DONE #1 on w1 start +1s end +3s
              c DONE #1 on w2 start +1s end +2s
              d DONE #1 on w2 start +3s end +4s
              plan DONE (4 tasks: 4 done) start +0s end +4s
              active: no, next deadline: none
        "#]],
    );
}

#[test]
fn children_ready_after_counts_the_given_tasks_as_done() {
    let mut world = World::new("a -> b, c -> d");
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|name| world.key(name));
    let ready = |world: &World, task, done: &[TaskKey]| {
        world
            .state
            .children_ready_after(task, &done.iter().copied().collect())
    };
    let mut both = ready(&world, a, &[a]);
    both.sort_unstable();
    let mut expected = vec![b, c];
    expected.sort_unstable();
    assert_eq!(both, expected);
    assert_eq!(
        ready(&world, b, &[b]),
        Vec::<TaskKey>::new(),
        "c is not done"
    );
    assert_eq!(ready(&world, b, &[b, c]), vec![d]);
    world.step("claim a w1");
    world.step("+1s done a");
    assert_eq!(
        ready(&world, a, &[a]),
        Vec::<TaskKey>::new(),
        "b and c are ready already"
    );
}

#[test]
fn a_four_level_dag_runs_to_done() {
    check(
        "r -> x, y; x -> z; y -> z; z -> t; r -> t \
         | claim r w1 | +1s done r \
         | claim x w1 | claim y w2 | +1s done x | +1s done y \
         | claim z w1 | +1s done z \
         | claim t w1 | +1s done t",
        expect![[r#"
            > claim r w1
              r → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted r attempt 1, lease until +30s
              plan DOING (5 tasks: 4 waiting, 1 doing) start +0s
            > +1s done r
              r → DONE #1 on w1 start +0s end +1s (attempt 1 done)
              x → TODO (last parent task r done)
              enqueue x
              y → TODO (last parent task r done)
              enqueue y
              plan DOING (5 tasks: 2 waiting, 2 todo, 1 done) start +0s
            > claim x w1
              x → DOING #1 lease +31s on w1 start +1s (claimed by w1 (attempt 1))
              granted x attempt 1, lease until +31s
              plan DOING (5 tasks: 2 waiting, 1 todo, 1 doing, 1 done) start +0s
            > claim y w2
              y → DOING #1 lease +31s on w2 start +1s (claimed by w2 (attempt 1))
              granted y attempt 1, lease until +31s
              plan DOING (5 tasks: 2 waiting, 2 doing, 1 done) start +0s
            > +1s done x
              x → DONE #1 on w1 start +1s end +2s (attempt 1 done)
              plan DOING (5 tasks: 2 waiting, 1 doing, 2 done) start +0s
            > +1s done y
              y → DONE #1 on w2 start +1s end +3s (attempt 1 done)
              z → TODO (last parent task y done)
              enqueue z
              plan DOING (5 tasks: 1 waiting, 1 todo, 3 done) start +0s
            > claim z w1
              z → DOING #1 lease +33s on w1 start +3s (claimed by w1 (attempt 1))
              granted z attempt 1, lease until +33s
              plan DOING (5 tasks: 1 waiting, 1 doing, 3 done) start +0s
            > +1s done z
              z → DONE #1 on w1 start +3s end +4s (attempt 1 done)
              t → TODO (last parent task z done)
              enqueue t
              plan DOING (5 tasks: 1 todo, 4 done) start +0s
            > claim t w1
              t → DOING #1 lease +34s on w1 start +4s (claimed by w1 (attempt 1))
              granted t attempt 1, lease until +34s
              plan DOING (5 tasks: 1 doing, 4 done) start +0s
            > +1s done t
              t → DONE #1 on w1 start +4s end +5s (attempt 1 done)
              plan DONE (5 tasks: 5 done) start +0s end +5s
            == end ==
              r DONE #1 on w1 start +0s end +1s
              x DONE #1 on w1 start +1s end +2s
              y DONE #1 on w2 start +1s end +3s
              z DONE #1 on w1 start +3s end +4s
              t DONE #1 on w1 start +4s end +5s
              plan DONE (5 tasks: 5 done) start +0s end +5s
              active: no, next deadline: none
        "#]],
    );
}

#[test]
fn a_child_becomes_todo_when_its_last_parent_is_done() {
    check(
        "a -> c; b -> c | claim a w1 | done a | claim b w1 | done b",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (3 tasks: 1 waiting, 1 todo, 1 doing) start +0s
            > done a
              a → DONE #1 on w1 start +0s end +0s (attempt 1 done)
              plan DOING (3 tasks: 1 waiting, 1 todo, 1 done) start +0s
            > claim b w1
              b → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted b attempt 1, lease until +30s
              plan DOING (3 tasks: 1 waiting, 1 doing, 1 done) start +0s
            > done b
              b → DONE #1 on w1 start +0s end +0s (attempt 1 done)
              c → TODO (last parent task b done)
              enqueue c
              plan DOING (3 tasks: 1 todo, 2 done) start +0s
            == end ==
              a DONE #1 on w1 start +0s end +0s
              c TODO
              b DONE #1 on w1 start +0s end +0s
              plan DOING (3 tasks: 1 todo, 2 done) start +0s
              active: yes, next deadline: none
        "#]],
    );
}

#[test]
fn ten_children_become_todo_when_their_parent_is_done() {
    check(
        "p -> c1, c2, c3, c4, c5, c6, c7, c8, c9, c10 | claim p w1 | quiet done p",
        expect![[r#"
            > claim p w1
              p → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted p attempt 1, lease until +30s
              plan DOING (11 tasks: 10 waiting, 1 doing) start +0s
            > quiet done p
              10 × → TODO (last parent task p done)
              1 × → DONE (attempt 1 done)
              10 × enqueued
              plan DOING (11 tasks: 10 todo, 1 done) start +0s
            == end ==
              p DONE #1 on w1 start +0s end +0s
              c1 TODO
              c2 TODO
              c3 TODO
              c4 TODO
              c5 TODO
              c6 TODO
              c7 TODO
              c8 TODO
              c9 TODO
              c10 TODO
              plan DOING (11 tasks: 10 todo, 1 done) start +0s
              active: yes, next deadline: none
        "#]],
    );
}

#[test]
fn a_predict_then_test_chain_runs() {
    check(
        "train -> predict -> test | claim train w1 | done train | claim predict w1 | done predict",
        expect![[r#"
            > claim train w1
              train → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted train attempt 1, lease until +30s
              plan DOING (3 tasks: 2 waiting, 1 doing) start +0s
            > done train
              train → DONE #1 on w1 start +0s end +0s (attempt 1 done)
              predict → TODO (last parent task train done)
              enqueue predict
              plan DOING (3 tasks: 1 waiting, 1 todo, 1 done) start +0s
            > claim predict w1
              predict → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted predict attempt 1, lease until +30s
              plan DOING (3 tasks: 1 waiting, 1 doing, 1 done) start +0s
            > done predict
              predict → DONE #1 on w1 start +0s end +0s (attempt 1 done)
              test → TODO (last parent task predict done)
              enqueue test
              plan DOING (3 tasks: 1 todo, 2 done) start +0s
            == end ==
              train DONE #1 on w1 start +0s end +0s
              predict DONE #1 on w1 start +0s end +0s
              test TODO
              plan DOING (3 tasks: 1 todo, 2 done) start +0s
              active: yes, next deadline: none
        "#]],
    );
}

// ---- claims and reports -------------------------------------------------------------------------

#[test]
fn claims_are_granted_once_and_only_when_ready() {
    check(
        "a -> b | claim a w1 | claim a w2 | claim b w2 | claim nobody w2 | done a | claim a w2 \
         | claim b w2 0s",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (2 tasks: 1 waiting, 1 doing) start +0s
            > claim a w2
              claim of a refused: task is being run by attempt 1
            > claim b w2
              claim of b refused: task is WAITING for its parents
            > claim nobody w2
              claim of nobody refused: task nobody is not in plan P
            > done a
              a → DONE #1 on w1 start +0s end +0s (attempt 1 done)
              b → TODO (last parent task a done)
              enqueue b
              plan DOING (2 tasks: 1 todo, 1 done) start +0s
            > claim a w2
              claim of a refused: task is DONE
            > claim b w2 0s
              claim of b refused: a lease duration of 0 ms is not positive
            == end ==
              a DONE #1 on w1 start +0s end +0s
              b TODO
              plan DOING (2 tasks: 1 todo, 1 done) start +0s
              active: yes, next deadline: none
        "#]],
    );
}

#[test]
fn stale_and_forged_reports_change_nothing() {
    check(
        "retry 2: a \
         | claim a w1 | +30s tick | claim a w2 \
         | done a @1 | renew a @1 | fail a @1 | done a !token | renew a !token | done a @3 \
         | done a | done a | renew a | stopped a | done ghost",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (1 task: 1 doing) start +0s
            > +30s tick
              a → TODO #1 on w1 start +0s (lease lapsed (attempt 1))
              enqueue a
              plan TODO (1 task: 1 todo) start +0s
            > claim a w2
              a → DOING #2 lease +60s on w2 start +0s (claimed by w2 (attempt 2))
              granted a attempt 2, lease until +60s
              plan DOING (1 task: 1 doing) start +0s
            > done a @1
              refused (a): report of attempt 1 refused: the current attempt is 2
            > renew a @1
              refused (a): renewal of attempt 1 refused: the current attempt is 2
            > fail a @1
              refused (a): report of attempt 1 refused: the current attempt is 2
            > done a !token
              refused (a): report of attempt 2 refused: wrong lease token
            > renew a !token
              refused (a): renewal of attempt 2 refused: wrong lease token
            > done a @3
              refused (a): report of attempt 3 refused: the current attempt is 2
            > done a
              a → DONE #2 on w2 start +0s end +30s (attempt 2 done)
              plan DONE (1 task: 1 done) start +0s end +30s
            > done a
              refused (a): report of attempt 2 refused: task is DONE
            > renew a
              refused (a): renewal of attempt 2 refused: task is DONE
            > stopped a
              refused (a): report of attempt 2 refused: task is DONE
            > done ghost
              refused (ghost): task ghost is not in plan P
            == end ==
              a DONE #2 on w2 start +0s end +30s
              plan DONE (1 task: 1 done) start +0s end +30s
              active: no, next deadline: none
        "#]],
    );
}

#[test]
fn a_renewed_lease_survives_the_tick() {
    check(
        "a | claim a w1 | +20s renew a | +20s tick | +5s renew a 60s | +59s tick \
         | +1s tick | +1s renew a 0s",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (1 task: 1 doing) start +0s
            > +20s renew a
              a ~ DOING #1 lease +50s on w1 start +0s (lease of attempt 1 renewed)
            > +20s tick
              (no effect)
            > +5s renew a 60s
              a ~ DOING #1 lease +105s on w1 start +0s (lease of attempt 1 renewed)
            > +59s tick
              (no effect)
            > +1s tick
              a → FAILED #1 on w1 error INTERNAL "lease lapsed and no attempt remains" start +0s end +105s (lease lapsed (attempt 1) and no attempt remains)
              plan FAILED (1 task: 1 failed) start +0s failed +105s by a end +105s
            > +1s renew a 0s
              refused (a): renewal of attempt 1 refused: task is FAILED
            == end ==
              a FAILED #1 on w1 error INTERNAL "lease lapsed and no attempt remains" start +0s end +105s
              plan FAILED (1 task: 1 failed) start +0s failed +105s by a end +105s
              active: no, next deadline: none
        "#]],
    );
}

#[test]
fn a_report_before_the_tick_is_accepted_after_the_expiry() {
    check(
        "a | claim a w1 | +31s done a | tick",
        expect![[r#"
        > claim a w1
          a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
          granted a attempt 1, lease until +30s
          plan DOING (1 task: 1 doing) start +0s
        > +31s done a
          a → DONE #1 on w1 start +0s end +31s (attempt 1 done)
          plan DONE (1 task: 1 done) start +0s end +31s
        > tick
          (no effect)
        == end ==
          a DONE #1 on w1 start +0s end +31s
          plan DONE (1 task: 1 done) start +0s end +31s
          active: no, next deadline: none
    "#]],
    );
}

// ---- retries and lapses -------------------------------------------------------------------------

#[test]
fn a_retryable_failure_is_retried_after_a_jittered_backoff() {
    check(
        "a -> b; retry 3: a \
         | claim a w1 | +1s fail a retry | claim a w2 | +500ms claim a w2 \
         | +1s fail a retry | +999ms claim a w1 | +1ms claim a w1 | +1s done a",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (2 tasks: 1 waiting, 1 doing) start +0s
            > +1s fail a retry
              a → TODO #1 on w1 not-before +1.5s start +0s (attempt 1 failed (EXECUTION: boom), retried in 500 ms)
              enqueue a not before +1.5s
              plan TODO (2 tasks: 1 waiting, 1 todo) start +0s
            > claim a w2
              claim of a refused: task is not ready before +1.5s
            > +500ms claim a w2
              a → DOING #2 lease +31.5s on w2 start +0s (claimed by w2 (attempt 2))
              granted a attempt 2, lease until +31.5s
              plan DOING (2 tasks: 1 waiting, 1 doing) start +0s
            > +1s fail a retry
              a → TODO #2 on w2 not-before +3.5s start +0s (attempt 2 failed (EXECUTION: boom), retried in 1000 ms)
              enqueue a not before +3.5s
              plan TODO (2 tasks: 1 waiting, 1 todo) start +0s
            > +999ms claim a w1
              claim of a refused: task is not ready before +3.5s
            > +1ms claim a w1
              a → DOING #3 lease +33.5s on w1 start +0s (claimed by w1 (attempt 3))
              granted a attempt 3, lease until +33.5s
              plan DOING (2 tasks: 1 waiting, 1 doing) start +0s
            > +1s done a
              a → DONE #3 on w1 start +0s end +4.5s (attempt 3 done)
              b → TODO (last parent task a done)
              enqueue b
              plan DOING (2 tasks: 1 todo, 1 done) start +0s
            == end ==
              a DONE #3 on w1 start +0s end +4.5s
              b TODO
              plan DOING (2 tasks: 1 todo, 1 done) start +0s
              active: yes, next deadline: none
        "#]],
    );
}

#[test]
fn a_fixed_backoff_ignores_the_jitter() {
    check(
        "retry 3 fixed: a | claim a w1 | fail a retry | claim a w1 | +1s claim a w1 \
         | fail a retry | show",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (1 task: 1 doing) start +0s
            > fail a retry
              a → TODO #1 on w1 not-before +1s start +0s (attempt 1 failed (EXECUTION: boom), retried in 1000 ms)
              enqueue a not before +1s
              plan TODO (1 task: 1 todo) start +0s
            > claim a w1
              claim of a refused: task is not ready before +1s
            > +1s claim a w1
              a → DOING #2 lease +31s on w1 start +0s (claimed by w1 (attempt 2))
              granted a attempt 2, lease until +31s
              plan DOING (1 task: 1 doing) start +0s
            > fail a retry
              a → TODO #2 on w1 not-before +3s start +0s (attempt 2 failed (EXECUTION: boom), retried in 2000 ms)
              enqueue a not before +3s
              plan TODO (1 task: 1 todo) start +0s
            > show
            == +1s ==
              a TODO #2 on w1 not-before +3s start +0s
              plan TODO (1 task: 1 todo) start +0s
              active: yes, next deadline: +3s
        "#]],
    );
}

#[test]
fn exhausted_retries_fail_the_task_and_the_plan() {
    check(
        "a -> c; b -> c; d; e; retry 2: a \
         | claim a w1 | claim b w2 | claim e w3 \
         | +1s fail a retry | +1s claim a w1 | +1s fail a retry \
         | claim d w1 | renew b | +1s stopped b | +1s done e | +30s tick",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (5 tasks: 1 waiting, 3 todo, 1 doing) start +0s
            > claim b w2
              b → DOING #1 lease +30s on w2 start +0s (claimed by w2 (attempt 1))
              granted b attempt 1, lease until +30s
              plan DOING (5 tasks: 1 waiting, 2 todo, 2 doing) start +0s
            > claim e w3
              e → DOING #1 lease +30s on w3 start +0s (claimed by w3 (attempt 1))
              granted e attempt 1, lease until +30s
              plan DOING (5 tasks: 1 waiting, 1 todo, 3 doing) start +0s
            > +1s fail a retry
              a → TODO #1 on w1 not-before +1.5s start +0s (attempt 1 failed (EXECUTION: boom), retried in 500 ms)
              enqueue a not before +1.5s
              plan DOING (5 tasks: 1 waiting, 2 todo, 2 doing) start +0s
            > +1s claim a w1
              a → DOING #2 lease +32s on w1 start +0s (claimed by w1 (attempt 2))
              granted a attempt 2, lease until +32s
              plan DOING (5 tasks: 1 waiting, 1 todo, 3 doing) start +0s
            > +1s fail a retry
              a → FAILED #2 on w1 error EXECUTION "boom" start +0s end +3s (attempt 2 failed (EXECUTION: boom), no attempt remains)
              c → CANCELED end +3s (plan failed)
              b ~ DOING #1 lease +30s on w2 cancel-requested start +0s (plan failed; cancel requested)
              order Cancel b to w2
              d → CANCELED end +3s (plan failed)
              e ~ DOING #1 lease +30s on w3 cancel-requested start +0s (plan failed; cancel requested)
              order Cancel e to w3
              plan FAILED (5 tasks: 2 doing, 1 failed, 2 canceled) start +0s failed +3s by a
            > claim d w1
              claim of d refused: task is CANCELED
            > renew b
              b ~ DOING #1 lease +33s on w2 cancel-requested start +0s (lease of attempt 1 renewed)
              order Cancel b to w2
            > +1s stopped b
              b → CANCELED #1 on w2 cancel-requested start +0s end +4s (attempt 1 canceled by its worker)
              plan FAILED (5 tasks: 1 doing, 1 failed, 3 canceled) start +0s failed +3s by a
            > +1s done e
              e → DONE #1 on w3 cancel-requested start +0s end +5s (attempt 1 done)
              plan FAILED (5 tasks: 1 done, 1 failed, 3 canceled) start +0s failed +3s by a end +5s
            > +30s tick
              (no effect)
            == end ==
              a FAILED #2 on w1 error EXECUTION "boom" start +0s end +3s
              c CANCELED end +3s
              b CANCELED #1 on w2 cancel-requested start +0s end +4s
              d CANCELED end +3s
              e DONE #1 on w3 cancel-requested start +0s end +5s
              plan FAILED (5 tasks: 1 done, 1 failed, 3 canceled) start +0s failed +3s by a end +5s
              active: no, next deadline: none
        "#]],
    );
}

#[test]
fn a_non_retryable_failure_fails_at_once() {
    check(
        "a -> b; retry 5: a | claim a w1 | +1s fail a | claim b w1",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (2 tasks: 1 waiting, 1 doing) start +0s
            > +1s fail a
              a → FAILED #1 on w1 error EXECUTION "boom" start +0s end +1s (attempt 1 failed (EXECUTION: boom))
              b → CANCELED end +1s (plan failed)
              plan FAILED (2 tasks: 1 failed, 1 canceled) start +0s failed +1s by a end +1s
            > claim b w1
              claim of b refused: task is CANCELED
            == end ==
              a FAILED #1 on w1 error EXECUTION "boom" start +0s end +1s
              b CANCELED end +1s
              plan FAILED (2 tasks: 1 failed, 1 canceled) start +0s failed +1s by a end +1s
              active: no, next deadline: none
        "#]],
    );
}

#[test]
fn a_task_handed_back_by_a_stopping_worker_runs_again_whatever_attempts_remain() {
    check(
        "a -> b | claim a w1 | +1s handback a | claim a w2 | done a \
         | claim b w1 | cancel b | handback b",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (2 tasks: 1 waiting, 1 doing) start +0s
            > +1s handback a
              a → TODO #1 on w1 start +0s (attempt 1 handed back by its worker (worker shutting down))
              enqueue a
              plan TODO (2 tasks: 1 waiting, 1 todo) start +0s
            > claim a w2
              a → DOING #2 lease +31s on w2 start +0s (claimed by w2 (attempt 2))
              granted a attempt 2, lease until +31s
              plan DOING (2 tasks: 1 waiting, 1 doing) start +0s
            > done a
              a → DONE #2 on w2 start +0s end +1s (attempt 2 done)
              b → TODO (last parent task a done)
              enqueue b
              plan DOING (2 tasks: 1 todo, 1 done) start +0s
            > claim b w1
              b → DOING #1 lease +31s on w1 start +1s (claimed by w1 (attempt 1))
              granted b attempt 1, lease until +31s
              plan DOING (2 tasks: 1 doing, 1 done) start +0s
            > cancel b
              b ~ DOING #1 lease +31s on w1 cancel-requested start +1s (cancel requested)
              order Cancel b to w1
            > handback b
              b → CANCELED #1 on w1 cancel-requested start +1s end +1s (attempt 1 handed back by its worker (worker shutting down))
              plan CANCELED (2 tasks: 1 done, 1 canceled) start +0s end +1s
            == end ==
              a DONE #2 on w2 start +0s end +1s
              b CANCELED #1 on w1 cancel-requested start +1s end +1s
              plan CANCELED (2 tasks: 1 done, 1 canceled) start +0s end +1s
              active: no, next deadline: none
        "#]],
    );
}

#[test]
fn a_lapsed_lease_frees_the_task_for_another_worker() {
    check(
        "a -> b; retry 2: a \
         | claim a w1 | +29s tick | +1s tick | claim a w2 | +1s done a @1 | done a \
         | claim b w1",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (2 tasks: 1 waiting, 1 doing) start +0s
            > +29s tick
              (no effect)
            > +1s tick
              a → TODO #1 on w1 start +0s (lease lapsed (attempt 1))
              enqueue a
              plan TODO (2 tasks: 1 waiting, 1 todo) start +0s
            > claim a w2
              a → DOING #2 lease +60s on w2 start +0s (claimed by w2 (attempt 2))
              granted a attempt 2, lease until +60s
              plan DOING (2 tasks: 1 waiting, 1 doing) start +0s
            > +1s done a @1
              refused (a): report of attempt 1 refused: the current attempt is 2
            > done a
              a → DONE #2 on w2 start +0s end +31s (attempt 2 done)
              b → TODO (last parent task a done)
              enqueue b
              plan DOING (2 tasks: 1 todo, 1 done) start +0s
            > claim b w1
              b → DOING #1 lease +61s on w1 start +31s (claimed by w1 (attempt 1))
              granted b attempt 1, lease until +61s
              plan DOING (2 tasks: 1 doing, 1 done) start +0s
            == end ==
              a DONE #2 on w2 start +0s end +31s
              b DOING #1 lease +61s on w1 start +31s
              plan DOING (2 tasks: 1 doing, 1 done) start +0s
              active: yes, next deadline: +61s
        "#]],
    );
}

#[test]
fn a_lapsed_lease_without_an_attempt_left_fails_the_plan() {
    check(
        "a; b; c -> d | claim a w1 | +10s claim b w2 | +20s tick | renew b | stopped b",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (4 tasks: 1 waiting, 2 todo, 1 doing) start +0s
            > +10s claim b w2
              b → DOING #1 lease +40s on w2 start +10s (claimed by w2 (attempt 1))
              granted b attempt 1, lease until +40s
              plan DOING (4 tasks: 1 waiting, 1 todo, 2 doing) start +0s
            > +20s tick
              a → FAILED #1 on w1 error INTERNAL "lease lapsed and no attempt remains" start +0s end +30s (lease lapsed (attempt 1) and no attempt remains)
              b ~ DOING #1 lease +40s on w2 cancel-requested start +10s (plan failed; cancel requested)
              order Cancel b to w2
              c → CANCELED end +30s (plan failed)
              d → CANCELED end +30s (plan failed)
              plan FAILED (4 tasks: 1 doing, 1 failed, 2 canceled) start +0s failed +30s by a
            > renew b
              b ~ DOING #1 lease +60s on w2 cancel-requested start +10s (lease of attempt 1 renewed)
              order Cancel b to w2
            > stopped b
              b → CANCELED #1 on w2 cancel-requested start +10s end +30s (attempt 1 canceled by its worker)
              plan FAILED (4 tasks: 1 failed, 3 canceled) start +0s failed +30s by a end +30s
            == end ==
              a FAILED #1 on w1 error INTERNAL "lease lapsed and no attempt remains" start +0s end +30s
              b CANCELED #1 on w2 cancel-requested start +10s end +30s
              c CANCELED end +30s
              d CANCELED end +30s
              plan FAILED (4 tasks: 1 failed, 3 canceled) start +0s failed +30s by a end +30s
              active: no, next deadline: none
        "#]],
    );
}

#[test]
fn one_tick_lapses_several_leases() {
    check(
        "retry 2: a; b; c | claim a w1 | claim b w1 | claim c w1 | +30s tick",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (3 tasks: 2 todo, 1 doing) start +0s
            > claim b w1
              b → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted b attempt 1, lease until +30s
              plan DOING (3 tasks: 1 todo, 2 doing) start +0s
            > claim c w1
              c → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted c attempt 1, lease until +30s
              plan DOING (3 tasks: 3 doing) start +0s
            > +30s tick
              b → FAILED #1 on w1 error INTERNAL "lease lapsed and no attempt remains" start +0s end +30s (lease lapsed (attempt 1) and no attempt remains)
              a → CANCELED #1 on w1 start +0s end +30s (plan failed, and its lease had lapsed)
              c → CANCELED #1 on w1 start +0s end +30s (plan failed, and its lease had lapsed)
              plan FAILED (3 tasks: 1 failed, 2 canceled) start +0s failed +30s by b end +30s
            == end ==
              a CANCELED #1 on w1 start +0s end +30s
              b FAILED #1 on w1 error INTERNAL "lease lapsed and no attempt remains" start +0s end +30s
              c CANCELED #1 on w1 start +0s end +30s
              plan FAILED (3 tasks: 1 failed, 2 canceled) start +0s failed +30s by b end +30s
              active: no, next deadline: none
        "#]],
    );
}

#[test]
fn a_failure_while_being_canceled_is_not_retried() {
    check(
        "retry 3: a; b | claim a w1 | cancel a | fail a retry",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (2 tasks: 1 todo, 1 doing) start +0s
            > cancel a
              a ~ DOING #1 lease +30s on w1 cancel-requested start +0s (cancel requested)
              order Cancel a to w1
            > fail a retry
              a → FAILED #1 on w1 cancel-requested error EXECUTION "boom" start +0s end +0s (attempt 1 failed (EXECUTION: boom), not retried: the task is being stopped)
              b → CANCELED end +0s (plan failed)
              plan FAILED (2 tasks: 1 failed, 1 canceled) start +0s failed +0s by a end +0s
            == end ==
              a FAILED #1 on w1 cancel-requested error EXECUTION "boom" start +0s end +0s
              b CANCELED end +0s
              plan FAILED (2 tasks: 1 failed, 1 canceled) start +0s failed +0s by a end +0s
              active: no, next deadline: none
        "#]],
    );
}

// ---- plan cancel --------------------------------------------------------------------------------

#[test]
fn canceling_a_plan_cancels_waiting_work_and_stops_running_work() {
    check(
        "a -> b; c; d | claim a w1 | claim c w2 | +1s done c \
         | +1s cancel plan owner changed their mind | cancel plan again \
         | claim d w1 | renew a | +1s stopped a | cancel a",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (4 tasks: 1 waiting, 2 todo, 1 doing) start +0s
            > claim c w2
              c → DOING #1 lease +30s on w2 start +0s (claimed by w2 (attempt 1))
              granted c attempt 1, lease until +30s
              plan DOING (4 tasks: 1 waiting, 1 todo, 2 doing) start +0s
            > +1s done c
              c → DONE #1 on w2 start +0s end +1s (attempt 1 done)
              plan DOING (4 tasks: 1 waiting, 1 todo, 1 doing, 1 done) start +0s
            > +1s cancel plan owner changed their mind
              a ~ DOING #1 lease +30s on w1 cancel-requested start +0s (plan canceled: owner changed their mind; cancel requested)
              order Cancel a to w1
              b → CANCELED end +2s (plan canceled: owner changed their mind)
              d → CANCELED end +2s (plan canceled: owner changed their mind)
              plan CANCELED (4 tasks: 1 doing, 1 done, 2 canceled) start +0s canceled +2s end +2s
            > cancel plan again
              refused: plan P is already terminated (CANCELED)
            > claim d w1
              claim of d refused: task is CANCELED
            > renew a
              a ~ DOING #1 lease +32s on w1 cancel-requested start +0s (lease of attempt 1 renewed)
              order Cancel a to w1
            > +1s stopped a
              a → CANCELED #1 on w1 cancel-requested start +0s end +3s (attempt 1 canceled by its worker)
              plan CANCELED (4 tasks: 1 done, 3 canceled) start +0s canceled +2s end +2s
            > cancel a
              refused (a): task a is CANCELED: nothing to cancel
            == end ==
              a CANCELED #1 on w1 cancel-requested start +0s end +3s
              b CANCELED end +2s
              c DONE #1 on w2 start +0s end +1s
              d CANCELED end +2s
              plan CANCELED (4 tasks: 1 done, 3 canceled) start +0s canceled +2s end +2s
              active: no, next deadline: none
        "#]],
    );
}

#[test]
fn a_finished_plan_cannot_be_canceled() {
    check(
        "a | claim a w1 | done a | cancel plan",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (1 task: 1 doing) start +0s
            > done a
              a → DONE #1 on w1 start +0s end +0s (attempt 1 done)
              plan DONE (1 task: 1 done) start +0s end +0s
            > cancel plan
              refused: plan P is already terminated (DONE)
            == end ==
              a DONE #1 on w1 start +0s end +0s
              plan DONE (1 task: 1 done) start +0s end +0s
              active: no, next deadline: none
        "#]],
    );
    check(
        "a; b | claim a w1 | fail a | cancel plan",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (2 tasks: 1 todo, 1 doing) start +0s
            > fail a
              a → FAILED #1 on w1 error EXECUTION "boom" start +0s end +0s (attempt 1 failed (EXECUTION: boom))
              b → CANCELED end +0s (plan failed)
              plan FAILED (2 tasks: 1 failed, 1 canceled) start +0s failed +0s by a end +0s
            > cancel plan
              refused: plan P is already terminated (FAILED)
            == end ==
              a FAILED #1 on w1 error EXECUTION "boom" start +0s end +0s
              b CANCELED end +0s
              plan FAILED (2 tasks: 1 failed, 1 canceled) start +0s failed +0s by a end +0s
              active: no, next deadline: none
        "#]],
    );
    check(
        "| cancel plan",
        expect![[r#"
        > cancel plan
          refused: plan P has no task to cancel
        == end ==
          plan EMPTY (0 tasks)
          active: no, next deadline: none
    "#]],
    );
}

#[test]
fn a_running_task_lapsing_in_a_canceled_plan_ends_canceled() {
    check(
        "retry 3: a | claim a w1 | cancel plan | +30s tick",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (1 task: 1 doing) start +0s
            > cancel plan
              a ~ DOING #1 lease +30s on w1 cancel-requested start +0s (plan canceled; cancel requested)
              order Cancel a to w1
              plan CANCELED (1 task: 1 doing) start +0s canceled +0s end +0s
            > +30s tick
              a → CANCELED #1 on w1 cancel-requested start +0s end +30s (lease lapsed (attempt 1) while the task was being stopped)
              plan CANCELED (1 task: 1 canceled) start +0s canceled +0s end +0s
            == end ==
              a CANCELED #1 on w1 cancel-requested start +0s end +30s
              plan CANCELED (1 task: 1 canceled) start +0s canceled +0s end +0s
              active: no, next deadline: none
        "#]],
    );
}

// ---- task cancel and abort ----------------------------------------------------------------------

#[test]
fn canceling_a_task_cancels_its_waiting_descendants_and_the_plan_goes_on() {
    check(
        "a -> b -> c; a -> d; b, d -> e \
         | claim a w1 | done a | cancel b not needed | claim d w1 | +1s done d",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (5 tasks: 4 waiting, 1 doing) start +0s
            > done a
              a → DONE #1 on w1 start +0s end +0s (attempt 1 done)
              b → TODO (last parent task a done)
              enqueue b
              d → TODO (last parent task a done)
              enqueue d
              plan DOING (5 tasks: 2 waiting, 2 todo, 1 done) start +0s
            > cancel b not needed
              b → CANCELED end +0s (task canceled: not needed)
              c → CANCELED end +0s (parent task b canceled)
              e → CANCELED end +0s (parent task b canceled)
              plan DOING (5 tasks: 1 todo, 1 done, 3 canceled) start +0s
            > claim d w1
              d → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted d attempt 1, lease until +30s
              plan DOING (5 tasks: 1 doing, 1 done, 3 canceled) start +0s
            > +1s done d
              d → DONE #1 on w1 start +0s end +1s (attempt 1 done)
              plan CANCELED (5 tasks: 2 done, 3 canceled) start +0s end +1s
            == end ==
              a DONE #1 on w1 start +0s end +0s
              b CANCELED end +0s
              c CANCELED end +0s
              d DONE #1 on w1 start +0s end +1s
              e CANCELED end +0s
              plan CANCELED (5 tasks: 2 done, 3 canceled) start +0s end +1s
              active: no, next deadline: none
        "#]],
    );
}

#[test]
fn a_running_task_asked_to_cancel_may_still_finish() {
    check(
        "a -> b | claim a w1 | cancel a | cancel a | +1s done a | claim b w1",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (2 tasks: 1 waiting, 1 doing) start +0s
            > cancel a
              a ~ DOING #1 lease +30s on w1 cancel-requested start +0s (cancel requested)
              order Cancel a to w1
            > cancel a
              refused (a): a cancel of task a was already requested
            > +1s done a
              a → DONE #1 on w1 cancel-requested start +0s end +1s (attempt 1 done)
              b → TODO (last parent task a done)
              enqueue b
              plan DOING (2 tasks: 1 todo, 1 done) start +0s
            > claim b w1
              b → DOING #1 lease +31s on w1 start +1s (claimed by w1 (attempt 1))
              granted b attempt 1, lease until +31s
              plan DOING (2 tasks: 1 doing, 1 done) start +0s
            == end ==
              a DONE #1 on w1 cancel-requested start +0s end +1s
              b DOING #1 lease +31s on w1 start +1s
              plan DOING (2 tasks: 1 doing, 1 done) start +0s
              active: yes, next deadline: +31s
        "#]],
    );
    check(
        "a -> b; c | claim a w1 | cancel a | +1s stopped a | claim c w1 | done c",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (3 tasks: 1 waiting, 1 todo, 1 doing) start +0s
            > cancel a
              a ~ DOING #1 lease +30s on w1 cancel-requested start +0s (cancel requested)
              order Cancel a to w1
            > +1s stopped a
              a → CANCELED #1 on w1 cancel-requested start +0s end +1s (attempt 1 canceled by its worker)
              b → CANCELED end +1s (parent task a canceled)
              plan TODO (3 tasks: 1 todo, 2 canceled) start +0s
            > claim c w1
              c → DOING #1 lease +31s on w1 start +1s (claimed by w1 (attempt 1))
              granted c attempt 1, lease until +31s
              plan DOING (3 tasks: 1 doing, 2 canceled) start +0s
            > done c
              c → DONE #1 on w1 start +1s end +1s (attempt 1 done)
              plan CANCELED (3 tasks: 1 done, 2 canceled) start +0s end +1s
            == end ==
              a CANCELED #1 on w1 cancel-requested start +0s end +1s
              b CANCELED end +1s
              c DONE #1 on w1 start +1s end +1s
              plan CANCELED (3 tasks: 1 done, 2 canceled) start +0s end +1s
              active: no, next deadline: none
        "#]],
    );
}

#[test]
fn aborting_kills_now() {
    check(
        "a; b; c; d; retry 2: c | claim a w1 | claim b w1 | claim c w1 \
         | abort a | abort a | cancel a | cancel b | abort b | renew b \
         | abort d | abort d | +30s tick | abort c",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (4 tasks: 3 todo, 1 doing) start +0s
            > claim b w1
              b → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted b attempt 1, lease until +30s
              plan DOING (4 tasks: 2 todo, 2 doing) start +0s
            > claim c w1
              c → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted c attempt 1, lease until +30s
              plan DOING (4 tasks: 1 todo, 3 doing) start +0s
            > abort a
              a ~ DOING #1 lease +30s on w1 abort-requested start +0s (abort requested)
              order Abort a to w1
            > abort a
              refused (a): an abort of task a was already requested
            > cancel a
              refused (a): an abort of task a was already requested
            > cancel b
              b ~ DOING #1 lease +30s on w1 cancel-requested start +0s (cancel requested)
              order Cancel b to w1
            > abort b
              b ~ DOING #1 lease +30s on w1 cancel-requested abort-requested start +0s (abort requested)
              order Abort b to w1
            > renew b
              b ~ DOING #1 lease +30s on w1 cancel-requested abort-requested start +0s (lease of attempt 1 renewed)
              order Abort b to w1
            > abort d
              d → CANCELED end +0s (task aborted)
              plan DOING (4 tasks: 3 doing, 1 canceled) start +0s
            > abort d
              refused (d): task d is CANCELED: nothing to abort
            > +30s tick
              a → CANCELED #1 on w1 abort-requested start +0s end +30s (lease lapsed (attempt 1) while the task was being stopped)
              b → CANCELED #1 on w1 cancel-requested abort-requested start +0s end +30s (lease lapsed (attempt 1) while the task was being stopped)
              c → TODO #1 on w1 start +0s (lease lapsed (attempt 1))
              enqueue c
              plan TODO (4 tasks: 1 todo, 3 canceled) start +0s
            > abort c
              c → CANCELED #1 on w1 start +0s end +30s (task aborted)
              plan CANCELED (4 tasks: 4 canceled) start +0s end +30s
            == end ==
              a CANCELED #1 on w1 abort-requested start +0s end +30s
              b CANCELED #1 on w1 cancel-requested abort-requested start +0s end +30s
              c CANCELED #1 on w1 start +0s end +30s
              d CANCELED end +0s
              plan CANCELED (4 tasks: 4 canceled) start +0s end +30s
              active: no, next deadline: none
        "#]],
    );
}

#[test]
fn a_done_task_cannot_be_canceled() {
    check(
        "a; b | claim a w1 | done a | cancel a | abort a",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (2 tasks: 1 todo, 1 doing) start +0s
            > done a
              a → DONE #1 on w1 start +0s end +0s (attempt 1 done)
              plan DOING (2 tasks: 1 todo, 1 done) start +0s
            > cancel a
              refused (a): task a is DONE: nothing to cancel
            > abort a
              refused (a): task a is DONE: nothing to abort
            == end ==
              a DONE #1 on w1 start +0s end +0s
              b TODO
              plan DOING (2 tasks: 1 todo, 1 done) start +0s
              active: yes, next deadline: none
        "#]],
    );
}

// ---- failure and cancel interplay (semantics.md §11) -------------------------------------------

#[test]
fn a_worker_reports_canceled_after_the_plan_failed_and_a_second_failure_changes_no_date() {
    check(
        "a; b; c | claim a w1 | claim b w2 | claim c w3 \
         | +1s fail a | +1s stopped b | +1s fail c | abort c",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (3 tasks: 2 todo, 1 doing) start +0s
            > claim b w2
              b → DOING #1 lease +30s on w2 start +0s (claimed by w2 (attempt 1))
              granted b attempt 1, lease until +30s
              plan DOING (3 tasks: 1 todo, 2 doing) start +0s
            > claim c w3
              c → DOING #1 lease +30s on w3 start +0s (claimed by w3 (attempt 1))
              granted c attempt 1, lease until +30s
              plan DOING (3 tasks: 3 doing) start +0s
            > +1s fail a
              a → FAILED #1 on w1 error EXECUTION "boom" start +0s end +1s (attempt 1 failed (EXECUTION: boom))
              b ~ DOING #1 lease +30s on w2 cancel-requested start +0s (plan failed; cancel requested)
              order Cancel b to w2
              c ~ DOING #1 lease +30s on w3 cancel-requested start +0s (plan failed; cancel requested)
              order Cancel c to w3
              plan FAILED (3 tasks: 2 doing, 1 failed) start +0s failed +1s by a
            > +1s stopped b
              b → CANCELED #1 on w2 cancel-requested start +0s end +2s (attempt 1 canceled by its worker)
              plan FAILED (3 tasks: 1 doing, 1 failed, 1 canceled) start +0s failed +1s by a
            > +1s fail c
              c → FAILED #1 on w3 cancel-requested error EXECUTION "boom" start +0s end +3s (attempt 1 failed (EXECUTION: boom))
              plan FAILED (3 tasks: 2 failed, 1 canceled) start +0s failed +1s by a end +3s
            > abort c
              refused (c): task c is FAILED: nothing to abort
            == end ==
              a FAILED #1 on w1 error EXECUTION "boom" start +0s end +1s
              b CANCELED #1 on w2 cancel-requested start +0s end +2s
              c FAILED #1 on w3 cancel-requested error EXECUTION "boom" start +0s end +3s
              plan FAILED (3 tasks: 2 failed, 1 canceled) start +0s failed +1s by a end +3s
              active: no, next deadline: none
        "#]],
    );
}

#[test]
fn a_large_plan_failing_its_first_task_sets_only_the_failure_date() {
    let mut setup = String::from("t0 -> t1");
    for round in 1..100 {
        let _ = write!(
            setup,
            "; t{a} -> t{b}; t{a} -> t{c}; t{b}, t{c} -> t{d}",
            a = (round - 1) * 3 + 1,
            b = round * 3 - 1,
            c = round * 3,
            d = round * 3 + 1,
        );
    }
    check(
        &format!("{setup} | claim t0 w1 | quiet +1s fail t0"),
        expect![[r#"
            > claim t0 w1
              t0 → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted t0 attempt 1, lease until +30s
              plan DOING (299 tasks: 298 waiting, 1 doing) start +0s
            > quiet +1s fail t0
              1 × → FAILED (attempt 1 failed (EXECUTION: boom))
              298 × → CANCELED (plan failed)
              plan FAILED (299 tasks: 1 failed, 298 canceled) start +0s failed +1s by t0 end +1s
            == end ==
              1 task FAILED
              298 tasks CANCELED
              plan FAILED (299 tasks: 1 failed, 298 canceled) start +0s failed +1s by t0 end +1s
              active: no, next deadline: none
        "#]],
    );
}

// ---- functions ----------------------------------------------------------------------------------

#[test]
fn a_ready_function_releases_its_tasks() {
    check(
        "a -> b; fn g building: b, c; a -> d \
         | fn g waiting | fn g ready | claim a w1 | done a | claim c w1",
        expect![[r#"
            > fn g waiting
              (no effect)
            > fn g ready
              b ~ WAITING(PARENTS) (function g ready, waiting for parents)
              c → TODO (function g ready)
              enqueue c
              plan TODO (4 tasks: 2 waiting, 2 todo)
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (4 tasks: 2 waiting, 1 todo, 1 doing) start +0s
            > done a
              a → DONE #1 on w1 start +0s end +0s (attempt 1 done)
              b → TODO (last parent task a done)
              enqueue b
              d → TODO (last parent task a done)
              enqueue d
              plan DOING (4 tasks: 3 todo, 1 done) start +0s
            > claim c w1
              c → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted c attempt 1, lease until +30s
              plan DOING (4 tasks: 2 todo, 1 doing, 1 done) start +0s
            == end ==
              a DONE #1 on w1 start +0s end +0s
              b TODO
              c DOING #1 lease +30s on w1 start +0s
              d TODO
              plan DOING (4 tasks: 2 todo, 1 doing, 1 done) start +0s
              active: yes, next deadline: +30s
        "#]],
    );
}

#[test]
fn a_done_parent_leaves_children_waiting_for_their_build() {
    check(
        "a -> b; fn g building: b | claim a w1 | done a | fn g ready",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (2 tasks: 1 waiting, 1 doing) start +0s
            > done a
              a → DONE #1 on w1 start +0s end +0s (attempt 1 done)
              plan DOING (2 tasks: 1 waiting, 1 done) start +0s
            > fn g ready
              b → TODO (function g ready)
              enqueue b
              plan DOING (2 tasks: 1 todo, 1 done) start +0s
            == end ==
              a DONE #1 on w1 start +0s end +0s
              b TODO
              plan DOING (2 tasks: 1 todo, 1 done) start +0s
              active: yes, next deadline: none
        "#]],
    );
}

#[test]
fn a_failed_build_fails_its_not_started_tasks_and_the_plan() {
    check(
        "a; fn g building: b, c; b -> d; x -> c; e \
         | claim a w1 | claim e w2 | +1s fn g failed | stopped a | done e",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (6 tasks: 3 waiting, 2 todo, 1 doing) start +0s
            > claim e w2
              e → DOING #1 lease +30s on w2 start +0s (claimed by w2 (attempt 1))
              granted e attempt 1, lease until +30s
              plan DOING (6 tasks: 3 waiting, 1 todo, 2 doing) start +0s
            > +1s fn g failed
              b → FAILED error BUILD "function g failed to build" end +1s (function g failed to build)
              c → FAILED error BUILD "function g failed to build" end +1s (function g failed to build)
              a ~ DOING #1 lease +30s on w1 cancel-requested start +0s (plan failed; cancel requested)
              order Cancel a to w1
              d → CANCELED end +1s (plan failed)
              x → CANCELED end +1s (plan failed)
              e ~ DOING #1 lease +30s on w2 cancel-requested start +0s (plan failed; cancel requested)
              order Cancel e to w2
              plan FAILED (6 tasks: 2 doing, 2 failed, 2 canceled) start +0s failed +1s by b
            > stopped a
              a → CANCELED #1 on w1 cancel-requested start +0s end +1s (attempt 1 canceled by its worker)
              plan FAILED (6 tasks: 1 doing, 2 failed, 3 canceled) start +0s failed +1s by b
            > done e
              e → DONE #1 on w2 cancel-requested start +0s end +1s (attempt 1 done)
              plan FAILED (6 tasks: 1 done, 2 failed, 3 canceled) start +0s failed +1s by b end +1s
            == end ==
              a CANCELED #1 on w1 cancel-requested start +0s end +1s
              b FAILED error BUILD "function g failed to build" end +1s
              c FAILED error BUILD "function g failed to build" end +1s
              d CANCELED end +1s
              x CANCELED end +1s
              e DONE #1 on w2 cancel-requested start +0s end +1s
              plan FAILED (6 tasks: 1 done, 2 failed, 3 canceled) start +0s failed +1s by b end +1s
              active: no, next deadline: none
        "#]],
    );
}

#[test]
fn a_canceled_build_cancels_its_tasks_and_their_waiting_descendants() {
    check(
        "fn g building: b; b -> c; a | fn g canceled | claim a w1 | done a",
        expect![[r#"
            > fn g canceled
              b → CANCELED end +0s (function g canceled)
              c → CANCELED end +0s (parent task b canceled)
              plan TODO (3 tasks: 1 todo, 2 canceled)
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (3 tasks: 1 doing, 2 canceled) start +0s
            > done a
              a → DONE #1 on w1 start +0s end +0s (attempt 1 done)
              plan CANCELED (3 tasks: 1 done, 2 canceled) start +0s end +0s
            == end ==
              b CANCELED end +0s
              c CANCELED end +0s
              a DONE #1 on w1 start +0s end +0s
              plan CANCELED (3 tasks: 1 done, 2 canceled) start +0s end +0s
              active: no, next deadline: none
        "#]],
    );
}

// ---- tasks added --------------------------------------------------------------------------------

#[test]
fn tasks_added_to_a_done_plan_restart_it() {
    check(
        "a | claim a w1 | +1s done a | +1s add a -> b; b -> c | claim b w1 | +1s done b \
         | claim c w1 | +1s done c",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (1 task: 1 doing) start +0s
            > +1s done a
              a → DONE #1 on w1 start +0s end +1s (attempt 1 done)
              plan DONE (1 task: 1 done) start +0s end +1s
            > +1s add a -> b; b -> c
              b ~ TODO (added: ready)
              c ~ WAITING(PARENTS) (added: waiting for its parents)
              enqueue b
              plan DOING (3 tasks: 1 waiting, 1 todo, 1 done) start +0s
            > claim b w1
              b → DOING #1 lease +32s on w1 start +2s (claimed by w1 (attempt 1))
              granted b attempt 1, lease until +32s
              plan DOING (3 tasks: 1 waiting, 1 doing, 1 done) start +0s
            > +1s done b
              b → DONE #1 on w1 start +2s end +3s (attempt 1 done)
              c → TODO (last parent task b done)
              enqueue c
              plan DOING (3 tasks: 1 todo, 2 done) start +0s
            > claim c w1
              c → DOING #1 lease +33s on w1 start +3s (claimed by w1 (attempt 1))
              granted c attempt 1, lease until +33s
              plan DOING (3 tasks: 1 doing, 2 done) start +0s
            > +1s done c
              c → DONE #1 on w1 start +3s end +4s (attempt 1 done)
              plan DONE (3 tasks: 3 done) start +0s end +4s
            == end ==
              a DONE #1 on w1 start +0s end +1s
              b DONE #1 on w1 start +2s end +3s
              c DONE #1 on w1 start +3s end +4s
              plan DONE (3 tasks: 3 done) start +0s end +4s
              active: no, next deadline: none
        "#]],
    );
}

#[test]
fn initial_statuses_of_added_tasks() {
    // Each added task is named after its case: parents (none, DONE, not done, all DONE,
    // CANCELED, CANCELED+FAILED outside) × function (WAITING, BUILDING, READY).
    check(
        "p; q; x | claim p w1 | done p | cancel q \
         | add fn gw waiting: none_w; fn gb building: none_b; none_r \
         | add p, x -> mixed_w, mixed_b, mixed_r; fn gw: mixed_w; fn gb: mixed_b \
         | add p -> done_w, done_b, done_r; fn gw: done_w; fn gb: done_b \
         | add q -> canceled_w, canceled_r; fn gw: canceled_w \
         | add none_r -> in_batch_1 -> in_batch_2 \
         | add fn gc canceled: fn_canceled",
        expect![[r#"
            > claim p w1
              p → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted p attempt 1, lease until +30s
              plan DOING (3 tasks: 2 todo, 1 doing) start +0s
            > done p
              p → DONE #1 on w1 start +0s end +0s (attempt 1 done)
              plan DOING (3 tasks: 2 todo, 1 done) start +0s
            > cancel q
              q → CANCELED end +0s (task canceled)
              plan DOING (3 tasks: 1 todo, 1 done, 1 canceled) start +0s
            > add fn gw waiting: none_w; fn gb building: none_b; none_r
              none_w ~ WAITING(BUILD) (added: waiting for its function's build)
              none_b ~ WAITING(BUILD) (added: waiting for its function's build)
              none_r ~ TODO (added: ready)
              enqueue none_r
              plan DOING (6 tasks: 2 waiting, 2 todo, 1 done, 1 canceled) start +0s
            > add p, x -> mixed_w, mixed_b, mixed_r; fn gw: mixed_w; fn gb: mixed_b
              mixed_w ~ WAITING(BUILD) (added: waiting for its function's build)
              mixed_b ~ WAITING(BUILD) (added: waiting for its function's build)
              mixed_r ~ WAITING(PARENTS) (added: waiting for its parents)
              plan DOING (9 tasks: 5 waiting, 2 todo, 1 done, 1 canceled) start +0s
            > add p -> done_w, done_b, done_r; fn gw: done_w; fn gb: done_b
              done_w ~ WAITING(BUILD) (added: waiting for its function's build)
              done_b ~ WAITING(BUILD) (added: waiting for its function's build)
              done_r ~ TODO (added: ready)
              enqueue done_r
              plan DOING (12 tasks: 7 waiting, 3 todo, 1 done, 1 canceled) start +0s
            > add q -> canceled_w, canceled_r; fn gw: canceled_w
              canceled_w ~ CANCELED end +0s (added: parent task q is CANCELED)
              canceled_r ~ CANCELED end +0s (added: parent task q is CANCELED)
              plan DOING (14 tasks: 7 waiting, 3 todo, 1 done, 3 canceled) start +0s
            > add none_r -> in_batch_1 -> in_batch_2
              in_batch_1 ~ WAITING(PARENTS) (added: waiting for its parents)
              in_batch_2 ~ WAITING(PARENTS) (added: waiting for its parents)
              plan DOING (16 tasks: 9 waiting, 3 todo, 1 done, 3 canceled) start +0s
            > add fn gc canceled: fn_canceled
              fn_canceled ~ CANCELED end +0s (added: canceled)
              plan DOING (17 tasks: 9 waiting, 3 todo, 1 done, 4 canceled) start +0s
            == end ==
              p DONE #1 on w1 start +0s end +0s
              q CANCELED end +0s
              x TODO
              none_w WAITING(BUILD)
              none_b WAITING(BUILD)
              none_r TODO
              mixed_w WAITING(BUILD)
              mixed_b WAITING(BUILD)
              mixed_r WAITING(PARENTS)
              done_w WAITING(BUILD)
              done_b WAITING(BUILD)
              done_r TODO
              canceled_w CANCELED end +0s
              canceled_r CANCELED end +0s
              in_batch_1 WAITING(PARENTS)
              in_batch_2 WAITING(PARENTS)
              fn_canceled CANCELED end +0s
              plan DOING (17 tasks: 9 waiting, 3 todo, 1 done, 4 canceled) start +0s
              active: yes, next deadline: none
        "#]],
    );
}

#[test]
fn a_task_of_a_failed_function_added_is_born_failed_and_fails_the_plan() {
    check(
        "a | claim a w1 | add fn gf failed: born_failed; b",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (1 task: 1 doing) start +0s
            > add fn gf failed: born_failed; b
              born_failed ~ FAILED error BUILD "its function failed to build" end +0s (added: its function failed to build)
              b ~ TODO (added: ready)
              a ~ DOING #1 lease +30s on w1 cancel-requested start +0s (plan failed; cancel requested)
              order Cancel a to w1
              b → CANCELED end +0s (plan failed)
              plan FAILED (3 tasks: 1 doing, 1 failed, 1 canceled) start +0s failed +0s by born_failed
            == end ==
              a DOING #1 lease +30s on w1 cancel-requested start +0s
              born_failed FAILED error BUILD "its function failed to build" end +0s
              b CANCELED end +0s
              plan FAILED (3 tasks: 1 doing, 1 failed, 1 canceled) start +0s failed +0s by born_failed
              active: yes, next deadline: +30s
        "#]],
    );
}

#[test]
fn a_child_of_a_failed_parent_added_later_is_born_canceled() {
    check(
        "a; b | claim a w1 | +1s fail a | +1s add a -> c; b -> d; e",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (2 tasks: 1 todo, 1 doing) start +0s
            > +1s fail a
              a → FAILED #1 on w1 error EXECUTION "boom" start +0s end +1s (attempt 1 failed (EXECUTION: boom))
              b → CANCELED end +1s (plan failed)
              plan FAILED (2 tasks: 1 failed, 1 canceled) start +0s failed +1s by a end +1s
            > +1s add a -> c; b -> d; e
              c ~ CANCELED end +2s (added: parent task a is FAILED)
              d ~ CANCELED end +2s (added: parent task b is CANCELED)
              e → CANCELED end +2s (added: plan P is terminated (FAILED))
              plan FAILED (5 tasks: 1 failed, 4 canceled) start +0s failed +1s by a end +2s
            == end ==
              a FAILED #1 on w1 error EXECUTION "boom" start +0s end +1s
              b CANCELED end +1s
              c CANCELED end +2s
              d CANCELED end +2s
              e CANCELED end +2s
              plan FAILED (5 tasks: 1 failed, 4 canceled) start +0s failed +1s by a end +2s
              active: no, next deadline: none
        "#]],
    );
}

#[test]
fn a_stale_given_status_is_derived_again() {
    check(
        "a; b | claim a w1 | cancel b \
         | add a -> c; given c TODO; b -> d; given d WAITING; given e WAITING(BUILD); e",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (2 tasks: 1 todo, 1 doing) start +0s
            > cancel b
              b → CANCELED end +0s (task canceled)
              plan DOING (2 tasks: 1 doing, 1 canceled) start +0s
            > add a -> c; given c TODO; b -> d; given d WAITING; given e WAITING(BUILD); e
              c → WAITING(PARENTS) (added: waiting for its parents)
              d → CANCELED end +0s (added: parent task b is CANCELED)
              e ~ WAITING(BUILD) (added: waiting for its function's build)
              plan DOING (5 tasks: 2 waiting, 1 doing, 2 canceled) start +0s
            == end ==
              a DOING #1 lease +30s on w1 start +0s
              b CANCELED end +0s
              c WAITING(PARENTS)
              d CANCELED end +0s
              e WAITING(BUILD)
              plan DOING (5 tasks: 2 waiting, 1 doing, 2 canceled) start +0s
              active: yes, next deadline: +30s
        "#]],
    );
}

#[test]
fn adding_an_existing_task_or_a_cycle_is_refused() {
    check(
        "a | readd a | twice b | add x -> y; y -> x; given x TODO; given y TODO \
         | add z -> z; given z TODO | show",
        expect![[r#"
            > readd a
              refused (a): task a already exists in plan P
            > twice b
              refused (b): task b is added twice
            > add x -> y; y -> x; given x TODO; given y TODO
              refused: the added tasks have a cycle among their parents
            > add z -> z; given z TODO
              refused: the added tasks have a cycle among their parents
            > show
            == +0s ==
              a TODO
              plan TODO (1 task: 1 todo)
              active: yes, next deadline: none
        "#]],
    );
}

// ---- parents outside the plan -------------------------------------------------------------------

#[test]
fn parents_outside_the_plan() {
    check(
        "ext x done: a; ext y: b; ext z: c; c -> d; ext y: e; e -> f \
         | ext y done | ext z failed | ext a done | ext w doing",
        expect![[r#"
            > ext y done
              b → TODO (last parent task y done)
              enqueue b
              e → TODO (last parent task y done)
              enqueue e
              plan TODO (6 tasks: 3 waiting, 3 todo)
            > ext z failed
              c → CANCELED end +0s (parent task z FAILED)
              d → CANCELED end +0s (parent task c canceled)
              plan TODO (6 tasks: 1 waiting, 3 todo, 2 canceled)
            > ext a done
              refused (a): task a is in plan P, not outside it
            > ext w doing
              refused (w): task w is DOING, which is not an end
            == end ==
              a TODO
              b TODO
              c CANCELED end +0s
              d CANCELED end +0s
              e TODO
              f WAITING(PARENTS)
              plan TODO (6 tasks: 1 waiting, 3 todo, 2 canceled)
              active: yes, next deadline: none
        "#]],
    );
    // A given TODO tells the core that the outside parent is DONE.
    check(
        "p | add ext v: c; given c TODO | add ext v: d",
        expect![[r#"
            > add ext v: c; given c TODO
              c ~ TODO (added: ready)
              enqueue c
              plan TODO (2 tasks: 2 todo)
            > add ext v: d
              d → TODO (added: ready)
              enqueue d
              plan TODO (3 tasks: 3 todo)
            == end ==
              p TODO
              c TODO
              d TODO
              plan TODO (3 tasks: 3 todo)
              active: yes, next deadline: none
        "#]],
    );
}

// ---- plan activity and dates (semantics.md §11.21, §11.23) -------------------------------------

#[test]
fn a_plan_is_active_while_work_can_change() {
    check(
        "| show | add a | show | claim a w1 | show | done a | show \
         | add b | show | claim b w1 | fail b | show | add c; d | show",
        expect![[r#"
            > show
            == +0s ==
              plan EMPTY (0 tasks)
              active: no, next deadline: none
            > add a
              a ~ TODO (added: ready)
              enqueue a
              plan TODO (1 task: 1 todo)
            > show
            == +0s ==
              a TODO
              plan TODO (1 task: 1 todo)
              active: yes, next deadline: none
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (1 task: 1 doing) start +0s
            > show
            == +0s ==
              a DOING #1 lease +30s on w1 start +0s
              plan DOING (1 task: 1 doing) start +0s
              active: yes, next deadline: +30s
            > done a
              a → DONE #1 on w1 start +0s end +0s (attempt 1 done)
              plan DONE (1 task: 1 done) start +0s end +0s
            > show
            == +0s ==
              a DONE #1 on w1 start +0s end +0s
              plan DONE (1 task: 1 done) start +0s end +0s
              active: no, next deadline: none
            > add b
              b ~ TODO (added: ready)
              enqueue b
              plan DOING (2 tasks: 1 todo, 1 done) start +0s
            > show
            == +0s ==
              a DONE #1 on w1 start +0s end +0s
              b TODO
              plan DOING (2 tasks: 1 todo, 1 done) start +0s
              active: yes, next deadline: none
            > claim b w1
              b → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted b attempt 1, lease until +30s
              plan DOING (2 tasks: 1 doing, 1 done) start +0s
            > fail b
              b → FAILED #1 on w1 error EXECUTION "boom" start +0s end +0s (attempt 1 failed (EXECUTION: boom))
              plan FAILED (2 tasks: 1 done, 1 failed) start +0s failed +0s by b end +0s
            > show
            == +0s ==
              a DONE #1 on w1 start +0s end +0s
              b FAILED #1 on w1 error EXECUTION "boom" start +0s end +0s
              plan FAILED (2 tasks: 1 done, 1 failed) start +0s failed +0s by b end +0s
              active: no, next deadline: none
            > add c; d
              c → CANCELED end +0s (added: plan P is terminated (FAILED))
              d → CANCELED end +0s (added: plan P is terminated (FAILED))
              plan FAILED (4 tasks: 1 done, 1 failed, 2 canceled) start +0s failed +0s by b end +0s
            > show
            == +0s ==
              a DONE #1 on w1 start +0s end +0s
              b FAILED #1 on w1 error EXECUTION "boom" start +0s end +0s
              c CANCELED end +0s
              d CANCELED end +0s
              plan FAILED (4 tasks: 1 done, 1 failed, 2 canceled) start +0s failed +0s by b end +0s
              active: no, next deadline: none
        "#]],
    );
}

#[test]
fn plan_end_date_follows_its_last_task() {
    check(
        "a | +5s claim a w1 | +5s done a",
        expect![[r#"
        > +5s claim a w1
          a → DOING #1 lease +35s on w1 start +5s (claimed by w1 (attempt 1))
          granted a attempt 1, lease until +35s
          plan DOING (1 task: 1 doing) start +5s
        > +5s done a
          a → DONE #1 on w1 start +5s end +10s (attempt 1 done)
          plan DONE (1 task: 1 done) start +5s end +10s
        == end ==
          a DONE #1 on w1 start +5s end +10s
          plan DONE (1 task: 1 done) start +5s end +10s
          active: no, next deadline: none
    "#]],
    );
    check(
        "a | +5s claim a w1 | +5s fail a",
        expect![[r#"
        > +5s claim a w1
          a → DOING #1 lease +35s on w1 start +5s (claimed by w1 (attempt 1))
          granted a attempt 1, lease until +35s
          plan DOING (1 task: 1 doing) start +5s
        > +5s fail a
          a → FAILED #1 on w1 error EXECUTION "boom" start +5s end +10s (attempt 1 failed (EXECUTION: boom))
          plan FAILED (1 task: 1 failed) start +5s failed +10s by a end +10s
        == end ==
          a FAILED #1 on w1 error EXECUTION "boom" start +5s end +10s
          plan FAILED (1 task: 1 failed) start +5s failed +10s by a end +10s
          active: no, next deadline: none
    "#]],
    );
    check(
        "a | +5s cancel a",
        expect![[r#"
        > +5s cancel a
          a → CANCELED end +5s (task canceled)
          plan CANCELED (1 task: 1 canceled) end +5s
        == end ==
          a CANCELED end +5s
          plan CANCELED (1 task: 1 canceled) end +5s
          active: no, next deadline: none
    "#]],
    );
    check(
        "a; b | claim a w1 | +5s cancel plan | +1s stopped a | show",
        expect![[r#"
            > claim a w1
              a → DOING #1 lease +30s on w1 start +0s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +30s
              plan DOING (2 tasks: 1 todo, 1 doing) start +0s
            > +5s cancel plan
              a ~ DOING #1 lease +30s on w1 cancel-requested start +0s (plan canceled; cancel requested)
              order Cancel a to w1
              b → CANCELED end +5s (plan canceled)
              plan CANCELED (2 tasks: 1 doing, 1 canceled) start +0s canceled +5s end +5s
            > +1s stopped a
              a → CANCELED #1 on w1 cancel-requested start +0s end +6s (attempt 1 canceled by its worker)
              plan CANCELED (2 tasks: 2 canceled) start +0s canceled +5s end +5s
            > show
            == +6s ==
              a CANCELED #1 on w1 cancel-requested start +0s end +6s
              b CANCELED end +5s
              plan CANCELED (2 tasks: 2 canceled) start +0s canceled +5s end +5s
              active: no, next deadline: none
        "#]],
    );
    check(
        "a -> b | +5s claim a w1 | +5s done a | show",
        expect![[r#"
            > +5s claim a w1
              a → DOING #1 lease +35s on w1 start +5s (claimed by w1 (attempt 1))
              granted a attempt 1, lease until +35s
              plan DOING (2 tasks: 1 waiting, 1 doing) start +5s
            > +5s done a
              a → DONE #1 on w1 start +5s end +10s (attempt 1 done)
              b → TODO (last parent task a done)
              enqueue b
              plan DOING (2 tasks: 1 todo, 1 done) start +5s
            > show
            == +10s ==
              a DONE #1 on w1 start +5s end +10s
              b TODO
              plan DOING (2 tasks: 1 todo, 1 done) start +5s
              active: yes, next deadline: none
        "#]],
    );
    check(
        "fn g waiting: a | show | fn g building | fn g ready | show",
        expect![[r#"
            > show
            == +0s ==
              a WAITING(BUILD)
              plan WAITING (1 task: 1 waiting)
              active: yes, next deadline: none
            > fn g building
              (no effect)
            > fn g ready
              a → TODO (function g ready)
              enqueue a
              plan TODO (1 task: 1 todo)
            > show
            == +0s ==
              a TODO
              plan TODO (1 task: 1 todo)
              active: yes, next deadline: none
        "#]],
    );
}

#[test]
fn a_task_joining_parents_in_and_outside_the_plan_is_ready_once_the_last_is_done() {
    let status = |world: &World, task| world.state.task(task).expect("in the plan").status;
    let ready = |world: &World, task, done: &[TaskKey]| {
        world
            .state
            .children_ready_after(task, &done.iter().copied().collect())
    };
    // d joins a, b and c, and x, a task of another plan.
    let mut world = World::new("a, b, c -> d; ext x: d");
    let [a, d, x] = ["a", "d", "x"].map(|name| world.key(name));
    for name in ["b", "c", "a"] {
        world.step(&format!("claim {name} w1"));
        world.step(&format!("+1s done {name}"));
    }
    assert_eq!(status(&world, d), TaskStatus::Waiting, "x is not done");
    assert_eq!(ready(&world, a, &[]), Vec::<TaskKey>::new());
    assert_eq!(ready(&world, a, &[x]), vec![d], "x counted as done");
    world.step("ext x done");
    assert_eq!(status(&world, d), TaskStatus::Todo);

    // The last in-plan parent to end makes it ready, whichever it is.
    let mut world = World::new("a, b, c -> d");
    let [a, b, d] = ["a", "b", "d"].map(|name| world.key(name));
    for name in ["c", "a"] {
        world.step(&format!("claim {name} w1"));
        world.step(&format!("+1s done {name}"));
        assert_eq!(status(&world, d), TaskStatus::Waiting, "b is not done");
    }
    assert_eq!(ready(&world, a, &[]), Vec::<TaskKey>::new());
    assert_eq!(ready(&world, a, &[b]), vec![d], "b counted as done");
    world.step("claim b w1");
    world.step("+1s done b");
    assert_eq!(status(&world, d), TaskStatus::Todo);
}
