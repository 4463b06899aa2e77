variable "environment" {
  description = "Environment name, e.g. \"production\" or \"lab\": the default output path is inventories/<environment>/hosts.yml under the repository root, and every host gets tongxin_environment."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9_-]{0,31}$", var.environment))
    error_message = "The environment must be 1-32 lower-case letters, digits, dashes or underscores, starting with a letter."
  }
}

variable "sites" {
  description = <<-EOT
    The sites to list, keyed by site name (each becomes an inventory group):
      role         "active" or "dr" (becomes tongxin_site_role)
      architecture "x86_64" or "aarch64" (becomes tongxin_architecture)
      vars         extra group variables of the site
      hosts        hosts per component (lb, appliance, redis, kafka, database,
                   monitoring): lists of { name, address, also, data_volume },
                   which is the `hosts` output of site-openstack and site-lab;
                   `also` (optional) lists other component groups the host
                   joins; `data_volume` (optional, null: none) is the host's
                   data volume { id, device, size_gb } and becomes the host
                   variable tongxin_data_volume.
  EOT
  type = map(object({
    role         = optional(string, "active")
    architecture = optional(string, "x86_64")
    vars         = optional(map(string), {})
    hosts = map(list(object({
      name    = string
      address = string
      also    = optional(list(string), [])
      data_volume = optional(object({
        id      = string
        device  = optional(string)
        size_gb = number
      }))
    })))
  }))

  validation {
    condition     = length(var.sites) > 0
    error_message = "At least one site is needed."
  }

  validation {
    condition     = alltrue([for s in keys(var.sites) : can(regex("^[a-z][a-z0-9]{0,11}$", s))])
    error_message = "Site names must be 1-12 lower-case letters or digits starting with a letter (e.g. \"dc1\", \"dr\")."
  }

  validation {
    condition     = alltrue([for s in values(var.sites) : contains(["active", "dr"], s.role)])
    error_message = "A site's role must be \"active\" or \"dr\"."
  }

  validation {
    condition     = alltrue([for s in values(var.sites) : contains(["x86_64", "aarch64"], s.architecture)])
    error_message = "A site's architecture must be \"x86_64\" or \"aarch64\"."
  }

  validation {
    condition = alltrue(flatten([
      for s in values(var.sites) : [
        for c in keys(s.hosts) : contains(["lb", "appliance", "redis", "kafka", "database", "monitoring"], c)
      ]
    ]))
    error_message = "Host components must be among lb, appliance, redis, kafka, database and monitoring."
  }

  validation {
    condition = alltrue(flatten([
      for s in values(var.sites) : [
        for c, hs in s.hosts : [for h in hs : [for g in h.also : contains(["lb", "appliance", "redis", "kafka", "database", "monitoring"], g) && g != c]]
      ]
    ]))
    error_message = "A host's `also` may only name other components (lb, appliance, redis, kafka, database, monitoring)."
  }

  validation {
    condition     = length(flatten([for s in values(var.sites) : [for hs in values(s.hosts) : hs[*].name]])) == length(distinct(flatten([for s in values(var.sites) : [for hs in values(s.hosts) : hs[*].name]])))
    error_message = "Host names must be unique across all sites and components."
  }

  validation {
    condition     = alltrue(flatten([for s in values(var.sites) : [for hs in values(s.hosts) : [for h in hs : can(regex("^[A-Za-z0-9][A-Za-z0-9.-]*$", h.name))]]]))
    error_message = "Host names may only contain letters, digits, dots and dashes."
  }

  validation {
    condition = alltrue(flatten([
      for s in values(var.sites) : [for hs in values(s.hosts) : [for h in hs : h.data_volume == null ? true : trimspace(h.data_volume.id) != "" && h.data_volume.size_gb > 0]]
    ]))
    error_message = "A host's data_volume needs a non-empty id and a size_gb above 0."
  }

  validation {
    condition = alltrue(flatten([
      for s in values(var.sites) : [for k in keys(s.vars) : can(regex("^[a-z_][a-z0-9_]*$", k))]
    ]))
    error_message = "Site variable names must be valid Ansible variable names (lower-case letters, digits, underscores)."
  }
}

variable "vars" {
  description = "Variables for the `all` group (e.g. ansible_user). tongxin_environment is always set."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.vars) : can(regex("^[a-z_][a-z0-9_]*$", k))])
    error_message = "Variable names must be valid Ansible variable names (lower-case letters, digits, underscores)."
  }

  # The common role gives the service account a nologin shell: connecting as
  # it would lock Ansible out after the first run.
  validation {
    condition     = lookup(var.vars, "ansible_user", "") != "tongxin"
    error_message = "ansible_user must not be \"tongxin\", the account Tongxin's services run as (it gets a nologin shell); use an administrative account such as \"tongxin-admin\"."
  }
}

variable "connection" {
  description = "How Ansible reaches the hosts: \"ssh\" (ansible_host is the host's address) or \"podman\" (lab containers on this machine: ansible_connection podman; ansible_host is the container name). Either way tongxin_address holds the address."
  type        = string
  default     = "ssh"

  validation {
    condition     = contains(["ssh", "podman"], var.connection)
    error_message = "The connection must be \"ssh\" or \"podman\"."
  }
}

variable "output_path" {
  description = "Where to write the inventory. null: inventories/<environment>/hosts.yml under the repository root (found relative to this module)."
  type        = string
  default     = null
}

variable "write_file" {
  description = "Write the inventory file with the local provider's local_file. false: only render it (output `content`) for the caller to write."
  type        = bool
  default     = true
}
