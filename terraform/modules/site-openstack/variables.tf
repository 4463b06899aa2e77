variable "site" {
  description = "Name of the data centre this module builds, e.g. \"dc1\", \"dc2\" or \"dr\". It is part of every resource name and becomes the site's group in the Ansible inventory."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{0,11}$", var.site))
    error_message = "The site must be 1-12 lower-case letters or digits starting with a letter (e.g. \"dc1\", \"dr\")."
  }
}

variable "site_role" {
  description = "Role of the site: \"active\" (serves users, active-active with the other active site) or \"dr\" (disaster-recovery standby)."
  type        = string
  default     = "active"

  validation {
    condition     = contains(["active", "dr"], var.site_role)
    error_message = "The site_role must be \"active\" or \"dr\"."
  }
}

variable "name_prefix" {
  description = "Prefix of every resource and host name: hosts are named <name_prefix>-<site>-<component>-<NN>."
  type        = string
  default     = "tongxin"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,19}$", var.name_prefix)) && !endswith(var.name_prefix, "-")
    error_message = "The name_prefix must be 1-20 lower-case letters, digits or dashes, start with a letter and not end with a dash."
  }
}

variable "architecture" {
  description = "CPU architecture of the site's hosts: \"x86_64\" or \"aarch64\". Selects the image from var.images."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "aarch64"], var.architecture)
    error_message = "The architecture must be \"x86_64\" or \"aarch64\"."
  }
}

variable "images" {
  description = "Glance image name per architecture, e.g. { x86_64 = \"debian-12-amd64\", aarch64 = \"kylin-v10-arm64\" }. The entry for var.architecture is used; flavors must match that architecture too."
  type        = map(string)

  validation {
    condition     = alltrue([for arch in keys(var.images) : contains(["x86_64", "aarch64"], arch)])
    error_message = "The keys of images must be architectures: \"x86_64\" or \"aarch64\"."
  }

  validation {
    condition     = alltrue([for name in values(var.images) : trimspace(name) != ""])
    error_message = "Image names must not be empty."
  }

  validation {
    condition     = contains(keys(var.images), var.architecture)
    error_message = "The images map has no image for the site's architecture (var.architecture)."
  }
}

variable "components" {
  description = <<-EOT
    Host count, Nova flavor and data volume size (GB, 0 = none) per component.
    Every attribute is optional; omitted ones keep the defaults shown in the
    module README. A count of 0 leaves the component (and its server group) out.
  EOT
  type = object({
    lb = optional(object({
      count       = optional(number, 2)
      flavor      = optional(string, "m1.small")
      volume_size = optional(number, 0)
    }), {})
    appliance = optional(object({
      count       = optional(number, 3)
      flavor      = optional(string, "m1.xlarge")
      volume_size = optional(number, 0)
    }), {})
    redis = optional(object({
      count       = optional(number, 6)
      flavor      = optional(string, "m1.large")
      volume_size = optional(number, 0)
    }), {})
    kafka = optional(object({
      count       = optional(number, 3)
      flavor      = optional(string, "m1.large")
      volume_size = optional(number, 200)
    }), {})
    database = optional(object({
      count       = optional(number, 3)
      flavor      = optional(string, "m1.xlarge")
      volume_size = optional(number, 500)
    }), {})
    monitoring = optional(object({
      count       = optional(number, 1)
      flavor      = optional(string, "m1.medium")
      volume_size = optional(number, 100)
    }), {})
  })
  default = {}

  validation {
    condition     = alltrue([for name, c in var.components : c.count >= 0 && c.count <= 50 && floor(c.count) == c.count])
    error_message = "Every component count must be a whole number from 0 to 50."
  }

  validation {
    condition     = alltrue([for name, c in var.components : trimspace(c.flavor) != ""])
    error_message = "Every component needs a non-empty flavor."
  }

  validation {
    condition     = alltrue([for name, c in var.components : c.volume_size >= 0 && floor(c.volume_size) == c.volume_size])
    error_message = "Every volume_size must be a whole number of GB, 0 for no data volume."
  }

  validation {
    condition     = var.components.appliance.count == 0 || var.components.lb.count > 0
    error_message = "Appliance nodes need at least one load balancer (components.lb.count > 0)."
  }
}

variable "network_id" {
  description = "ID of the existing Neutron network the hosts are attached to."
  type        = string

  validation {
    condition     = trimspace(var.network_id) != ""
    error_message = "The network_id must not be empty."
  }
}

variable "subnet_id" {
  description = "ID of the subnet of var.network_id in which every host (and the load-balancer VIP) gets its fixed IPv4 address."
  type        = string

  validation {
    condition     = trimspace(var.subnet_id) != ""
    error_message = "The subnet_id must not be empty."
  }
}

variable "security_group_ids" {
  description = "Security group IDs applied to every host port. Empty: the project's default security group."
  type        = list(string)
  default     = []
}

variable "key_pair" {
  description = "Name of the Nova key pair injected into the hosts (the Ansible controller's key). null: none."
  type        = string
  default     = null
}

variable "availability_zone" {
  description = "Nova availability zone for the hosts and data volumes. null: the cloud's default."
  type        = string
  default     = null
}

variable "server_group_policy" {
  description = "Nova server group policy of each component's server group: \"anti-affinity\" (hard: scheduling fails rather than co-locate two hosts of a component) or \"soft-anti-affinity\" (best effort, for small clouds)."
  type        = string
  default     = "anti-affinity"

  validation {
    condition     = contains(["anti-affinity", "soft-anti-affinity"], var.server_group_policy)
    error_message = "The server_group_policy must be \"anti-affinity\" or \"soft-anti-affinity\"."
  }
}

variable "create_lb_vip" {
  description = "Reserve a virtual IP port in the subnet for the load balancers' keepalived (VRRP) pair and allow it on their ports."
  type        = bool
  default     = true
}

variable "user_data" {
  description = "Cloud-init user data passed to every host. null: none."
  type        = string
  default     = null
}

variable "metadata" {
  description = "Extra Nova metadata for every host (the module adds tongxin_site, tongxin_component and tongxin_architecture)."
  type        = map(string)
  default     = {}
}
