# The host's identity: a role the instance profile hands to EC2, allowed the
# snapshot bucket and nothing else (no static keys on the host: the service's S3
# client takes the role's credentials from the instance metadata service).

resource "aws_iam_role" "host" {
  name_prefix = "${var.name}-host-"
  description = "sandbox-control host ${var.name}: the snapshot bucket only"
  tags        = local.tags
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ec2.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_role_policy" "snapshots" {
  name = "snapshot-bucket"
  role = aws_iam_role.host.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat(
      [
        {
          Sid      = "Bucket"
          Effect   = "Allow"
          Action   = ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"]
          Resource = [aws_s3_bucket.snapshots.arn]
        },
        {
          Sid    = "Objects"
          Effect = "Allow"
          Action = [
            "s3:GetObject", "s3:PutObject", "s3:DeleteObject",
            "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts",
          ]
          Resource = ["${aws_s3_bucket.snapshots.arn}/*"]
        },
      ],
      var.kms_key_arn == null ? [] : [{
        Sid      = "BucketKey"
        Effect   = "Allow"
        Action   = ["kms:Decrypt", "kms:GenerateDataKey"]
        Resource = [var.kms_key_arn]
      }],
    )
  })
}

resource "aws_iam_role_policy_attachment" "ssm" {
  count      = var.enable_ssm ? 1 : 0
  role       = aws_iam_role.host.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "host" {
  name_prefix = "${var.name}-host-"
  role        = aws_iam_role.host.name
  tags        = local.tags
}
