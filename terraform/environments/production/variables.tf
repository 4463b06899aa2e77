variable "sites" {
  description = <<-EOT
    The three sites, dc1 and dc2 (active-active) and dr (standby). Per site:
      cloud              clouds.yaml entry of the site's OpenStack (null: OS_* variables)
      region             OpenStack region (null: the cloud's default)
      network_id         existing network of the hosts
      subnet_id          its subnet, where the hosts get their addresses
      architecture       "x86_64" or "aarch64" (selects the image from var.images)
      availability_zone  Nova availability zone (null: default)
      security_group_ids security groups of the host ports
      components         count/flavor/volume_size per component, as in
                         modules/site-openstack (omitted ones keep its defaults)
  EOT
  type = object({
    dc1 = object({
      cloud              = optional(string)
      region             = optional(string)
      network_id         = string
      subnet_id          = string
      architecture       = optional(string, "x86_64")
      availability_zone  = optional(string)
      security_group_ids = optional(list(string), [])
      components         = optional(any, {})
    })
    dc2 = object({
      cloud              = optional(string)
      region             = optional(string)
      network_id         = string
      subnet_id          = string
      architecture       = optional(string, "x86_64")
      availability_zone  = optional(string)
      security_group_ids = optional(list(string), [])
      components         = optional(any, {})
    })
    dr = object({
      cloud              = optional(string)
      region             = optional(string)
      network_id         = string
      subnet_id          = string
      architecture       = optional(string, "x86_64")
      availability_zone  = optional(string)
      security_group_ids = optional(list(string), [])
      components         = optional(any, {})
    })
  })

  validation {
    condition     = alltrue([for s in [var.sites.dc1, var.sites.dc2, var.sites.dr] : contains(["x86_64", "aarch64"], s.architecture)])
    error_message = "Each site's architecture must be \"x86_64\" or \"aarch64\"."
  }

  validation {
    condition     = length(distinct([var.sites.dc1.subnet_id, var.sites.dc2.subnet_id, var.sites.dr.subnet_id])) == 3
    error_message = "dc1, dc2 and dr must use different subnets: they are separate data centres."
  }
}

variable "images" {
  description = "Glance image name per architecture, shared by the three sites (each site's image store must hold it under that name)."
  type        = map(string)
}

variable "name_prefix" {
  description = "Prefix of every resource and host name."
  type        = string
  default     = "tongxin"
}

variable "key_pair" {
  description = "Nova key pair (same name in each site) with the Ansible controller's public key. null: none."
  type        = string
  default     = null
}

variable "server_group_policy" {
  description = "Server group policy of every component: \"anti-affinity\" or \"soft-anti-affinity\"."
  type        = string
  default     = "anti-affinity"
}

variable "user_data" {
  description = "Cloud-init user data for every host. null: none."
  type        = string
  default     = null
}

variable "metadata" {
  description = "Extra Nova metadata for every host."
  type        = map(string)
  default     = {}
}

variable "inventory_vars" {
  description = "Variables of the inventory's `all` group, e.g. { ansible_user = \"tongxin-admin\" }."
  type        = map(string)
  default     = {}
}

variable "inventory_path" {
  description = "Where to write the Ansible inventory. null: inventories/production/hosts.yml at the repository root."
  type        = string
  default     = null
}
