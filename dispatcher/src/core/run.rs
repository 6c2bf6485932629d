//! The handling of each [`Event`]: check it, then change the state through [`Run`], which keeps
//! what it needs to undo every change, so that a refusal (or a bug) leaves the state untouched.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use models::wire::Grant;
use models::{
    Attempt, FunctionKey, FunctionStatus, Lease, RetryPolicy, TaskErrorType, TaskKey, TaskStatus,
    Timestamp, WaitingReason, WorkerId,
};
use petgraph::stable_graph::NodeIndex;
use uuid::Uuid;

use super::{ClaimDecision, Effect, Event, Order, Outcome, PlanState, TaskNode};

/// See [`super::apply`].
pub(super) fn apply(
    state: &mut PlanState,
    event: Event,
    now: Timestamp,
    jitter: f64,
) -> Vec<Effect> {
    let before = state.plan.clone();
    let claimed = match &event {
        Event::ClaimRequested { task, .. } => Some(*task),
        _ => None,
    };
    let subject = subject(&event);
    let mut run = Run {
        state,
        now,
        jitter,
        effects: Vec::new(),
        undo: Vec::new(),
    };
    match run.event(event) {
        Ok(()) => {
            let Run {
                state, mut effects, ..
            } = run;
            state.refresh_plan();
            if state.plan != before {
                effects.push(Effect::PlanChanged {
                    plan: state.plan.clone(),
                });
            }
            effects
        }
        Err(stop) => {
            run.rollback();
            run.state.plan = before;
            match stop {
                Stop::Refuse(effect) => vec![*effect],
                Stop::Bug(reason) => {
                    let reason = format!("refused, nothing changed: {reason} (a bug in the core)");
                    match claimed {
                        Some(task_key) => vec![Effect::ReplyClaim {
                            reply: ClaimDecision::Refused { task_key, reason },
                        }],
                        None => vec![Effect::Refused {
                            task: subject,
                            reason,
                        }],
                    }
                }
            }
        }
    }
}

/// The task an event names, if any.
fn subject(event: &Event) -> Option<TaskKey> {
    match event {
        Event::ClaimRequested { task, .. }
        | Event::Finished { task, .. }
        | Event::LeaseRenewed { task, .. }
        | Event::CancelTask { task, .. }
        | Event::AbortTask { task, .. }
        | Event::ExternalParentEnded { task, .. } => Some(*task),
        Event::Tick
        | Event::CancelPlan { .. }
        | Event::FunctionChanged { .. }
        | Event::TasksAdded { .. } => None,
    }
}

/// Why an event stops before its end; every change made so far is undone.
enum Stop {
    /// The event is refused: this is the one effect to return.
    Refuse(Box<Effect>),
    /// The core was about to break a rule (a transition `TaskStatus::can_become` refuses).
    Bug(String),
}

type Step = Result<(), Stop>;

/// How to undo one change.
enum Undo {
    Task(NodeIndex, Box<TaskNode>),
    Added(NodeIndex),
    ExternalDone(TaskKey),
}

/// One [`apply`] in progress.
struct Run<'a> {
    state: &'a mut PlanState,
    now: Timestamp,
    jitter: f64,
    effects: Vec<Effect>,
    undo: Vec<Undo>,
}

fn refused(task: Option<TaskKey>, reason: String) -> Stop {
    Stop::Refuse(Box::new(Effect::Refused { task, reason }))
}

/// `prefix`, or `prefix: reason` when a reason was given.
fn said(prefix: &str, reason: &str) -> String {
    if reason.trim().is_empty() {
        prefix.to_owned()
    } else {
        format!("{prefix}: {reason}")
    }
}

fn rfc3339(at: Timestamp) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Compares lease tokens in constant time: they are secrets shared with one worker.
fn same_token(a: &Uuid, b: &Uuid) -> bool {
    a.as_bytes()
        .iter()
        .zip(b.as_bytes())
        .fold(0u8, |diff, (x, y)| diff | (x ^ y))
        == 0
}

