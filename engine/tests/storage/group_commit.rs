//! Group commit: concurrent appenders that each wait for durability share fsyncs.

use std::rc::Rc;

use spate_engine::storage::backend::SimulatedStorage;
use spate_engine::storage::{Durability, SharedLog};

use super::util::{numbered_batch, open, small_config};

#[test]
fn sixteen_appenders_share_fsyncs_and_all_are_durable() {
    let executor = futures_lite::future::block_on; // single-threaded polling of a joined set
    executor(async {
        let storage = SimulatedStorage::new();
        let config = spate_engine::storage::LogConfig {
            segment_bytes: 1 << 20,
            ..small_config()
        };
        let log = Rc::new(SharedLog::new(open(&storage, &config).await));
        let syncs_before = storage.sync_count();
        let rounds = 20;
        let tasks: Vec<_> = (0..16u64)
            .map(|writer| {
                let log = log.clone();
                async move {
                    for round in 0..rounds {
                        let info = log
                            .append(
                                numbered_batch(writer * 1000 + round, 1, 0),
                                0,
                                0,
                                Durability::Synced,
                            )
                            .await
                            .unwrap();
                        let durable = log.with_log(async |log| log.durable_offset()).await;
                        assert!(durable > info.last_offset, "returned only once durable");
                    }
                }
            })
            .collect();
        join_all(tasks).await;
        let syncs = storage.sync_count() - syncs_before;
        let appends = 16 * rounds;
        assert!(
            syncs * 4 <= appends,
            "{syncs} fsyncs for {appends} synced appends"
        );
        let Ok(log) = Rc::try_unwrap(log) else {
            panic!("every task is done");
        };
        let log = log.into_inner();
        assert_eq!(log.durable_offset(), appends as i64);
    });
}

/// Polls every future in turn until all are done (a tiny join_all, so no extra dependency).
async fn join_all<F: std::future::Future<Output = ()>>(futures: Vec<F>) {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).map(Some).collect();
    std::future::poll_fn(|context| {
        let mut pending = false;
        for slot in futures.iter_mut() {
            if let Some(future) = slot {
                if future.as_mut().poll(context).is_pending() {
                    pending = true;
                } else {
                    *slot = None;
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
}
