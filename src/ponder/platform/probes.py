"""What a run needs from outside, checked before Ray starts, each within a bounded time: the MLflow tracking server,
the S3 checkpoint store (credentials, endpoint, a write and a delete), and for `ponder submit` the Ray dashboard.
A service that refuses, is not there, or accepts and never answers fails here with one line naming the setting."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Optional

TIMEOUT_S = 5.0
PROBE_KEY = ".ponder-probe"  # written and deleted under an S3 checkpoint prefix


class Unreachable(ValueError):
    """A service the run needs did not answer as it should; the message names the setting and the fix."""


def _answers(url: str, setting: str, fix: str, timeout_s: float) -> None:
    """Any HTTP answer will do (an error status is an answer); no answer within `timeout_s` is Unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            response.read(64)
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise Unreachable(f"{setting}: no answer from {url} ({reason}; waited at most {timeout_s:g} s); "
                          f"{fix}") from None


def check_tracking(uri: str, timeout_s: float = TIMEOUT_S) -> None:
    """An http(s) MLflow tracking server answers its health endpoint (local stores need no check)."""
    if uri.startswith(("http://", "https://")):
        _answers(uri.rstrip("/") + "/health", f"tracking.uri={uri}",
                 "start the MLflow server or fix the address (the local default is sqlite:///mlruns/mlflow.db)",
                 timeout_s)


def check_dashboard(address: str, timeout_s: float = TIMEOUT_S) -> None:
    """The Ray dashboard that `ponder submit` sends jobs to answers."""
    url = address if "://" in address else f"http://{address}"
    _answers(url.rstrip("/") + "/api/version", f"--address {address}",
             "start the cluster (`ray start --head` serves the dashboard on port 8265) or fix the address", timeout_s)


def check_store(url: str, endpoint_url: Optional[str] = None, timeout_s: float = TIMEOUT_S) -> None:
    """An s3:// checkpoint location takes a small object and lets it be deleted (credentials, endpoint, bucket,
    rights); local paths need no check."""
    if not url.startswith("s3://"):
        return
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    from ponder.storage.backends import open_storage

    try:
        store = open_storage(url, endpoint_url, timeout_s=timeout_s)
    except ValueError as e:  # no bucket
        raise Unreachable(f"checkpoint.dir={url}: {e}") from None
    where = f"checkpoint.dir={url}" + (f" (endpoint {store.endpoint_url})" if store.endpoint_url else "")
    try:
        store.put_text(PROBE_KEY, "")
        store.delete_prefix(PROBE_KEY)
    except NoCredentialsError:
        raise Unreachable(f"{where}: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                          "(or AWS_PROFILE)") from None
    except ClientError as e:
        error = e.response.get("Error", {})
        raise Unreachable(f"{where}: the store refused a test write ({error.get('Code')}: {error.get('Message')}); "
                          "check the bucket name and the credentials' rights") from None
    except BotoCoreError as e:  # endpoint refused or unknown, connect/read timeouts
        raise Unreachable(f"{where}: no answer from the store ({e}; waited at most {timeout_s:g} s); check "
                          "checkpoint.endpoint_url / AWS_ENDPOINT_URL") from None
