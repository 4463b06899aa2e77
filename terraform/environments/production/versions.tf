terraform {
  required_version = ">= 1.8.0"

  required_providers {
    openstack = {
      source  = "terraform-provider-openstack/openstack"
      version = ">= 3.4.0, < 4.0.0"
    }
    local = {
      source  = "hashicorp/local"
      version = ">= 2.5.0, < 3.0.0"
    }
  }

  # State: configure a backend for your site (e.g. `backend "s3"` against the
  # appliance's own S3-compatible object store, or `backend "pg"`) in a
  # backend.tf that is not committed; without one state stays local.
}

# Each data centre is its own OpenStack cloud (clouds.yaml entry) or region.
# A null cloud falls back to the OS_* environment variables.
provider "openstack" {
  alias  = "dc1"
  cloud  = var.sites.dc1.cloud
  region = var.sites.dc1.region
}

provider "openstack" {
  alias  = "dc2"
  cloud  = var.sites.dc2.cloud
  region = var.sites.dc2.region
}

provider "openstack" {
  alias  = "dr"
  cloud  = var.sites.dr.cloud
  region = var.sites.dr.region
}
