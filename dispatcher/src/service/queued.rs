//! The tasks waiting in their task queues that the event applier holds in memory, oldest first
//! per queue: what it may grant in the slot a worker's DONE report kept
//! (`TaskStatusReport::awaits_work`) instead of letting the worker take and claim the task's
//! message a round trip and a batch later.
//!
//! Entries are added as tasks are published (a pass's `Enqueue` effects, a plan read from the
//! store) and removed as they are granted or their plan is forgotten; an entry whose task left
//! TODO otherwise (canceled, failed) is skipped and dropped when it comes first.

use std::collections::{BTreeMap, HashMap};

use models::{Properties, RequirementSet, TaskKey};

/// The task of `queue` a refill takes next: the oldest for which `waiting` holds after the
/// `published` oldest such, or, when the queue holds no more than those, the oldest. The
/// outbox relay publishes a queue's oldest tasks and holds the rest back while a queue has
/// `published` ready messages (`DispatcherConfig::publish_ahead`): a refill takes a task whose
/// message was never sent, rather than one a consumer will be delivered and drop. Tasks met on
/// the way for which `waiting` does not hold are added to `stale`.
fn candidate(
    queue: &Queue,
    published: usize,
    waiting: impl Fn(TaskKey) -> bool,
    stale: &mut Vec<TaskKey>,
) -> Option<(u64, TaskKey)> {
    let mut oldest = None;
    let mut passed = 0;
    for (&order, &task) in &queue.tasks {
        if !waiting(task) {
            stale.push(task);
            continue;
        }
        if passed == published {
            return Some((order, task));
        }
        oldest.get_or_insert((order, task));
        passed += 1;
    }
    oldest
}

/// One task queue's waiting tasks.
struct Queue {
    /// Its requirement set, which a worker's properties must satisfy.
    requirements: RequirementSet,
    /// Its tasks, by the order they were added in.
    tasks: BTreeMap<u64, TaskKey>,
}

/// The waiting tasks of every queue (see the module's documentation).
#[derive(Default)]
pub(crate) struct QueuedTasks {
    /// The order of the next task added.
    next: u64,
    /// The queues, by routing key.
    queues: HashMap<String, Queue>,
    /// Where each task is: its queue's routing key and its order.
    entries: HashMap<TaskKey, (String, u64)>,
}

impl QueuedTasks {
    /// Adds `task`, published to the queue of `requirements` (routing key `routing_key`), after
    /// every task added before; a task already held keeps its place.
    pub(crate) fn add(&mut self, task: TaskKey, routing_key: &str, requirements: &RequirementSet) {
        if self.entries.contains_key(&task) {
            return;
        }
        let order = self.next;
        self.next += 1;
        self.queues
            .entry(routing_key.to_owned())
            .or_insert_with(|| Queue {
                requirements: requirements.clone(),
                tasks: BTreeMap::new(),
            })
            .tasks
            .insert(order, task);
        self.entries.insert(task, (routing_key.to_owned(), order));
    }

    /// Removes `task`, if held.
    pub(crate) fn remove(&mut self, task: TaskKey) {
        let Some((routing_key, order)) = self.entries.remove(&task) else {
            return;
        };
        if let Some(queue) = self.queues.get_mut(&routing_key) {
            queue.tasks.remove(&order);
            if queue.tasks.is_empty() {
                self.queues.remove(&routing_key);
            }
        }
    }

    /// Takes out the oldest task, across the queues whose requirements `properties` satisfy,
    /// for which `waiting` holds, passing over the `published` oldest of each queue while it
    /// holds more (see [`candidate`]); the tasks for which `waiting` does not hold, met on the
    /// way, are dropped.
    pub(crate) fn take_oldest(
        &mut self,
        properties: &Properties,
        published: usize,
        waiting: impl Fn(TaskKey) -> bool,
    ) -> Option<TaskKey> {
        let mut stale = Vec::new();
        let mut oldest: Option<(u64, TaskKey)> = None;
        for queue in self.queues.values() {
            if !queue.requirements.is_satisfied_by(properties) {
                continue;
            }
            if let Some((order, task)) = candidate(queue, published, &waiting, &mut stale)
                && oldest.is_none_or(|(first, _)| order < first)
            {
                oldest = Some((order, task));
            }
        }
        for task in stale {
            self.remove(task);
        }
        let (_, task) = oldest?;
        self.remove(task);
        Some(task)
    }

