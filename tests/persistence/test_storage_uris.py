"""Storage URIs carry no credentials: an allowlist of query keys per scheme, and one redacted form everywhere.

References are written out by hand (the redacted URIs, the keys pyarrow's ``from_uri`` documents
per scheme), and the end-to-end checks look at what a refused run leaves: its stderr and the
bucket as boto3 lists it.
"""
from __future__ import annotations

import pytest

from distmeta.cli import main
from distmeta.errors import ConfigError
from distmeta.persistence.storage import (
    StorageError,
    Store,
    open_store,
    redact_text,
    redact_uri,
)
from distmeta.persistence.uris import check_uri
from distmeta.sweeps.grid import load_grid
from distmeta.sweeps.search import load_search

SECRET = "S3CR3Tvalue"
SINUSOID = ["data.source=sinusoid", "model.name=mlp", "algorithm.name=maml", "train.steps=1", "train.meta_batch=2",
            "run.checkpoint_every=0", "run.eval_every=0", "eval.episodes=2", "eval.baseline=false",
            "run.progress=false"]


def keys(endpoint: str, bucket: str) -> list[str]:
    """Every object in ``bucket``, as boto3 lists it."""
    import boto3

    listing = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in listing.get("Contents", []))


@pytest.mark.parametrize("uri, key", [
    (f"abfss://c@acct.dfs.core.windows.net/runs?client_id=id&tenant_id=t&client_secret={SECRET}", "client_secret"),
    (f"abfs://acct.blob.core.windows.net/c/runs?sv=2022-11-02&sig={SECRET}", "sig"),  # a SAS token
    (f"s3://bucket/run?region=us-east-1&access_key={SECRET}", "access_key"),
    (f"gs://bucket/run?access_token={SECRET}", "access_token"),
    (f"hdfs://namenode:8020/runs?fs.s3a.secret.key={SECRET}", "fs.s3a.secret.key"),  # pyarrow: extra_conf
])
def test_a_query_key_off_the_allowlist_is_refused_by_name_never_by_value(uri: str, key: str) -> None:
    with pytest.raises(StorageError, match="environment") as info:
        open_store(uri)
    assert key in str(info.value) and SECRET not in str(info.value)


@pytest.mark.parametrize("uri", [f"s3://AKIAX:{SECRET}@bucket/run", f"abfss://c:{SECRET}@acct.dfs.core.windows.net/r",
                                 f"gs://{SECRET}@bucket/run"])
def test_user_info_with_a_password_or_outside_azure_is_refused_unechoed(uri: str) -> None:
    with pytest.raises(StorageError, match="user info") as info:
        Store(uri)
    assert SECRET not in str(info.value) and "AKIAX" not in str(info.value)


def test_azure_container_at_account_and_the_documented_options_are_accepted() -> None:
    store = Store("abfss://runs@acct.dfs.core.windows.net/team/a?enable_tls=true&credential_kind=environment")
    assert store.root == "runs/team/a"
    check_uri("s3://b/r?endpoint_override=127.0.0.1:9000&scheme=http&region=us-east-1&allow_bucket_creation=false")
    check_uri("gs://anonymous@b/r?location=EU&retry_limit_seconds=5")
    check_uri("hdfs://nn:8020/runs?replication=2&user=me&kerb_ticket=/tmp/krb5cc")


@pytest.mark.parametrize("uri, shown", [
    ("s3://AKIAX:sec@bucket/run?endpoint_override=h:9000&scheme=http",
     "s3://REDACTED@bucket/run?endpoint_override=h:9000&scheme=http"),
    ("abfss://c@acct.dfs.core.windows.net/r?client_id=i&client_secret=sec",
     "abfss://c@acct.dfs.core.windows.net/r?client_id=REDACTED&client_secret=REDACTED"),
    ("abfs://c:sec@acct/r", "abfs://c:REDACTED@acct/r"),
    ("gs://anonymous@b/r?access_token=sec&location=EU", "gs://anonymous@b/r?access_token=REDACTED&location=EU"),
    ("s3://b/r#sec", "s3://b/r#REDACTED"),
    ("s3://b/runs/a", "s3://b/runs/a"), ("runs/local", "runs/local"), ("file:///data/run", "file:///data/run"),
])
def test_redact_uri_hides_exactly_what_the_allowlist_does_not_accept(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown
    assert redact_text(f"distmeta train 'run.dir={uri}' train.steps=3") == f"distmeta train 'run.dir={shown}' train.steps=3"


def test_a_refused_run_dir_leaves_no_trace_in_the_bucket_nor_the_secret_in_stderr(endpoint, bucket, capsys) -> None:
    """Before any lease, config.yaml or checkpoint is written: the bucket stays empty."""
    uri = f"s3://{bucket}/run?region=us-east-1&client_secret={SECRET}"
    assert main(["train", *SINUSOID, f"run.dir={uri}"]) == 2
    err = capsys.readouterr().err
    assert "client_secret" in err and SECRET not in err
    assert keys(endpoint, bucket) == []


def test_sweeps_refuse_credentials_in_their_storage_before_tune_stores_them(tmp_path) -> None:
    base = {"data": {"source": "sinusoid"}, "model": {"name": "mlp"}, "resources": {"workers": 0}}
    bad = f"abfss://c@acct.dfs.core.windows.net/tune?client_secret={SECRET}"
    with pytest.raises(ConfigError, match="storage_path: .*client_secret") as info:
        load_search({"base": base, "storage_path": bad, "search_space": {"outer.lr": {"loguniform": [0.001, 0.01]}}})
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigError, match="output_dir: .*client_secret") as info:
        load_grid({"base": base, "output_dir": bad, "max_concurrent": 1, "axes": {"data.shots": [1, 2]}})
    assert SECRET not in str(info.value)
