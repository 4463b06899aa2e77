output "hosts" {
  description = "Per site, hosts per component: lists of { name, address, id, flavor, data_volume } (data_volume: null, or the host's Cinder data volume { id, device, size_gb })."
  value       = { for name, site in local.sites : name => site.hosts }
}

output "server_groups" {
  description = "Per site, the anti-affinity server group of each component."
  value       = { for name, site in local.sites : name => site.server_groups }
}

output "lb_vip_addresses" {
  description = "Per site, the load balancers' keepalived VIP."
  value       = { for name, site in local.sites : name => site.lb_vip_address }
}

output "inventory_path" {
  description = "Where the Ansible inventory was written."
  value       = module.inventory.path
}

output "inventory" {
  description = "The Ansible inventory YAML (also written to inventory_path)."
  value       = module.inventory.content
}
