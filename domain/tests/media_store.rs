//! The media store on both backends: a local directory, and an
//! S3-compatible server (moto, started by the test; skipped with a
//! printed reason only when it is not installed). A 12 MiB file streams in
//! by 64 KiB chunks (several multipart parts on S3), is checked and named
//! by its hash; ranges come back; a wrong hash or an oversize stream
//! leaves nothing behind; the same bytes twice are one object.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use sha2::{Digest, Sha256};
use wapipe_domain::media::{Expect, MediaStore, PutError};

const SIZE: usize = 12 * 1024 * 1024;

/// `SIZE` bytes, in 64 KiB chunks made on the fly.
fn big_stream() -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    stream::iter(0..SIZE / 65536).map(|i| Ok(Bytes::from(vec![(i % 251) as u8; 65536])))
}

fn big_sha() -> String {
    let mut h = Sha256::new();
    for i in 0..SIZE / 65536 {
        h.update(vec![(i % 251) as u8; 65536]);
    }
    hex::encode(h.finalize())
}

async fn exercise(store: MediaStore) {
    let sha = big_sha();
    let stored = store
        .put_stream(
            big_stream(),
            Expect {
                sha256: Some(&sha),
                size: Some(SIZE as u64),
                max: SIZE as u64,
            },
        )
        .await
        .expect("stored");
    assert_eq!(stored.sha256, sha);
    assert_eq!(stored.size, SIZE as u64);
    assert_eq!(store.size_of(&sha).await.expect("head"), Some(SIZE as u64));
    // A range across a part boundary.
    let start = 5 * 1024 * 1024 - 10;
    let got = store
        .get(&sha, Some(start..start + 20))
        .await
        .expect("get")
        .expect("present");
    assert_eq!(got.total, SIZE as u64);
    let bytes: Vec<Bytes> = got.stream.try_collect().await.expect("read");
    let bytes = bytes.concat();
    assert_eq!(bytes.len(), 20);
    let chunk = |n: u64| ((n / 65536) % 251) as u8;
    assert!(
        bytes
            .iter()
            .enumerate()
            .all(|(i, b)| *b == chunk(start + i as u64))
    );

    // The same bytes again: the same one object.
    store
        .put_stream(
            big_stream(),
            Expect {
                sha256: None,
                size: None,
                max: u64::MAX,
            },
        )
        .await
        .expect("stored again");
    assert_eq!(store.list().await.expect("list"), vec![sha.clone()]);

    // A wrong hash, a wrong size, an oversize stream: refused, nothing kept.
    let wrong = "cd".repeat(32);
    let err = store
        .put_stream(
            big_stream(),
            Expect {
                sha256: Some(&wrong),
                size: None,
                max: u64::MAX,
            },
        )
        .await
        .expect_err("checksum");
    assert!(matches!(err, PutError::Checksum { .. }), "{err}");
    let err = store
        .put_stream(
            big_stream(),
            Expect {
                sha256: None,
                size: Some(5),
                max: u64::MAX,
            },
        )
        .await
        .expect_err("size");
    assert!(matches!(err, PutError::Size { .. }), "{err}");
    let err = store
        .put_stream(
            big_stream(),
            Expect {
                sha256: None,
                size: None,
                max: 1_000_000,
            },
        )
        .await
        .expect_err("too large");
    assert!(
        matches!(err, PutError::TooLarge { limit: 1_000_000 }),
        "{err}"
    );
    assert_eq!(store.list().await.expect("list"), vec![sha.clone()]);

    let small = store
        .put_bytes(Bytes::from_static(b"thumb"))
        .await
        .expect("small");
    assert_eq!(
        store.read_small(&small.sha256, 100).await.expect("read"),
        Some(Bytes::from_static(b"thumb"))
    );
    store.delete(&sha).await.expect("delete");
    store.delete(&sha).await.expect("deleting twice is fine");
    assert_eq!(
        store.list().await.expect("list"),
        vec![small.sha256.clone()]
    );
    assert!(store.get(&sha, None).await.expect("get").is_none());
}

#[tokio::test]
async fn local_directory() {
    let dir = tempfile::tempdir().expect("tmp");
    exercise(MediaStore::local(&dir.path().join("media")).expect("store")).await;
}

#[tokio::test]
async fn s3_compatible() {
    let Some(s3) = wapipe_testkit::s3::moto().await else {
        return;
    };
    s3.bucket("media-store").await;
    let store = MediaStore::s3(
        &s3.media_url("media-store", "a/b"),
        &[
            ("aws_access_key_id", "test"),
            ("aws_secret_access_key", "test"),
        ],
    )
    .expect("store");
    exercise(store).await;
}
