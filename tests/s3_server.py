"""A real S3 server on 127.0.0.1 for tests: moto's ThreadedMotoServer, as dvc-s3's own tests run
it, and the environment that points AWS clients at nothing but it."""

import logging
from urllib.request import Request, urlopen

import boto3
from moto.server import ThreadedMotoServer

BUCKET = "mnist-dvc"
# Fake credentials: moto accepts any, but botocore refuses to sign a request without some.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# werkzeug logs every request; a failing test's report needs dvc's output, not that.
logging.getLogger("werkzeug").setLevel(logging.WARNING)


class S3Server:
    """moto's S3 server on a free port of 127.0.0.1. stop() closes the port; start() opens the
    same port again. moto keeps its buckets in this process, so they survive a restart."""

    def __init__(self):
        self.port = 0
        self._server = None
        self.start()

    def start(self):
        self._server = ThreadedMotoServer("127.0.0.1", self.port, verbose=False)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]

    def stop(self):
        self._server.stop()
        self._server = None

    @property
    def running(self):
        return self._server is not None

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def object_keys(self, bucket=BUCKET):
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {item["Key"] for page in pages for item in page.get("Contents", [])}

    def reset(self):
        """Empty moto: no bucket left, for the next server in this process."""
        urlopen(Request(f"{self.endpoint}/moto-api/reset", method="POST")).close()


def s3_env(env, tmp_path, credentials=True):
    """env without any AWS_* setting of this machine, talking to 127.0.0.1 only: no AWS config
    or credentials files, no instance metadata, and a closed port as the fallback endpoint, so
    that a remote whose endpointurl is not set fails instead of reaching AWS. With credentials,
    the fake ones as environment variables."""
    empty = tmp_path / "aws-empty-config"
    empty.touch()
    env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(empty), AWS_SHARED_CREDENTIALS_FILE=str(empty),
               AWS_EC2_METADATA_DISABLED="true", AWS_DEFAULT_REGION="us-east-1",
               AWS_ENDPOINT_URL="http://127.0.0.1:9")
    if credentials:
        env.update(CREDENTIALS)
    return env
