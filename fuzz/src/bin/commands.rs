//! Fuzz target: `Command::parse` on argument vectors (arguments separated
//! by 0xFF). See `sessiond_server::fuzzing::commands`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        sessiond_server::fuzzing::commands(data);
    });
}
