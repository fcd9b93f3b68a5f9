"""Create the sweep service's bucket unless it exists: docker-compose.yml's one-shot `s3-init` service and
deploy/k8s's `create-bucket` Job.

    python deploy/create_bucket.py BUCKET

The endpoint and the keys come from the standard variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION), as everywhere else in the project. Exit 0 when the bucket
is there; non-zero (with boto3's error) when the store refuses, e.g. wrong keys.
"""

from __future__ import annotations

import os
import sys

import boto3
from botocore.exceptions import ClientError


def ensure_bucket(name: str) -> bool:
    """True when this call created the bucket, False when it was there already."""
    client = boto3.client("s3")
    try:
        client.head_bucket(Bucket=name)
        return False
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise  # 403 and friends: the keys are wrong, say so rather than try to create it
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    # AWS itself wants the region named, except for us-east-1; S3-compatible stores accept either.
    extra = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    client.create_bucket(Bucket=name, **extra)
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    created = ensure_bucket(argv[0])
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "AWS S3")
    print(f"bucket {argv[0]} {'created' if created else 'already there'} at {endpoint}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
