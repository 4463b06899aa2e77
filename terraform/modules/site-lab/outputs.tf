output "site" {
  description = "The site's name, role and architecture."
  value = {
    name         = var.site
    role         = var.site_role
    architecture = var.architecture
  }
}

output "hosts" {
  description = "Containers per component (every component is present, possibly empty): lists of { name, address, id, also }, in host-number order, where `also` names the other component groups the container joins. The same shape as site-openstack's `hosts`, taken by the inventory module."
  value = {
    for c in local.component_names : c => [
      for h in local.host_list : {
        name    = h.name
        address = local.hosts[h.name].address
        id      = docker_container.host[h.name].id
        also    = h.also
      } if h.component == c
    ]
  }
}

output "addresses" {
  description = "IPv4 address of every container, by name."
  value       = { for name, h in local.hosts : name => h.address }
}

output "network" {
  description = "The site's container network: { name, id, subnet, gateway }."
  value = {
    name    = docker_network.site.name
    id      = docker_network.site.id
    subnet  = var.subnet
    gateway = local.gateway
  }
}

output "lb_vip_address" {
  description = "Address reserved for the load balancers' keepalived VIP (never given to a container), or null without load balancers."
  value       = local.lb_vip
}
