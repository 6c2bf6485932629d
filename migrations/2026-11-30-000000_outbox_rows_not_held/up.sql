-- The relay's poll reads the oldest rows not held (`WHERE NOT held … ORDER BY id`). While a
-- large plan's rows wait held, walking the primary key passed over every one of them (6 ms a
-- poll with 20,000 held); this index holds only the rows not held, a few at any time.
CREATE INDEX outbox_not_held ON outbox (id) WHERE NOT held;

-- A held row has no availability of its own: its release gives it one. Rows held before this
-- migration lose theirs, so that the availability index does not list them.
UPDATE outbox SET available_at = NULL WHERE held;
