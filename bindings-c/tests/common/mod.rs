//! Building the C and C++ programs of the tests against libspate.a.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// libspate.a as cargo built it for this test run: in target/<profile>/deps beside this test's
/// binary (cargo copies it up to target/<profile> only on `cargo build`).
pub fn static_library() -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let deps = exe.parent().expect("deps dir");
    let library = [deps, deps.parent().unwrap_or(deps)]
        .iter()
        .map(|dir| dir.join("libspate.a"))
        .find(|path| path.exists())
        .unwrap_or_else(|| deps.join("libspate.a"));
    assert!(
        library.exists(),
        "{} missing: cargo builds it with the tests",
        library.display()
    );
    library
}

/// Compiles `source` (C11 or C++17 by its extension) warning-free into `output`, with any
/// `extra` flags (sanitizers).
pub fn compile(source: &Path, output: &Path, extra: &[&str]) {
    let cpp = source.extension().is_some_and(|ext| ext == "cpp");
    let (compiler, standard) = if cpp {
        ("c++", "-std=c++17")
    } else {
        ("cc", "-std=c11")
    };
    let result = Command::new(compiler)
        .args([standard, "-Wall", "-Wextra", "-Werror", "-g"])
        .args(extra)
        .arg("-o")
        .arg(output)
        .arg(source)
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg(static_library())
        .args(["-lpthread", "-ldl", "-lm"])
        .output()
        .unwrap_or_else(|error| panic!("{compiler} runs: {error}"));
    assert!(
        result.status.success(),
        "{} must compile with -Wall -Wextra -Werror:\n{}",
        source.display(),
        String::from_utf8_lossy(&result.stderr)
    );
}
