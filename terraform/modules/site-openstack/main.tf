locals {
  # Order matters only for readability of outputs; the inventory sorts.
  component_names = ["lb", "appliance", "redis", "kafka", "database", "monitoring"]

  components = { for c in local.component_names : c => var.components[c] }

  # Components with at least one host: each gets its own server group.
  active_components = toset([for c in local.component_names : c if local.components[c].count > 0])

  # One entry per host, keyed by host name: <prefix>-<site>-<component>-<NN>.
  hosts = merge([
    for c in local.component_names : {
      for i in range(local.components[c].count) :
      format("%s-%s-%s-%02d", var.name_prefix, var.site, c, i + 1) => {
        component   = c
        index       = i
        flavor      = local.components[c].flavor
        volume_size = local.components[c].volume_size
      }
    }
  ]...)

  hosts_with_volume = { for name, h in local.hosts : name => h if h.volume_size > 0 }

  image_name = var.images[var.architecture]

  create_vip = var.create_lb_vip && local.components.lb.count > 0
}

# One server group per component: Nova never places two hosts of the same
# component on one hypervisor, so losing a hypervisor costs at most one
# member of each cluster (Redis, Kafka, database quorum, appliance pool).
resource "openstack_compute_servergroup_v2" "component" {
  for_each = local.active_components

  name     = format("%s-%s-%s", var.name_prefix, var.site, each.key)
  policies = [var.server_group_policy]
}

# Keepalived VIP of the load-balancer pair: a port that holds the address
# so Neutron never hands it out, allowed on every LB port below.
resource "openstack_networking_port_v2" "lb_vip" {
  count = local.create_vip ? 1 : 0

  name               = format("%s-%s-lb-vip", var.name_prefix, var.site)
  network_id         = var.network_id
  security_group_ids = var.security_group_ids
  admin_state_up     = true

  fixed_ip {
    subnet_id = var.subnet_id
  }

  tags = ["tongxin", "site=${var.site}", "component=lb", "vip"]
}

resource "openstack_networking_port_v2" "host" {
  for_each = local.hosts

  name               = "${each.key}-port"
  network_id         = var.network_id
  security_group_ids = var.security_group_ids
  admin_state_up     = true

  fixed_ip {
    subnet_id = var.subnet_id
  }

  dynamic "allowed_address_pairs" {
    for_each = each.value.component == "lb" && local.create_vip ? openstack_networking_port_v2.lb_vip[0].all_fixed_ips : []
    content {
      ip_address = allowed_address_pairs.value
    }
  }

  tags = ["tongxin", "site=${var.site}", "component=${each.value.component}"]
}

resource "openstack_compute_instance_v2" "host" {
  for_each = local.hosts

  name              = each.key
  image_name        = local.image_name
  flavor_name       = each.value.flavor
  key_pair          = var.key_pair
  availability_zone = var.availability_zone
  user_data         = var.user_data

  network {
    port = openstack_networking_port_v2.host[each.key].id
  }

  scheduler_hints {
    group = openstack_compute_servergroup_v2.component[each.value.component].id
  }

  metadata = merge(var.metadata, {
    tongxin_site         = var.site
    tongxin_site_role    = var.site_role
    tongxin_component    = each.value.component
    tongxin_architecture = var.architecture
  })

  tags = ["tongxin", "site=${var.site}", "component=${each.value.component}"]
}

resource "openstack_blockstorage_volume_v3" "data" {
  for_each = local.hosts_with_volume

  name              = "${each.key}-data"
  size              = each.value.volume_size
  availability_zone = var.availability_zone
  description       = "Data volume of ${each.key} (${each.value.component})"
}

resource "openstack_compute_volume_attach_v2" "data" {
  for_each = local.hosts_with_volume

  instance_id = openstack_compute_instance_v2.host[each.key].id
  volume_id   = openstack_blockstorage_volume_v3.data[each.key].id
}
