//! The hub client against the local hub server: a first download into an empty cache, then the
//! same files offline with no request; the file list; 404, 401 and gated repositories; pinned
//! revisions; connections dropped mid-file (resumed, or an error that leaves nothing to read). (Needs the `test-server` feature: `cargo test -p mae-hub --features test-server`.)

use mae_hub::testing::HubServer;
use mae_hub::{Hub, RepoId, RepoKind};

fn files() -> Vec<(String, Vec<u8>)> {
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    vec![("config.json".into(), b"{\"a\": 1}".to_vec()), ("sub/dir/big.bin".into(), big)]
}

#[test]
fn downloads_into_an_empty_cache_then_reads_it_offline() {
    let server = HubServer::start().unwrap();
    let commit = server.add_repo(RepoKind::Dataset, "owner/data", files());
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(cache.path()).with_endpoint(server.endpoint());
    let repo = RepoId::parse("owner/data").unwrap();

    let listed = hub.list_files(RepoKind::Dataset, &repo).unwrap();
    assert_eq!(listed, vec!["config.json", "sub/dir/big.bin"]);
    for (name, bytes) in files() {
        let path = hub.file(RepoKind::Dataset, &repo, &name).unwrap().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{name}");
        assert!(path.starts_with(cache.path().join("datasets--owner--data/snapshots").join(&commit)));
    }
    assert_eq!(hub.file(RepoKind::Dataset, &repo, "missing.txt").unwrap(), None, "404 is Ok(None)");

    let before = server.requests().len();
    let offline = Hub::new(cache.path()).with_offline(true);
    assert_eq!(
        offline.cached_files(RepoKind::Dataset, &repo).unwrap(),
        vec!["config.json", "sub/dir/big.bin"]
    );
    let path = offline.file(RepoKind::Dataset, &repo, "sub/dir/big.bin").unwrap().unwrap();
    assert_eq!(std::fs::read(path).unwrap().len(), 300_000);
    assert_eq!(server.requests().len(), before, "offline reads make no request");
    // A model of the same name is another repository.
    assert!(offline.file(RepoKind::Model, &repo, "config.json").is_err());
}

#[test]
fn unknown_gated_and_pinned_repositories() {
    let server = HubServer::start().unwrap();
    let commit = server.add_repo(RepoKind::Model, "owner/model", files());
    server.add_repo(RepoKind::Model, "owner/gated", files());
    server.gate(RepoKind::Model, "owner/gated", "secret");
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(cache.path()).with_endpoint(server.endpoint());

    let unknown = RepoId::parse("owner/nothing").unwrap();
    let e = hub.file(RepoKind::Model, &unknown, "config.json").unwrap_err().to_string();
    assert!(e.contains("HTTP 401") && e.contains("HF_TOKEN"), "{e}");

    let gated = RepoId::parse("owner/gated").unwrap();
    let e = hub.file(RepoKind::Model, &gated, "config.json").unwrap_err().to_string();
    assert!(e.contains("private or gated"), "{e}");
    let with_token = hub.clone().with_token(Some("secret".into()));
    assert!(with_token.file(RepoKind::Model, &gated, "config.json").unwrap().is_some());

    let pinned = RepoId::parse(&format!("owner/model@{commit}")).unwrap();
    let path = hub.file(RepoKind::Model, &pinned, "config.json").unwrap().unwrap();
    assert!(path.to_string_lossy().contains(&commit));
    let bad_rev = RepoId::parse("owner/model@nope").unwrap();
    assert_eq!(hub.file(RepoKind::Model, &bad_rev, "config.json").unwrap(), None, "unknown revision: 404");
}

/// Files among the cache's blobs below `dir` other than whole blobs (named by their hash) and
/// hf-hub's empty `.lock` files: what a broken download leaves behind (its `.part`).
fn leftovers(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            } else if path.parent().is_some_and(|p| p.ends_with("blobs"))
                && path.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.contains('.') && !n.ends_with(".lock")
                })
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[test]
fn a_download_broken_twice_is_resumed_where_it_stopped() {
    let server = HubServer::start().unwrap();
    server.add_repo(RepoKind::Model, "owner/model", files());
    // Two broken connections, fewer than the client's retries: the file still arrives whole.
    server.drop_connections("sub/dir/big.bin", 100_000, 2);
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(cache.path()).with_endpoint(server.endpoint());
    let repo = RepoId::parse("owner/model").unwrap();

    let path = hub.file(RepoKind::Model, &repo, "sub/dir/big.bin").unwrap().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), files()[1].1, "the resumed file is the served one");
    let resumed: Vec<String> = server
        .ranges()
        .into_iter()
        .filter(|(p, r)| p.ends_with("big.bin") && r != "bytes=0-0")
        .map(|(_, r)| r)
        .collect();
    // The first download starts at 0; each retry asks for the rest after what arrived.
    assert_eq!(resumed, vec!["bytes=0-", "bytes=100000-", "bytes=200000-"], "{resumed:?}");
    assert_eq!(leftovers(cache.path()), Vec::<String>::new(), "no partial file stays in the cache");
}

#[test]
fn a_download_that_keeps_breaking_is_an_error_and_leaves_no_file_to_read() {
    let server = HubServer::start().unwrap();
    server.add_repo(RepoKind::Model, "owner/model", files());
    server.drop_connections("sub/dir/big.bin", 1_000, 100);
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(cache.path()).with_endpoint(server.endpoint());
    let repo = RepoId::parse("owner/model").unwrap();

    let e = hub.file(RepoKind::Model, &repo, "sub/dir/big.bin").unwrap_err().to_string();
    assert!(e.contains("owner/model") && e.contains("big.bin") && e.contains("times in a row"), "{e}");
    assert!(e.contains("again resumes"), "{e}");
    // Nothing half-written is ever taken for the file, online or offline.
    assert_eq!(hub.cached_file(RepoKind::Model, &repo, "sub/dir/big.bin"), None);
    let offline = Hub::new(cache.path()).with_offline(true);
    assert!(offline.file(RepoKind::Model, &repo, "sub/dir/big.bin").is_err());

    // Once the network behaves, the next try completes the file, resuming what arrived.
    let server_ok = HubServer::start().unwrap();
    server_ok.add_repo(RepoKind::Model, "owner/model", files());
    let hub = Hub::new(cache.path()).with_endpoint(server_ok.endpoint());
    let path = hub.file(RepoKind::Model, &repo, "sub/dir/big.bin").unwrap().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), files()[1].1);
    let tries = server.ranges().iter().filter(|(p, r)| p.ends_with("big.bin") && r != "bytes=0-0").count();
    let first = server_ok.ranges().into_iter().find(|(p, r)| p.ends_with("big.bin") && r != "bytes=0-0");
    assert_eq!(
        first.map(|(_, r)| r),
        Some(format!("bytes={}-", tries * 1_000)),
        "{tries} tries of 1,000 bytes"
    );
    assert_eq!(leftovers(cache.path()), Vec::<String>::new());
}
