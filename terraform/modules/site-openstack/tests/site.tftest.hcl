# OpenStack is mocked: nothing is created. Ports get a fixed address, data
# volumes an id and their attachments a device, so the outputs can be
# checked; everything else computed is generated.
mock_provider "openstack" {
  mock_resource "openstack_networking_port_v2" {
    defaults = {
      all_fixed_ips = ["192.0.2.10"]
    }
  }

  mock_resource "openstack_blockstorage_volume_v3" {
    defaults = {
      id = "3f6c1a52-9d7e-4b0a-8c21-5e4f7a9b0d13"
    }
  }

  mock_resource "openstack_compute_volume_attach_v2" {
    defaults = {
      device = "/dev/vdb"
    }
  }
}

variables {
  site       = "dc1"
  network_id = "net-dc1"
  subnet_id  = "subnet-dc1"
  images = {
    x86_64  = "debian-12-amd64"
    aarch64 = "debian-12-arm64"
  }
}

run "default_host_set" {
  assert {
    condition     = length(openstack_compute_instance_v2.host) == 18
    error_message = "The defaults are 2 lb + 3 appliance + 6 redis + 3 kafka + 3 database + 1 monitoring = 18 hosts."
  }

  assert {
    condition = {
      for c in ["lb", "appliance", "redis", "kafka", "database", "monitoring"] :
      c => length([for h in openstack_compute_instance_v2.host : h if h.metadata.tongxin_component == c])
      } == {
      lb = 2, appliance = 3, redis = 6, kafka = 3, database = 3, monitoring = 1
    }
    error_message = "Wrong host count per component."
  }

  assert {
    condition     = contains(keys(openstack_compute_instance_v2.host), "tongxin-dc1-appliance-03") && contains(keys(openstack_compute_instance_v2.host), "tongxin-dc1-redis-06") && !contains(keys(openstack_compute_instance_v2.host), "tongxin-dc1-lb-03")
    error_message = "Hosts are named <prefix>-<site>-<component>-<NN>."
  }

  assert {
    condition     = alltrue([for name, h in openstack_compute_instance_v2.host : h.name == name && h.image_name == "debian-12-amd64"])
    error_message = "Every host uses the x86_64 image by default."
  }

  assert {
    condition     = openstack_compute_instance_v2.host["tongxin-dc1-lb-01"].flavor_name == "m1.small" && openstack_compute_instance_v2.host["tongxin-dc1-database-02"].flavor_name == "m1.xlarge"
    error_message = "Flavors come from the component defaults."
  }

  assert {
    condition     = alltrue([for p in openstack_networking_port_v2.host : p.network_id == "net-dc1" && one(p.fixed_ip).subnet_id == "subnet-dc1"])
    error_message = "Every host port is on the given network and subnet."
  }

  assert {
    condition     = alltrue([for name, h in openstack_compute_instance_v2.host : one(h.network).port == openstack_networking_port_v2.host[name].id])
    error_message = "Every host is attached through its own port."
  }

  assert {
    condition     = length(openstack_compute_servergroup_v2.component) == 6
    error_message = "There must be one server group per component."
  }

  assert {
    condition     = alltrue([for c, sg in openstack_compute_servergroup_v2.component : one(sg.policies) == "anti-affinity" && sg.name == "tongxin-dc1-${c}"])
    error_message = "Server groups are anti-affinity and named <prefix>-<site>-<component>."
  }

  assert {
    condition     = alltrue([for h in openstack_compute_instance_v2.host : one(h.scheduler_hints).group == openstack_compute_servergroup_v2.component[h.metadata.tongxin_component].id])
    error_message = "Every host must be scheduled into its component's server group."
  }

  assert {
    condition     = length(openstack_blockstorage_volume_v3.data) == 7 && openstack_blockstorage_volume_v3.data["tongxin-dc1-kafka-01"].size == 200 && openstack_blockstorage_volume_v3.data["tongxin-dc1-database-03"].size == 500
    error_message = "Kafka, database and monitoring hosts get data volumes by default (3 + 3 + 1)."
  }

  assert {
    condition     = alltrue([for name, a in openstack_compute_volume_attach_v2.data : a.instance_id == openstack_compute_instance_v2.host[name].id && a.volume_id == openstack_blockstorage_volume_v3.data[name].id])
    error_message = "Each data volume is attached to its host."
  }

  assert {
    condition     = length(openstack_networking_port_v2.lb_vip) == 1 && alltrue([for name, p in openstack_networking_port_v2.host : length(p.allowed_address_pairs) == (startswith(name, "tongxin-dc1-lb-") ? 1 : 0)])
    error_message = "The VIP port exists and only the LB ports allow its address."
  }

  assert {
    condition     = toset(keys(output.hosts)) == toset(["lb", "appliance", "redis", "kafka", "database", "monitoring"]) && length(output.hosts.redis) == 6
    error_message = "The hosts output lists every component."
  }

  assert {
    condition     = output.hosts.appliance[*].name == ["tongxin-dc1-appliance-01", "tongxin-dc1-appliance-02", "tongxin-dc1-appliance-03"] && output.hosts.appliance[0].address == "192.0.2.10"
    error_message = "The hosts output gives names in order and the port addresses."
  }

  assert {
    condition     = output.site == { name = "dc1", role = "active", architecture = "x86_64" } && output.lb_vip_address == "192.0.2.10"
    error_message = "Wrong site or VIP output."
  }

  assert {
    condition     = output.hosts.kafka[0].data_volume == { id = "3f6c1a52-9d7e-4b0a-8c21-5e4f7a9b0d13", device = "/dev/vdb", size_gb = 200 } && output.hosts.database[2].data_volume.size_gb == 500 && output.hosts.monitoring[0].data_volume.size_gb == 100
    error_message = "A host with a data volume carries its id, the attachment's device and the size in GB."
  }

  assert {
    condition     = alltrue([for c in ["kafka", "database", "monitoring"] : alltrue([for h in output.hosts[c] : h.data_volume.id == openstack_blockstorage_volume_v3.data[h.name].id && h.data_volume.device == openstack_compute_volume_attach_v2.data[h.name].device])])
    error_message = "Each host's data_volume describes its own volume and attachment."
  }

  assert {
    condition     = alltrue([for c in ["lb", "appliance", "redis"] : alltrue([for h in output.hosts[c] : h.data_volume == null])])
    error_message = "Hosts without a data volume have data_volume = null."
  }
}

