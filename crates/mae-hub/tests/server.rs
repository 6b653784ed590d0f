//! The hub client against the local hub server: a first download into an empty cache, then the
//! same files offline with no request; the file list; 404, 401 and gated repositories; pinned
//! revisions. (Needs the `test-server` feature: `cargo test -p mae-hub --features test-server`.)

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
