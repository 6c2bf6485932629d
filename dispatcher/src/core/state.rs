//! [`PlanState`]: a plan, its tasks and their DAG, with indexes of the deadlines a Tick acts on.

use std::collections::{BTreeSet, HashMap, HashSet};

use models::{ComputePlan, PlanCounters, TaskKey, TaskStatus, Timestamp};
use petgraph::Direction;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};

use super::TaskNode;

/// A plan and its DAG of tasks (edges go from parent to child), as [`super::apply`] changes it.
#[derive(Clone, Debug)]
pub struct PlanState {
    pub(super) plan: ComputePlan,
    pub(super) graph: StableDiGraph<TaskNode, ()>,
    pub(super) index: HashMap<TaskKey, NodeIndex>,
    /// Parents outside the plan known to be DONE.
    pub(super) external_done: HashSet<TaskKey>,
    /// Lease expiries of DOING tasks.
    leases: BTreeSet<(Timestamp, NodeIndex)>,
    /// `not_before` of TODO tasks.
    not_befores: BTreeSet<(Timestamp, NodeIndex)>,
}

impl PlanState {
    /// Builds the state of a stored plan from all its tasks.
    ///
    /// `external_done`: keys of parents outside this plan that are DONE (a task's parent may be a
    /// stored task of another plan); any parent key that is neither in `tasks` nor in
    /// `external_done` counts as not done. A key given twice in `tasks` keeps its first node.
    ///
    /// The plan's counters, status and end date are derived again from the tasks (and its start
    /// date from theirs when it has none), so a stale stored plan is corrected by the next
    /// [`Effect::PlanChanged`](super::Effect::PlanChanged).
    pub fn new(
        plan: ComputePlan,
        tasks: Vec<TaskNode>,
        external_done: HashSet<TaskKey>,
    ) -> PlanState {
        let mut state = PlanState {
            plan,
            graph: StableDiGraph::with_capacity(tasks.len(), tasks.len()),
            index: HashMap::with_capacity(tasks.len()),
            external_done,
            leases: BTreeSet::new(),
            not_befores: BTreeSet::new(),
        };
        for task in tasks {
            if !state.index.contains_key(&task.key) {
                state.insert(task);
            }
        }
        let nodes: Vec<NodeIndex> = state.graph.node_indices().collect();
        for child in nodes {
            state.link_parents(child);
        }
        let mut counters = PlanCounters::default();
        for task in state.graph.node_weights() {
            counters.add(task.status);
        }
        state.plan.counters = counters;
        if state.plan.start_date.is_none() {
            state.plan.start_date = state
                .graph
                .node_weights()
                .filter_map(|t| t.start_date)
                .min();
        }
        state.refresh_plan();
        state
    }

    /// The plan.
    pub fn plan(&self) -> &ComputePlan {
        &self.plan
    }

    /// One task of the plan.
    pub fn task(&self, key: TaskKey) -> Option<&TaskNode> {
        self.index.get(&key).map(|&idx| &self.graph[idx])
    }

    /// Every task of the plan, in the order they were given and added.
    pub fn tasks(&self) -> impl Iterator<Item = &TaskNode> {
        self.graph.node_weights()
    }

    /// Whether the plan has tasks that can still change (WAITING, TODO, DOING).
    pub fn is_active(&self) -> bool {
        self.plan.counters.active_count() > 0
    }

