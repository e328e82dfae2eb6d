//! Fuzz target: the request parser and command parsing on a byte stream.
//! See `sessiond_server::fuzzing::requests`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        sessiond_server::fuzzing::requests(data);
    });
}
