//! All integration tests in one binary, to link once.

mod cli;
mod crosscheck;
mod generate;
mod properties;
