variable "site" {
  description = "Name of the simulated data centre, e.g. \"dc1\", \"dc2\" or \"dr\". It is part of every container and network name and becomes the site's group in the Ansible inventory."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{0,11}$", var.site))
    error_message = "The site must be 1-12 lower-case letters or digits starting with a letter (e.g. \"dc1\", \"dr\")."
  }
}

variable "site_role" {
  description = "Role of the site: \"active\" or \"dr\" (disaster-recovery standby)."
  type        = string
  default     = "active"

  validation {
    condition     = contains(["active", "dr"], var.site_role)
    error_message = "The site_role must be \"active\" or \"dr\"."
  }
}

variable "name_prefix" {
  description = "Prefix of the network and container names: containers are named <name_prefix>-<site>-<component>-<NN>."
  type        = string
  default     = "txlab"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,19}$", var.name_prefix)) && !endswith(var.name_prefix, "-")
    error_message = "The name_prefix must be 1-20 lower-case letters, digits or dashes, start with a letter and not end with a dash."
  }
}

variable "image" {
  description = "Local container image of the test hosts, e.g. \"localhost/tongxin-debian12:latest\": built with debootstrap and `podman import` (there is no registry), with systemd as /sbin/init. It is never pulled: the plan fails if it is not in the local store."
  type        = string

  validation {
    condition     = trimspace(var.image) != "" && !can(regex("\\s", var.image))
    error_message = "The image must be a non-empty image name or ID without spaces."
  }
}

variable "architecture" {
  description = "Architecture of the image: \"x86_64\" or \"aarch64\" (aarch64 runs under qemu-user-static emulation: slow)."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "aarch64"], var.architecture)
    error_message = "The architecture must be \"x86_64\" or \"aarch64\"."
  }
}

variable "components" {
  description = "Container count, memory limit (MB, 0 = none) and `also` (other component groups the same containers join, so one container can carry several components: a small lab keeps every role but fewer hosts) per component; omitted attributes keep the lab defaults (one of each, two appliance nodes, nothing combined)."
  type = object({
    lb = optional(object({
      count     = optional(number, 1)
      memory_mb = optional(number, 0)
      also      = optional(list(string), [])
    }), {})
    appliance = optional(object({
      count     = optional(number, 2)
      memory_mb = optional(number, 0)
      also      = optional(list(string), [])
    }), {})
    redis = optional(object({
      count     = optional(number, 1)
      memory_mb = optional(number, 0)
      also      = optional(list(string), [])
    }), {})
    kafka = optional(object({
      count     = optional(number, 1)
      memory_mb = optional(number, 0)
      also      = optional(list(string), [])
    }), {})
    database = optional(object({
      count     = optional(number, 1)
      memory_mb = optional(number, 0)
      also      = optional(list(string), [])
    }), {})
    monitoring = optional(object({
      count     = optional(number, 1)
      memory_mb = optional(number, 0)
      also      = optional(list(string), [])
    }), {})
  })
  default = {}

  validation {
    condition     = alltrue([for name, c in var.components : c.count >= 0 && c.count <= 20 && floor(c.count) == c.count])
    error_message = "Every component count must be a whole number from 0 to 20."
  }

  validation {
    condition     = alltrue(flatten([for name, c in var.components : [for g in c.also : contains(["lb", "appliance", "redis", "kafka", "database", "monitoring"], g) && g != name]]))
    error_message = "A component's `also` may only name other components (lb, appliance, redis, kafka, database, monitoring)."
  }

  validation {
    condition     = alltrue([for name, c in var.components : c.memory_mb == 0 || (c.memory_mb >= 64 && floor(c.memory_mb) == c.memory_mb)])
    error_message = "Every memory_mb must be 0 (no limit) or a whole number of at least 64."
  }

  validation {
    condition     = try(sum([for name, c in var.components : c.count]) + 10 <= pow(2, 32 - tonumber(split("/", var.subnet)[1])) - 2, true)
    error_message = "The subnet is too small for the containers (hosts start at the 11th address)."
  }
}

variable "subnet" {
  description = "IPv4 subnet (CIDR) of the site's network. The gateway is the 1st address, the load balancers' VIP the 5th, and containers get the 11th address on, in component order."
  type        = string
  default     = "10.89.101.0/24"

  validation {
    condition     = can(cidrhost(var.subnet, 0)) && can(regex("^[0-9.]+/[0-9]+$", var.subnet)) && tonumber(split("/", var.subnet)[1]) <= 28
    error_message = "The subnet must be an IPv4 CIDR block of /28 or larger, e.g. \"10.89.101.0/24\"."
  }
}

variable "runtime" {
  description = "OCI runtime for the containers. runc by default: crun fails on hybrid cgroups hosts. null: the engine's default."
  type        = string
  default     = "runc"
}

variable "privileged" {
  description = "Run the containers privileged (only for experiments that need it; the roles must not)."
  type        = bool
  default     = false
}

variable "ulimits" {
  description = "nofile and nproc limits of every container. Keep them at most nofile 20000 / nproc 4096: higher values fail on these hosts."
  type = object({
    nofile = optional(number, 20000)
    nproc  = optional(number, 4096)
  })
  default = {}

  validation {
    condition     = var.ulimits.nofile >= 1024 && var.ulimits.nofile <= 20000 && var.ulimits.nproc >= 256 && var.ulimits.nproc <= 4096
    error_message = "ulimits must be within nofile 1024-20000 and nproc 256-4096."
  }
}
