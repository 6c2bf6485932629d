use chrono::{TimeZone, Utc};

use super::*;

fn at(second: u32) -> Timestamp {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, second).unwrap()
}

fn counters(statuses: &[TaskStatus]) -> PlanCounters {
    let mut counters = PlanCounters::default();
    for status in statuses {
        counters.add(*status);
    }
    counters
}

#[test]
fn status_follows_the_first_matching_rule() {
    use TaskStatus::*;
    type Case = (
        &'static [TaskStatus],
        Option<Timestamp>,
        Option<Timestamp>,
        PlanStatus,
    );
    let cases: &[Case] = &[
        (&[], None, None, PlanStatus::Empty),
        (&[Done, Done], None, None, PlanStatus::Done),
        (
            &[Done, Failed, Waiting],
            Some(at(1)),
            None,
            PlanStatus::Failed,
        ),
        (
            &[Done, Canceled, Todo],
            None,
            Some(at(1)),
            PlanStatus::Canceled,
        ),
        (
            &[Failed, Canceled],
            Some(at(2)),
            Some(at(1)),
            PlanStatus::Canceled,
        ),
        (
            &[Failed, Canceled],
            Some(at(1)),
            Some(at(2)),
            PlanStatus::Failed,
        ),
        (&[Waiting, Waiting], None, None, PlanStatus::Waiting),
        (&[Waiting, Todo], None, None, PlanStatus::Todo),
        (&[Todo, Doing], None, None, PlanStatus::Doing),
        (&[Done, Waiting], None, None, PlanStatus::Doing),
        // A single task canceled by hand, nothing left to run.
        (&[Done, Canceled], None, None, PlanStatus::Canceled),
    ];
    for (statuses, failure, cancelation, expected) in cases {
        assert_eq!(
            counters(statuses).status(*failure, *cancelation),
            *expected,
            "{statuses:?} failure={failure:?} cancelation={cancelation:?}"
        );
    }
}

#[test]
fn a_plan_that_was_done_runs_again_when_tasks_are_added() {
    let mut plan_counters = counters(&[TaskStatus::Done]);
    assert_eq!(plan_counters.status(None, None), PlanStatus::Done);
    plan_counters.add(TaskStatus::Todo);
    assert_eq!(plan_counters.status(None, None), PlanStatus::Doing);
}

#[test]
fn transitions_move_counts() {
    let mut plan_counters = counters(&[TaskStatus::Todo, TaskStatus::Waiting]);
    plan_counters.record_transition(TaskStatus::Todo, TaskStatus::Doing);
    plan_counters.record_transition(TaskStatus::Doing, TaskStatus::Done);
    plan_counters.record_transition(TaskStatus::Waiting, TaskStatus::Todo);
    assert_eq!(
        plan_counters,
        PlanCounters {
            task_count: 2,
            todo_count: 1,
            done_count: 1,
            ..PlanCounters::default()
        }
    );
}

fn plan(counters: PlanCounters, start: Option<Timestamp>, end: Option<Timestamp>) -> ComputePlan {
    ComputePlan {
        key: PlanKey(uuid::Uuid::from_u128(1)),
        project: None,
        name: "p".into(),
        tag: String::new(),
        owner: "org".into(),
        creator: None,
        metadata: Metadata::new(),
        status: counters.status(None, None),
        counters,
        failed_task_key: None,
        creation_date: at(0),
        start_date: start,
        end_date: end,
        failure_date: None,
        cancelation_date: None,
    }
}

#[test]
fn duration_is_zero_before_start() {
    let waiting = plan(counters(&[TaskStatus::Waiting]), None, None);
    assert_eq!(waiting.duration(at(30)), 0);
    let running = plan(counters(&[TaskStatus::Doing]), Some(at(10)), None);
    assert_eq!(running.duration(at(30)), 20);
}

#[test]
fn estimated_end_date_extrapolates_the_pace_so_far() {
    // 4 tasks, 1 done after 10 s: 3 more at 10 s each.
    let running = plan(
        counters(&[
            TaskStatus::Done,
            TaskStatus::Doing,
            TaskStatus::Todo,
            TaskStatus::Todo,
        ]),
        Some(at(0)),
        None,
    );
    assert_eq!(running.status, PlanStatus::Doing);
    assert_eq!(running.estimated_end_date(at(10)), Some(at(40)));
    // Nothing done yet: no estimate.
    let started = plan(counters(&[TaskStatus::Doing]), Some(at(0)), None);
    assert_eq!(started.estimated_end_date(at(10)), None);
    // Terminal: the end date.
    let done = plan(counters(&[TaskStatus::Done]), Some(at(0)), Some(at(5)));
    assert_eq!(done.estimated_end_date(at(10)), Some(at(5)));
}
