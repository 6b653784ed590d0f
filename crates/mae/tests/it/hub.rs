//! Hub ids through a local Hugging Face cache, with no network: a tiny ViTMAE laid out as
//! `huggingface_hub` stores it (blobs, symlinked snapshots, `refs/main`) loads by id and gives
//! the reference loss; offline misses are clear errors; the environment (`HF_HUB_CACHE`,
//! `HF_HUB_OFFLINE`) is honoured (checked in a child process, since the environment is global).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use candle_core::Device;
use mae::{Checkpoint, Encoder, Format, Hub, MaskedAutoencoder, RepoId};

const REPO: &str = "mae-test/hf-tiny-a";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A hub cache holding `files` (name in the repository, source file) of `repo` at [`COMMIT`]:
/// blobs named by (fake) hashes, snapshot entries as relative symlinks to them, `refs/main`.
fn make_cache(root: &Path, repo: &str, files: &[(&str, PathBuf)]) {
    let repo_dir = root.join(format!("models--{}", repo.replace('/', "--")));
    let snapshot = repo_dir.join("snapshots").join(COMMIT);
    fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    fs::create_dir_all(repo_dir.join("refs")).unwrap();
    fs::write(repo_dir.join("refs/main"), COMMIT).unwrap();
    for (i, (name, source)) in files.iter().enumerate() {
        let blob = format!("{:064x}", 0xb10b_0000_u64 + i as u64);
        fs::copy(source, repo_dir.join("blobs").join(&blob)).unwrap();
        let link = snapshot.join(name);
        fs::create_dir_all(link.parent().unwrap()).unwrap();
        let depth = name.matches('/').count() + 2;
        let target = format!("{}blobs/{blob}", "../".repeat(depth));
        #[cfg(unix)]
        std::os::unix::fs::symlink(target, &link).unwrap();
        #[cfg(not(unix))]
        {
            let _ = target;
            fs::copy(source, &link).unwrap();
        }
    }
}

fn tiny_a_files() -> Vec<(&'static str, PathBuf)> {
    let dir = fixtures_dir().join("hf_tiny_a");
    vec![("config.json", dir.join("config.json")), ("model.safetensors", dir.join("model.safetensors"))]
}

/// Loss of `model` on the fixture case's det pixels and noise, against the stored reference.
fn check_loss(model: &MaskedAutoencoder, case_name: &str) {
    let c = case(case_name);
    assert_eq!(model.config(), &case_config(&c), "{case_name}: config");
    let b = c["batch"].as_u64().unwrap() as usize;
    let pixels = det_pixels(b, model.config());
    let out = model.forward_with_noise(&pixels, &det_noise(b, model.config().num_patches())).unwrap();
    let err = rel_err(&out.loss.reshape(1).unwrap(), &load_fixture(case_name)["loss"]);
    assert!(err < 1e-5, "{case_name}: loss rel err {err}");
}

#[test]
fn a_tiny_vitmae_loads_by_id_from_the_hub_cache_offline() {
    let cache = tempfile::tempdir().unwrap();
    make_cache(cache.path(), REPO, &tiny_a_files());
    let hub = Hub::new(cache.path()).with_offline(true);
    for id in [REPO.to_string(), format!("{REPO}@main"), format!("{REPO}@{COMMIT}")] {
        let model = MaskedAutoencoder::from_pretrained_with(&id, &hub, &Device::Cpu).unwrap();
        check_loss(&model, "hf_tiny_a");
    }
    let checkpoint = Checkpoint::open(REPO, &hub, &Device::Cpu).unwrap();
    assert_eq!(checkpoint.format, Format::HfVitMae);
    assert!(checkpoint.source.contains(REPO), "{}", checkpoint.source);

    // The encoder alone, from the same id: the MAE's encoder, number for number.
    let model = MaskedAutoencoder::from_pretrained_with(REPO, &hub, &Device::Cpu).unwrap();
    let encoder = Encoder::from_pretrained_with(REPO, &hub, &Device::Cpu).unwrap();
    let pixels = det_pixels(2, model.config());
    let want = model.encoder().forward(&pixels).unwrap();
    assert_eq!(rel_err(&encoder.forward(&pixels).unwrap(), &want), 0.0);
}

