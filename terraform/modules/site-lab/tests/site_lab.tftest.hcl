# The Docker API (podman) is mocked: no container is created.
mock_provider "docker" {
  mock_data "docker_image" {
    defaults = {
      id = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    }
  }
}

variables {
  site  = "dc1"
  image = "localhost/tongxin-debian12:latest"
}

run "default_host_set" {
  assert {
    condition     = length(docker_container.host) == 7
    error_message = "The lab defaults are 1 lb + 2 appliance + 1 redis + 1 kafka + 1 database + 1 monitoring = 7 containers."
  }

  assert {
    condition = {
      for c in ["lb", "appliance", "redis", "kafka", "database", "monitoring"] :
      c => length(output.hosts[c])
      } == {
      lb = 1, appliance = 2, redis = 1, kafka = 1, database = 1, monitoring = 1
    }
    error_message = "Wrong container count per component."
  }

  assert {
    condition     = sort(keys(docker_container.host)) == sort(["txlab-dc1-lb-01", "txlab-dc1-appliance-01", "txlab-dc1-appliance-02", "txlab-dc1-redis-01", "txlab-dc1-kafka-01", "txlab-dc1-database-01", "txlab-dc1-monitoring-01"])
    error_message = "Containers are named <prefix>-<site>-<component>-<NN>."
  }

  assert {
    condition     = alltrue([for name, c in docker_container.host : c.name == name && c.hostname == name && c.image == "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" && c.command == tolist(["/sbin/init"]) && c.platform == "linux/amd64"])
    error_message = "Every container runs /sbin/init from the given local image, by image ID."
  }

  assert {
    condition     = data.docker_image.host.name == "localhost/tongxin-debian12:latest"
    error_message = "The image is looked up in the local store by name."
  }

  assert {
    condition     = docker_network.site.name == "txlab-dc1" && one(docker_network.site.ipam_config).subnet == "10.89.101.0/24" && one(docker_network.site.ipam_config).gateway == "10.89.101.1"
    error_message = "The site network has the given subnet."
  }

  assert {
    condition     = alltrue([for name, c in docker_container.host : one(c.networks_advanced).name == "txlab-dc1" && one(c.networks_advanced).ipv4_address == output.addresses[name]])
    error_message = "Every container is on the site network at its planned address."
  }

  assert {
    condition     = output.addresses["txlab-dc1-lb-01"] == "10.89.101.10" && output.addresses["txlab-dc1-appliance-02"] == "10.89.101.12" && output.addresses["txlab-dc1-monitoring-01"] == "10.89.101.16"
    error_message = "Addresses are assigned from the 11th address on, in component order."
  }

  assert {
    condition     = length(distinct(values(output.addresses))) == 7 && !contains(values(output.addresses), output.lb_vip_address) && output.lb_vip_address == "10.89.101.5"
    error_message = "Addresses must be unique and leave the VIP free."
  }

  assert {
    condition = alltrue([for c in docker_container.host : c.runtime == "runc" && !c.privileged && c.stop_signal == "SIGRTMIN+3" &&
    toset([for u in c.ulimit : "${u.name}=${u.soft}/${u.hard}"]) == toset(["nofile=20000/20000", "nproc=4096/4096"])])
    error_message = "Containers run with runc, unprivileged, systemd's stop signal and the safe ulimits."
  }

  assert {
    condition = alltrue([for n, c in docker_container.host : length(c.capabilities) == 1 && tolist(c.capabilities)[0].add == (
      startswith(n, "txlab-dc1-lb-") ? toset(["CAP_NET_ADMIN", "CAP_NET_RAW"]) : toset(["CAP_NET_ADMIN"])
    )])
    error_message = "Containers get CAP_NET_ADMIN (nftables in their own network namespace), load balancers also CAP_NET_RAW (VRRP), and nothing else."
  }

  assert {
    condition     = alltrue([for name, c in docker_container.host : contains([for l in c.labels : "${l.label}=${l.value}"], "tongxin.component=${split("-", name)[2]}")])
    error_message = "Every container is labelled with its component."
  }

  assert {
    condition     = output.hosts.appliance[*].name == ["txlab-dc1-appliance-01", "txlab-dc1-appliance-02"] && output.hosts.appliance[1].address == "10.89.101.12"
    error_message = "The hosts output gives names and addresses in order."
  }
}

