//! baton's integration tests live in the `it` test binary (`tests/it/main.rs`); this library is
//! empty and exists because cargo needs a target besides tests.
