# The three OpenStack clouds and the local file are mocked. Each site's
# ports get that site's address so the inventory can be checked per site.
mock_provider "openstack" {
  alias = "dc1"
  mock_resource "openstack_networking_port_v2" {
    defaults = { all_fixed_ips = ["10.1.0.10"] }
  }
}

mock_provider "openstack" {
  alias = "dc2"
  mock_resource "openstack_networking_port_v2" {
    defaults = { all_fixed_ips = ["10.2.0.10"] }
  }
}

mock_provider "openstack" {
  alias = "dr"
  mock_resource "openstack_networking_port_v2" {
    defaults = { all_fixed_ips = ["10.3.0.10"] }
  }
}

mock_provider "local" {}

variables {
  images = {
    x86_64  = "debian-12-amd64"
    aarch64 = "kylin-v10-arm64"
  }
  inventory_vars = { ansible_user = "tongxin-admin" }
  sites = {
    dc1 = { cloud = "dc1", network_id = "net-dc1", subnet_id = "subnet-dc1" }
    dc2 = { cloud = "dc2", network_id = "net-dc2", subnet_id = "subnet-dc2" }
    dr = {
      cloud        = "dr"
      network_id   = "net-dr"
      subnet_id    = "subnet-dr"
      architecture = "aarch64"
      components = {
        appliance = { count = 2 }
        redis     = { count = 3 }
      }
    }
  }
}

run "three_sites_from_one_set_of_variables" {
  assert {
    condition     = { for s, hosts in output.hosts : s => sum([for c, list in hosts : length(list)]) } == { dc1 = 18, dc2 = 18, dr = 14 }
    error_message = "dc1 and dc2 get the default 18 hosts, dr its 14 (2 appliance, 3 redis)."
  }

  assert {
    condition     = output.hosts.dc2.kafka[*].name == ["tongxin-dc2-kafka-01", "tongxin-dc2-kafka-02", "tongxin-dc2-kafka-03"]
    error_message = "Hosts are named per site."
  }

  assert {
    condition     = alltrue([for s in ["dc1", "dc2", "dr"] : length(output.server_groups[s]) == 6 && alltrue([for c, sg in output.server_groups[s] : sg.policy == "anti-affinity" && sg.name == "tongxin-${s}-${c}"])])
    error_message = "Every site has one anti-affinity server group per component."
  }

  assert {
    condition     = output.lb_vip_addresses == { dc1 = "10.1.0.10", dc2 = "10.2.0.10", dr = "10.3.0.10" }
    error_message = "Each site's VIP comes from its own cloud."
  }

  assert {
    condition     = endswith(output.inventory_path, "/../../../inventories/production/hosts.yml")
    error_message = "The inventory is written to inventories/production/hosts.yml."
  }
}

run "inventory_has_sites_and_components" {
  assert {
    condition     = toset(keys(yamldecode(output.inventory).all.children)) == toset(["dc1", "dc2", "dr", "lb", "appliance", "redis", "kafka", "database", "monitoring"])
    error_message = "The inventory groups are the three sites and the six components."
  }

  assert {
    condition     = length(yamldecode(output.inventory).all.children.dc1.hosts) == 18 && length(yamldecode(output.inventory).all.children.dr.hosts) == 14
    error_message = "Every host is in its site group."
  }

  assert {
    condition     = length(yamldecode(output.inventory).all.children.lb.hosts) == 6 && length(yamldecode(output.inventory).all.children.redis.hosts) == 15 && length(yamldecode(output.inventory).all.children.appliance.hosts) == 8
    error_message = "Component groups span the sites (lb 2+2+2, redis 6+6+3, appliance 3+3+2)."
  }

  assert {
    condition     = yamldecode(output.inventory).all.children.dr.hosts["tongxin-dr-database-01"].ansible_host == "10.3.0.10" && yamldecode(output.inventory).all.children.dc2.hosts["tongxin-dc2-lb-02"].ansible_host == "10.2.0.10"
    error_message = "Hosts carry their site's addresses."
  }

  assert {
    condition     = yamldecode(output.inventory).all.children.dr.vars == { tongxin_site = "dr", tongxin_site_role = "dr", tongxin_architecture = "aarch64", tongxin_lb_vip = "10.3.0.10" }
    error_message = "The dr group carries its role, architecture and VIP."
  }

  assert {
    condition     = yamldecode(output.inventory).all.children.dc1.vars.tongxin_site_role == "active" && yamldecode(output.inventory).all.children.dc2.vars.tongxin_site_role == "active"
    error_message = "dc1 and dc2 are active."
  }

  assert {
    condition     = yamldecode(output.inventory).all.vars == { ansible_user = "tongxin-admin", tongxin_environment = "production" }
    error_message = "The all group carries the inventory vars."
  }
}

run "data_volumes_reach_the_inventory" {
  assert {
    condition     = yamldecode(output.inventory).all.children.dc1.hosts["tongxin-dc1-database-01"].tongxin_data_volume == output.hosts.dc1.database[0].data_volume && output.hosts.dc1.database[0].data_volume.size_gb == 500
    error_message = "A database host's inventory entry carries its data volume (500 GB by default)."
  }

  assert {
    condition     = yamldecode(output.inventory).all.children.dr.hosts["tongxin-dr-kafka-02"].tongxin_data_volume.size_gb == 200 && yamldecode(output.inventory).all.children.dc2.hosts["tongxin-dc2-monitoring-01"].tongxin_data_volume.size_gb == 100
    error_message = "Kafka (200 GB) and monitoring (100 GB) hosts carry their volumes, in every site."
  }

  assert {
    condition     = length(flatten([for s in ["dc1", "dc2", "dr"] : [for n, v in yamldecode(output.inventory).all.children[s].hosts : n if contains(keys(v), "tongxin_data_volume")]])) == 21
    error_message = "Exactly the 7 kafka, database and monitoring hosts of each site carry tongxin_data_volume."
  }
}

run "rejects_shared_subnet" {
  command = plan

  variables {
    sites = {
      dc1 = { network_id = "net", subnet_id = "subnet" }
      dc2 = { network_id = "net", subnet_id = "subnet" }
      dr  = { network_id = "net-dr", subnet_id = "subnet-dr" }
    }
  }

  expect_failures = [var.sites]
}

run "rejects_unknown_architecture" {
  command = plan

  variables {
    sites = {
      dc1 = { network_id = "net-dc1", subnet_id = "subnet-dc1", architecture = "ppc64le" }
      dc2 = { network_id = "net-dc2", subnet_id = "subnet-dc2" }
      dr  = { network_id = "net-dr", subnet_id = "subnet-dr" }
    }
  }

  expect_failures = [var.sites]
}