run "aarch64_dr_site_with_custom_counts" {
  command = plan

  variables {
    site         = "dr"
    site_role    = "dr"
    architecture = "aarch64"
    subnet       = "10.89.103.0/26"
    components = {
      appliance  = { count = 1, memory_mb = 1024 }
      redis      = { count = 3 }
      monitoring = { count = 0 }
    }
  }

  assert {
    condition     = length(docker_container.host) == 7 && length(output.hosts.redis) == 3 && output.hosts.monitoring == []
    error_message = "Overrides must apply: 1 lb + 1 appliance + 3 redis + 1 kafka + 1 database."
  }

  assert {
    condition     = alltrue([for c in docker_container.host : c.platform == "linux/arm64"])
    error_message = "An aarch64 site runs arm64 containers."
  }

  assert {
    condition     = docker_container.host["txlab-dr-appliance-01"].memory == 1024 && docker_container.host["txlab-dr-redis-01"].memory == null
    error_message = "memory_mb sets a limit only where given."
  }

  assert {
    condition     = contains([for l in docker_container.host["txlab-dr-kafka-01"].labels : "${l.label}=${l.value}"], "tongxin.site_role=dr")
    error_message = "Containers carry the site role."
  }
}

run "rejects_bad_site_name" {
  command = plan
  variables {
    site = "Lab 1"
  }
  expect_failures = [var.site]
}

run "rejects_empty_image" {
  command = plan
  variables {
    image = ""
  }
  expect_failures = [var.image]
}

run "rejects_bad_subnet" {
  command = plan
  variables {
    subnet = "10.89.101.0"
  }
  expect_failures = [var.subnet]
}

run "rejects_subnet_too_small" {
  command = plan
  variables {
    subnet     = "10.89.101.0/28"
    components = { redis = { count = 6 } }
  }
  expect_failures = [var.components]
}

run "rejects_high_ulimits" {
  command = plan
  variables {
    ulimits = { nofile = 1048576 }
  }
  expect_failures = [var.ulimits]
}

run "rejects_negative_count" {
  command = plan
  variables {
    components = { kafka = { count = -2 } }
  }
  expect_failures = [var.components]
}

run "rejects_unknown_architecture" {
  command = plan
  variables {
    architecture = "amd64"
  }
  expect_failures = [var.architecture]
}

run "combined_components" {
  command = plan

  # Another prefix: new containers, not the earlier runs' (whose planned
  # capabilities ignore_changes would keep).
  variables {
    name_prefix = "txcomb"
    components = {
      lb         = { count = 0 }
      appliance  = { count = 1, also = ["redis", "lb", "kafka", "lb"] }
      redis      = { count = 0 }
      kafka      = { count = 0 }
      monitoring = { count = 0 }
    }
  }

  assert {
    condition     = length(docker_container.host) == 2
    error_message = "One appliance container carrying lb, redis and kafka, and the database: two containers."
  }

  assert {
    condition     = output.hosts.appliance[0].also == tolist(["kafka", "lb", "redis"])
    error_message = "`also` is passed on sorted and without repeats."
  }

  assert {
    condition     = length(output.hosts.database[0].also) == 0
    error_message = "A component without `also` carries an empty list."
  }

  assert {
    condition     = output.lb_vip_address == "10.89.101.5"
    error_message = "A host that also carries lb still gets the site's VIP reserved."
  }

  assert {
    condition     = tolist(docker_container.host["txcomb-dc1-appliance-01"].capabilities)[0].add == toset(["CAP_NET_ADMIN", "CAP_NET_RAW"]) && tolist(docker_container.host["txcomb-dc1-database-01"].capabilities)[0].add == toset(["CAP_NET_ADMIN"])
    error_message = "A host that also carries lb gets CAP_NET_RAW for VRRP; the others do not."
  }
}

run "also_must_name_other_components" {
  command = plan

  variables {
    components = {
      appliance = { count = 1, also = ["appliance"] }
    }
  }

  expect_failures = [var.components]
}
