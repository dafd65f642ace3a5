"""The operator's process imports the S3 and PostgreSQL client libraries on first use, not at start:
together they are 17 MiB of its resident memory (docs/operator.md, issue 15's 100 MB), and most
operators never reconcile a backup or a PostgreSQL Middleware."""

from __future__ import annotations

import json
import subprocess
import sys

LAZY = ("boto3", "botocore", "psycopg")


def test_importing_the_handlers_leaves_the_s3_and_postgresql_clients_unimported() -> None:
    probe = (
        "import json, sys; import operators.main; "
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(LAZY)!r}))))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_an_s3_store_imports_botocore_when_it_is_made() -> None:
    # The lazy import must still give a working store: its config and its error translation.
    probe = (
        "import sys; from backups.store import RepositoryConfig, S3Store; "
        "assert 'botocore' not in sys.modules; "
        "store = S3Store(RepositoryConfig.from_url('s3://bucket?endpoint=http://127.0.0.1:9', env={})); "
        "print('botocore' in sys.modules, type(store.client).__name__)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "S3"]
