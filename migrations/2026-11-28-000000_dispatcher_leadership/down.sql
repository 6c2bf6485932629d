DROP TABLE dispatcher_leadership;
