output "hosts" {
  description = "Per site, containers per component: lists of { name, address, id }."
  value       = { for name, site in module.site : name => site.hosts }
}

output "networks" {
  description = "Per site, its container network."
  value       = { for name, site in module.site : name => site.network }
}

output "inventory_path" {
  description = "Where the Ansible inventory was written."
  value       = module.inventory.path
}

output "inventory" {
  description = "The Ansible inventory YAML (also written to inventory_path)."
  value       = module.inventory.content
}
