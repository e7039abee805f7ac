# The snapshot bucket: private, encrypted, versioned, public access blocked,
# incomplete multipart uploads aborted.
#
# Written the aws 3.x way on purpose: versioning, default encryption and the
# lifecycle rule are inline blocks of aws_s3_bucket, because 3.39 has no
# aws_s3_bucket_versioning / _server_side_encryption_configuration /
# _lifecycle_configuration resources. 4.9+ and 5.x still accept the inline blocks
# (deprecated, with a warning); see versions.tf for the releases that do not.

resource "aws_s3_bucket" "snapshots" {
  # checkov:skip=CKV_AWS_18:Server access logging needs a separate log bucket the operator owns; CloudTrail data events are the usual audit trail for this bucket.
  # checkov:skip=CKV_AWS_144:Cross-region replication doubles storage cost; snapshots are recreatable from live sandboxes and versioning covers mistakes.
  # checkov:skip=CKV_AWS_145:SSE-S3 by default so the module needs no KMS key; pass kms_key_arn for SSE-KMS (the dynamic value is not visible to static analysis).
  # checkov:skip=CKV2_AWS_62:Nothing consumes bucket events; the service keeps its own index of snapshots in the state store.
  # checkov:skip=CKV2_AWS_61:The lifecycle configuration is the inline lifecycle_rule block (aws 3.39 has no aws_s3_bucket_lifecycle_configuration), which this check does not read.
  bucket        = var.bucket_name
  bucket_prefix = var.bucket_name == null ? "${var.name}-snapshots-" : null
  force_destroy = var.force_destroy_bucket
  tags          = local.tags

  versioning {
    enabled = true
  }

  server_side_encryption_configuration {
    rule {
      apply_server_side_encryption_by_default {
        sse_algorithm     = var.kms_key_arn == null ? "AES256" : "aws:kms"
        kms_master_key_id = var.kms_key_arn
      }
      bucket_key_enabled = var.kms_key_arn != null
    }
  }

  lifecycle_rule {
    id                                     = "abort-incomplete-uploads-and-expire-old-versions"
    enabled                                = true
    abort_incomplete_multipart_upload_days = var.abort_incomplete_multipart_upload_days

    noncurrent_version_expiration {
      days = var.noncurrent_version_expiration_days
    }
  }
}

resource "aws_s3_bucket_public_access_block" "snapshots" {
  bucket                  = aws_s3_bucket.snapshots.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# No Allow for anyone: access comes from the host role's identity policy (iam.tf).
# The bucket policy only refuses plain-HTTP access, whoever asks.
resource "aws_s3_bucket_policy" "snapshots" {
  bucket = aws_s3_bucket.snapshots.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "DenyInsecureTransport"
      Effect    = "Deny"
      Principal = "*"
      Action    = "s3:*"
      Resource  = [aws_s3_bucket.snapshots.arn, "${aws_s3_bucket.snapshots.arn}/*"]
      Condition = { Bool = { "aws:SecureTransport" = "false" } }
    }]
  })

  # S3 refuses a policy while the public access block is being written.
  depends_on = [aws_s3_bucket_public_access_block.snapshots]
}