    /// The earliest lease expiry (of DOING tasks) and `not_before` (of TODO tasks), so the shell
    /// knows when to send a Tick. A `not_before` stays until its task is claimed, so it may be in
    /// the past; [`PlanState::next_lease_expiry`] is the only deadline a Tick acts on.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let lease = self.next_lease_expiry();
        let not_before = self.not_befores.first().map(|&(at, _)| at);
        lease.into_iter().chain(not_before).min()
    }

    /// The earliest lease expiry of a DOING task: a Tick at or after it lapses that lease.
    pub fn next_lease_expiry(&self) -> Option<Timestamp> {
        self.leases.first().map(|&(at, _)| at)
    }

    /// The DOING tasks whose lease expired at `now`, earliest expiry first.
    pub(super) fn expired_leases(&self, now: Timestamp) -> Vec<NodeIndex> {
        self.leases
            .iter()
            .take_while(|&&(at, _)| at <= now)
            .map(|&(_, idx)| idx)
            .collect()
    }

    /// The children of `idx` in the plan, in the order they were added.
    pub(super) fn children(&self, idx: NodeIndex) -> Vec<NodeIndex> {
        let mut children: Vec<NodeIndex> = self
            .graph
            .neighbors_directed(idx, Direction::Outgoing)
            .collect();
        children.sort_unstable();
        children.dedup();
        children
    }

    /// The children of `task` that would be ready were the tasks of `done` DONE: each of their
    /// parents is DONE already or among `done`. What a batch of DONE reports will likely make
    /// ready, for the shell to read ahead.
    pub fn children_ready_after(
        &self,
        task: TaskKey,
        done: &std::collections::HashSet<TaskKey>,
    ) -> Vec<TaskKey> {
        let Some(&idx) = self.index.get(&task) else {
            return Vec::new();
        };
        self.children(idx)
            .into_iter()
            .filter(|&child| {
                self.graph[child].status == TaskStatus::Waiting
                    && self.parents_done_or(child, |parent| done.contains(&parent))
            })
            .map(|child| self.graph[child].key)
            .collect()
    }

    /// Whether every parent of the task at `idx` is DONE: in-plan parents by their status, the
    /// others by `external_done`.
    pub(super) fn parents_done_at(&self, idx: NodeIndex) -> bool {
        self.parents_done_or(idx, |_| false)
    }

    /// Whether every parent of the task at `idx` is DONE or `counted`. The in-plan parents are
    /// found through the DAG's edges, newest first, without a lookup by key: a task joining
    /// many parents is checked at each parent's end, and its parents end about in the order
    /// they were added, so the check stops at once at one not DONE. Its parents are looked up
    /// by key only when some are outside the plan.
    fn parents_done_or(&self, idx: NodeIndex, counted: impl Fn(TaskKey) -> bool) -> bool {
        let mut in_plan = 0;
        for parent in self.graph.neighbors_directed(idx, Direction::Incoming) {
            let node = &self.graph[parent];
            if node.status != TaskStatus::Done && !counted(node.key) {
                return false;
            }
            in_plan += 1;
        }
        let task = &self.graph[idx];
        in_plan == task.parents.len()
            || task.parents.iter().all(|parent| {
                counted(*parent)
                    || match self.index.get(parent) {
                        Some(&idx) => self.graph[idx].status == TaskStatus::Done,
                        None => self.external_done.contains(parent),
                    }
            })
    }

    /// Whether every parent of `task`, which may not be in the plan yet, is DONE: in-plan
    /// parents by their status, the others by `external_done`.
    pub(super) fn parents_done(&self, task: &TaskNode) -> bool {
        task.parents
            .iter()
            .all(|parent| match self.index.get(parent) {
                Some(&idx) => self.graph[idx].status == TaskStatus::Done,
                None => self.external_done.contains(parent),
            })
    }

    /// Adds a task without edges; the caller links its parents.
    pub(super) fn insert(&mut self, task: TaskNode) -> NodeIndex {
        let key = task.key;
        let idx = self.graph.add_node(task);
        self.index.insert(key, idx);
        self.index_deadlines(idx, true);
        idx
    }

    /// Adds the edges from the in-plan parents of `child` to it.
    pub(super) fn link_parents(&mut self, child: NodeIndex) {
        let parents: Vec<NodeIndex> = self.graph[child]
            .parents
            .iter()
            .filter_map(|parent| self.index.get(parent).copied())
            .filter(|&parent| parent != child)
            .collect();
        for parent in parents {
            if self.graph.find_edge(parent, child).is_none() {
                self.graph.add_edge(parent, child, ());
            }
        }
    }

    /// Removes a task and its edges (undoing [`PlanState::insert`]).
    pub(super) fn remove(&mut self, idx: NodeIndex) {
        self.index_deadlines(idx, false);
        if let Some(task) = self.graph.remove_node(idx) {
            self.index.remove(&task.key);
        }
    }

    /// Replaces a task's state, keeping the deadline indexes in step; returns the old state.
    pub(super) fn replace(&mut self, idx: NodeIndex, task: TaskNode) -> TaskNode {
        self.index_deadlines(idx, false);
        let old = std::mem::replace(&mut self.graph[idx], task);
        self.index_deadlines(idx, true);
        old
    }

    fn index_deadlines(&mut self, idx: NodeIndex, present: bool) {
        let task = &self.graph[idx];
        let lease = match (&task.lease, task.status) {
            (Some(lease), TaskStatus::Doing) => Some((lease.expires_at, idx)),
            _ => None,
        };
        let not_before = match (task.not_before, task.status) {
            (Some(at), TaskStatus::Todo) => Some((at, idx)),
            _ => None,
        };
        for (set, entry) in [
            (&mut self.leases, lease),
            (&mut self.not_befores, not_before),
        ] {
            if let Some(entry) = entry {
                if present {
                    set.insert(entry);
                } else {
                    set.remove(&entry);
                }
            }
        }
    }

    /// Derives the plan's status and end date from its counters, dates and tasks (SPEC.md §5):
    /// the end date is the cancelation date if canceled, else the latest task end once nothing
    /// can still run, else none.
    pub(super) fn refresh_plan(&mut self) {
        let plan = &mut self.plan;
        plan.status = plan
            .counters
            .status(plan.failure_date, plan.cancelation_date);
        plan.end_date = match plan.cancelation_date {
            Some(canceled) => Some(canceled),
            None if plan.counters.task_count > 0 && plan.counters.active_count() == 0 => {
                self.graph.node_weights().filter_map(|t| t.end_date).max()
            }
            None => None,
        };
    }
}
