//! How long a 1M-session engine image takes to encode, decode and rebuild
//! (what a cluster node's restart does). Ignored: a measurement, run with
//! `cargo test --release -p sessiond-core --test image_speed -- --ignored --nocapture`.

use std::time::Instant;

use bytes::Bytes;
use sessiond_core::engine::EngineImage;
use sessiond_core::{
    Engine, Field, LockTable, PackedFields, Session, SessionId, SessionMeta, Store, StoreConfig,
};

#[test]
#[ignore = "a measurement"]
fn a_million_sessions_image_round_trip() {
    let n = 1_000_000u64;
    let mut store = Store::new(StoreConfig::default());
    let t = Instant::now();
    let sessions: Vec<(SessionId, Session)> = (0..n)
        .map(|i| {
            let id = SessionId::parse(format!("m{i:07}").as_bytes()).expect("id");
            let fields = PackedFields::from_entries((0..10u64).map(|k| {
                (
                    Bytes::from(format!("key{k}")),
                    Field {
                        version: k + 1,
                        value: Bytes::from(vec![b'x'; 96]),
                    },
                )
            }));
            let meta = SessionMeta {
                version: 10,
                created: 1_000,
                last_access: 1_000,
                ttl_ms: 3_600_000,
                lifetime_deadline: None,
            };
            (id, Session { meta, fields })
        })
        .collect();
    store.restore_sessions(sessions);
    let engine = Engine::new(store, LockTable::new(1, 300_000));
    eprintln!("build {:?}", t.elapsed());
    let t = Instant::now();
    let image = engine.image();
    eprintln!("image {:?}", t.elapsed());
    let t = Instant::now();
    let bytes = image.encode();
    eprintln!("encode {:?} ({} MB)", t.elapsed(), bytes.len() / 1_000_000);
    drop(image);
    let t = Instant::now();
    let decoded = EngineImage::decode(&bytes).expect("decodes");
    eprintln!("decode {:?}", t.elapsed());
    let t = Instant::now();
    let restored = Engine::from_image(decoded);
    eprintln!("from_image {:?}", t.elapsed());
    assert_eq!(restored.store().len(), n as usize);
}
