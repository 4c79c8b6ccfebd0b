use cairn::btree::{CommitMeta, Db, DbOptions};
use std::time::Instant;
fn main() {
    let dir = tempfile::tempdir_in(".").unwrap();
    let mut db = Db::open(dir.path().join("db"), DbOptions::default()).unwrap();
    let n: u64 = 2_000_000;
    let val = vec![5u8; 300];
    let t = Instant::now();
    for i in 0..n {
        db.put(0, &i.to_be_bytes(), &val).unwrap();
        if i % 1000 == 999 {
            let _v = db.view();
        }
        if i % 100_000 == 99_999 {
            db.commit(CommitMeta::default()).unwrap();
        }
    }
    db.commit(CommitMeta::default()).unwrap();
    println!(
        "put {:.0}/s {:?}",
        n as f64 / t.elapsed().as_secs_f64(),
        db.stats()
    );
}
