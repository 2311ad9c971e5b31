"""Adapters to the stores: DynamoDB (jobs), PostgreSQL (results), S3 (objects), SQS (queue)."""
