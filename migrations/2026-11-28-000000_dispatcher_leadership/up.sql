-- Which dispatcher applies events: the one that last took the lead, at `epoch`.
--
-- RabbitMQ gives `baton.dispatcher` to one consumer at a time (single active consumer), but a
-- dispatcher does not learn that it lost it: after a lost connection, another may be applying
-- events while the first still holds plans in memory and lapses their leases. So a dispatcher
-- takes the lead when it receives an event and does not hold it (one more epoch), and every
-- transaction of its event applier checks that the epoch is still its own
-- (`store::leadership`). A dispatcher that finds another epoch forgets its plans and rolls back.
CREATE TABLE dispatcher_leadership (
    id smallint PRIMARY KEY CHECK (id = 1),
    epoch bigint NOT NULL CHECK (epoch >= 0),
    holder text NOT NULL,
    since timestamptz NOT NULL
);

INSERT INTO dispatcher_leadership (id, epoch, holder, since) VALUES (1, 0, '', now());
