"""A real S3 API on 127.0.0.1 for the object-storage tests: moto's server mode, in-process.

`s3_server()` starts moto's ThreadedMotoServer on a free local port; `s3_env(endpoint)` is the
environment that points s3fs (and every subprocess a test starts) at it with dummy credentials,
and away from any AWS configuration file of the machine, so no test can reach real AWS.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def s3_server():
    """Yield the endpoint URL of a moto S3 server on 127.0.0.1, stopped afterwards."""
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    # s3fs keeps one file system per set of arguments, and the endpoint comes from the
    # environment, not the arguments: one made for an earlier server would call that one.
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()


def s3_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


def storage_options(endpoint: str) -> dict:
    """The same as s3fs storage_options, for a test that passes them instead of the environment."""
    return {"key": "testing", "secret": "testing", "endpoint_url": endpoint,
            "client_kwargs": {"region_name": "us-east-1"}}


def make_bucket(name: str) -> None:
    import s3fs

    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
