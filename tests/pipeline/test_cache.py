import json

from pipeline.cache import ArtifactStore, stage_key

VERSIONS = {"torch": "2.13.0"}


def key(**changes):
    args = {
        "stage": "teacher",
        "version": 1,
        "params": {"epochs": 3},
        "upstream": {"data": "abc"},
        "external": {},
        "versions": VERSIONS,
    }
    args.update(changes)
    return stage_key(**args)


def test_key_is_a_full_sha256_and_sensitive_to_every_input():
    base = key()
    assert len(base) == 64 and base == key()
    variants = [
        key(stage="distill"),
        key(version=2),
        key(params={"epochs": 4}),
        key(upstream={"data": "abd"}),
        key(external={"source": "x"}),
        key(versions={"torch": "2.14.0"}),
    ]
    assert len({base, *variants}) == 1 + len(variants)


def test_key_ignores_dict_order():
    assert key(params={"a": 1, "b": 2}) == key(params={"b": 2, "a": 1})


def publish(store, content=b"weights"):
    temp = store.temp_dir("teacher", "k" * 64)
    (temp / "model.pt").write_bytes(content)
    return store.publish("teacher", "k" * 64, temp, {"metrics": {"accuracy": 0.9}})


def test_publish_then_lookup(tmp_path):
    store = ArtifactStore(tmp_path)
    artifact = publish(store)
    manifest = json.loads((artifact.path / "manifest.json").read_text())
    assert manifest["key"] == "k" * 64
    assert set(manifest["files"]) == {"model.pt"}
    found = store.lookup("teacher", "k" * 64)
    assert found is not None and found.metrics == {"accuracy": 0.9}
    assert sorted(p.name for p in (tmp_path / "cache" / "teacher").iterdir()) == ["k" * 64]  # no temp dir left


def test_a_fresh_artifact_and_its_cached_copy_have_the_same_manifest(tmp_path):
    # CI caught the report's reproduce command ordering its --set flags one way when its inputs were fresh and
    # another when they were cached: what publish hands back must be what lookup reads, key order included.
    store = ArtifactStore(tmp_path)
    temp = store.temp_dir("teacher", "k" * 64)
    (temp / "model.pt").write_bytes(b"weights")
    fresh = store.publish("teacher", "k" * 64, temp, {"params": {"width": 16, "epochs": (8, 2), "device": "cpu"}})
    cached = store.lookup("teacher", "k" * 64)
    assert list(fresh.manifest["params"].items()) == list(cached.manifest["params"].items())
    assert fresh.manifest["params"] == {"device": "cpu", "epochs": [8, 2], "width": 16}


def test_edited_file_is_a_miss_and_is_removed(tmp_path, caplog):
    store = ArtifactStore(tmp_path)
    artifact = publish(store)
    (artifact.path / "model.pt").write_bytes(b"tampered")
    assert store.lookup("teacher", "k" * 64) is None
    assert "model.pt sha256 mismatch" in caplog.text
    assert not artifact.path.exists()


def test_missing_file_or_manifest_is_a_miss(tmp_path, caplog):
    store = ArtifactStore(tmp_path)
    (publish(store).path / "model.pt").unlink()
    assert store.lookup("teacher", "k" * 64) is None
    assert "model.pt is missing" in caplog.text
    (publish(store).path / "manifest.json").write_text("{not json")
    assert store.lookup("teacher", "k" * 64) is None
    assert "unreadable manifest" in caplog.text


def test_clean_removes_cache_and_release(tmp_path):
    store = ArtifactStore(tmp_path)
    publish(store)
    (tmp_path / "release").mkdir()
    assert sorted(p.name for p in store.clean()) == ["cache", "release"]
    assert list(tmp_path.iterdir()) == []


def test_sweep_removes_dead_work_dirs_but_not_live_or_resumable_ones(tmp_path):
    import fcntl

    store = ArtifactStore(tmp_path)
    dead = store.temp_dir("teacher", "d" * 64)
    resumable = store.temp_dir("teacher", "r" * 64)
    (resumable / "checkpoints").mkdir()
    live = store.temp_dir("teacher", "l" * 64)
    half_removed = tmp_path / "cache" / "teacher" / ".tmp-removed-abc"
    half_removed.mkdir()
    with open(tmp_path / "cache" / "teacher" / f".lock-{'l' * 64}", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        removed = store.sweep()
    assert sorted(removed) == sorted([dead, half_removed])
    assert resumable.exists() and live.exists()


def test_clean_keep_latest_keeps_only_what_the_latest_run_used(tmp_path):
    store = ArtifactStore(tmp_path)
    for key in ("a" * 64, "b" * 64):
        temp = store.temp_dir("teacher", key)
        (temp / "model.pt").write_bytes(key.encode())
        store.publish("teacher", key, temp, {"metrics": {}})
    store.record_latest("teacher", "b" * 64)
    leftover = store.temp_dir("teacher", "c" * 64)
    removed = store.clean_keep_latest()
    assert sorted(p.name for p in removed) == [".tmp-" + "c" * 64, "a" * 64]
    assert store.lookup("teacher", "b" * 64) is not None and not leftover.exists()
