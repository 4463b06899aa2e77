variable "docker_host" {
  description = "Docker-API endpoint of the container engine: podman's socket."
  type        = string
  default     = "unix:///run/podman/podman.sock"

  validation {
    condition     = can(regex("^(unix|tcp|ssh)://", var.docker_host))
    error_message = "The docker_host must be a unix://, tcp:// or ssh:// URL, e.g. \"unix:///run/podman/podman.sock\"."
  }
}

variable "image" {
  description = "Locally imported image of the test hosts (debootstrap + `podman import`), e.g. \"localhost/tongxin-debian12:latest\"."
  type        = string
  default     = "localhost/tongxin-debian12:latest"
}

variable "architecture" {
  description = "Architecture of var.image: \"x86_64\" or \"aarch64\" (emulated, slow)."
  type        = string
  default     = "x86_64"
}

variable "name_prefix" {
  description = "Prefix of the lab's networks and containers."
  type        = string
  default     = "txlab"
}

variable "sites" {
  description = "The simulated sites on this machine, keyed by site name (dc1, dc2, dr): role, subnet, and per-component count/memory_mb/also as in modules/site-lab (omitted ones keep its defaults)."
  type = map(object({
    role   = optional(string, "active")
    subnet = string
    # Unset attributes stay null: modules/site-lab fills in its defaults.
    components = optional(object({
      lb         = optional(object({ count = optional(number), memory_mb = optional(number), also = optional(list(string)) }))
      appliance  = optional(object({ count = optional(number), memory_mb = optional(number), also = optional(list(string)) }))
      redis      = optional(object({ count = optional(number), memory_mb = optional(number), also = optional(list(string)) }))
      kafka      = optional(object({ count = optional(number), memory_mb = optional(number), also = optional(list(string)) }))
      database   = optional(object({ count = optional(number), memory_mb = optional(number), also = optional(list(string)) }))
      monitoring = optional(object({ count = optional(number), memory_mb = optional(number), also = optional(list(string)) }))
    }), {})
  }))
  default = {
    dc1 = {
      subnet = "10.89.101.0/24"
    }
    dc2 = {
      subnet     = "10.89.102.0/24"
      components = { monitoring = { count = 0 } }
    }
    dr = {
      role       = "dr"
      subnet     = "10.89.103.0/24"
      components = { appliance = { count = 1 }, monitoring = { count = 0 } }
    }
  }

  validation {
    condition     = length(var.sites) > 0 && alltrue([for name in keys(var.sites) : contains(["dc1", "dc2", "dr"], name)])
    error_message = "Lab sites must be among dc1, dc2 and dr (at least one)."
  }

  validation {
    condition     = length(distinct([for s in values(var.sites) : s.subnet])) == length(var.sites)
    error_message = "Every lab site needs its own subnet."
  }
}

variable "inventory_connection" {
  description = "How Ansible reaches the containers: \"podman\" (connection plugin, no sshd needed) or \"ssh\" (to their addresses)."
  type        = string
  default     = "podman"
}

variable "inventory_vars" {
  description = "Variables of the inventory's `all` group."
  type        = map(string)
  default     = {}
}

variable "inventory_path" {
  description = "Where to write the Ansible inventory. null: inventories/lab/hosts.yml at the repository root."
  type        = string
  default     = null
}
