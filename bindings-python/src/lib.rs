//! The native module `spate._native` behind the `spate` Python package: the producer,
//! consumer and admin client of `spate_engine::client`, the embedded broker, and partition
//! inspection. Every blocking call releases the GIL; long waits are sliced so that Ctrl-C
//! interrupts them. Exceptions are the classes of `spate._errors`.

mod admin;
mod broker;
mod consumer;
mod convert;
mod errors;
mod inspect;
mod producer;
mod sync;
mod wait;

use pyo3::prelude::*;

#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    module.add_class::<producer::Producer>()?;
    module.add_class::<producer::DeliveryFuture>()?;
    module.add_class::<producer::RecordMetadata>()?;
    module.add_class::<producer::ConsumerGroupMetadata>()?;
    module.add_class::<consumer::Consumer>()?;
    module.add_class::<consumer::Record>()?;
    module.add_class::<admin::Admin>()?;
    module.add_class::<broker::EmbeddedBroker>()?;
    module.add_function(wrap_pyfunction!(broker::stop_embedded_brokers, module)?)?;
    module.add_function(wrap_pyfunction!(inspect::inspect_partition, module)?)?;
    module.add_function(wrap_pyfunction!(inspect::dump_partition_text, module)?)?;
    Ok(())
}
