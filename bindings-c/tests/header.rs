//! The committed header is what cbindgen generates from the code; the C example builds with
//! `-Wall -Werror` against it and runs.

mod common;

use std::process::Command;

use common::{compile, crate_dir};

#[test]
fn committed_header_is_current() {
    let config = cbindgen::Config::from_file(crate_dir().join("cbindgen.toml")).expect("config");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir())
        .with_config(config)
        .generate()
        .expect("cbindgen")
        .write(&mut generated);
    let header_path = crate_dir().join("include/spate.h");
    if std::env::var_os("SPATE_BLESS").is_some() {
        std::fs::write(&header_path, &generated).expect("write header");
    }
    let committed = std::fs::read(&header_path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/spate.h is stale: regenerate it with SPATE_BLESS=1 cargo test -p spate-c"
    );
}

#[test]
fn c_example_compiles_warning_free_and_inspects_a_log() {
    let work = tempfile::tempdir().expect("tempdir");
    let binary = work.path().join("inspect");
    compile(&crate_dir().join("examples/inspect.c"), &binary, &[]);

    // A partition with two batches, written through the engine.
    let partition = work.path().join("topic-0");
    futures_lite::future::block_on(async {
        use spate_engine::storage::batch::build::{batch, NewRecord};
        use spate_engine::storage::{backend::StdStorage, LogConfig, PartitionLog};
        let (mut log, _) = PartitionLog::open(StdStorage, &partition, LogConfig::default(), 0)
            .await
            .expect("open");
        for n in 0..2 {
            log.append(batch(&[NewRecord::value(format!("v{n}"), 5)]), 0, 5)
                .await
                .expect("append");
        }
        log.close(5).await.expect("close");
    });
    let output = Command::new(&binary)
        .arg(&partition)
        .output()
        .expect("run example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("segments=1 batches=2 offsets=[0,2) healthy=1"),
        "{stdout}"
    );
    let missing = Command::new(&binary)
        .arg(work.path().join("nope"))
        .output()
        .expect("run");
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("is not a directory"));
}
