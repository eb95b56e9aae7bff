//! What every benchmark of the library shares: the allocator the `tarmo`
//! binary runs it with (ARCHITECTURE.md, "The allocator is mimalloc"), so
//! that a benchmark measures the library as it runs.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