/// hf_tiny_a in two shards with an index, as transformers writes big models: the files of such a
/// repository (written into `dir`), with their names.
fn sharded_tiny_a(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    let tensors =
        candle_core::safetensors::load(fixtures_dir().join("hf_tiny_a/model.safetensors"), &Device::Cpu)
            .unwrap();
    let (mut a, mut b) = (std::collections::HashMap::new(), std::collections::HashMap::new());
    let mut weight_map = serde_json::Map::new();
    for (name, t) in tensors {
        let (file, part) = if name.starts_with("decoder.") {
            ("model-00002-of-00002.safetensors", &mut b)
        } else {
            ("model-00001-of-00002.safetensors", &mut a)
        };
        weight_map.insert(name.clone(), file.into());
        part.insert(name, t);
    }
    candle_core::safetensors::save(&a, dir.join("model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&b, dir.join("model-00002-of-00002.safetensors")).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let mut sharded = vec![("config.json", fixtures_dir().join("hf_tiny_a/config.json"))];
    for f in [
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        sharded.push((f, dir.join(f)));
    }
    sharded
}

/// A sharded checkpoint downloaded through the local hub server, by a pinned revision; an
/// unknown revision is an error naming it.
#[test]
fn sharded_weights_at_a_pinned_revision_download_through_the_hub() {
    let server = mae_hub::testing::HubServer::start().unwrap();
    let shards = tempfile::tempdir().unwrap();
    let files = sharded_tiny_a(shards.path())
        .into_iter()
        .map(|(name, path)| (name.to_string(), fs::read(path).unwrap()))
        .collect();
    let commit = server.add_repo(mae_hub::RepoKind::Model, "mae-test/sharded", files);
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(cache.path()).with_endpoint(server.endpoint());
    let id = format!("mae-test/sharded@{commit}");
    check_loss(&MaskedAutoencoder::from_pretrained_with(&id, &hub, &Device::Cpu).unwrap(), "hf_tiny_a");
    let requests = server.requests();
    for shard in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"] {
        assert!(requests.iter().any(|r| r.contains(&commit) && r.ends_with(shard)), "{shard}: {requests:?}");
    }
    let err = MaskedAutoencoder::from_pretrained_with("mae-test/sharded@nope", &hub, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("mae-test/sharded") && err.contains("nope"), "{err}");
}

#[test]
fn pytorch_bin_and_sharded_safetensors_in_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let bin = fixtures_dir().join("hf_tiny_c_bin");
    let bin_files =
        vec![("config.json", bin.join("config.json")), ("pytorch_model.bin", bin.join("pytorch_model.bin"))];
    make_cache(cache.path(), "mae-test/hf-tiny-c-bin", &bin_files);

    // hf_tiny_a in two shards with an index, as transformers writes big models.
    let shards = tempfile::tempdir().unwrap();
    let sharded = sharded_tiny_a(shards.path());
    make_cache(cache.path(), "mae-test/hf-tiny-a-sharded", &sharded);

    let hub = Hub::new(cache.path()).with_offline(true);
    let model =
        MaskedAutoencoder::from_pretrained_with("mae-test/hf-tiny-c-bin", &hub, &Device::Cpu).unwrap();
    check_loss(&model, "hf_tiny_c");
    let model =
        MaskedAutoencoder::from_pretrained_with("mae-test/hf-tiny-a-sharded", &hub, &Device::Cpu).unwrap();
    check_loss(&model, "hf_tiny_a");
    // The same folder, locally.
    let local = tempfile::tempdir().unwrap();
    for (name, source) in &sharded {
        fs::copy(source, local.path().join(name)).unwrap();
    }
    check_loss(&MaskedAutoencoder::from_pretrained(local.path(), &Device::Cpu).unwrap(), "hf_tiny_a");
}

#[test]
fn offline_and_not_cached_is_an_error_saying_what_to_download() {
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(cache.path()).with_offline(true);

    // Nothing of the repository is cached.
    let err =
        MaskedAutoencoder::from_pretrained_with("facebook/vit-mae-base", &hub, &Device::Cpu).err().unwrap();
    let msg = err.to_string();
    for part in [
        "facebook/vit-mae-base",
        "config.json",
        "HF_HUB_OFFLINE",
        "huggingface-cli download facebook/vit-mae-base config.json model.safetensors",
        "nothing of this repository is cached",
        &cache.path().display().to_string(),
    ] {
        assert!(msg.contains(part), "`{part}` not in: {msg}");
    }

    // The config is cached, the weights are not.
    make_cache(cache.path(), REPO, &tiny_a_files()[..1]);
    let msg = Encoder::from_pretrained_with(REPO, &hub, &Device::Cpu).err().unwrap().to_string();
    for part in [REPO, "model.safetensors", "pytorch_model.bin", "HF_HUB_OFFLINE", "huggingface-cli download"]
    {
        assert!(msg.contains(part), "`{part}` not in: {msg}");
    }

    // A revision the cache does not know.
    let msg = MaskedAutoencoder::from_pretrained_with(format!("{REPO}@v2"), &hub, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("--revision v2"), "{msg}");

    // Neither a path nor a hub id: a plain not-found error naming it.
    let msg =
        MaskedAutoencoder::from_pretrained_with("no/such/dir", &hub, &Device::Cpu).err().unwrap().to_string();
    assert!(msg.contains("no/such/dir") && msg.contains("no such file"), "{msg}");
}

#[test]
fn the_cache_directory_and_offline_mode_come_from_the_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    };
    let hub = Hub::from_env_with(env(&[("HF_HUB_CACHE", "/a"), ("HF_HOME", "/b"), ("HOME", "/h")]));
    assert_eq!(hub.cache_dir(), Some(Path::new("/a")));
    assert!(!hub.is_offline());
    let hub = Hub::from_env_with(env(&[("HF_HOME", "/b"), ("HOME", "/h"), ("HF_HUB_OFFLINE", "1")]));
    assert_eq!(hub.cache_dir(), Some(Path::new("/b/hub")));
    assert!(hub.is_offline());
    let hub = Hub::from_env_with(env(&[("HOME", "/h"), ("HF_HUB_OFFLINE", "0")]));
    assert_eq!(hub.cache_dir(), Some(Path::new("/h/.cache/huggingface/hub")));
    assert!(!hub.is_offline());
    assert_eq!(
        RepoId::parse("timm/vit_base_patch16_224.mae").unwrap().cache_folder(),
        "models--timm--vit_base_patch16_224.mae"
    );
}