    /// Up to `count` tasks of each queue for which `waiting` holds, in the order
    /// [`QueuedTasks::take_oldest`] would take them (passing over the `published` oldest while
    /// the queue holds more), to read from the store with a batch.
    pub(crate) fn first(
        &self,
        count: usize,
        published: usize,
        waiting: impl Fn(TaskKey) -> bool,
    ) -> Vec<TaskKey> {
        if count == 0 {
            return Vec::new();
        }
        self.queues
            .values()
            .flat_map(|queue| {
                let waiting: Vec<TaskKey> = queue
                    .tasks
                    .values()
                    .copied()
                    .filter(|task| waiting(*task))
                    .take(published + count)
                    .collect();
                // Beyond the published ones first, then, if those run out, the published.
                let (front, back) = waiting.split_at(published.min(waiting.len()));
                back.iter()
                    .chain(front)
                    .copied()
                    .take(count)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// How many tasks are held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(n: u128) -> TaskKey {
        TaskKey(uuid::Uuid::from_u128(n))
    }

    fn gpu() -> RequirementSet {
        RequirementSet(BTreeMap::from([("gpu".to_owned(), "yes".to_owned())]))
    }

    fn properties(pairs: &[(&str, &str)]) -> Properties {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn the_oldest_task_a_worker_can_run_comes_first_across_queues() {
        let mut queued = QueuedTasks::default();
        let any = RequirementSet::any();
        queued.add(task(1), "gpu=yes", &gpu());
        queued.add(task(2), "any", &any);
        queued.add(task(3), "gpu=yes", &gpu());
        queued.add(task(1), "any", &any);
        let plain = properties(&[]);
        let with_gpu = properties(&[("gpu", "yes")]);
        assert_eq!(queued.take_oldest(&plain, 0, |_| true), Some(task(2)));
        assert_eq!(
            queued.take_oldest(&plain, 0, |_| true),
            None,
            "gpu tasks stay"
        );
        assert_eq!(queued.take_oldest(&with_gpu, 0, |_| true), Some(task(1)));
        assert_eq!(queued.take_oldest(&with_gpu, 0, |_| true), Some(task(3)));
        assert_eq!(queued.len(), 0);
        assert!(queued.queues.is_empty(), "an emptied queue is dropped");
    }

    #[test]
    fn tasks_no_longer_waiting_are_dropped_when_met() {
        let mut queued = QueuedTasks::default();
        let any = RequirementSet::any();
        for n in 1..=4 {
            queued.add(task(n), "any", &any);
        }
        queued.remove(task(3));
        let waiting = |key: TaskKey| key != task(1);
        assert_eq!(queued.first(2, 0, waiting), vec![task(2), task(4)]);
        assert_eq!(
            queued.take_oldest(&properties(&[]), 0, waiting),
            Some(task(2))
        );
        assert_eq!(queued.len(), 1, "task 1 was dropped on the way, 2 taken");
        assert_eq!(queued.first(5, 0, |_| true), vec![task(4)]);
    }

    #[test]
    fn refills_pass_over_the_published_oldest_while_the_queue_holds_more() {
        let mut queued = QueuedTasks::default();
        let any = RequirementSet::any();
        for n in 1..=5 {
            queued.add(task(n), "any", &any);
        }
        let plain = properties(&[]);
        assert_eq!(queued.first(2, 2, |_| true), vec![task(3), task(4)]);
        assert_eq!(queued.take_oldest(&plain, 2, |_| true), Some(task(3)));
        assert_eq!(queued.take_oldest(&plain, 2, |_| true), Some(task(4)));
        assert_eq!(queued.take_oldest(&plain, 2, |_| true), Some(task(5)));
        assert_eq!(
            queued.first(3, 2, |_| true),
            vec![task(1), task(2)],
            "only the published are left: they are taken, oldest first"
        );
        assert_eq!(queued.take_oldest(&plain, 2, |_| true), Some(task(1)));
        let waiting = |key: TaskKey| key != task(2);
        assert_eq!(queued.take_oldest(&plain, 2, waiting), None);
        assert_eq!(queued.len(), 0, "task 2, no longer waiting, was dropped");
    }
}
