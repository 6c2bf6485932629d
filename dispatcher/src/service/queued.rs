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
    /// for which `waiting` holds; the tasks for which it does not, met on the way, are dropped.
    pub(crate) fn take_oldest(
        &mut self,
        properties: &Properties,
        waiting: impl Fn(TaskKey) -> bool,
    ) -> Option<TaskKey> {
        let mut stale = Vec::new();
        let mut oldest: Option<(u64, TaskKey)> = None;
        for queue in self.queues.values() {
            if !queue.requirements.is_satisfied_by(properties) {
                continue;
            }
            for (&order, &task) in &queue.tasks {
                if oldest.is_some_and(|(first, _)| first < order) {
                    break;
                }
                if waiting(task) {
                    oldest = Some((order, task));
                    break;
                }
                stale.push(task);
            }
        }
        for task in stale {
            self.remove(task);
        }
        let (_, task) = oldest?;
        self.remove(task);
        Some(task)
    }

    /// The first `count` tasks of each queue for which `waiting` holds, oldest first: those
    /// [`QueuedTasks::take_oldest`] would take next, to read from the store with a batch.
    pub(crate) fn first(&self, count: usize, waiting: impl Fn(TaskKey) -> bool) -> Vec<TaskKey> {
        if count == 0 {
            return Vec::new();
        }
        self.queues
            .values()
            .flat_map(|queue| {
                queue
                    .tasks
                    .values()
                    .copied()
                    .filter(|task| waiting(*task))
                    .take(count)
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
        assert_eq!(queued.take_oldest(&plain, |_| true), Some(task(2)));
        assert_eq!(queued.take_oldest(&plain, |_| true), None, "gpu tasks stay");
        assert_eq!(queued.take_oldest(&with_gpu, |_| true), Some(task(1)));
        assert_eq!(queued.take_oldest(&with_gpu, |_| true), Some(task(3)));
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
        assert_eq!(queued.first(2, waiting), vec![task(2), task(4)]);
        assert_eq!(queued.take_oldest(&properties(&[]), waiting), Some(task(2)));
        assert_eq!(queued.len(), 1, "task 1 was dropped on the way, 2 taken");
        assert_eq!(queued.first(5, |_| true), vec![task(4)]);
    }
}
