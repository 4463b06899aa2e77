output "content" {
  description = "The rendered inventory YAML."
  value       = local.content
}

output "path" {
  description = "Path of the inventory file (written only when write_file is true)."
  value       = local.output_path
}

output "groups" {
  description = "Group name => sorted host names, for the site groups and the component groups."
  value       = local.groups
}

output "hosts" {
  description = "Host name => { site, component, vars } as written to the inventory."
  value       = local.hosts
}
