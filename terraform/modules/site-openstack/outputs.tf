output "site" {
  description = "The site's name, role and architecture."
  value = {
    name         = var.site
    role         = var.site_role
    architecture = var.architecture
  }
}

output "hosts" {
  description = "Hosts per component (every component is present, possibly empty): lists of { name, address, id, flavor, data_volume }, in host-number order. data_volume is null for a host without a data volume, else { id, device, size_gb }: the Cinder volume's id (the guest sees it as /dev/disk/by-id/virtio-<first 20 characters of the id>), the device the attachment reports (a fallback: the hypervisor may name it differently) and its size in GiB. This is the shape the inventory module takes."
  value = {
    for c in local.component_names : c => [
      for name in sort([for n, h in local.hosts : n if h.component == c]) : {
        name    = name
        address = openstack_networking_port_v2.host[name].all_fixed_ips[0]
        id      = openstack_compute_instance_v2.host[name].id
        flavor  = local.hosts[name].flavor
        data_volume = contains(keys(local.hosts_with_volume), name) ? {
          id      = openstack_blockstorage_volume_v3.data[name].id
          device  = openstack_compute_volume_attach_v2.data[name].device
          size_gb = openstack_blockstorage_volume_v3.data[name].size
        } : null
      }
    ]
  }
}

output "addresses" {
  description = "Fixed IPv4 address of every host, by host name."
  value       = { for name, port in openstack_networking_port_v2.host : name => port.all_fixed_ips[0] }
}

output "server_groups" {
  description = "The anti-affinity server group of each component that has hosts: { id, name, policy }."
  value = {
    for c, sg in openstack_compute_servergroup_v2.component : c => {
      id     = sg.id
      name   = sg.name
      policy = one(sg.policies)
    }
  }
}

output "lb_vip_address" {
  description = "Virtual IP reserved for the load balancers' keepalived pair, or null when none was created."
  value       = local.create_vip ? openstack_networking_port_v2.lb_vip[0].all_fixed_ips[0] : null
}