/// The running attempt of a DOING task.
fn current_attempt(task: &TaskNode) -> Attempt {
    task.lease
        .as_ref()
        .map_or(Attempt(task.attempt_count), |lease| lease.attempt)
}

fn waiting_words(task: &TaskNode) -> &'static str {
    match task.waiting_reason {
        Some(WaitingReason::Build) => "task is WAITING for its function's build",
        _ => "task is WAITING for its parents",
    }
}

/// A positive duration added to `now`, or why not.
fn expiry(now: Timestamp, duration: TimeDelta) -> Result<Timestamp, String> {
    let ms = duration.num_milliseconds();
    if duration <= TimeDelta::zero() {
        return Err(format!("a lease duration of {ms} ms is not positive"));
    }
    now.checked_add_signed(duration)
        .ok_or_else(|| format!("a lease duration of {ms} ms is out of range"))
}

/// The order of `keys` in which every task comes after its parents among `keys`, or `None` on a
/// cycle.
fn topological_order(
    tasks: &[TaskNode],
    positions: &HashMap<TaskKey, usize>,
) -> Option<Vec<usize>> {
    let mut pending = vec![0usize; tasks.len()];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
    for (child, task) in tasks.iter().enumerate() {
        let mut seen = Vec::new();
        for parent in &task.parents {
            if let Some(&parent) = positions.get(parent)
                && !seen.contains(&parent)
            {
                seen.push(parent);
                pending[child] += 1;
                children[parent].push(child);
            }
        }
    }
    let mut ready: VecDeque<usize> = (0..tasks.len()).filter(|&i| pending[i] == 0).collect();
    let mut order = Vec::with_capacity(tasks.len());
    while let Some(next) = ready.pop_front() {
        order.push(next);
        for &child in &children[next] {
            pending[child] -= 1;
            if pending[child] == 0 {
                ready.push_back(child);
            }
        }
    }
    (order.len() == tasks.len()).then_some(order)
}

