terraform {
  required_version = ">= 1.5, < 2.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # Planned, applied and destroyed with 5.100.0 (tests/test_aws_module.py); 6.x changes resources used here.
      version = ">= 5.40, < 6.0"
    }
  }
}

provider "aws" {
  region = var.region

  # Against a local AWS API emulator (var.aws_endpoint, tests only): every service there, no account checks.
  skip_credentials_validation = var.aws_endpoint != null
  skip_requesting_account_id  = var.aws_endpoint != null
  skip_metadata_api_check     = var.aws_endpoint != null
  skip_region_validation      = var.aws_endpoint != null

  dynamic "endpoints" {
    for_each = var.aws_endpoint == null ? [] : [var.aws_endpoint]
    content {
      ec2 = endpoints.value
      sts = endpoints.value
      iam = endpoints.value
    }
  }

  default_tags {
    tags = {
      "lvol-storm:run" = var.run_id
    }
  }
}
