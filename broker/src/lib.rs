//! baton's RabbitMQ layer: the only crate that will speak AMQP (topology, envelope, confirmed
//! publishing, consuming, reconnection). Its code arrives with the broker issue; the dispatcher
//! and the worker depend on it already so that the dependency graph of DESIGN.md holds.
