"""The few Amazon ECR calls docker/push.sh needs, with boto3, for machines without the aws CLI.

    python docker/ecr.py [--region R] account               the AWS account id of the credentials
    python docker/ecr.py [--region R] repository NAME       the repository's URI (created if missing)
    python docker/ecr.py [--region R] login-password        the password for `docker login -u AWS`
    python docker/ecr.py [--region R] region                the region these calls use

Credentials and region come from the usual places (environment, ~/.aws, an instance role).
"""

from __future__ import annotations

import argparse
import base64
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--region", help="AWS region (default: the configured one)")
    parser.add_argument("command", choices=("account", "repository", "login-password", "region"))
    parser.add_argument("name", nargs="?", help="repository name (for 'repository')")
    args = parser.parse_args(argv)

    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    session = boto3.Session(region_name=args.region)
    if not session.region_name:
        print("error: no AWS region: pass --region or set AWS_REGION", file=sys.stderr)
        return 2
    try:
        if args.command == "region":
            print(session.region_name)
        elif args.command == "account":
            print(session.client("sts").get_caller_identity()["Account"])
        elif args.command == "repository":
            if not args.name:
                parser.error("repository needs NAME")
            print(ensure_repository(session.client("ecr"), args.name))
        else:
            token = session.client("ecr").get_authorization_token()["authorizationData"][0]["authorizationToken"]
            print(base64.b64decode(token).decode().partition(":")[2])
    except (BotoCoreError, ClientError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def ensure_repository(ecr, name: str) -> str:
    """The URI of repository `name`, creating it (scan on push) when it does not exist."""
    try:
        return ecr.describe_repositories(repositoryNames=[name])["repositories"][0]["repositoryUri"]
    except ecr.exceptions.RepositoryNotFoundException:
        print(f"creating the ECR repository {name}", file=sys.stderr)
        created = ecr.create_repository(repositoryName=name, imageScanningConfiguration={"scanOnPush": True})
        return created["repository"]["repositoryUri"]


if __name__ == "__main__":
    sys.exit(main())
