"""Create a bucket on an S3-compatible server and upload files to it with
boto3 (the test's local moto server).

usage: s3_upload.py ENDPOINT BUCKET KEY=FILE...
"""

import sys

import boto3


def main():
    endpoint, bucket = sys.argv[1], sys.argv[2]
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=bucket)
    for pair in sys.argv[3:]:
        key, path = pair.split("=", 1)
        s3.upload_file(path, bucket, key)
    print(len(sys.argv) - 3)


if __name__ == "__main__":
    main()
