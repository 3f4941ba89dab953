//! Nothing to use: this crate only holds ferroformers' criterion benches (`benches/`), so that
//! their dependencies stay out of ferroformers' own build. `cargo bench -p ferroformers-bench`.
