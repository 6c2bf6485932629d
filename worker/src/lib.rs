//! baton's worker: it will register with the dispatcher, consume the requirement queues its
//! properties satisfy, claim tasks and run their steps on devices. Its code arrives with the
//! worker issue.
