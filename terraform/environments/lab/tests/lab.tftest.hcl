# Podman (through the Docker API) and the local file are mocked.
mock_provider "docker" {}
mock_provider "local" {}

run "three_simulated_sites" {
  assert {
    condition     = { for s, hosts in output.hosts : s => sum([for c, list in hosts : length(list)]) } == { dc1 = 7, dc2 = 6, dr = 5 }
    error_message = "Default lab: dc1 7 containers, dc2 6 (no monitoring), dr 5 (one appliance, no monitoring)."
  }

  assert {
    condition     = { for s, n in output.networks : s => n.subnet } == { dc1 = "10.89.101.0/24", dc2 = "10.89.102.0/24", dr = "10.89.103.0/24" }
    error_message = "Each site has its own network."
  }

  assert {
    condition     = endswith(output.inventory_path, "/../../../inventories/lab/hosts.yml")
    error_message = "The inventory is written to inventories/lab/hosts.yml."
  }
}

run "inventory_for_the_podman_connection" {
  command = plan

  assert {
    condition     = toset(keys(yamldecode(output.inventory).all.children)) == toset(["dc1", "dc2", "dr", "lb", "appliance", "redis", "kafka", "database", "monitoring"])
    error_message = "The lab inventory has the same groups as production."
  }

  assert {
    condition     = toset(keys(yamldecode(output.inventory).all.children.appliance.hosts)) == toset(["txlab-dc1-appliance-01", "txlab-dc1-appliance-02", "txlab-dc2-appliance-01", "txlab-dc2-appliance-02", "txlab-dr-appliance-01"])
    error_message = "The appliance group spans the sites."
  }

  assert {
    condition     = toset(keys(yamldecode(output.inventory).all.children.monitoring.hosts)) == toset(["txlab-dc1-monitoring-01"])
    error_message = "Only dc1 has monitoring."
  }

  assert {
    condition     = yamldecode(output.inventory).all.vars.ansible_connection == "podman" && yamldecode(output.inventory).all.children.dr.hosts["txlab-dr-redis-01"] == { ansible_host = "txlab-dr-redis-01", tongxin_address = "10.89.103.12", tongxin_component = "redis", tongxin_node_index = "1" }
    error_message = "Containers are reached by name through podman; their address is in tongxin_address."
  }

  assert {
    condition     = yamldecode(output.inventory).all.children.dr.vars == { tongxin_site = "dr", tongxin_site_role = "dr", tongxin_architecture = "x86_64", tongxin_lb_vip = "10.89.103.5" }
    error_message = "The dr group carries its role and VIP."
  }

  assert {
    condition     = alltrue(flatten([for s in ["dc1", "dc2", "dr"] : [for n, v in yamldecode(output.inventory).all.children[s].hosts : !contains(keys(v), "tongxin_data_volume")]]))
    error_message = "Containers have no data volume: no host carries tongxin_data_volume."
  }
}

run "single_site_over_ssh" {
  command = plan

  variables {
    sites                = { dc1 = { subnet = "10.89.110.0/24", components = { redis = { count = 3 } } } }
    inventory_connection = "ssh"
    inventory_path       = "/tmp/lab-inventory/hosts.yml"
  }

  assert {
    condition     = toset(keys(output.hosts)) == toset(["dc1"]) && length(output.hosts.dc1.redis) == 3
    error_message = "One site with three Redis containers."
  }

  assert {
    condition     = !contains(keys(yamldecode(output.inventory).all.children), "dc2") && yamldecode(output.inventory).all.children.dc1.hosts["txlab-dc1-lb-01"].ansible_host == "10.89.110.10"
    error_message = "Over ssh, ansible_host is the container address."
  }

  assert {
    condition     = output.inventory_path == "/tmp/lab-inventory/hosts.yml"
    error_message = "inventory_path must be honoured."
  }
}

run "rejects_unknown_site" {
  command = plan
  variables {
    sites = { dc3 = { subnet = "10.89.120.0/24" } }
  }
  expect_failures = [var.sites]
}

run "rejects_shared_subnet" {
  command = plan
  variables {
    sites = {
      dc1 = { subnet = "10.89.101.0/24" }
      dc2 = { subnet = "10.89.101.0/24" }
    }
  }
  expect_failures = [var.sites]
}

run "rejects_bad_docker_host" {
  command = plan
  variables {
    docker_host = "/run/podman/podman.sock"
  }
  expect_failures = [var.docker_host]
}
