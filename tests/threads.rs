//! `set_num_threads` decides how many threads run the models. Its own test binary: rayon's
//! global pool is built once per process, so no other test may touch it first.

mod common;

use common::*;
use ferroformers::{BertModel, Error, FromPretrained, LoadOptions};

/// The number of threads of the pool that runs a forward pass (its kernels split their work
/// by this count), asked from inside it.
fn threads_running_the_model() -> usize {
    ferroformers::kernels::on_worker(rayon::current_num_threads)
}

#[test]
fn set_num_threads_sizes_the_pool_that_runs_the_models() {
    // Not the default, whatever this machine has: one more than its cores.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let wanted = cores + 1;
    assert!(matches!(
        ferroformers::set_num_threads(0),
        Err(Error::InvalidInput(_))
    ));
    ferroformers::set_num_threads(wanted).unwrap();
    assert_eq!(threads_running_the_model(), wanted);

    // A model still runs and still matches PyTorch on that pool.
    let model = BertModel::from_pretrained(
        fixture("bert/base").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_is_the_base_fixture(&model, "last_hidden_state");
    assert_eq!(threads_running_the_model(), wanted);

    // The same count again is fine; another one, once the pool runs, is an error that says so.
    ferroformers::set_num_threads(wanted).unwrap();
    let error = ferroformers::set_num_threads(wanted + 1).unwrap_err();
    assert!(
        matches!(&error, Error::InvalidInput(m) if m.contains(&format!("already runs {wanted} threads"))),
        "{error}"
    );
    assert_eq!(threads_running_the_model(), wanted);
}
