//! Test support for phonehome's end-to-end tests: a fresh PostgreSQL database per test, a
//! throwaway PKI, the real binaries, and a small TLS client that can misbehave on purpose.

pub mod bins;
pub mod client;
pub mod pg;
pub mod pki;

pub use pg::TestDb;