run "aarch64_site_with_custom_sizes" {
  variables {
    site                = "dr"
    site_role           = "dr"
    architecture        = "aarch64"
    server_group_policy = "soft-anti-affinity"
    components = {
      appliance  = { count = 2, flavor = "kunpeng.4xlarge" }
      redis      = { count = 3 }
      monitoring = { count = 0 }
    }
  }

  assert {
    condition     = alltrue([for h in openstack_compute_instance_v2.host : h.image_name == "debian-12-arm64" && h.metadata.tongxin_architecture == "aarch64"])
    error_message = "An aarch64 site must use the aarch64 image."
  }

  assert {
    condition     = length(openstack_compute_instance_v2.host) == 13 && openstack_compute_instance_v2.host["tongxin-dr-appliance-02"].flavor_name == "kunpeng.4xlarge"
    error_message = "Overrides must apply: 2 lb + 2 appliance + 3 redis + 3 kafka + 3 database."
  }

  assert {
    condition     = !contains(keys(openstack_compute_servergroup_v2.component), "monitoring") && length(openstack_compute_servergroup_v2.component) == 5
    error_message = "A component with no hosts gets no server group."
  }

  assert {
    condition     = alltrue([for sg in openstack_compute_servergroup_v2.component : one(sg.policies) == "soft-anti-affinity"])
    error_message = "The policy input must reach the server groups."
  }

  assert {
    condition     = output.hosts.monitoring == [] && output.site.role == "dr"
    error_message = "An empty component is an empty list."
  }
}

run "data_volumes_follow_volume_size" {
  variables {
    components = {
      appliance = { volume_size = 100 }
      kafka     = { volume_size = 0 }
    }
  }

  assert {
    condition     = length(openstack_blockstorage_volume_v3.data) == 7 && length(openstack_compute_volume_attach_v2.data) == 7
    error_message = "3 appliance + 3 database + 1 monitoring volumes (kafka's turned off)."
  }

  assert {
    condition     = alltrue([for h in output.hosts.appliance : h.data_volume.size_gb == 100 && h.data_volume.device == "/dev/vdb"])
    error_message = "Appliance hosts get their volume in the output when volume_size > 0."
  }

  assert {
    condition     = alltrue([for h in output.hosts.kafka : h.data_volume == null]) && length(output.hosts.kafka) == 3
    error_message = "Kafka hosts with volume_size = 0 have data_volume = null."
  }
}

run "no_vip_without_load_balancers" {
  command = plan

  variables {
    components = {
      lb        = { count = 0 }
      appliance = { count = 0 }
    }
  }

  assert {
    condition     = length(openstack_networking_port_v2.lb_vip) == 0 && output.lb_vip_address == null
    error_message = "No VIP without load balancers."
  }
}

run "rejects_bad_site_name" {
  command = plan
  variables {
    site = "DC_1"
  }
  expect_failures = [var.site]
}

run "rejects_unknown_architecture" {
  command = plan
  variables {
    architecture = "arm64"
  }
  expect_failures = [var.architecture]
}

run "rejects_missing_image_for_architecture" {
  command = plan
  variables {
    architecture = "aarch64"
    images       = { x86_64 = "debian-12-amd64" }
  }
  expect_failures = [var.images]
}

run "rejects_negative_count" {
  command = plan
  variables {
    components = { redis = { count = -1 } }
  }
  expect_failures = [var.components]
}

run "rejects_fractional_count" {
  command = plan
  variables {
    components = { kafka = { count = 1.5 } }
  }
  expect_failures = [var.components]
}

run "rejects_empty_flavor" {
  command = plan
  variables {
    components = { database = { flavor = " " } }
  }
  expect_failures = [var.components]
}

run "rejects_appliances_without_lb" {
  command = plan
  variables {
    components = { lb = { count = 0 } }
  }
  expect_failures = [var.components]
}

run "rejects_affinity_policy" {
  command = plan
  variables {
    server_group_policy = "affinity"
  }
  expect_failures = [var.server_group_policy]
}

run "rejects_empty_subnet" {
  command = plan
  variables {
    subnet_id = ""
  }
  expect_failures = [var.subnet_id]
}
