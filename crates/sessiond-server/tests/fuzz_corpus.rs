//! Replays the fuzzing corpus and every past finding through the fuzz
//! targets' bodies on each `cargo test`, without the fuzzer: the committed
//! seeds (`fuzz/corpus/`) and the inputs that once failed
//! (`fuzz/regressions/`, each named after what it found) must pass.

use std::path::Path;

fn replay(dir: &str, target: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .join(dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut n = 0;
    let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    paths.sort();
    for path in paths {
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| target(&data));
        assert!(result.is_ok(), "{} fails", path.display());
        n += 1;
    }
    n
}

#[test]
fn the_request_corpus_and_past_findings_pass() {
    let seeds = replay("corpus/requests", sessiond_server::fuzzing::requests);
    assert!(seeds >= 40, "only {seeds} seeds in fuzz/corpus/requests");
    replay("regressions/requests", sessiond_server::fuzzing::requests);
}

#[test]
fn the_command_corpus_and_past_findings_pass() {
    let seeds = replay("corpus/commands", sessiond_server::fuzzing::commands);
    assert!(seeds >= 40, "only {seeds} seeds in fuzz/corpus/commands");
    replay("regressions/commands", sessiond_server::fuzzing::commands);
}