impl Run<'_> {
    fn event(&mut self, event: Event) -> Step {
        match event {
            Event::ClaimRequested {
                task,
                worker,
                lease_token,
                lease_duration,
            } => self.claim(task, worker, lease_token, lease_duration),
            Event::Finished {
                task,
                attempt,
                lease_token,
                outcome,
            } => self.finished(task, attempt, lease_token, outcome),
            Event::LeaseRenewed {
                task,
                attempt,
                lease_token,
                lease_duration,
            } => self.renew(task, attempt, lease_token, lease_duration),
            Event::Tick => self.tick(),
            Event::CancelPlan { reason } => self.cancel_plan(&reason),
            Event::CancelTask { task, reason } => self.stop_task(task, Order::Cancel, &reason),
            Event::AbortTask { task, reason } => self.stop_task(task, Order::Abort, &reason),
            Event::FunctionChanged { function, status } => self.function_changed(function, status),
            Event::TasksAdded { tasks } => self.add_tasks(tasks),
            Event::ExternalParentEnded { task, status } => self.external_parent_ended(task, status),
        }
    }

    // ---- primitives -------------------------------------------------------------------------

    fn task(&self, idx: NodeIndex) -> &TaskNode {
        &self.state.graph[idx]
    }

    fn find(&self, key: TaskKey) -> Option<NodeIndex> {
        self.state.index.get(&key).copied()
    }

    fn nodes(&self) -> Vec<NodeIndex> {
        self.state.graph.node_indices().collect()
    }

    fn unknown(&self, key: TaskKey) -> String {
        format!("task {key} is not in plan {}", self.state.plan.key)
    }

    fn put(&mut self, idx: NodeIndex, task: TaskNode) {
        let old = self.state.replace(idx, task);
        self.undo.push(Undo::Task(idx, Box::new(old)));
    }

    /// Moves a task to `to` after `edit`, with its dates, lease and counters, and records it.
    fn transition(
        &mut self,
        idx: NodeIndex,
        to: TaskStatus,
        reason: String,
        edit: impl FnOnce(&mut TaskNode),
    ) -> Step {
        let mut task = self.task(idx).clone();
        let from = task.status;
        if let Err(error) = from.transition(to) {
            return Err(Stop::Bug(format!("task {}: {error}", task.key)));
        }
        task.status = to;
        task.waiting_reason = None;
        edit(&mut task);
        if to == TaskStatus::Doing {
            task.start_date.get_or_insert(self.now);
        } else {
            task.lease = None;
        }
        if to != TaskStatus::Todo {
            task.not_before = None;
        }
        if to.is_terminal() {
            task.end_date.get_or_insert(self.now);
        }
        self.state.plan.counters.record_transition(from, to);
        self.put(idx, task.clone());
        self.effects.push(Effect::TaskChanged {
            task,
            reason,
            status_changed: true,
        });
        Ok(())
    }

    /// Changes a task without changing its status, and records it.
    fn update(&mut self, idx: NodeIndex, reason: String, edit: impl FnOnce(&mut TaskNode)) {
        let mut task = self.task(idx).clone();
        edit(&mut task);
        self.put(idx, task.clone());
        self.effects.push(Effect::TaskChanged {
            task,
            reason,
            status_changed: false,
        });
    }

    fn enqueue(&mut self, idx: NodeIndex) {
        let task = self.task(idx);
        self.effects.push(Effect::Enqueue {
            task: task.key,
            routing_key: task.routing_key.clone(),
            not_before: task.not_before,
        });
    }

    fn send(&mut self, idx: NodeIndex, order: Order) {
        let task = self.task(idx);
        self.effects.push(Effect::SendOrder {
            task: task.key,
            worker: task.worker_id.clone(),
            order,
        });
    }

    fn rollback(&mut self) {
        while let Some(undo) = self.undo.pop() {
            match undo {
                Undo::Task(idx, old) => {
                    self.state.replace(idx, *old);
                }
                Undo::Added(idx) => self.state.remove(idx),
                Undo::ExternalDone(key) => {
                    self.state.external_done.remove(&key);
                }
            }
        }
    }

    /// The retry delay after `attempt` failed.
    fn backoff(&self, policy: &RetryPolicy, attempt: Attempt) -> TimeDelta {
        let bound = policy.backoff_ms(attempt.get());
        let ms = if policy.jitter {
            let jitter = if self.jitter.is_nan() {
                1.0
            } else {
                self.jitter.clamp(0.0, 1.0)
            };
            // The product lies in [0, bound]; `as` saturates.
            (bound as f64 * jitter).floor() as u64
        } else {
            bound
        };
        TimeDelta::try_milliseconds(i64::try_from(ms).unwrap_or(i64::MAX)).unwrap_or(TimeDelta::MAX)
    }

    // ---- cascades ---------------------------------------------------------------------------

    /// Moves every WAITING (PARENTS) child of the DONE task `idx` whose parents are now all DONE to
    /// TODO. Children waiting for their function's build stay: READY promotes them.
    fn promote_children(&mut self, idx: NodeIndex) -> Step {
        let key = self.task(idx).key;
        for child in self.state.children(idx) {
            let task = self.task(child);
            if task.status == TaskStatus::Waiting
                && task.waiting_reason != Some(WaitingReason::Build)
                && self.state.parents_done_at(child)
            {
                self.transition(
                    child,
                    TaskStatus::Todo,
                    format!("last parent task {key} done"),
                    |_| {},
                )?;
                self.enqueue(child);
            }
        }
        Ok(())
    }

    /// Cancels every WAITING descendant of the CANCELED task `idx`: none can ever run.
    fn cancel_descendants(&mut self, idx: NodeIndex) -> Step {
        let mut queue = VecDeque::from([idx]);
        while let Some(parent) = queue.pop_front() {
            let key = self.task(parent).key;
            for child in self.state.children(parent) {
                if self.task(child).status == TaskStatus::Waiting {
                    self.transition(
                        child,
                        TaskStatus::Canceled,
                        format!("parent task {key} canceled"),
                        |_| {},
                    )?;
                    queue.push_back(child);
                }
            }
        }
        Ok(())
    }

    /// The FAILED task `idx` fails its plan, unless the plan is already terminated.
    fn fail_plan(&mut self, idx: NodeIndex) -> Step {
        if self.state.plan.is_terminated() {
            return Ok(());
        }
        let key = self.task(idx).key;
        let plan = &mut self.state.plan;
        plan.failure_date = Some(self.now);
        plan.failed_task_key.get_or_insert(key);
        self.stop_all("plan failed")
    }

    /// Cancels every WAITING and TODO task, and every DOING one whose lease lapsed; orders every
    /// other DOING one to stop.
    fn stop_all(&mut self, reason: &str) -> Step {
        for idx in self.nodes() {
            let task = self.task(idx);
            let lapsed = task
                .lease
                .as_ref()
                .is_some_and(|lease| lease.expires_at <= self.now);
            match task.status {
                TaskStatus::Waiting | TaskStatus::Todo => {
                    self.transition(idx, TaskStatus::Canceled, reason.to_owned(), |_| {})?;
                }
                TaskStatus::Doing if lapsed => {
                    // No worker holds it any more: nobody to order.
                    let reason = format!("{reason}, and its lease had lapsed");
                    self.transition(idx, TaskStatus::Canceled, reason, |_| {})?;
                }
                TaskStatus::Doing if !task.cancel_requested && !task.abort_requested => {
                    self.update(idx, format!("{reason}; cancel requested"), |task| {
                        task.cancel_requested = true;
                    });
                    self.send(idx, Order::Cancel);
                }
                _ => {}
            }
        }
        Ok(())
    }

    // ---- events -----------------------------------------------------------------------------

    fn claim(
        &mut self,
        key: TaskKey,
        worker: WorkerId,
        lease_token: Uuid,
        lease_duration: TimeDelta,
    ) -> Step {
        let refuse = |reason: String| {
            Stop::Refuse(Box::new(Effect::ReplyClaim {
                reply: ClaimDecision::Refused {
                    task_key: key,
                    reason,
                },
            }))
        };
        let Some(idx) = self.find(key) else {
            return Err(refuse(self.unknown(key)));
        };
        let task = self.task(idx);
        match task.status {
            TaskStatus::Todo => {}
            TaskStatus::Doing => {
                return Err(refuse(format!(
                    "task is being run by attempt {}",
                    current_attempt(task)
                )));
            }
            TaskStatus::Waiting => return Err(refuse(waiting_words(task).to_owned())),
            status => return Err(refuse(format!("task is {status}"))),
        }
        if task.abort_requested {
            return Err(refuse("task has an abort request".to_owned()));
        }
        if task.cancel_requested {
            return Err(refuse("task has a cancel request".to_owned()));
        }
        let plan = &self.state.plan;
        if plan.is_terminated() {
            return Err(refuse(format!(
                "plan {} is terminated ({})",
                plan.key, plan.status
            )));
        }
        if let Some(not_before) = task.not_before
            && not_before > self.now
        {
            return Err(refuse(format!(
                "task is not ready before {}",
                rfc3339(not_before)
            )));
        }
        let expires_at = expiry(self.now, lease_duration).map_err(refuse)?;
        let Some(count) = task.attempt_count.checked_add(1) else {
            return Err(refuse("no attempt number is left".to_owned()));
        };
        let attempt = Attempt(count);
        let reason = format!("claimed by {worker} (attempt {attempt})");
        self.transition(idx, TaskStatus::Doing, reason, |task| {
            task.attempt_count = count;
            task.lease = Some(Lease {
                attempt,
                token: lease_token,
                expires_at,
            });
            task.worker_id = Some(worker);
        })?;
        self.state.plan.start_date.get_or_insert(self.now);
        self.effects.push(Effect::ReplyClaim {
            reply: ClaimDecision::Granted(Grant {
                task_key: key,
                attempt,
                lease_token,
                lease_expires_at: expires_at,
            }),
        });
        Ok(())
    }

    /// The DOING task whose current attempt is `attempt` with `token`, or the refusal of a
    /// `what` ("report", "renewal") for it.
    fn current(
        &self,
        key: TaskKey,
        attempt: Attempt,
        token: Uuid,
        what: &str,
    ) -> Result<NodeIndex, Stop> {
        let Some(idx) = self.find(key) else {
            return Err(refused(Some(key), self.unknown(key)));
        };
        let task = self.task(idx);
        let refuse = |why: String| {
            refused(
                Some(key),
                format!("{what} of attempt {attempt} refused: {why}"),
            )
        };
        if task.status != TaskStatus::Doing {
            return Err(refuse(format!("task is {}", task.status)));
        }
        let Some(lease) = &task.lease else {
            return Err(refuse("task has no lease".to_owned()));
        };
        if lease.attempt != attempt {
            return Err(refuse(format!("the current attempt is {}", lease.attempt)));
        }
        if !same_token(&lease.token, &token) {
            return Err(refuse("wrong lease token".to_owned()));
        }
        Ok(idx)
    }

    fn finished(&mut self, key: TaskKey, attempt: Attempt, token: Uuid, outcome: Outcome) -> Step {
        let idx = self.current(key, attempt, token, "report")?;
        match outcome {
            Outcome::Done => {
                self.transition(
                    idx,
                    TaskStatus::Done,
                    format!("attempt {attempt} done"),
                    |_| {},
                )?;
                self.promote_children(idx)
            }
            Outcome::Failed {
                error_type,
                message,
                retryable,
            } => {
                let task = self.task(idx);
                let stopping = task.cancel_requested
                    || task.abort_requested
                    || self.state.plan.is_terminated();
                let remains = task.attempt_count < task.retry.max_attempts;
                // A worker that shuts down hands its unfinished tasks back: that is no failure
                // of the task, so it runs again at once, whatever attempts remain.
                let handed_back = error_type == TaskErrorType::CanceledByWorker;
                let what = format!("attempt {attempt} failed ({error_type}: {message})");
                if handed_back {
                    let reason = format!("attempt {attempt} handed back by its worker ({message})");
                    if stopping {
                        // It was being stopped anyway: it ends as the stop wanted.
                        self.transition(idx, TaskStatus::Canceled, reason, |_| {})?;
                        return self.cancel_descendants(idx);
                    }
                    self.transition(idx, TaskStatus::Todo, reason, |_| {})?;
                    self.enqueue(idx);
                    return Ok(());
                }
                if retryable && remains && !stopping {
                    let delay = self.backoff(&task.retry, attempt);
                    let not_before = self
                        .now
                        .checked_add_signed(delay)
                        .unwrap_or(DateTime::<Utc>::MAX_UTC);
                    let reason = format!("{what}, retried in {} ms", delay.num_milliseconds());
                    self.transition(idx, TaskStatus::Todo, reason, |task| {
                        task.not_before = Some(not_before);
                    })?;
                    self.enqueue(idx);
                    return Ok(());
                }
                let reason = if !retryable {
                    what
                } else if stopping {
                    format!("{what}, not retried: the task is being stopped")
                } else {
                    format!("{what}, no attempt remains")
                };
                self.transition(idx, TaskStatus::Failed, reason, |task| {
                    task.error_type = Some(error_type);
                    task.error_message = Some(message);
                })?;
                self.fail_plan(idx)
            }
            Outcome::Canceled => {
                let reason = format!("attempt {attempt} canceled by its worker");
                self.transition(idx, TaskStatus::Canceled, reason, |_| {})?;
                self.cancel_descendants(idx)
            }
        }
    }

    fn renew(&mut self, key: TaskKey, attempt: Attempt, token: Uuid, duration: TimeDelta) -> Step {
        let idx = self.current(key, attempt, token, "renewal")?;
        let expires_at = expiry(self.now, duration).map_err(|why| {
            refused(
                Some(key),
                format!("renewal of attempt {attempt} refused: {why}"),
            )
        })?;
        self.update(idx, format!("lease of attempt {attempt} renewed"), |task| {
            if let Some(lease) = &mut task.lease {
                lease.expires_at = expires_at;
            }
        });
        let task = self.task(idx);
        if task.abort_requested {
            self.send(idx, Order::Abort);
        } else if task.cancel_requested {
            self.send(idx, Order::Cancel);
        }
        Ok(())
    }

    fn tick(&mut self) -> Step {
        // Lapses that fail their task go first: the plan's failure then cancels the other lapsed
        // tasks at once, instead of requeueing them or ordering a gone worker to stop.
        let terminated = self.state.plan.is_terminated();
        let (failing, others): (Vec<NodeIndex>, Vec<NodeIndex>) = self
            .state
            .expired_leases(self.now)
            .into_iter()
            .partition(|&idx| {
                let task = self.task(idx);
                !task.cancel_requested
                    && !task.abort_requested
                    && !terminated
                    && task.attempt_count >= task.retry.max_attempts
            });
        for idx in failing.into_iter().chain(others) {
            let task = self.task(idx);
            let Some(lease) = &task.lease else { continue };
            if task.status != TaskStatus::Doing || lease.expires_at > self.now {
                continue;
            }
            let attempt = lease.attempt;
            if task.cancel_requested || task.abort_requested || self.state.plan.is_terminated() {
                let reason =
                    format!("lease lapsed (attempt {attempt}) while the task was being stopped");
                self.transition(idx, TaskStatus::Canceled, reason, |_| {})?;
                self.cancel_descendants(idx)?;
            } else if task.attempt_count < task.retry.max_attempts {
                let reason = format!("lease lapsed (attempt {attempt})");
                self.transition(idx, TaskStatus::Todo, reason, |_| {})?;
                self.enqueue(idx);
            } else {
                let reason = format!("lease lapsed (attempt {attempt}) and no attempt remains");
                self.transition(idx, TaskStatus::Failed, reason, |task| {
                    task.error_type = Some(TaskErrorType::Internal);
                    task.error_message = Some("lease lapsed and no attempt remains".to_owned());
                })?;
                self.fail_plan(idx)?;
            }
        }
        Ok(())
    }

    fn cancel_plan(&mut self, reason: &str) -> Step {
        let plan = &self.state.plan;
        if plan.is_terminated() || (plan.counters.task_count > 0 && !self.state.is_active()) {
            return Err(refused(
                None,
                format!("plan {} is already terminated ({})", plan.key, plan.status),
            ));
        }
        if plan.counters.task_count == 0 {
            return Err(refused(
                None,
                format!("plan {} has no task to cancel", plan.key),
            ));
        }
        self.state.plan.cancelation_date = Some(self.now);
        self.stop_all(&said("plan canceled", reason))
    }

    fn stop_task(&mut self, key: TaskKey, order: Order, reason: &str) -> Step {
        let (noun, verb) = match order {
            Order::Cancel => ("cancel", "canceled"),
            Order::Abort => ("abort", "aborted"),
        };
        let Some(idx) = self.find(key) else {
            return Err(refused(Some(key), self.unknown(key)));
        };
        let task = self.task(idx);
        match task.status {
            TaskStatus::Waiting | TaskStatus::Todo => {
                let reason = said(&format!("task {verb}"), reason);
                self.transition(idx, TaskStatus::Canceled, reason, |_| {})?;
                self.cancel_descendants(idx)
            }
            TaskStatus::Doing => {
                if task.abort_requested {
                    return Err(refused(
                        Some(key),
                        format!("an abort of task {key} was already requested"),
                    ));
                }
                if order == Order::Cancel && task.cancel_requested {
                    return Err(refused(
                        Some(key),
                        format!("a cancel of task {key} was already requested"),
                    ));
                }
                self.update(
                    idx,
                    said(&format!("{noun} requested"), reason),
                    |task| match order {
                        Order::Cancel => task.cancel_requested = true,
                        Order::Abort => task.abort_requested = true,
                    },
                );
                self.send(idx, order);
                Ok(())
            }
            status => Err(refused(
                Some(key),
                format!("task {key} is {status}: nothing to {noun}"),
            )),
        }
    }

    fn function_changed(&mut self, function: FunctionKey, status: FunctionStatus) -> Step {
        let tasks: Vec<NodeIndex> = self
            .nodes()
            .into_iter()
            .filter(|&idx| self.task(idx).function_key == function)
            .collect();
        let not_started =
            |task: &TaskNode| matches!(task.status, TaskStatus::Waiting | TaskStatus::Todo);
        match status {
            FunctionStatus::Ready => {
                for idx in tasks {
                    let task = self.task(idx);
                    if task.status != TaskStatus::Waiting
                        || task.waiting_reason != Some(WaitingReason::Build)
                    {
                        continue;
                    }
                    if self.state.parents_done_at(idx) {
                        let reason = format!("function {function} ready");
                        self.transition(idx, TaskStatus::Todo, reason, |_| {})?;
                        self.enqueue(idx);
                    } else {
                        let reason = format!("function {function} ready, waiting for parents");
                        self.update(idx, reason, |task| {
                            task.waiting_reason = Some(WaitingReason::Parents);
                        });
                    }
                }
            }
            FunctionStatus::Failed => {
                let mut first = None;
                for idx in tasks {
                    if !not_started(self.task(idx)) {
                        continue;
                    }
                    let message = format!("function {function} failed to build");
                    self.transition(idx, TaskStatus::Failed, message.clone(), |task| {
                        task.error_type = Some(TaskErrorType::Build);
                        task.error_message = Some(message);
                    })?;
                    first.get_or_insert(idx);
                }
                if let Some(first) = first {
                    self.fail_plan(first)?;
                }
            }
            FunctionStatus::Canceled => {
                let mut canceled = Vec::new();
                for idx in tasks {
                    if !not_started(self.task(idx)) {
                        continue;
                    }
                    let reason = format!("function {function} canceled");
                    self.transition(idx, TaskStatus::Canceled, reason, |_| {})?;
                    canceled.push(idx);
                }
                for idx in canceled {
                    self.cancel_descendants(idx)?;
                }
            }
            FunctionStatus::Waiting | FunctionStatus::Building => {}
        }
        Ok(())
    }

    fn add_tasks(&mut self, tasks: Vec<TaskNode>) -> Step {
        if tasks.is_empty() {
            return Err(refused(None, "no task to add".to_owned()));
        }
        let plan_key = self.state.plan.key;
        let mut positions = HashMap::with_capacity(tasks.len());
        for (position, task) in tasks.iter().enumerate() {
            let key = task.key;
            if self.state.index.contains_key(&key) {
                return Err(refused(
                    Some(key),
                    format!("task {key} already exists in plan {plan_key}"),
                ));
            }
            if positions.insert(key, position).is_some() {
                return Err(refused(Some(key), format!("task {key} is added twice")));
            }
        }
        let Some(order) = topological_order(&tasks, &positions) else {
            return Err(refused(
                None,
                "the added tasks have a cycle among their parents".to_owned(),
            ));
        };
        let mut slots: Vec<Option<TaskNode>> = tasks.into_iter().map(Some).collect();
        let mut first_failed = None;
        let mut ready = Vec::new();
        for position in order {
            let Some(mut task) = slots.get_mut(position).and_then(Option::take) else {
                continue;
            };
            let mut parents = Vec::with_capacity(task.parents.len());
            for parent in task.parents.drain(..) {
                if !parents.contains(&parent) {
                    parents.push(parent);
                }
            }
            task.parents = parents;
            let given = task.status;
            if given == TaskStatus::Todo {
                // TODO was given because every parent was DONE, which is final.
                for parent in &task.parents {
                    if !self.state.index.contains_key(parent)
                        && self.state.external_done.insert(*parent)
                    {
                        self.undo.push(Undo::ExternalDone(*parent));
                    }
                }
            }
            let (status, waiting_reason, why) = self.derive(&task);
            task.status = status;
            task.waiting_reason = waiting_reason;
            task.lease = None;
            if status != TaskStatus::Todo {
                task.not_before = None;
            }
            if status == TaskStatus::Failed {
                task.error_type.get_or_insert(TaskErrorType::Build);
                task.error_message
                    .get_or_insert_with(|| "its function failed to build".to_owned());
            }
            if status.is_terminal() {
                task.end_date.get_or_insert(self.now);
            }
            let idx = self.state.insert(task.clone());
            self.undo.push(Undo::Added(idx));
            self.state.link_parents(idx);
            self.state.plan.counters.add(status);
            self.effects.push(Effect::TaskChanged {
                task,
                reason: format!("added: {why}"),
                status_changed: status != given,
            });
            match status {
                TaskStatus::Todo => ready.push(idx),
                TaskStatus::Failed => {
                    first_failed.get_or_insert(idx);
                }
                _ => {}
            }
        }
        if let Some(idx) = first_failed {
            self.fail_plan(idx)?;
        }
        // After the plan's failure, if any, which cancels them.
        for idx in ready {
            if self.task(idx).status == TaskStatus::Todo {
                self.enqueue(idx);
            }
        }
        Ok(())
    }

    /// The status of a task being added, from the plan, its parents in the plan (already added
    /// when in the same batch), the parents outside it known DONE, and what its given status says
    /// about its function: WAITING (BUILD) that it is not READY, FAILED that its build failed,
    /// CANCELED that it (or a parent outside the plan) was canceled.
    fn derive(&self, task: &TaskNode) -> (TaskStatus, Option<WaitingReason>, String) {
        for parent in &task.parents {
            if let Some(idx) = self.find(*parent) {
                let status = self.task(idx).status;
                if matches!(status, TaskStatus::Failed | TaskStatus::Canceled) {
                    let why = format!("parent task {parent} is {status}");
                    return (TaskStatus::Canceled, None, why);
                }
            }
        }
        let plan = &self.state.plan;
        if plan.is_terminated() {
            let why = format!("plan {} is terminated ({})", plan.key, plan.status);
            return (TaskStatus::Canceled, None, why);
        }
        match (task.status, task.waiting_reason) {
            (TaskStatus::Canceled, _) => (TaskStatus::Canceled, None, "canceled".to_owned()),
            (TaskStatus::Failed, _) => (
                TaskStatus::Failed,
                None,
                "its function failed to build".to_owned(),
            ),
            (TaskStatus::Waiting, Some(WaitingReason::Build)) => (
                TaskStatus::Waiting,
                Some(WaitingReason::Build),
                "waiting for its function's build".to_owned(),
            ),
            _ if self.state.parents_done(task) => (TaskStatus::Todo, None, "ready".to_owned()),
            _ => (
                TaskStatus::Waiting,
                Some(WaitingReason::Parents),
                "waiting for its parents".to_owned(),
            ),
        }
    }

    fn external_parent_ended(&mut self, key: TaskKey, status: TaskStatus) -> Step {
        if self.find(key).is_some() {
            let plan = self.state.plan.key;
            return Err(refused(
                Some(key),
                format!("task {key} is in plan {plan}, not outside it"),
            ));
        }
        let children: Vec<NodeIndex> = self
            .nodes()
            .into_iter()
            .filter(|&idx| {
                let task = self.task(idx);
                task.status == TaskStatus::Waiting && task.parents.contains(&key)
            })
            .collect();
        match status {
            TaskStatus::Done => {
                if self.state.external_done.insert(key) {
                    self.undo.push(Undo::ExternalDone(key));
                }
                for idx in children {
                    let task = self.task(idx);
                    if task.waiting_reason != Some(WaitingReason::Build)
                        && self.state.parents_done_at(idx)
                    {
                        let reason = format!("last parent task {key} done");
                        self.transition(idx, TaskStatus::Todo, reason, |_| {})?;
                        self.enqueue(idx);
                    }
                }
            }
            TaskStatus::Failed | TaskStatus::Canceled => {
                for idx in children {
                    if self.task(idx).status != TaskStatus::Waiting {
                        // Canceled already, as a descendant of another child.
                        continue;
                    }
                    let reason = format!("parent task {key} {status}");
                    self.transition(idx, TaskStatus::Canceled, reason, |_| {})?;
                    self.cancel_descendants(idx)?;
                }
            }
            TaskStatus::Waiting | TaskStatus::Todo | TaskStatus::Doing => {
                return Err(refused(
                    Some(key),
                    format!("task {key} is {status}, which is not an end"),
                ));
            }
        }
        Ok(())
    }
}