/// `from_pretrained(id)` as a user calls it, reading `HF_HUB_CACHE` and `HF_HUB_OFFLINE` from the
/// process environment: run in a child process (this test binary, with only the inner test).
#[test]
fn from_pretrained_honours_hf_hub_cache_and_hf_hub_offline() {
    let cache = tempfile::tempdir().unwrap();
    make_cache(cache.path(), REPO, &tiny_a_files());
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "hub::environment_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env("MAE_HUB_TEST_CHILD", "1")
        .env("HF_HUB_CACHE", cache.path())
        .env("HF_HOME", cache.path().join("not-this-one"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("1 passed"), "child failed:\n{text}");
}

#[test]
#[ignore = "run by from_pretrained_honours_hf_hub_cache_and_hf_hub_offline in a child process"]
fn environment_child() {
    match std::env::var("MAE_HUB_TEST_CHILD").as_deref() {
        Ok("download") => {
            // Online first (downloads), offline second (the cache only): the same calls.
            let model = MaskedAutoencoder::from_pretrained(REPO, &Device::Cpu).unwrap();
            check_loss(&model, "hf_tiny_a");
            assert!(Encoder::from_pretrained(REPO, &Device::Cpu).is_ok());
            return;
        }
        Ok(_) => {}
        Err(_) => return,
    }
    let model = MaskedAutoencoder::from_pretrained(REPO, &Device::Cpu).unwrap();
    check_loss(&model, "hf_tiny_a");
    assert!(Encoder::from_pretrained(REPO, &Device::Cpu).is_ok());
    let msg =
        MaskedAutoencoder::from_pretrained("mae-test/not-cached", &Device::Cpu).err().unwrap().to_string();
    assert!(msg.contains("HF_HUB_OFFLINE") && msg.contains("mae-test/not-cached"), "{msg}");
}

/// The tiny ViTMAE as a model repository on the local hub server.
fn serve_tiny_a(server: &mae_hub::testing::HubServer) {
    let files =
        tiny_a_files().into_iter().map(|(name, path)| (name.to_string(), fs::read(path).unwrap())).collect();
    server.add_repo(mae_hub::RepoKind::Model, REPO, files);
}

/// `from_pretrained(id)` as a user calls it with a fresh `HF_HOME` and `HF_ENDPOINT` pointing at
/// the local hub server: the first call downloads (into `HF_HOME/hub`, the standard layout), a
/// second call with `HF_HUB_OFFLINE=1` reads the cache and makes no request. Child processes,
/// since the environment is global.
#[test]
fn from_pretrained_downloads_through_hf_endpoint_into_an_empty_hf_home_then_works_offline() {
    let server = mae_hub::testing::HubServer::start().unwrap();
    serve_tiny_a(&server);
    let home = tempfile::tempdir().unwrap();
    let child = |offline: &str| {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "hub::environment_child", "--ignored", "--nocapture", "--test-threads=1"])
            .env("MAE_HUB_TEST_CHILD", "download")
            .env_remove("HF_HUB_CACHE")
            .env("HF_HOME", home.path())
            .env("HF_ENDPOINT", server.endpoint())
            .env("HF_HUB_OFFLINE", offline)
            .output()
            .unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success() && text.contains("1 passed"),
            "child (offline={offline}) failed:\n{text}"
        );
    };
    child("0");
    let snapshots = home.path().join("hub/models--mae-test--hf-tiny-a/snapshots");
    assert!(snapshots.is_dir(), "downloaded into HF_HOME/hub");
    let requests = server.requests().len();
    assert!(requests >= 2, "config and weights came from the server");
    child("1");
    assert_eq!(server.requests().len(), requests, "offline: no request");
}

#[test]
fn unknown_and_gated_hub_models_are_clear_errors() {
    let server = mae_hub::testing::HubServer::start().unwrap();
    serve_tiny_a(&server);
    server.gate(mae_hub::RepoKind::Model, REPO, "hf_secret");
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(cache.path()).with_endpoint(server.endpoint());
    let msg = MaskedAutoencoder::from_pretrained_with("mae-test/nothing-here", &hub, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("mae-test/nothing-here") && msg.contains("HTTP 401"), "{msg}");
    let msg = MaskedAutoencoder::from_pretrained_with(REPO, &hub, &Device::Cpu).err().unwrap().to_string();
    assert!(msg.contains("private or gated") && msg.contains("HF_TOKEN"), "{msg}");
    let model = MaskedAutoencoder::from_pretrained_with(
        REPO,
        &hub.with_token(Some("hf_secret".into())),
        &Device::Cpu,
    )
    .unwrap();
    check_loss(&model, "hf_tiny_a");
}
